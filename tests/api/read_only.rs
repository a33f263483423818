//! Read-only rooms as a user of the API sees them: `readOnly` set at
//! creation and by PATCH, `readOnlyAt` validated and carried out by the
//! service itself (also after a restart), and every turn in the event log.
//! What read-only does on the homeserver is checked in tests/e2e (a real
//! Synapse refuses a plain member's message).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{TestServer, World, room_id};

fn unix_now() -> i64 {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    i64::try_from(secs).unwrap()
}

/// An event room of organization 1 made by the API token from this body.
async fn event_room(srv: &TestServer, w: &World, event: i64, mut body: Value) -> Value {
    body["name"] = json!(format!("Event {event}"));
    body["organizationID"] = json!(w.org);
    body["eventID"] = json!(event);
    body["admins"] = json!([w.room_admin.id]);
    body["assignedUsers"] = json!([w.assigned.id]);
    srv.post("/v1/chatrooms/event", &w.api, Some(body)).await.expect(201).clone()
}

/// The `room.updated` events of a room, oldest first: (actor type, changed).
async fn updates(srv: &TestServer, w: &World, room: i64) -> Vec<(String, Value)> {
    let page = srv.get("/v1/events?organization_id=1&limit=1000", &w.api).await;
    page.expect(200)["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "room.updated" && e["data"]["roomID"] == room)
        .map(|e| (e["actor"]["type"].as_str().unwrap_or_default().to_string(), e["data"]["changed"].clone()))
        .collect()
}

/// Polls the room until it is read-only; fails after `within`.
async fn wait_until_read_only(srv: &TestServer, room: i64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let got = srv.get(&format!("/v1/chatrooms/{room}"), &srv.api_token).await.expect(200).clone();
        if got["readOnly"] == true {
            return got;
        }
        assert!(Instant::now() < deadline, "room {room} did not become read-only within {within:?}: {got}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn read_only_is_set_at_creation_and_turned_on_and_off() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let plain = w.room_from(&srv, json!({"name": "Chat"})).await;
    assert_eq!((&plain["readOnly"], &plain["readOnlyAt"]), (&json!(false), &Value::Null), "the default: {plain}");
    let frozen = w.room_from(&srv, json!({"name": "Announcements", "readOnly": true})).await;
    assert_eq!(frozen["readOnly"], true, "{frozen}");
    let listed = srv.get("/v1/chatrooms?organization_id=1&all=true", &w.api).await.expect(200).clone();
    let flags: Vec<&Value> = listed["entries"].as_array().unwrap().iter().map(|r| &r["readOnly"]).collect();
    assert_eq!(flags, [&json!(false), &json!(true)], "GetRooms shows it too");

    // A room admin turns it on and off; a plain member of the organization may not.
    let id = w.room(&srv, "Board").await;
    let path = format!("/v1/chatrooms/{id}");
    let on = srv.patch(&path, &w.room_admin.token, Some(json!({"readOnly": true}))).await;
    assert_eq!(on.expect(200)["readOnly"], true);
    assert_eq!(srv.get(&path, &w.member.token).await.expect(200)["readOnly"], true, "kept");
    srv.patch(&path, &w.member.token, Some(json!({"readOnly": false}))).await.expect_problem(403);
    srv.patch(&path, &w.room_mod.token, Some(json!({"readOnly": false}))).await.expect_problem(403);
    let off = srv.patch(&path, &w.room_admin.token, Some(json!({"readOnly": false}))).await;
    assert_eq!(off.expect(200)["readOnly"], false);
    // Sending the same value again changes nothing that the log records.
    srv.patch(&path, &w.api, Some(json!({"readOnly": false}))).await.expect(200);
    assert_eq!(
        updates(&srv, &w, id).await,
        vec![("user".to_string(), json!({"readOnly": true})), ("user".to_string(), json!({"readOnly": false}))],
        "each turn is a room.updated by the room admin"
    );

    // The default room is the organization's: its owners/admins may freeze it.
    let default = srv.post("/v1/chatrooms/default", &w.api, Some(json!({"organizationID": 1}))).await;
    let default = room_id(default.expect(201));
    let path = format!("/v1/chatrooms/{default}");
    let frozen = srv.patch(&path, &w.owner.token, Some(json!({"readOnly": true}))).await;
    assert_eq!(frozen.expect(200)["readOnly"], true);

    // Not a boolean: 400.
    let detail = srv.patch(&path, &w.api, Some(json!({"readOnly": "yes"}))).await.expect_problem(400);
    assert!(detail.contains("readOnly"), "{detail}");
}

#[tokio::test]
async fn read_only_at_is_validated() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let now = unix_now();

    // Any kind of room takes one: a custom room at creation, the default
    // room (by an owner/admin of the organization, not by its room admin).
    let body = json!({"name": "Campaign", "organizationID": 1, "readOnlyAt": now + 3600});
    let custom = w.room_from(&srv, body).await;
    assert!(custom["readOnlyAt"].is_string(), "{custom}");
    let default = srv.post("/v1/chatrooms/default", &w.api, Some(json!({"organizationID": 1, "topic": "x"}))).await;
    let default = room_id(default.expect(201));
    let path = format!("/v1/chatrooms/{default}");
    srv.post(&format!("{path}/users"), &w.api, Some(json!({"admins": [w.room_admin.id]}))).await.expect(200);
    let at = json!({"readOnlyAt": now + 3600});
    srv.patch(&path, &w.room_admin.token, Some(at.clone())).await.expect_problem(403);
    assert!(srv.patch(&path, &w.owner.token, Some(at)).await.expect(200)["readOnlyAt"].is_string());

    // In the past, or after what RFC 3339 can write: 422; not a time: 400.
    let body = json!({"name": "Past", "organizationID": 1, "eventID": 5, "readOnlyAt": now - 10});
    let detail = srv.post("/v1/chatrooms/event", &w.api, Some(body)).await.expect_problem(422);
    assert!(detail.contains("readOnlyAt lies in the past"), "{detail}");
    let body = json!({"name": "Far", "organizationID": 1, "eventID": 5, "readOnlyAt": 253_402_300_800_i64});
    assert!(srv.post("/v1/chatrooms/event", &w.api, Some(body)).await.expect_problem(422).contains("9999"));
    let body = json!({"name": "Soon", "organizationID": 1, "eventID": 5, "readOnlyAt": "soon"});
    assert!(srv.post("/v1/chatrooms/event", &w.api, Some(body)).await.expect_problem(400).contains("RFC 3339"));
    assert_eq!(srv.rooms(1).await["total"], 2, "no refused request made a room");
    let resp = srv.patch(&format!("/v1/chatrooms/{}", room_id(&custom)), &w.api, Some(json!({"readOnlyAt": 0}))).await;
    assert!(resp.expect_problem(422).contains("readOnlyAt lies in the past"));

    // An event room takes it as RFC 3339 or Unix seconds, answers RFC 3339,
    // and a PATCH moves or cancels it; a room moderator may not.
    let room = event_room(&srv, &w, 5, json!({"readOnlyAt": "2099-01-01T00:00:00Z"})).await;
    assert_eq!((&room["readOnly"], &room["readOnlyAt"]), (&json!(false), &json!("2099-01-01T00:00:00Z")));
    let path = format!("/v1/chatrooms/{}", room_id(&room));
    let moved = srv.patch(&path, &w.room_admin.token, Some(json!({"readOnlyAt": 4_102_444_800_i64}))).await;
    assert_eq!(moved.expect(200)["readOnlyAt"], "2100-01-01T00:00:00Z");
    let resp = srv.patch(&path, &w.room_admin.token, Some(json!({"readOnlyAt": now - 1}))).await;
    assert!(resp.expect_problem(422).contains("past"));
    assert_eq!(srv.get(&path, &w.api).await.expect(200)["readOnlyAt"], "2100-01-01T00:00:00Z", "unchanged");
    let cancelled = srv.patch(&path, &w.api, Some(json!({"readOnlyAt": null}))).await;
    assert_eq!(cancelled.expect(200)["readOnlyAt"], Value::Null);
    let changes: Vec<Value> = updates(&srv, &w, room_id(&room)).await.into_iter().map(|(_, c)| c).collect();
    assert_eq!(changes, [json!({"readOnlyAt": "2100-01-01T00:00:00Z"}), json!({"readOnlyAt": null})]);
}

/// At `readOnlyAt` the service makes the room read-only by itself, as the
/// system, and clears the time (seconds resolution: this waits about two seconds).
#[tokio::test]
async fn read_only_at_comes_by_itself() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let now = unix_now();
    let soon = event_room(&srv, &w, 1, json!({"readOnlyAt": now + 2})).await;
    let later = event_room(&srv, &w, 2, json!({"readOnlyAt": now + 30 * 86_400})).await;
    let done = wait_until_read_only(&srv, room_id(&soon), Duration::from_secs(15)).await;
    assert_eq!(done["readOnlyAt"], Value::Null, "the schedule is done: {done}");
    assert_eq!(
        updates(&srv, &w, room_id(&soon)).await,
        vec![("system".to_string(), json!({"readOnly": true, "readOnlyAt": null}))]
    );
    let untouched = srv.get(&format!("/v1/chatrooms/{}", room_id(&later)), &w.api).await.expect(200).clone();
    assert_eq!((&untouched["readOnly"], &untouched["readOnlyAt"]), (&json!(false), &later["readOnlyAt"]));
}

/// A `readOnlyAt` that passed while the service was down is carried out at start.
#[tokio::test]
async fn read_only_at_due_while_stopped_happens_at_start() {
    let mut srv = TestServer::start();
    let w = World::new(&srv).await;
    let due = unix_now() + 2;
    let room = event_room(&srv, &w, 1, json!({"readOnlyAt": due})).await;
    assert!(srv.stop(), "a clean stop");
    while unix_now() <= due {
        std::thread::sleep(Duration::from_millis(100));
    }
    srv.restart();
    let done = wait_until_read_only(&srv, room_id(&room), Duration::from_secs(15)).await;
    assert_eq!(done["readOnlyAt"], Value::Null, "{done}");
    assert_eq!(updates(&srv, &w, room_id(&room)).await.len(), 1, "done once");
}
