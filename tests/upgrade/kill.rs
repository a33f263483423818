//! kill -9 during a migration: the real binary migrating a schema-1 file
//! large enough that the migration takes a while, killed at several points
//! of it; afterwards the file opens and holds either everything as the old
//! release wrote it or everything migrated, never a mixture.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use messenger_chat::model::{ROOM_VIEW_VERSION, Room};
use messenger_chat::store::migrate::v1;
use messenger_chat::store::{SCHEMA_VERSION, codec, tables};
use redb::{ReadableDatabase, ReadableTable};

use crate::common::TestServer;
use crate::support::{Data, fixtures, open_raw};

/// Rooms added to the schema-1 fixture: enough that migrating them takes
/// seconds in a test build, so the kills land inside the transaction.
const BULK: u64 = 50_000;
/// Rooms per write transaction while building the file.
const BATCH: u64 = 20_000;

/// Adds `BULK` rooms to organization 1 of a schema-1 file, written as the
/// first release wrote them (record version 1, its JSON, its indexes).
fn add_old_rooms(db: &Path) -> u64 {
    let raw = open_raw(db);
    let mut next = {
        let r = raw.begin_read().unwrap();
        r.open_table(tables::NAME_COUNTER).unwrap().get("room").unwrap().map_or(0, |v| v.value()) + 1
    };
    let first = next;
    while next < first + BULK {
        let t = raw.begin_write().unwrap();
        {
            let mut rooms = t.open_table(tables::ROOMID_ROOM).unwrap();
            let mut keys = t.open_table(tables::ORGIDROOMID).unwrap();
            let mut json = t.open_table(tables::ORGIDROOMID_JSON).unwrap();
            let mut users = t.open_table(tables::USERIDROOMID).unwrap();
            let mut matrix = t.open_table(tables::MATRIXROOMID_ROOMID).unwrap();
            let end = (next + BATCH).min(first + BULK);
            for id in next..end {
                let old = v1::Room {
                    id,
                    kind: v1::RoomKind::Custom,
                    org_id: 1,
                    event_id: 0,
                    name: format!("Bulk room {id}"),
                    matrix_room_id: format!("!bulk{id}:localhost"),
                    avatar_url: String::new(),
                    avatar_sha256: None,
                    admins: vec![1],
                    moderators: vec![],
                    assigned: vec![3],
                    claimed: vec![],
                    automation: false,
                    scheduled_deletion: None,
                    generation: 1,
                    synced_generation: 1,
                    sync_error: None,
                    created_at: 1_767_225_600,
                    updated_at: 1_767_225_600,
                };
                let view = v1::room_json(&Room::from(old.clone()));
                rooms.insert(id, codec::encode_as(1, &old).as_slice()).unwrap();
                keys.insert((1, id), ()).unwrap();
                json.insert((1, id), view.as_slice()).unwrap();
                users.insert((1, id), ()).unwrap();
                users.insert((3, id), ()).unwrap();
                matrix.insert(old.matrix_room_id.as_str(), id).unwrap();
            }
            let mut counts = t.open_table(tables::ORGID_ROOMCOUNT).unwrap();
            let n = counts.get(1).unwrap().map_or(0, |v| v.value());
            counts.insert(1, n + (end - next)).unwrap();
            t.open_table(tables::NAME_COUNTER).unwrap().insert("room", end - 1).unwrap();
            next = end;
        }
        t.commit().unwrap();
    }
    first
}

/// The state of a file after a kill.
#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Everything as the first release wrote it.
    Old,
    /// Everything migrated.
    New,
}

