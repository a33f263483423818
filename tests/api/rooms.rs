//! Chatrooms as a user of the API sees them: created, read, listed, updated,
//! deleted, with users added and removed, and claimed.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::common::{TestServer, World, ids, png, room_id, stable, stable_list};

const ROOM_KEYS: [&str; 17] = [
    "roomID",
    "type",
    "organizationID",
    "eventID",
    "name",
    "topic",
    "matrixRoomID",
    "avatarURL",
    "admins",
    "moderators",
    "assignedUsers",
    "automationEnabled",
    "scheduledDeletion",
    "readOnly",
    "readOnlyAt",
    "syncState",
    "syncError",
];

#[track_caller]
fn assert_room_shape(room: &Value) {
    let mut keys: Vec<&str> = room.as_object().expect("a room object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = ROOM_KEYS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected, "a room has exactly the fields of api.md: {room}");
    assert!(room_id(room) > 0, "{room}");
    // No homeserver in these tests: the Matrix side never exists.
    assert_eq!(room["matrixRoomID"], "", "{room}");
    assert_eq!(room["syncState"], "pending", "{room}");
    assert!(room["syncError"].is_null() || room["syncError"].is_string(), "{room}");
}

#[tokio::test]
async fn an_owner_creates_a_custom_room_and_becomes_its_admin() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let body = json!({
        "name": "  Board  ",
        "organizationID": 1,
        "admins": [12],
        "moderators": [16],
        "assignedUsers": [17, 13],
        "automationEnabled": false,
        "avatar": png(),
        "scheduledDeletion": "2099-01-01T00:00:00Z",
    });
    let created = srv.post("/v1/chatrooms", &w.owner.token, Some(body)).await;
    let room = created.expect(201).clone();
    assert_room_shape(&room);
    assert_eq!(room["type"], "custom");
    assert_eq!(room["organizationID"], 1);
    assert_eq!(room["eventID"], 0);
    assert_eq!(room["name"], "Board", "the name is trimmed");
    assert_eq!(ids(&room["admins"]), vec![11, 12], "the creator became a room admin");
    assert_eq!(ids(&room["moderators"]), vec![16]);
    assert_eq!(ids(&room["assignedUsers"]), vec![13, 17], "lists are sorted");
    assert_eq!(room["automationEnabled"], false);
    assert_eq!(room["avatarURL"], "", "the avatar is not on the homeserver yet");
    assert_eq!(room["scheduledDeletion"], "2099-01-01T00:00:00Z");

    let id = room_id(&room);
    let read = srv.get(&format!("/v1/chatrooms/{id}"), &w.member.token).await;
    assert_eq!(stable(read.expect(200)), stable(&room));
}

#[tokio::test]
async fn the_api_token_creates_a_room_with_only_the_listed_users() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let room = w.room_from(&srv, json!({"name": "Quiet", "scheduledDeletion": 4_102_444_800_i64})).await;
    assert_room_shape(&room);
    assert_eq!(room["admins"], json!([]));
    assert_eq!(room["moderators"], json!([]));
    assert_eq!(room["assignedUsers"], json!([]));
    assert_eq!(room["automationEnabled"], false, "automation is off unless asked for");
    assert_eq!(room["scheduledDeletion"], "2100-01-01T00:00:00Z", "Unix seconds come back as RFC 3339 UTC");
    let base64 = w.room_from(&srv, json!({"avatar": STANDARD.encode(png())})).await;
    assert_room_shape(&base64);
    let no_deletion = w.room_from(&srv, json!({"scheduledDeletion": null})).await;
    assert_eq!(no_deletion["scheduledDeletion"], Value::Null);
}

#[tokio::test]
async fn a_user_named_in_several_lists_gets_the_highest_role() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let room = w.room_from(&srv, json!({"admins": [31], "moderators": [31, 32], "assignedUsers": [33, 32, 31]})).await;
    assert_eq!(ids(&room["admins"]), vec![31]);
    assert_eq!(ids(&room["moderators"]), vec![32]);
    assert_eq!(ids(&room["assignedUsers"]), vec![33]);
}

