//! Every fixture an earlier release wrote, opened with today's binary:
//! served through the API exactly as that release served it (plus what
//! today adds: `topic`, `""` for old rooms; `readOnly` false and
//! `readOnlyAt` null for rooms from before read-only rooms), exported record by record as
//! that release exported it, and passing `check`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::common::TestServer;
use crate::support::{Fixture, fixtures, meta};

/// A room as the fixture's release served it, with what today adds.
fn today(room: &Value) -> Value {
    let mut room = room.clone();
    if room.get("topic").is_none() {
        room["topic"] = json!("");
    }
    // Rooms from before read-only rooms are writable, with nothing scheduled.
    if room.get("readOnly").is_none() {
        room["readOnly"] = json!(false);
    }
    if room.get("readOnlyAt").is_none() {
        room["readOnlyAt"] = Value::Null;
    }
    room
}

fn records<'a>(export: &'a [Value], kind: &str) -> impl Iterator<Item = &'a Value> {
    export.iter().filter(move |r| r["record"] == kind)
}

#[tokio::test]
async fn every_fixture_is_served_as_its_release_served_it() {
    for fixture in fixtures() {
        served_as_written(&fixture).await;
    }
}

async fn served_as_written(f: &Fixture) {
    let name = &f.name;
    let export = f.export();
    // The fixtures' events are older than the default retention: kept here.
    let keep = [("MESSENGER_CHAT_EVENTS__RETENTION_DAYS", "36500")];
    let mut srv = TestServer::start_on_with(&f.db, f.api_token(), &keep);
    let api = srv.api_token.clone();

    // Every room, one by one and by Matrix id.
    let rooms = f.manifest["rooms"].as_object().expect("the manifest lists the served rooms");
    assert_eq!(rooms.len(), records(&export, "room").count(), "{name}: a served room per room record");
    for (id, served) in rooms {
        let expected = today(served);
        let got = srv.get(&format!("/v1/chatrooms/{id}"), &api).await;
        assert_eq!(
            got.expect(200),
            &expected,
            "{name}: room {id} as its release served it, plus an empty topic and not read-only"
        );
        let matrix = served["matrixRoomID"].as_str().unwrap_or_default();
        if !matrix.is_empty() {
            let by_matrix = srv.get(&format!("/v1/chatrooms/{matrix}"), &api).await;
            assert_eq!(by_matrix.expect(200), &expected, "{name}: room {id} found by its Matrix id");
        }
    }

    // GetRooms: every organization's rooms in id order, with the total; a page.
    let mut by_org: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
    for served in rooms.values() {
        by_org.entry(served["organizationID"].as_i64().unwrap()).or_default().push(today(served));
    }
    for org in records(&export, "organization").map(|o| o["id"].as_i64().unwrap()) {
        let mut expected = by_org.remove(&org).unwrap_or_default();
        expected.sort_by_key(|r| r["roomID"].as_i64());
        let listed = srv.get(&format!("/v1/chatrooms?organization_id={org}&all=true"), &api).await;
        assert_eq!(
            listed.expect(200),
            &json!({"entries": expected, "total": expected.len()}),
            "{name}: GetRooms of organization {org}"
        );
        if expected.len() > 1 {
            let page = srv.get(&format!("/v1/chatrooms?organization_id={org}&limit=1&offset=1"), &api).await;
            assert_eq!(page.expect(200)["entries"], json!([expected[1]]), "{name}: page 2 of organization {org}");
        }
    }
    assert!(by_org.is_empty(), "{name}: rooms of organizations the export does not hold: {by_org:?}");

    // Event rooms by event, the default room in a listing.
    for room in rooms.values().filter(|r| r["type"] == "event") {
        let path =
            format!("/v1/chatrooms/event?organization_id={}&event_id={}", room["organizationID"], room["eventID"]);
        assert_eq!(srv.get(&path, &api).await.expect(200), &today(room), "{name}: {path}");
    }

    // Members of every organization, with their roles.
    for org in records(&export, "organization") {
        let id = org["id"].as_i64().unwrap();
        let expected: Vec<Value> = records(&export, "member")
            .filter(|m| m["organization"] == id)
            .map(|m| {
                let role = ["member", "admin", "owner"][usize::try_from(m["role"].as_u64().unwrap()).unwrap()];
                json!({"userID": m["user"], "role": role})
            })
            .collect();
        assert_eq!(srv.members(id).await, json!(expected), "{name}: members of organization {id}");
    }

    // Every user's tokens as listed, and every token's secret as it works now.
    for user in records(&export, "user") {
        let id = user["id"].as_i64().unwrap();
        let expected: Vec<Value> = records(&export, "token")
            .filter(|t| t["user_id"] == id && t["kind"] == "Personal")
            .map(|t| {
                json!({
                    "id": t["id"],
                    "name": t["name"],
                    "createdAt": rfc3339(&t["created_at"]),
                    "expiresAt": rfc3339(&t["expires_at"]),
                    "revoked": t["revoked"],
                })
            })
            .collect();
        let listed = srv.get(&format!("/v1/users/{id}/tokens"), &api).await;
        assert_eq!(listed.expect(200), &json!(expected), "{name}: tokens of user {id}");
    }
    for token in f.manifest["tokens"].as_array().expect("the manifest lists the tokens") {
        let secret = token["secret"].as_str().unwrap();
        let resp = srv.get("/v1/user/credentials", secret).await;
        match token["state"].as_str().unwrap() {
            "active" => {
                let who = format!("@u{}:localhost", token["user"]);
                assert_eq!(resp.expect(200)["username"], who.as_str(), "{name}: token {token}");
            }
            state => assert!(resp.expect_problem(401).contains(state), "{name}: token {token}: {}", resp.text),
        }
    }
    srv.get("/v1/chatrooms?organization_id=1", &api).await.expect(200);

    // The event log (schema 2 on): every event record served, in order.
    let logged: Vec<(Value, Value)> = records(&export, "event").map(|e| (e["id"].clone(), e["kind"].clone())).collect();
    let page = srv.get("/v1/events?limit=1000", &api).await;
    let served: Vec<(Value, Value)> =
        page.expect(200)["events"].as_array().unwrap().iter().map(|e| (e["id"].clone(), e["type"].clone())).collect();
    assert_eq!(served, logged, "{name}: the event log");

    // Every record, field by field, as the fixture's release exported it.
    assert!(srv.stop(), "{name}: the server stops cleanly");
    let data = crate::support::Data::with_file(&srv.data_dir().join(crate::support::DB_FILE));
    let dump = data.cli(&["export"]);
    assert!(dump.ok, "{name}: export\n{}", dump.text());
    let mut lines = dump.stdout.lines().map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"));
    let header = lines.next().expect("a header line");
    assert_eq!(header["records"], export.len(), "{name}: as many records as the release exported");
    let now: Vec<Value> = lines.collect();
    let then = f.today_export();
    assert_eq!(now.len(), then.len(), "{name}: record count");
    for (now, then) in now.iter().zip(&then) {
        assert_eq!(now, then, "{name}: a record changed on the way to today's schema");
    }

    // The file is at today's schema now and sound.
    let db = data.db();
    assert_eq!(meta(&db, "schema_version"), Some(messenger_chat::store::SCHEMA_VERSION), "{name}");
    let check = data.cli(&["check"]);
    assert!(check.ok && check.stdout.contains("no problems found"), "{name}: check\n{}", check.text());

    // With the default retention (90 days), the events of the fixture's
    // pinned 2026-01-01 go in the background soon after the start.
    let srv = TestServer::start_on(&data.db(), &api);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let page = srv.get("/v1/events?limit=1000", &api).await.expect(200).clone();
        if page["events"].as_array().unwrap().is_empty() {
            let last = logged.last().map_or(json!(0), |(id, _)| id.clone());
            let later = srv.get(&format!("/v1/events?after={last}"), &api).await;
            later.expect(200);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{name}: old events never pruned: {page}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Unix seconds (or null) as the API shows them.
fn rfc3339(v: &Value) -> Value {
    v.as_i64().map_or(Value::Null, |s| json!(messenger_chat::model::rfc3339(s)))
}

/// The export each fixture's release wrote imports into an empty database
/// today, and exports again as today writes it: a version 1 dump's rooms
/// gain an empty topic and the origin of their roles as the migration
/// infers it, a later dump's come back as they were.
#[test]
fn the_export_of_every_release_imports_today() {
    for f in fixtures() {
        let name = &f.name;
        let data = crate::support::Data::new();
        let dump = data.dir().with_file_name("dump.jsonl");
        let lines: Vec<String> = f.manifest["export"].as_array().unwrap().iter().map(Value::to_string).collect();
        std::fs::write(&dump, lines.join("\n") + "\n").unwrap();
        let imported = data.cli(&["import", dump.to_str().unwrap()]);
        assert!(imported.ok, "{name}: import of its release's export\n{}", imported.text());
        let again = data.cli(&["export"]);
        assert!(again.ok, "{name}: export\n{}", again.text());
        let now: Vec<Value> = again.stdout.lines().skip(1).map(|l| serde_json::from_str(l).unwrap()).collect();
        let then = f.today_export();
        assert_eq!(now, then, "{name}: every record through export and import");
        let topics: Vec<&Value> = now.iter().filter(|r| r["record"] == "room").map(|r| &r["topic"]).collect();
        assert!(topics.iter().all(|t| t.is_string()), "{name}: {topics:?}");
    }
}
