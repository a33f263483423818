//! A database belongs to its `secret.key`: a new database gets a new key
//! and records its fingerprint; a start with the key missing or another key
//! is refused, naming the key file, the fingerprint the database expects and
//! what to restore, and leaves the database file byte for byte as it was;
//! `check` verifies the key and writes nothing to a healthy file. A
//! database of the previous release takes the key present at its first
//! start after the upgrade, and is refused when none is.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::SystemTime;

use crate::support::{Data, Fixture, fixtures};

/// The file's bytes and modification time.
fn snapshot(db: &Path) -> (Vec<u8>, SystemTime) {
    let bytes = std::fs::read(db).unwrap_or_else(|e| panic!("read {}: {e}", db.display()));
    let mtime = std::fs::metadata(db).and_then(|m| m.modified()).expect("the file's mtime");
    (bytes, mtime)
}

#[track_caller]
fn assert_untouched(db: &Path, before: &(Vec<u8>, SystemTime), what: &str) {
    let (bytes, mtime) = snapshot(db);
    let differing = bytes.iter().zip(&before.0).filter(|(a, b)| a != b).count();
    assert!(
        bytes.len() == before.0.len() && differing == 0,
        "{what} wrote to the database file: {} bytes before, {} after, {differing} bytes differ",
        before.0.len(),
        bytes.len()
    );
    assert_eq!(mtime, before.1, "{what} left the database's modification time as it was");
}

