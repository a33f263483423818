//! Room roles in a database of an earlier release, served by today's binary
//! as docs/operations.md (Upgrade) says: the roles automation gave follow the
//! organization from the first start on, the explicit ones stay, and the
//! default room holds no scheduled deletion.

use messenger_chat::model::Room;
use messenger_chat::store::migrate::v1;
use messenger_chat::store::{codec, tables};
use redb::{ReadableDatabase, ReadableTable};
use serde_json::{Value, json};

use crate::common::{TestServer, ids};
use crate::support::{DB_FILE, fixtures, open_raw};

/// Ben, an admin of organization 1 in every fixture.
const BEN: i64 = 2;

fn role_in(room: &Value, user: i64) -> &'static str {
    for (list, role) in [("admins", "admin"), ("moderators", "moderator"), ("assignedUsers", "assigned")] {
        if ids(&room[list]).contains(&user) {
            return role;
        }
    }
    "none"
}

/// Ben demoted to member in each fixture: in every room where the fixture
/// (or, before the origin of roles was kept, the inference docs/operations.md
/// describes) says automation gave him admin, he drops to assignedUsers;
/// every other role of his stays. Promoted again, he is admin there again.
#[tokio::test]
async fn a_demoted_admin_drops_where_automation_made_him_admin() {
    for f in fixtures() {
        let name = &f.name;
        let rooms: Vec<Value> = f.today_export().into_iter().filter(|r| r["record"] == "room").collect();
        let srv = TestServer::start_on(&f.db, f.api_token());
        let api = srv.api_token.clone();
        let mut before = Vec::new();
        for room in &rooms {
            before.push(role_in(&srv.room(room["id"].as_i64().unwrap()).await, BEN));
        }
        let path = format!("/v1/organizations/1/members/{BEN}");
        srv.put(&path, &api, Some(json!({"role": "member"}))).await.expect(200);
        let mut dropped = Vec::new();
        for (room, was) in rooms.iter().zip(&before) {
            let id = room["id"].as_i64().unwrap();
            let given = ids(&room["automation_given"]).contains(&BEN);
            let now = role_in(&srv.room(id).await, BEN);
            if given && room["automation"] == true && *was == "admin" {
                assert_eq!(now, "assigned", "{name}: room {id}, where automation made Ben admin");
                dropped.push(id);
            } else {
                assert_eq!(now, *was, "{name}: room {id}, where Ben's role is explicit");
            }
        }
        // Schema 1 kept no origin: Ben's admin roles in its automated rooms 1 and
        // 3 count as automation's. Later fixtures name him admin of room 3 explicitly.
        let expected: &[i64] = if f.schema() == 1 { &[1, 3] } else { &[1] };
        assert_eq!(dropped, expected, "{name}: the rooms where Ben dropped");

        srv.put(&path, &api, Some(json!({"role": "admin"}))).await.expect(200);
        for room in &rooms {
            let id = room["id"].as_i64().unwrap();
            let now = role_in(&srv.room(id).await, BEN);
            assert!(now == "admin" || !dropped.contains(&id), "{name}: room {id}: Ben is {now} again");
        }

        // The default room takes no deletion, not even from the API token.
        let detail = srv.patch("/v1/chatrooms/1", &api, Some(json!({"scheduledDeletion": 4_102_444_800_i64}))).await;
        assert!(detail.expect_problem(409).contains("DELETE /v1/chatrooms/default/1"), "{name}: {}", detail.text);
    }
}

/// A default room with a scheduled deletion (which the first release let
/// its room admins set) loses it in the migration: the room stays, the
/// deletion is gone from the room and from the index of due deletions, the
/// start says so, and `check` finds nothing.
#[tokio::test]
async fn the_migration_drops_a_default_rooms_scheduled_deletion() {
    let f = &fixtures()[0];
    let data = f.copy();
    let at: i64 = 4_102_444_800;
    {
        let raw = open_raw(&data.db());
        let t = raw.begin_write().unwrap();
        {
            let mut rooms = t.open_table(tables::ROOMID_ROOM).unwrap();
            let mut old: v1::Room = codec::decode_as(1, rooms.get(1).unwrap().unwrap().value()).unwrap();
            assert_eq!(old.kind, v1::RoomKind::Default, "room 1 of the schema-1 fixture is a default room");
            old.scheduled_deletion = Some(at);
            rooms.insert(1, codec::encode_as(1, &old).as_slice()).unwrap();
            let json = v1::room_json(&Room::from(old.clone()));
            t.open_table(tables::ORGIDROOMID_JSON).unwrap().insert((old.org_id, 1), json.as_slice()).unwrap();
            t.open_table(tables::DELETIONTIME_ROOMID).unwrap().insert((at, 1), ()).unwrap();
        }
        t.commit().unwrap();
    }

    let mut srv = TestServer::start_on(&data.db(), f.api_token());
    let room = srv.room(1).await;
    assert_eq!((&room["type"], &room["scheduledDeletion"]), (&json!("default"), &Value::Null), "{room}");
    let listed = srv.rooms(1).await;
    assert_eq!(listed["entries"][0]["scheduledDeletion"], Value::Null, "GetRooms too: {listed}");
    let log = srv.stderr();
    assert!(log.contains("dropped the scheduled deletion of a default room") && log.contains("2100-01-01"), "{log}");
    assert!(srv.stop());

    let db = srv.data_dir().join(DB_FILE);
    {
        let raw = open_raw(&db);
        let r = raw.begin_read().unwrap();
        let due = r.open_table(tables::DELETIONTIME_ROOMID).unwrap();
        assert!(due.get((at, 1)).unwrap().is_none(), "the due-deletion index no longer names room 1");
    }
    let check = crate::support::Data::with_file(&db).cli(&["check"]);
    assert!(check.ok && check.stdout.contains("no problems found"), "{}", check.text());
}