#[tokio::test]
async fn rooms_are_listed_in_pages_ordered_by_room_id() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let api = &w.api;
    let mut made = Vec::new();
    for n in 0..9 {
        made.push(w.room(&srv, &format!("Room {n}")).await);
        if n == 4 {
            // Rooms of another organization in between change nothing here.
            let other = srv.post("/v1/chatrooms", api, Some(json!({"name": "Theirs", "organizationID": 2}))).await;
            other.expect(201);
        }
    }
    let default = srv.post("/v1/chatrooms/default", api, Some(json!({"organizationID": 1}))).await;
    made.push(room_id(default.expect(201)));
    let event =
        srv.post("/v1/chatrooms/event", api, Some(json!({"name": "Gala", "organizationID": 1, "eventID": 5}))).await;
    made.push(room_id(event.expect(201)));
    made.push(w.room(&srv, "Last").await);
    let mut sorted = made.clone();
    sorted.sort_unstable();
    assert_eq!(made, sorted, "room ids ascend in creation order");

    let page = |query: &'static str| {
        let srv = &srv;
        async move {
            let resp = srv.get(&format!("/v1/chatrooms?organization_id=1{query}"), api).await;
            let body = resp.expect(200).clone();
            assert_eq!(body["total"], 12, "{query}: total counts every room of the organization");
            body["entries"].as_array().expect("entries").iter().map(room_id).collect::<Vec<_>>()
        }
    };
    assert_eq!(page("").await, made[..10], "10 by default");
    assert_eq!(page("&limit=5").await, made[..5]);
    assert_eq!(page("&limit=5&offset=5").await, made[5..10]);
    assert_eq!(page("&limit=5&offset=10").await, made[10..]);
    assert_eq!(page("&offset=12").await, Vec::<i64>::new());
    assert_eq!(page("&offset=1000").await, Vec::<i64>::new());
    assert_eq!(page("&limit=50").await, made);
    assert_eq!(page("&limit=1&offset=11").await, made[11..]);
    assert_eq!(page("&all=true").await, made);
    assert_eq!(page("&all=true&limit=2&offset=3").await, made, "all=true ignores limit and offset");
    assert_eq!(page("&all=false&limit=3").await, made[..3]);

    let theirs = srv.get("/v1/chatrooms?organization_id=2", api).await;
    let theirs = theirs.expect(200);
    assert_eq!(theirs["total"], 1);
    assert_eq!(theirs["entries"][0]["organizationID"], 2);
    for entry in srv.rooms(1).await["entries"].as_array().unwrap() {
        assert_room_shape(entry);
        assert_eq!(entry["organizationID"], 1);
    }
    // An organization without rooms.
    srv.put("/v1/organizations/3", api, Some(json!({"name": "Empty"}))).await.expect(201);
    let empty = srv.get("/v1/chatrooms?organization_id=3", api).await;
    assert_eq!(empty.expect(200), &json!({"entries": [], "total": 0}));
}