fn write_key(data: &Data, bytes: &[u8]) {
    std::fs::write(data.key(), bytes).expect("write secret.key");
    std::fs::set_permissions(data.key(), std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// The fingerprint `check` says the database recorded (and the key matches).
#[track_caller]
fn recorded_fingerprint(data: &Data) -> String {
    let check = data.cli(&["check"]);
    assert!(check.ok, "a healthy database with its key checks clean:\n{}", check.text());
    let line = check
        .stdout
        .lines()
        .find(|l| l.contains("the one the database recorded"))
        .unwrap_or_else(|| panic!("check says the key is the database's:\n{}", check.text()));
    let print = line.split("fingerprint ").nth(1).and_then(|r| r.split(',').next()).unwrap_or_default();
    assert_eq!(print.len(), 16, "a short hex fingerprint in {line:?}");
    assert!(print.bytes().all(|b| b.is_ascii_hexdigit()), "{line:?}");
    print.to_string()
}

/// The previous release's fixture: the newest one, with webhooks sealed with its key.
fn previous_release() -> Fixture {
    fixtures().pop().expect("a fixture")
}

#[test]
fn a_new_database_gets_a_new_key_that_check_verifies() {
    let data = Data::new();
    assert!(!data.key().exists() && !data.db().exists());
    data.serve_and_stop();
    let key = std::fs::read(data.key()).expect("the first start made secret.key");
    assert_eq!(key.len(), 32);
    let mode = std::fs::metadata(data.key()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "secret.key is the owner's only");
    let print = recorded_fingerprint(&data);
    assert!(!print.contains(&hex(&key[..8])), "the fingerprint is not the key");
    data.serve_and_stop();
    assert_eq!(std::fs::read(data.key()).unwrap(), key, "the next start keeps the key");
    assert_eq!(recorded_fingerprint(&data), print);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A database with users, its key moved away, then another key in its
/// place: every start and command is refused, names the key file and the
/// fingerprint, makes no key, and leaves the file as it was; `check` says
/// what is wrong; the key put back, all is well.
#[test]
fn a_missing_or_other_key_is_refused_and_the_database_left_as_it_was() {
    let data = Data::new();
    let made = data.cli(&["user", "put", "1", "--display-name", "Ann"]);
    assert!(made.ok, "{}", made.text());
    let expected = recorded_fingerprint(&data);
    let key = std::fs::read(data.key()).unwrap();
    let file = data.key().display().to_string();
    let before = snapshot(&data.db());

    std::fs::remove_file(data.key()).unwrap();
    let restore = "restore the secret.key backed up with this database";
    data.serve_refused().refused_saying(&[&file, "is missing", &expected, restore, "1 users"]);
    assert!(!data.key().exists(), "no new key was made");
    data.cli(&["check"]).refused_saying(&[&file, "is missing", &format!("expects fingerprint {expected}")]);
    data.cli(&["user", "put", "2", "--display-name", "Bob"]).refused_saying(&[&file, &expected]);
    assert!(!data.key().exists(), "no new key was made");
    assert_untouched(&data.db(), &before, "a start refused for a missing key, and check");

    write_key(&data, &[9; 32]);
    data.serve_refused().refused_saying(&[&file, "is not the key of the database", &expected, restore]);
    data.cli(&["check"]).refused_saying(&[&file, &format!("expects {expected}")]);
    assert_eq!(std::fs::read(data.key()).unwrap(), [9; 32], "the other key is left for the operator");
    assert_untouched(&data.db(), &before, "a start refused for another key, and check");

    write_key(&data, &key);
    assert_eq!(recorded_fingerprint(&data), expected, "the key put back is the database's again");
    assert_untouched(&data.db(), &before, "check of a healthy database");
    data.serve_and_stop();
}

/// A key file of the wrong length is refused before the database is opened.
#[test]
fn a_key_of_the_wrong_length_is_refused_without_writing() {
    let data = Data::new();
    assert!(data.cli(&["user", "put", "1", "--display-name", "Ann"]).ok);
    let before = snapshot(&data.db());
    write_key(&data, &[1; 31]);
    data.serve_refused().refused_saying(&[&data.key().display().to_string(), "not a 32-byte key file"]);
    data.cli(&["check"]).refused_saying(&["not a 32-byte key file"]);
    assert_untouched(&data.db(), &before, "a start refused for a 31-byte key, and check");
}

/// Every fixture of an earlier release without its key: the first start
/// after the upgrade is refused (the file holds users) and the file is left
/// as the release wrote it, migration included.
#[test]
fn an_earlier_release_database_without_its_key_is_refused() {
    for f in fixtures() {
        let name = &f.name;
        let data = f.copy();
        std::fs::remove_file(data.key()).unwrap_or_else(|e| panic!("{name}: the fixture keeps its key: {e}"));
        let before = snapshot(&data.db());
        let file = data.key().display().to_string();
        let refused = data.serve_refused();
        refused.refused_saying(&[&file, "is missing", "restore the secret.key backed up with this database"]);
        assert!(refused.text().contains("users"), "{name}: says what needs the key:\n{}", refused.text());
        data.cli(&["check"]).refused_saying(&[&file, "is missing"]);
        assert!(!data.key().exists(), "{name}: no new key was made");
        assert_untouched(&data.db(), &before, &format!("{name}: a refused start and check"));
    }
}

/// The previous release's database: another key at the first start after
/// the upgrade does not open its webhook's sealed secret and is refused;
/// its own key is taken and recorded; from then on a missing or other key
/// is refused naming the fingerprint, and neither refusal nor `check`
/// writes to the file.
#[test]
fn the_previous_release_database_takes_its_key_and_keeps_to_it() {
    let f = previous_release();
    let data = f.copy();
    let key = std::fs::read(data.key()).unwrap();
    let file = data.key().display().to_string();
    let restore = "restore the secret.key backed up with this database";

    let before = snapshot(&data.db());
    write_key(&data, &[8; 32]);
    data.serve_refused().refused_saying(&[&file, "does not open the secret of webhook", restore]);
    data.cli(&["check"]).refused_saying(&[&file, "does not open the secret of webhook"]);
    assert_untouched(&data.db(), &before, "a start refused for another key, and check");

    write_key(&data, &key);
    let check = data.cli(&["check"]);
    assert!(check.ok && check.stdout.contains("its next start records this one"), "{}", check.text());
    assert_untouched(&data.db(), &before, "check of the previous release's database");
    let served = data.serve_and_stop();
    assert!(served.stderr.contains("recorded the fingerprint of the server key"), "{}", served.text());
    let expected = recorded_fingerprint(&data);

    let before = snapshot(&data.db());
    std::fs::remove_file(data.key()).unwrap();
    data.serve_refused().refused_saying(&[&file, "is missing", &expected, restore]);
    write_key(&data, &[8; 32]);
    data.serve_refused().refused_saying(&[&file, "is not the key of the database", &expected, restore]);
    data.cli(&["check"]).refused_saying(&[&file, &format!("expects {expected}")]);
    assert_untouched(&data.db(), &before, "refused starts and check");
}
