//! `messenger-chat check` and `--repair` on a database whose indexes were
//! damaged while the service was stopped.

use messenger_chat::model::Room;
use messenger_chat::store::{codec, org_json, tables};
use redb::ReadableTable;
use serde_json::json;

use crate::common::{TestServer, World, room_id};
use crate::support::{DB_FILE, Data, open_raw};

/// Index entries deleted, room counts and an id counter wrong: check names
/// each and exits 1, repair rebuilds them in one go, check is clean again,
/// and the service lists every room again and hands out a fresh id.
#[tokio::test]
async fn check_finds_deleted_index_entries_and_repair_restores_them() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let mut made = Vec::new();
    for n in 0..5 {
        let room = w.room_from(&srv, json!({"name": format!("Room {n}"), "assignedUsers": [w.member.id]})).await;
        made.push(room_id(&room));
    }
    let mut srv = srv;
    assert!(srv.stop());
    let data = Data::with_file(&srv.data_dir().join(DB_FILE));
    assert!(data.cli(&["check"]).ok, "a database the service wrote is clean:\n{}", data.cli(&["check"]).text());

    let (org, victim) = (w.org, u64::try_from(made[2]).unwrap());
    let member = w.member.id;
    {
        let raw = open_raw(&data.db());
        let t = raw.begin_write().unwrap();
        assert!(t.open_table(tables::ORGIDROOMID).unwrap().remove((org, victim)).unwrap().is_some());
        assert!(t.open_table(tables::USERIDROOMID).unwrap().remove((member, victim)).unwrap().is_some());
        assert!(t.open_table(tables::USERIDORGID_ROLE).unwrap().remove((member, org)).unwrap().is_some());
        t.open_table(tables::ORGID_ROOMCOUNT).unwrap().insert(org, 99).unwrap();
        // The count of the first 1,024 room ids: a deep page would land elsewhere.
        t.open_table(tables::ORGIDRANGE_ROOMCOUNT).unwrap().insert((org, 1, 0), 42).unwrap();
        // The count of the first 1,048,576 room ids gone: the offset would find no range.
        assert!(t.open_table(tables::ORGIDRANGE_ROOMCOUNT).unwrap().remove((org, 2, 0)).unwrap().is_some());
        t.open_table(tables::NAME_COUNTER).unwrap().insert("room", 1).unwrap();
        t.commit().unwrap();
    }

    let found = data.cli(&["check"]);
    found.refused_saying(&[
        &format!("orgidroomid [{org},{victim}]: missing for room {victim}"),
        &format!("useridroomid [{member},{victim}]"),
        &format!("useridorgid_role [{member},{org}]"),
        &format!("orgid_roomcount [{org}]: says 99 rooms"),
        &format!("orgidrange_roomcount [{org},1,0]: says 42 rooms, the range holds 5"),
        &format!("orgidrange_roomcount [{org},2,0]: missing; the range holds 5 rooms"),
        "name_counter [room]",
        "7 problems: 7 that `messenger-chat check --repair` rebuilds",
        &data.db().display().to_string(),
    ]);

    let repaired = data.cli(&["check", "--repair"]);
    assert!(repaired.ok, "repair succeeds:\n{}", repaired.text());
    let after = repaired.stdout.split("after repair").nth(1).unwrap_or_default();
    assert!(after.contains("no problems found"), "the check after the repair is clean:\n{}", repaired.text());
    let again = data.cli(&["check"]);
    assert!(again.ok && again.stdout.contains("no problems found"), "{}", again.text());
    {
        let raw = open_raw(&data.db());
        let r = redb::ReadableDatabase::begin_read(&raw).unwrap();
        assert!(r.open_table(tables::ORGIDROOMID).unwrap().get((org, victim)).unwrap().is_some(), "the entry is back");
    }

    // The service on the repaired file: every room listed, paged and counted.
    let srv = TestServer::start_on(&data.db(), &w.api);
    let listed = srv.rooms(org).await;
    assert_eq!(listed["total"], 5);
    let ids: Vec<i64> = listed["entries"].as_array().unwrap().iter().map(room_id).collect();
    assert_eq!(ids, made);
    let deep = srv.get(&format!("/v1/chatrooms?organization_id={org}&limit=2&offset=2"), &w.api).await;
    let page: Vec<i64> = deep.expect(200)["entries"].as_array().unwrap().iter().map(room_id).collect();
    assert_eq!(page, made[2..4], "the deep page finds its place by the repaired counts");
    let next = w.room_from(&srv, json!({"name": "After repair"})).await;
    assert!(room_id(&next) > made[4], "the repaired counter hands out a fresh id: {next}");
}