#[tokio::test]
async fn an_event_has_one_room_per_organization() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let body = json!({"name": "Summer party", "organizationID": 1, "eventID": 77, "moderators": [16]});
    let created = srv.post("/v1/chatrooms/event", &w.admin.token, Some(body.clone())).await;
    let room = created.expect(201).clone();
    assert_room_shape(&room);
    assert_eq!(room["type"], "event");
    assert_eq!(room["eventID"], 77);
    assert_eq!(ids(&room["admins"]), vec![12], "the creator became a room admin");
    assert_eq!(ids(&room["moderators"]), vec![16]);

    let found = srv.get("/v1/chatrooms/event?organization_id=1&event_id=77", &w.member.token).await;
    assert_eq!(stable(found.expect(200)), stable(&room));

    srv.post("/v1/chatrooms/event", &w.admin.token, Some(body)).await.expect_problem(409);
    let again = json!({"name": "Other name", "organizationID": 1, "eventID": 77});
    srv.post("/v1/chatrooms/event", &w.api, Some(again)).await.expect_problem(409);
    assert_eq!(srv.rooms(1).await["total"], 1, "no second room for the event");

    // The same event number in another organization is another event.
    let theirs = json!({"name": "Their party", "organizationID": 2, "eventID": 77});
    let theirs = srv.post("/v1/chatrooms/event", &w.api, Some(theirs)).await;
    let theirs = room_id(theirs.expect(201));
    let found = srv.get("/v1/chatrooms/event?organization_id=2&event_id=77", &w.api).await;
    assert_eq!(room_id(found.expect(200)), theirs);

    srv.get("/v1/chatrooms/event?organization_id=1&event_id=78", &w.api).await.expect_problem(404);
    srv.get("/v1/chatrooms/event?organization_id=9&event_id=77", &w.api).await.expect_problem(404);
    let unknown_org = json!({"name": "X", "organizationID": 9, "eventID": 1});
    srv.post("/v1/chatrooms/event", &w.api, Some(unknown_org)).await.expect_problem(404);
    // A custom room is not an event room.
    let custom = w.room(&srv, "Board").await;
    assert_eq!(srv.room(custom).await["eventID"], 0);
}

#[tokio::test]
async fn an_organization_has_one_default_room_named_after_it() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let created = srv
        .post("/v1/chatrooms/default", &w.owner.token, Some(json!({"organizationID": 1, "automationEnabled": true})))
        .await;
    let room = created.expect(201).clone();
    assert_room_shape(&room);
    assert_eq!(room["type"], "default");
    assert_eq!(room["name"], "Acme");
    assert_eq!(room["eventID"], 0);
    assert_eq!(room["automationEnabled"], true);
    let id = room_id(&room);

    let second = srv.post("/v1/chatrooms/default", &w.admin.token, Some(json!({"organizationID": 1}))).await;
    second.expect_problem(409);
    // The default room is not removed as a custom room.
    srv.delete(&format!("/v1/chatrooms/{id}"), &w.api, None).await.expect_problem(409);
    assert_eq!(srv.rooms(1).await["total"], 1);
    assert_eq!(stable(&srv.room(id).await)["type"], "default");

    srv.delete("/v1/chatrooms/default/1", &w.owner.token, None).await.expect(204);
    srv.get(&format!("/v1/chatrooms/{id}"), &w.api).await.expect_problem(404);
    srv.delete("/v1/chatrooms/default/1", &w.api, None).await.expect_problem(404);
    assert_eq!(srv.rooms(1).await["total"], 0);

    let again = srv.post("/v1/chatrooms/default", &w.api, Some(json!({"organizationID": 1}))).await;
    let again = again.expect(201).clone();
    assert!(room_id(&again) > id, "room ids are not reused");
    assert_eq!(again["automationEnabled"], false);

    srv.post("/v1/chatrooms/default", &w.api, Some(json!({"organizationID": 9}))).await.expect_problem(404);
    srv.delete("/v1/chatrooms/default/9", &w.api, None).await.expect_problem(404);
    srv.delete("/v1/chatrooms/default/2", &w.api, None).await.expect_problem(404);
}

