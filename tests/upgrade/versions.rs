//! Schema versions: an older file migrates once and whole, a newer one is
//! refused and left as it is, and the room JSON kept for GetRooms follows
//! its own version.

use messenger_chat::model::ROOM_VIEW_VERSION;
use messenger_chat::store::{SCHEMA_VERSION, codec, tables};
use serde_json::{Value, json};

use crate::common::TestServer;
use crate::support::{Data, contents, fixtures, meta, open_raw, room_record_versions, set_meta};

/// Each fixture of an older schema: the first start migrates it (and says
/// so), every room record is rewritten to today's version, and the next
/// start finds nothing to migrate.
#[tokio::test]
async fn an_older_database_is_migrated_once_and_whole() {
    for f in fixtures().into_iter().filter(|f| f.schema() < SCHEMA_VERSION) {
        let name = &f.name;
        // Read from a copy: opening a file with redb rewrites its header, and the fixture is kept as written.
        let before = room_record_versions(&f.copy().db());
        assert!(before.iter().all(|v| *v < 2), "{name}: the fixture holds old room records: {before:?}");
        let mut srv = TestServer::start_on(&f.db, f.api_token());
        let log = srv.stderr();
        let from = format!("from={}", f.schema());
        assert!(
            log.contains("migrating the database") && log.contains(&from),
            "{name}: the start says it migrates:\n{log}"
        );
        assert!(log.contains("migrated the database"), "{name}: and that it finished:\n{log}");
        assert!(log.contains("rebuilt the room JSON kept for GetRooms"), "{name}:\n{log}");
        srv.restart();
        let second = srv.stderr();
        assert_eq!(second.matches("migrating the database").count(), 1, "{name}: migrated once:\n{second}");
        assert!(srv.stop());
        let db = srv.data_dir().join(crate::support::DB_FILE);
        assert_eq!(meta(&db, "schema_version"), Some(SCHEMA_VERSION), "{name}");
        assert_eq!(meta(&db, "room_view_version"), Some(ROOM_VIEW_VERSION), "{name}");
        let after = room_record_versions(&db);
        assert_eq!(after.len(), before.len(), "{name}: no room lost or added");
        assert!(after.iter().all(|v| *v == 2), "{name}: every room record at version 2: {after:?}");
    }
}

/// A file from a newer release: serve, check and export refuse it, name
/// the file and both schema versions, and leave every record as it was;
/// serve and check do not write to the file at all.
#[test]
fn a_newer_database_is_refused_and_left_as_it_is() {
    let f = &fixtures()[0];
    let data = f.copy();
    assert!(data.cli(&["check"]).ok, "the fixture checks clean");
    let newer = SCHEMA_VERSION + 1;
    set_meta(&data.db(), "schema_version", newer);
    let before = contents(&data.db());
    let bytes = std::fs::read(data.db()).unwrap();
    let file = data.db().display().to_string();
    let found = format!("schema version {newer}");
    let known = format!("up to {SCHEMA_VERSION}");
    data.serve_refused().refused_saying(&[&file, &found, &known, "newer release"]);
    data.cli(&["check"]).refused_saying(&[&file, &found, &known]);
    assert!(std::fs::read(data.db()).unwrap() == bytes, "a refused start and check leave every byte as it was");
    data.cli(&["export"]).refused_saying(&[&file, &found]);
    assert_eq!(contents(&data.db()), before, "a refused file holds what it held");
    assert_eq!(meta(&data.db(), "schema_version"), Some(newer));
}

/// The kept room JSON is trusted while its version is today's (start-up
/// does not re-encode a million rooms), and rebuilt from the records at the
/// first start after its version changed.
#[tokio::test]
async fn the_room_json_is_rebuilt_when_its_version_changes() {
    let srv = TestServer::start();
    let w = crate::common::World::new(&srv).await;
    let a = w.room_from(&srv, json!({"name": "Alpha", "topic": "First"})).await;
    let b = w.room_from(&srv, json!({"name": "Beta"})).await;
    let mut srv = srv;
    assert!(srv.stop());
    let db = srv.data_dir().join(crate::support::DB_FILE);
    let stale = json!({"roomID": a["roomID"], "name": "Alpha as an older view showed it"});
    let write_stale = |view: u64| {
        let raw = open_raw(&db);
        let t = raw.begin_write().unwrap();
        let key = (w.org, a["roomID"].as_u64().unwrap());
        t.open_table(tables::ORGIDROOMID_JSON)
            .unwrap()
            .insert(key, serde_json::to_vec(&stale).unwrap().as_slice())
            .unwrap();
        t.open_table(tables::NAME_META).unwrap().insert("room_view_version", codec::encode(&view).as_slice()).unwrap();
        t.commit().unwrap();
    };

    write_stale(ROOM_VIEW_VERSION);
    srv.restart();
    let listed = srv.rooms(w.org).await;
    assert_eq!(listed["entries"][0], stale, "the kept JSON of today's version is served as kept");
    assert!(!srv.stderr().contains("rebuilt the room JSON"), "{}", srv.stderr());

    assert!(srv.stop());
    write_stale(ROOM_VIEW_VERSION - 1);
    srv.restart();
    assert!(srv.stderr().contains("rebuilt the room JSON kept for GetRooms"), "{}", srv.stderr());
    let listed = srv.rooms(w.org).await;
    let entries = listed["entries"].as_array().unwrap();
    let one = |r: &Value| r["roomID"].as_i64().unwrap();
    assert_eq!(entries.len(), 2);
    for (entry, room) in entries.iter().zip([&a, &b]) {
        assert_eq!(entry, &srv.room(one(room)).await, "the rebuilt listing is the room as stored");
    }
    assert_eq!(entries[0]["topic"], "First");
    assert!(srv.stop());
    assert_eq!(meta(&db, "room_view_version"), Some(ROOM_VIEW_VERSION));
}

/// A new data directory gets today's schema and room JSON versions.
#[test]
fn a_new_database_starts_at_todays_versions() {
    let data = Data::new();
    assert!(data.cli(&["org", "put", "1", "--name", "Acme"]).ok);
    assert_eq!(meta(&data.db(), "schema_version"), Some(SCHEMA_VERSION));
    assert_eq!(meta(&data.db(), "room_view_version"), Some(ROOM_VIEW_VERSION));
}
