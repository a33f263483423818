//! Database files that are not what they should be: each gets a message
//! naming the file and what to do, never a panic, and the file is left as
//! it was.

use messenger_chat::store::tables;

use crate::support::{Data, contents, fixtures, meta, open_raw, room_record_versions};

/// Not a database at all, an empty file, and files cut short: serve and
/// check refuse with the file's name and what to do, and write nothing.
#[test]
fn foreign_empty_and_truncated_files_are_refused_with_what_to_do() {
    let fixture = std::fs::read(&fixtures()[0].db).expect("read the fixture");
    let png = {
        let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
        b.extend(std::iter::repeat_n(0u8, 8192));
        b
    };
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "a text file",
            b"[server]\nlisten = \"0.0.0.0:8443\"\n".repeat(100),
            &["not a messenger-chat database", "storage.data_dir"],
        ),
        ("an image", png, &["not a messenger-chat database"]),
        ("an empty file", Vec::new(), &["the file is empty", "restore it from a backup"]),
        (
            "half a database",
            fixture[..fixture.len() / 2].to_vec(),
            &["damaged", "restore the data directory from a backup"],
        ),
        ("a database header only", fixture[..100].to_vec(), &["damaged", "restore the data directory from a backup"]),
    ];
    for (what, bytes, says) in cases {
        let data = Data::with_bytes(&bytes);
        let file = data.db().display().to_string();
        let mut needles = vec![file.as_str()];
        needles.extend_from_slice(says);
        let served = data.serve_refused();
        assert!(served.text().contains(&file), "{what}: serve names the file:\n{}", served.text());
        served.refused_saying(&needles);
        data.cli(&["check"]).refused_saying(&needles);
        data.cli(&["export"]).refused_saying(&needles);
        assert_eq!(std::fs::read(data.db()).unwrap(), bytes, "{what}: the file is left as it was");
    }
}

/// Bytes overwritten inside the file: redb's integrity check in `check`
/// finds it and says to restore; the service never panics on it.
#[test]
fn a_corrupted_file_is_found_by_check() {
    let mut bytes = std::fs::read(&fixtures()[0].db).expect("read the fixture");
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 4096] {
        *b ^= 0x5a;
    }
    let data = Data::with_bytes(&bytes);
    let file = data.db().display().to_string();
    data.cli(&["check"]).refused_saying(&[&file, "damaged", "restore the data directory from a backup"]);

    // The service opens a file without reading all of it (start-up stays
    // fast on a million rooms); whatever it meets, it answers, not panics.
    let mut cmd = data.command();
    let out = cmd.arg("export").output().expect("run export");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("panicked"), "{text}");
    if !out.status.success() {
        assert!(text.contains(&file) && text.contains("restore"), "an export that fails says why: {text}");
    }
}

/// A schema-1 file with a room record that cannot be read: the migration
/// stops, names the file, the table and the key, and what to do; the file
/// still holds exactly what the older release wrote.
#[test]
fn an_old_file_with_an_unreadable_record_is_not_migrated() {
    let f = &fixtures()[0];
    assert_eq!(f.schema(), 1);
    let data = f.copy();
    {
        let raw = open_raw(&data.db());
        let t = raw.begin_write().unwrap();
        t.open_table(tables::ROOMID_ROOM).unwrap().insert(5, [1u8, 0xff, 0xff, 0xff].as_slice()).unwrap();
        t.commit().unwrap();
    }
    let versions = room_record_versions(&data.db());
    let before = contents(&data.db());
    let file = data.db().display().to_string();
    let says = [
        file.as_str(),
        "cannot migrate it from schema version 1 to 2",
        "nothing was changed",
        "roomid_room (key 5)",
        "restore the data directory from a backup",
    ];
    data.serve_refused().refused_saying(&says);
    data.cli(&["check"]).refused_saying(&says);
    assert_eq!(contents(&data.db()), before, "a failed migration changes nothing");
    assert_eq!(meta(&data.db(), "schema_version"), Some(1));
    assert_eq!(room_record_versions(&data.db()), versions);
}