#[tokio::test]
async fn a_custom_room_is_updated_field_by_field() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let id = w.room(&srv, "Board").await;
    let path = format!("/v1/chatrooms/{id}");
    let original = srv.room(id).await;

    let renamed = srv.patch(&path, &w.room_admin.token, Some(json!({"name": " Boardroom "}))).await;
    let renamed = renamed.expect(200).clone();
    let mut expected = stable(&original);
    expected["name"] = json!("Boardroom");
    assert_eq!(stable(&renamed), expected, "only the name changed, trimmed");

    let avatar = srv.patch(&path, &w.admin.token, Some(json!({"avatar": STANDARD.encode(png())}))).await;
    assert_eq!(stable(avatar.expect(200)), expected, "an avatar shows once it is on the homeserver");
    let avatar = srv.patch(&path, &w.owner.token, Some(json!({"avatar": png()}))).await;
    avatar.expect(200);
    let scheduled = srv.patch(&path, &w.api, Some(json!({"scheduledDeletion": 4_102_444_800_i64}))).await;
    assert_eq!(scheduled.expect(200)["scheduledDeletion"], "2100-01-01T00:00:00Z");
    let later = srv.patch(&path, &w.api, Some(json!({"scheduledDeletion": "2101-06-01T12:00:00Z"}))).await;
    assert_eq!(later.expect(200)["scheduledDeletion"], "2101-06-01T12:00:00Z");
    let kept = srv.patch(&path, &w.api, Some(json!({"scheduledDeletion": null}))).await;
    assert_eq!(kept.expect(200)["scheduledDeletion"], Value::Null);
    let both = srv.patch(&path, &w.api, Some(json!({"automationEnabled": false, "name": "Board"}))).await;
    let both = both.expect(200).clone();
    assert_eq!(stable(&both), stable(&original), "back where it started");
    assert_eq!(stable(&srv.room(id).await), stable(&both));

    // Automation on: the organization's owner and admin become room admins,
    // its other members join; listed users keep their roles.
    let on = srv.patch(&path, &w.room_admin.token, Some(json!({"automationEnabled": true}))).await;
    let on = on.expect(200).clone();
    assert_eq!(on["automationEnabled"], true);
    assert_eq!(on["name"], "Board");
    assert_eq!(ids(&on["admins"]), vec![11, 12, 15], "{on}");
    assert_eq!(ids(&on["moderators"]), vec![16], "{on}");
    assert_eq!(ids(&on["assignedUsers"]), vec![13, 17], "{on}");

    srv.patch(&path, &w.api, Some(json!({}))).await.expect_problem(400);
    srv.patch("/v1/chatrooms/999", &w.api, Some(json!({"automationEnabled": true}))).await.expect_problem(404);
    assert_eq!(stable(&srv.room(id).await), stable(&on));
}

/// GET of one room answers, byte for byte, what the write that last changed
/// the room answered (GET copies the JSON stored with the room; the write
/// encodes the room it just stored), and the room as GetRooms lists it.
#[tokio::test]
async fn get_room_answers_the_bytes_of_its_last_write() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let id = w.room(&srv, "Board").await;
    let path = format!("/v1/chatrooms/{id}");
    for change in
        [json!({"name": "Boardroom", "topic": "Q3 \"plans\" ü"}), json!({"scheduledDeletion": 4_102_444_800_i64})]
    {
        let written = srv.patch(&path, &w.api, Some(change)).await;
        written.expect(200);
        for token in [&w.api, &w.member.token] {
            let read = srv.get(&path, token).await;
            read.expect(200);
            assert_eq!(read.text, written.text, "GET {path} with {token:.3}…");
            assert_eq!(read.header("content-type"), "application/json");
        }
        let list = srv.get(&format!("/v1/chatrooms?organization_id={}", w.org), &w.member.token).await;
        let listed =
            list.expect(200)["entries"].as_array().expect("entries").iter().find(|r| room_id(r) == id).cloned();
        assert_eq!(listed.as_ref(), Some(written.expect(200)), "{}", list.text);
    }
}