/// Opens the file (redb repairs what a kill leaves) and tells which whole
/// state it holds; panics on a mixture.
fn state(db: &Path, rooms: u64) -> State {
    let raw = open_raw(db);
    let r = raw.begin_read().unwrap();
    let meta = r.open_table(tables::NAME_META).unwrap();
    let number = |key: &str| meta.get(key).unwrap().map(|v| codec::decode::<u64>(v.value()).unwrap());
    let (schema, view) = (number("schema_version"), number("room_view_version"));
    let (mut versions, mut topics, mut n) = ([0u64; 3], [0u64; 2], 0);
    for entry in r.open_table(tables::ROOMID_ROOM).unwrap().iter().unwrap() {
        let (_, v) = entry.unwrap();
        versions[usize::from(v.value()[0].min(2))] += 1;
        n += 1;
    }
    for entry in r.open_table(tables::ORGIDROOMID_JSON).unwrap().iter().unwrap() {
        let (_, v) = entry.unwrap();
        let json: serde_json::Value = serde_json::from_slice(v.value()).unwrap();
        topics[usize::from(json.get("topic").is_some())] += 1;
    }
    // The JSON by room id is new in room JSON version 3: absent from the old file.
    let by_id = r.open_table(tables::ROOMID_ORGIDJSON).map_or(0, |t| t.iter().unwrap().count() as u64);
    assert_eq!(n, rooms, "no room lost or added");
    let old = schema == Some(1) && view.is_none() && versions == [0, n, 0] && topics == [n, 0] && by_id == 0;
    let new = schema == Some(SCHEMA_VERSION)
        && view == Some(ROOM_VIEW_VERSION)
        && versions == [0, 0, n]
        && topics == [0, n]
        && by_id == n;
    assert!(
        old || new,
        "a mixture: schema {schema:?}, room JSON version {view:?}, room records by version {versions:?}, \
         JSON entries without/with topic {topics:?}, JSON entries by room id {by_id}"
    );
    if old { State::Old } else { State::New }
}

/// Starts `serve` on `data` and SIGKILLs it at the `nth` line of its output
/// that contains `at`; returns the output up to then.
fn kill_when(data: &Data, at: &str, nth: usize) -> String {
    let mut cmd = data.command();
    cmd.arg("serve").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn messenger-chat serve");
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen = String::new();
    let mut count = 0;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                count += usize::from(line.contains(at));
                if count == nth {
                    child.kill().expect("SIGKILL");
                    child.wait().expect("reap");
                    return seen;
                }
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no line with {at:?} ({e:?}); the output was:\n{seen}");
            }
        }
    }
}

#[tokio::test]
async fn kill_9_during_a_migration_leaves_the_old_file_or_the_new_one() {
    let f = &fixtures()[0];
    assert_eq!(f.schema(), 1);
    let data = f.copy();
    let first = add_old_rooms(&data.db());
    let rooms = BULK + f.manifest["rooms"].as_object().unwrap().len() as u64;
    assert_eq!(state(&data.db(), rooms), State::Old);

    // Inside the one transaction: at its start, early in the rewrite of the
    // records, after the last step, half way through the rebuild of the
    // room JSON, as it ends (the commit is then a moment away).
    let mut states = Vec::new();
    for (at, nth) in [
        ("migrating the database", 1),
        ("migration progress", 2),
        ("migration step done", 1),
        ("migration progress", 15),
        ("rebuilt the room JSON", 1),
    ] {
        let seen = kill_when(&data, at, nth);
        let found = state(&data.db(), rooms);
        eprintln!("killed at {at:?} #{nth}: {found:?}");
        if found == State::New {
            assert!(seen.contains("rebuilt the room JSON"), "migrated without finishing its work:\n{seen}");
        }
        states.push(found);
    }
    // After the commit: while the file is compacted, and once the service
    // listens (which it does only on a migrated file).
    if states.last() == Some(&State::Old) {
        kill_when(&data, "compacting the migrated database", 1);
        assert_eq!(state(&data.db(), rooms), State::New, "a kill while compacting keeps the committed migration");
    }
    kill_when(&data, "listening on", 1);
    assert_eq!(state(&data.db(), rooms), State::New, "a migration that committed stays");
    // The first kills come seconds before the commit; had none of them left
    // the old file, this test would not have tested anything.
    assert_eq!(states[0], State::Old, "killed as the migration began: {states:?}");

    let srv = TestServer::start_on(&data.db(), f.api_token());
    let room = srv.room(i64::try_from(first + BULK - 1).unwrap()).await;
    assert_eq!(room["name"], format!("Bulk room {}", first + BULK - 1));
    assert_eq!(room["topic"], "");
    let org1 =
        BULK + f.manifest["rooms"].as_object().unwrap().values().filter(|r| r["organizationID"] == 1).count() as u64;
    let last = srv.get(&format!("/v1/chatrooms?organization_id=1&limit=1&offset={}", org1 - 1), &srv.api_token).await;
    let last = last.expect(200);
    assert_eq!(last["total"], org1, "organization 1's rooms: the fixture's and the bulk");
    assert_eq!(last["entries"][0]["roomID"], first + BULK - 1, "the last page holds the last room");
    assert_eq!(last["entries"][0]["topic"], "");
}