/// A record that cannot be read: check names its table and key and says to
/// restore it; repair refuses and changes nothing; the running service
/// answers 500 for what needs that record (a change to the room), serves
/// the others, and never crashes. Reads of the room answer from the JSON
/// kept beside it at its last write (GetRooms and GET one room alike).
#[tokio::test]
async fn an_unreadable_record_is_reported_and_not_rebuilt_around() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let keep = room_id(&w.room_from(&srv, json!({"name": "Fine"})).await);
    let broken = room_id(&w.room_from(&srv, json!({"name": "Garbled"})).await);
    let mut srv = srv;
    assert!(srv.stop());
    let data = Data::with_file(&srv.data_dir().join(DB_FILE));
    {
        let raw = open_raw(&data.db());
        let t = raw.begin_write().unwrap();
        let garbage: &[u8] = &[2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        t.open_table(tables::ROOMID_ROOM).unwrap().insert(u64::try_from(broken).unwrap(), garbage).unwrap();
        t.commit().unwrap();
    }
    let before = crate::support::contents(&data.db());
    let file = data.db().display().to_string();
    data.cli(&["check"]).refused_saying(&[&format!("roomid_room [{broken}]"), "restore from a backup", &file]);
    data.cli(&["check", "--repair"]).refused_saying(&["cannot be read", "nothing was changed", &file]);
    assert_eq!(crate::support::contents(&data.db()), before, "a refused repair changes nothing");

    let srv = TestServer::start_on(&data.db(), &w.api);
    let patch = json!({"name": "Renamed"});
    srv.patch(&format!("/v1/chatrooms/{broken}"), &w.api, Some(patch)).await.expect_problem(500);
    srv.get(&format!("/v1/chatrooms/{keep}"), &w.api).await.expect(200);
    let listed = srv.rooms(w.org).await;
    assert_eq!(&srv.room(broken).await, &listed["entries"][1], "read as GetRooms lists it");
    assert_eq!(srv.room(broken).await["name"], "Garbled");
    let log = srv.stderr();
    assert!(log.contains(&format!("roomid_room (key {broken})")) && log.contains("messenger-chat check"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// The index of automated rooms and the origin of roles: an automated room
/// missing from the index (a demotion would skip it), a room without
/// automation in it, and a room marking a user it does not list as given
/// their role by automation are each named by check; repair mends all three,
/// and a demotion then reaches the automated room again.
#[tokio::test]
async fn check_finds_the_automated_rooms_index_and_stray_role_origins() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let automated = room_id(&w.room_from(&srv, json!({"name": "All hands", "automationEnabled": true})).await);
    let manual = room_id(&w.room_from(&srv, json!({"name": "Manual"})).await);
    let mut srv = srv;
    assert!(srv.stop());
    let data = Data::with_file(&srv.data_dir().join(DB_FILE));
    let (org, a, m) = (w.org, u64::try_from(automated).unwrap(), u64::try_from(manual).unwrap());
    {
        let raw = open_raw(&data.db());
        let t = raw.begin_write().unwrap();
        {
            let mut index = t.open_table(tables::ORGID_AUTOMATEDROOMID).unwrap();
            assert!(index.remove((org, a)).unwrap().is_some(), "the automated room was indexed");
            index.insert((org, m), ()).unwrap();
            let mut rooms = t.open_table(tables::ROOMID_ROOM).unwrap();
            let mut room: Room = codec::decode(rooms.get(a).unwrap().unwrap().value()).unwrap();
            room.automation_given.push(99);
            rooms.insert(a, codec::encode(&room).as_slice()).unwrap();
        }
        t.commit().unwrap();
    }

    data.cli(&["check"]).refused_saying(&[
        &format!("orgid_automatedroomid [{org},{a}]: missing for room {a}"),
        &format!("orgid_automatedroomid [{org},{m}]: names no room of this organization with automation on"),
        &format!("roomid_room [{a}]: automation_given"),
        "3 problems: 3 that `messenger-chat check --repair` rebuilds",
    ]);
    let repaired = data.cli(&["check", "--repair"]);
    assert!(repaired.ok, "repair succeeds:\n{}", repaired.text());
    let again = data.cli(&["check"]);
    assert!(again.ok && again.stdout.contains("no problems found"), "{}", again.text());

    let srv = TestServer::start_on(&data.db(), &w.api);
    let path = format!("/v1/organizations/{org}/members/{}", w.admin.id);
    srv.put(&path, &w.api, Some(json!({"role": "member"}))).await.expect(200);
    let room = srv.room(automated).await;
    assert!(crate::common::ids(&room["assignedUsers"]).contains(&w.admin.id), "the demotion reached it: {room}");
    assert!(!crate::common::ids(&room["admins"]).contains(&w.admin.id), "{room}");
}

/// The room JSON kept by room id for GET one room: an entry deleted, one
/// naming another organization with stale JSON, and one for no room are
/// each named by check; repair rebuilds them, and GET answers each room as
/// GetRooms lists it.
#[tokio::test]
async fn check_finds_the_room_json_by_id_and_repair_rebuilds_it() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let a = room_id(&w.room_from(&srv, json!({"name": "Alpha"})).await);
    let b = room_id(&w.room_from(&srv, json!({"name": "Beta"})).await);
    let mut srv = srv;
    assert!(srv.stop());
    let data = Data::with_file(&srv.data_dir().join(DB_FILE));
    let (org, a, b) = (w.org, u64::try_from(a).unwrap(), u64::try_from(b).unwrap());
    let stray = 999_999u64;
    {
        let raw = open_raw(&data.db());
        let t = raw.begin_write().unwrap();
        {
            let mut by_id = t.open_table(tables::ROOMID_ORGIDJSON).unwrap();
            assert!(by_id.remove(a).unwrap().is_some(), "room {a} was kept by id");
            by_id.insert(b, org_json(org + 1000, br#"{"roomID":0}"#).as_slice()).unwrap();
            by_id.insert(stray, org_json(org, br#"{"roomID":999999}"#).as_slice()).unwrap();
        }
        t.commit().unwrap();
    }

    data.cli(&["check"]).refused_saying(&[
        &format!("roomid_orgidjson [{a}]: missing for room {a}"),
        &format!("roomid_orgidjson [{b}]: differs from room {b}"),
        &format!("roomid_orgidjson [{b}]: names no room {b} of organization {}", org + 1000),
        &format!("roomid_orgidjson [{stray}]: names no room {stray} of organization {org}"),
        "4 problems: 4 that `messenger-chat check --repair` rebuilds",
    ]);
    let repaired = data.cli(&["check", "--repair"]);
    assert!(repaired.ok, "repair succeeds:\n{}", repaired.text());
    let again = data.cli(&["check"]);
    assert!(again.ok && again.stdout.contains("no problems found"), "{}", again.text());

    let srv = TestServer::start_on(&data.db(), &w.api);
    let listed = srv.rooms(org).await;
    let entries = listed["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for entry in entries {
        assert_eq!(&srv.room(room_id(entry)).await, entry, "GET answers the room as GetRooms lists it");
    }
    srv.get(&format!("/v1/chatrooms/{stray}"), &w.api).await.expect(404);
}

/// The event log's index and counter: an entry deleted and the counter set
/// back are found by check, rebuilt by repair, and the service then serves
/// the organization's whole log and goes on with a fresh id.
#[tokio::test]
async fn check_finds_the_event_log_index_and_repair_rebuilds_it() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let log = srv.get("/v1/events?organization_id=1&limit=1000", &w.api).await.expect(200).clone();
    let last = srv.get("/v1/events?limit=1000", &w.api).await.expect(200)["next"].as_u64().unwrap();
    let mut srv = srv;
    assert!(srv.stop());
    let data = Data::with_file(&srv.data_dir().join(DB_FILE));
    let victim = log["events"][0]["id"].as_u64().unwrap();
    {
        let raw = open_raw(&data.db());
        let t = raw.begin_write().unwrap();
        assert!(t.open_table(tables::ORGIDEVENTID).unwrap().remove((1, victim)).unwrap().is_some());
        t.open_table(tables::NAME_COUNTER).unwrap().insert("event", 1).unwrap();
        t.commit().unwrap();
    }
    data.cli(&["check"]).refused_saying(&[
        &format!("orgideventid [1,{victim}]: missing for event {victim} (organization 1)"),
        "name_counter [event]",
        "2 problems: 2 that `messenger-chat check --repair` rebuilds",
    ]);
    let repaired = data.cli(&["check", "--repair"]);
    assert!(repaired.ok, "repair succeeds:\n{}", repaired.text());
    let again = data.cli(&["check"]);
    assert!(again.ok && again.stdout.contains("no problems found"), "{}", again.text());

    let srv = TestServer::start_on(&data.db(), &w.api);
    let served = srv.get("/v1/events?organization_id=1&limit=1000", &w.api).await;
    assert_eq!(served.expect(200), &log, "the organization's log, whole again");
    srv.put("/v1/organizations/1", &w.api, Some(json!({"name": "Acme 2"}))).await.expect(200);
    let next = srv.get(&format!("/v1/events?after={last}"), &w.api).await;
    assert_eq!(next.expect(200)["events"][0]["id"], json!(last + 1), "the repaired counter hands out a fresh id");
}

/// The index of `readOnlyAt` times: an entry gone and a stray one are named
/// by check, and repair rebuilds the index from the rooms.
#[tokio::test]
async fn check_finds_the_read_only_schedule_index_and_repair_rebuilds_it() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let at = 4_102_444_800_i64;
    let body = json!({"name": "Launch", "organizationID": w.org, "eventID": 42, "readOnlyAt": at});
    let room = room_id(srv.post("/v1/chatrooms/event", &w.api, Some(body)).await.expect(201));
    let other = room_id(&w.room_from(&srv, json!({"name": "Chat"})).await);
    let mut srv = srv;
    assert!(srv.stop());
    let data = Data::with_file(&srv.data_dir().join(DB_FILE));
    assert!(data.cli(&["check"]).ok, "a database the service wrote is clean:\n{}", data.cli(&["check"]).text());
    let (room, other) = (u64::try_from(room).unwrap(), u64::try_from(other).unwrap());
    {
        let raw = open_raw(&data.db());
        let t = raw.begin_write().unwrap();
        let mut index = t.open_table(tables::READONLYTIME_ROOMID).unwrap();
        assert!(index.remove((at, room)).unwrap().is_some(), "the service indexed the time");
        index.insert((at, other), ()).unwrap();
        drop(index);
        t.commit().unwrap();
    }
    data.cli(&["check"]).refused_saying(&[
        &format!("readonlytime_roomid [{at},{room}]: missing for room {room}"),
        &format!("readonlytime_roomid [{at},{other}]: room {other} does not become read-only then"),
        "2 problems",
    ]);
    let repaired = data.cli(&["check", "--repair"]);
    assert!(repaired.ok, "repair succeeds:\n{}", repaired.text());
    let raw = open_raw(&data.db());
    let r = redb::ReadableDatabase::begin_read(&raw).unwrap();
    let index = r.open_table(tables::READONLYTIME_ROOMID).unwrap();
    let entries: Vec<(i64, u64)> = index.iter().unwrap().map(|e| e.unwrap().0.value()).collect();
    assert_eq!(entries, vec![(at, room)], "the index as the rooms say");
}