/// A topic is set on create (custom, event and default rooms), changed and
/// cleared by PATCH, trimmed, and kept across a restart; a room without one
/// answers `""`.
#[tokio::test]
async fn a_room_topic_is_set_changed_and_cleared() {
    let mut srv = TestServer::start();
    let w = World::new(&srv).await;
    let plain = w.room_from(&srv, json!({"name": "No topic"})).await;
    assert_eq!(plain["topic"], "", "a room without a topic: {plain}");
    let custom = w.room_from(&srv, json!({"name": "Board", "topic": "  Quarterly numbers\nand plans  "})).await;
    assert_room_shape(&custom);
    assert_eq!(custom["topic"], "Quarterly numbers\nand plans", "trimmed, line breaks kept");
    let event = srv
        .post(
            "/v1/chatrooms/event",
            &w.owner.token,
            Some(json!({"name": "Gala", "organizationID": 1, "eventID": 9, "topic": "Dress code: none"})),
        )
        .await;
    assert_eq!(event.expect(201)["topic"], "Dress code: none");
    let default = srv
        .post("/v1/chatrooms/default", &w.api, Some(json!({"organizationID": 1, "topic": "Everyone, everything"})))
        .await;
    assert_eq!(default.expect(201)["topic"], "Everyone, everything");

    let id = room_id(&custom);
    let path = format!("/v1/chatrooms/{id}");
    let changed = srv.patch(&path, &w.owner.token, Some(json!({"topic": "Next quarter"}))).await;
    assert_eq!(changed.expect(200)["topic"], "Next quarter");
    assert_eq!(changed.body["name"], "Board", "a topic change leaves the name");
    let longest = "é".repeat(1000);
    let max = srv.patch(&path, &w.owner.token, Some(json!({"topic": longest}))).await;
    assert_eq!(max.expect(200)["topic"], longest.as_str(), "1,000 characters (not bytes) are allowed");
    let cleared = srv.patch(&path, &w.owner.token, Some(json!({"topic": null}))).await;
    assert_eq!(cleared.expect(200)["topic"], "", "null clears the topic");
    srv.patch(&path, &w.owner.token, Some(json!({"topic": "Back"}))).await.expect(200);
    let emptied = srv.patch(&path, &w.owner.token, Some(json!({"topic": ""}))).await;
    assert_eq!(emptied.expect(200)["topic"], "", "an empty topic clears it");
    srv.patch(&path, &w.owner.token, Some(json!({"topic": "Kept"}))).await.expect(200);

    srv.restart();
    assert_eq!(srv.room(id).await["topic"], "Kept");
    let listed = srv.rooms(1).await;
    let entry = listed["entries"].as_array().unwrap().iter().find(|r| room_id(r) == id).cloned().unwrap();
    assert_eq!(entry["topic"], "Kept", "GetRooms shows the topic too: {entry}");
    assert_eq!(srv.room(room_id(&plain)).await["topic"], "");
}

#[tokio::test]
async fn a_custom_room_is_deleted_and_its_id_not_reused() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let keep = w.room(&srv, "Keep").await;
    let gone = w.room(&srv, "Gone").await;
    srv.delete(&format!("/v1/chatrooms/{gone}"), &w.room_admin.token, None).await.expect(204);
    srv.get(&format!("/v1/chatrooms/{gone}"), &w.api).await.expect_problem(404);
    srv.delete(&format!("/v1/chatrooms/{gone}"), &w.api, None).await.expect_problem(404);
    srv.delete("/v1/chatrooms/999", &w.api, None).await.expect_problem(404);
    let list = srv.rooms(1).await;
    assert_eq!(list["total"], 1);
    assert_eq!(room_id(&list["entries"][0]), keep);
    let next = w.room(&srv, "Next").await;
    assert!(next > gone, "room ids are not reused ({next} after {gone})");
}

#[tokio::test]
async fn users_are_added_promoted_demoted_and_removed() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let id = w.room(&srv, "Board").await;
    let path = format!("/v1/chatrooms/{id}/users");
    let lists = |room: &Value| (ids(&room["admins"]), ids(&room["moderators"]), ids(&room["assignedUsers"]));

    let added = srv.post(&path, &w.room_admin.token, Some(json!({"assignedUsers": [31, 30]}))).await;
    assert_eq!(lists(added.expect(200)), (vec![15], vec![16], vec![17, 30, 31]));
    let promoted = srv.post(&path, &w.room_admin.token, Some(json!({"moderators": [30]}))).await;
    assert_eq!(lists(promoted.expect(200)), (vec![15], vec![16, 30], vec![17, 31]));
    let highest =
        srv.post(&path, &w.owner.token, Some(json!({"admins": [31], "moderators": [31], "assignedUsers": [31]}))).await;
    assert_eq!(lists(highest.expect(200)), (vec![15, 31], vec![16, 30], vec![17]));
    let demoted = srv.post(&path, &w.api, Some(json!({"assignedUsers": [15]}))).await;
    assert_eq!(lists(demoted.expect(200)), (vec![31], vec![16, 30], vec![15, 17]));
    let again = srv.post(&path, &w.api, Some(json!({"assignedUsers": [15]}))).await;
    assert_eq!(lists(again.expect(200)), (vec![31], vec![16, 30], vec![15, 17]), "adding twice changes nothing");

    let removed = srv.delete(&path, &w.admin.token, Some(json!({"assignedUsers": [15], "moderators": [30]}))).await;
    assert_eq!(lists(removed.expect(200)), (vec![31], vec![16], vec![17]));
    let removed = srv.delete(&path, &w.api, Some(json!({"admins": [31]}))).await;
    assert_eq!(lists(removed.expect(200)), (vec![], vec![16], vec![17]));
    assert_eq!(lists(&srv.room(id).await), (vec![], vec![16], vec![17]));

    srv.post("/v1/chatrooms/999/users", &w.api, Some(json!({"assignedUsers": [1]}))).await.expect_problem(404);
    srv.delete("/v1/chatrooms/999/users", &w.api, Some(json!({"assignedUsers": [1]}))).await.expect_problem(404);
}

#[tokio::test]
async fn a_member_claims_the_rooms_open_to_them() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let default = srv.post("/v1/chatrooms/default", &w.api, Some(json!({"organizationID": 1}))).await;
    let default = room_id(default.expect(201));
    let open = room_id(&w.room_from(&srv, json!({"name": "Open", "automationEnabled": true})).await);
    let closed = w.room(&srv, "Closed").await;

    let claimed = srv.post(&format!("/v1/chatrooms/{default}/claim"), &w.member.token, None).await;
    assert!(ids(&claimed.expect(200)["assignedUsers"]).contains(&13), "the claimer is listed: {}", claimed.text);
    let claimed = srv.post(&format!("/v1/chatrooms/{open}/claim"), &w.member.token, None).await;
    assert!(ids(&claimed.expect(200)["assignedUsers"]).contains(&13), "{}", claimed.text);
    assert!(ids(&srv.room(open).await["assignedUsers"]).contains(&13));

    let before = srv.room(closed).await;
    srv.post(&format!("/v1/chatrooms/{closed}/claim"), &w.member.token, None).await.expect_problem(403);
    let mine = srv.post(&format!("/v1/chatrooms/{closed}/claim"), &w.room_mod.token, None).await;
    let mine = mine.expect(200).clone();
    assert_eq!(ids(&mine["moderators"]), vec![16], "a listed user keeps their role");
    assert_eq!(ids(&mine["assignedUsers"]), vec![17]);
    assert_eq!(stable(&srv.room(closed).await), stable(&before));

    srv.post(&format!("/v1/chatrooms/{default}/claim"), &w.outsider.token, None).await.expect_problem(403);
    srv.post(&format!("/v1/chatrooms/{default}/claim"), &w.other_owner.token, None).await.expect_problem(403);
    assert!(!ids(&srv.room(default).await["assignedUsers"]).contains(&14));

    // The API token claims on behalf of a user, who must be named.
    srv.post(&format!("/v1/chatrooms/{default}/claim"), &w.api, None).await.expect_problem(400);
    let for_user = srv.post(&format!("/v1/chatrooms/{default}/claim?user_id=16"), &w.api, None).await;
    assert!(ids(&for_user.expect(200)["assignedUsers"]).contains(&16), "{}", for_user.text);
    srv.post(&format!("/v1/chatrooms/{default}/claim?user_id=0"), &w.api, None).await.expect_problem(422);
    srv.post("/v1/chatrooms/999/claim", &w.member.token, None).await.expect_problem(404);
    // Acting for a user outside the organization does not let them in.
    let outsider = srv.post(&format!("/v1/chatrooms/{default}/claim?user_id=14"), &w.api, None).await;
    outsider.expect_problem(403);
    assert!(!ids(&srv.room(default).await["assignedUsers"]).contains(&14));
}

#[tokio::test]
async fn an_automated_room_follows_the_organization() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let default =
        srv.post("/v1/chatrooms/default", &w.api, Some(json!({"organizationID": 1, "automationEnabled": true}))).await;
    let default = room_id(default.expect(201));
    let manual = w.room(&srv, "Manual").await;
    // Created with automation, a room holds the whole organization.
    let whole = w.room_from(&srv, json!({"name": "All hands", "automationEnabled": true, "moderators": [13]})).await;
    assert_eq!(ids(&whole["admins"]), vec![11, 12], "{whole}");
    assert_eq!(ids(&whole["moderators"]), vec![13], "{whole}");
    assert_eq!(ids(&whole["assignedUsers"]), vec![15, 16, 17], "{whole}");

    srv.put("/v1/organizations/1/members/40", &w.api, Some(json!({"role": "member"}))).await.expect(200);
    srv.put("/v1/organizations/1/members/41", &w.api, Some(json!({"role": "admin"}))).await.expect(200);
    let room = srv.room(default).await;
    assert!(ids(&room["assignedUsers"]).contains(&40), "a new member joins an automated room: {room}");
    assert!(ids(&room["admins"]).contains(&41), "an organization admin is a room admin: {room}");
    let room = srv.room(manual).await;
    assert!(!ids(&room["assignedUsers"]).contains(&40), "a room without automation keeps its list: {room}");

    srv.delete("/v1/organizations/1/members/40", &w.api, None).await.expect(204);
    let room = srv.room(default).await;
    assert!(!ids(&room["assignedUsers"]).contains(&40), "a removed member leaves: {room}");
}

#[tokio::test]
async fn unknown_rooms_and_organizations_are_404() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let api = &w.api;
    let body = json!({"name": "Nowhere", "organizationID": 9});
    srv.post("/v1/chatrooms", api, Some(body)).await.expect_problem(404);
    srv.get("/v1/chatrooms?organization_id=9", api).await.expect_problem(404);
    srv.get("/v1/chatrooms/999", api).await.expect_problem(404);
    srv.get("/v1/chatrooms/999", &w.owner.token).await.expect_problem(404);
    srv.delete("/v1/chatrooms/999", api, None).await.expect_problem(404);
    srv.post("/v1/chatrooms/999/claim?user_id=13", api, None).await.expect_problem(404);
    srv.get("/v1/organizations/9/members", api).await.expect_problem(404);
    // The Matrix-id form of a room path: no room has a Matrix id yet, so none is found.
    for path in ["/v1/chatrooms/%21nope%3Alocalhost", "/v1/chatrooms/!nope:localhost"] {
        srv.get(path, api).await.expect_problem(404);
        srv.get(path, &w.owner.token).await.expect_problem(404);
        srv.post(&format!("{path}/claim"), &w.member.token, None).await.expect_problem(404);
        srv.patch(path, api, Some(json!({"name": "X"}))).await.expect_problem(404);
    }
}

#[tokio::test]
async fn concurrent_creates_all_land() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let creates = (0..20).map(|n| {
        let body = json!({"name": format!("Room {n}"), "organizationID": 1});
        srv.post("/v1/chatrooms", &w.owner.token, Some(body))
    });
    let results = futures_util::future::join_all(creates).await;
    let mut made: Vec<i64> = results.iter().map(|r| room_id(r.expect(201))).collect();
    made.sort_unstable();
    made.dedup();
    assert_eq!(made.len(), 20, "every create got its own room id");
    let listed: Vec<i64> = srv.rooms(1).await["entries"].as_array().unwrap().iter().map(room_id).collect();
    assert_eq!(listed, made, "every acknowledged room is stored");
}

#[tokio::test]
async fn concurrent_default_rooms_give_exactly_one() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let creates = (0..10).map(|_| srv.post("/v1/chatrooms/default", &w.api, Some(json!({"organizationID": 1}))));
    let results = futures_util::future::join_all(creates).await;
    let winners = results.iter().filter(|r| r.status == 201).count();
    assert_eq!(winners, 1, "one default room per organization, even under a race");
    for refused in results.iter().filter(|r| r.status != 201) {
        refused.expect_problem(409);
    }
    let events = (0..10).map(|n| {
        let body = json!({"name": format!("Gala {n}"), "organizationID": 1, "eventID": 3});
        srv.post("/v1/chatrooms/event", &w.api, Some(body))
    });
    let results = futures_util::future::join_all(events).await;
    assert_eq!(results.iter().filter(|r| r.status == 201).count(), 1, "one room per event");
    assert_eq!(srv.rooms(1).await["total"], 2);
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Polls the room until it is gone; fails after `within`.
async fn wait_until_deleted(srv: &TestServer, room: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let resp = srv.get(&format!("/v1/chatrooms/{room}"), &srv.api_token).await;
        if resp.status == 404 {
            resp.expect_problem(404);
            return;
        }
        resp.expect(200);
        assert!(Instant::now() < deadline, "room {room} was not deleted within {within:?}: {}", resp.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The service deletes a room by itself at `scheduledDeletion` (seconds
/// resolution, so this waits about two seconds).
#[tokio::test]
async fn a_room_is_deleted_at_its_scheduled_time() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let now = unix_now();
    let soon = w.room_from(&srv, json!({"name": "Soon", "scheduledDeletion": now + 2})).await;
    let later = w.room_from(&srv, json!({"name": "Later", "scheduledDeletion": now + 30 * 86_400})).await;
    wait_until_deleted(&srv, room_id(&soon), Duration::from_secs(10)).await;
    srv.get(&format!("/v1/chatrooms/{}", room_id(&later)), &w.api).await.expect(200);
    assert_eq!(stable_list(&srv.rooms(1).await)["total"], 1);
}

/// A deletion time that passed while the service was down is carried out at start.
#[tokio::test]
async fn a_deletion_due_while_stopped_happens_at_start() {
    let mut srv = TestServer::start();
    let w = World::new(&srv).await;
    let due = unix_now() + 2;
    let soon = w.room_from(&srv, json!({"name": "Soon", "scheduledDeletion": due})).await;
    let default = srv.post("/v1/chatrooms/default", &w.api, Some(json!({"organizationID": 1}))).await;
    let default = room_id(default.expect(201));
    assert!(srv.stop(), "a clean stop");
    while unix_now() <= due {
        std::thread::sleep(Duration::from_millis(100));
    }
    srv.restart();
    wait_until_deleted(&srv, room_id(&soon), Duration::from_secs(10)).await;
    srv.room(default).await;
}

#[tokio::test]
async fn all_returns_more_than_one_page_can_hold() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let creates = (0..60).map(|n| {
        let body = json!({"name": format!("Room {n}"), "organizationID": 1});
        srv.post("/v1/chatrooms", &w.api, Some(body))
    });
    for created in futures_util::future::join_all(creates).await {
        created.expect(201);
    }
    let all = srv.rooms(1).await;
    assert_eq!(all["total"], 60);
    let entries: Vec<i64> = all["entries"].as_array().unwrap().iter().map(room_id).collect();
    assert_eq!(entries.len(), 60, "all=true is not capped at 50");
    assert!(entries.windows(2).all(|p| p[0] < p[1]), "ordered by roomID: {entries:?}");
    let page = srv.get("/v1/chatrooms?organization_id=1&limit=50", &w.api).await;
    assert_eq!(page.expect(200)["entries"].as_array().unwrap().len(), 50);
    let rest = srv.get("/v1/chatrooms?organization_id=1&limit=50&offset=50", &w.api).await;
    let rest: Vec<i64> = rest.expect(200)["entries"].as_array().unwrap().iter().map(room_id).collect();
    assert_eq!(rest, entries[50..]);
}
