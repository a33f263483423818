//! What the upgrade tests share: the fixtures, the command line, and direct
//! edits of a stopped service's database file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use messenger_chat::store::{codec, tables};
use redb::{ReadableDatabase, ReadableTable};
use serde_json::{Value, json};

/// File name of the database inside a data directory.
pub const DB_FILE: &str = "messenger-chat.redb";

/// One fixture: a database an earlier release wrote, and its manifest.
pub struct Fixture {
    pub name: String,
    /// The committed file: read it, copy it ([`Fixture::copy`]), never open
    /// it with redb in place (an open rewrites its header).
    pub db: PathBuf,
    pub manifest: Value,
}

impl Fixture {
    /// The schema version the fixture was written with.
    pub fn schema(&self) -> u64 {
        self.manifest["schema_version"].as_u64().expect("the manifest names its schema version")
    }

    /// The first-start API token stored in the fixture (a test-only secret).
    pub fn api_token(&self) -> &str {
        self.manifest["api_token"].as_str().expect("the manifest holds the API token")
    }

    /// The export records of the release that wrote it, without the header.
    pub fn export(&self) -> Vec<Value> {
        let all = self.manifest["export"].as_array().expect("the manifest holds the export");
        all.iter().filter(|r| r["record"] != "header").cloned().collect()
    }

    /// The export records as today's code keeps them: what the fixture's
    /// release exported, plus what later schemas add to a room. An empty
    /// `topic`; and `automation_given` as docs/operations.md (Upgrade) says an
    /// upgraded database infers it: in a room with automation on, the admins
    /// who are owners/admins of the organization and the assigned users who
    /// are members of it (the member records say who), nobody elsewhere.
    pub fn today_export(&self) -> Vec<Value> {
        let export = self.export();
        let role = |org: &Value, user: &Value| {
            let member =
                export.iter().find(|r| r["record"] == "member" && r["organization"] == *org && r["user"] == *user);
            member.and_then(|m| m["role"].as_u64())
        };
        let mut today = Vec::new();
        for record in &export {
            let mut record = record.clone();
            if record["record"] == "room" && record.get("topic").is_none() {
                record["topic"] = json!("");
            }
            // Rooms from before read-only rooms: writable, nothing scheduled.
            if record["record"] == "room" && record.get("read_only").is_none() {
                record["read_only"] = json!(false);
            }
            if record["record"] == "room" && record.get("read_only_at").is_none() {
                record["read_only_at"] = Value::Null;
            }
            if record["record"] == "room" && record.get("automation_given").is_none() {
                let mut given: Vec<i64> = Vec::new();
                if record["automation"] == true {
                    let org = &record["org_id"];
                    let listed = |list: &str| record[list].as_array().cloned().unwrap_or_default();
                    // Role bytes: 0 member, 1 admin, 2 owner.
                    given.extend(listed("admins").iter().filter(|u| role(org, u) >= Some(1)).filter_map(Value::as_i64));
                    given.extend(
                        listed("assigned").iter().filter(|u| role(org, u) == Some(0)).filter_map(Value::as_i64),
                    );
                }
                given.sort_unstable();
                record["automation_given"] = json!(given);
            }
            today.push(record);
        }
        today
    }

    /// A fresh data directory holding a copy of the fixture.
    pub fn copy(&self) -> Data {
        Data::with_file(&self.db)
    }
}

/// Every fixture in `tests/fixtures`, oldest schema first. There is at least
/// one: the release before versioned records.
pub fn fixtures() -> Vec<Fixture> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let db = entry.expect("a directory entry").path();
        if db.extension().is_none_or(|e| e != "redb") {
            continue;
        }
        let manifest_path = db.with_extension("json");
        let text = std::fs::read_to_string(&manifest_path)
            .unwrap_or_else(|e| panic!("{} has no manifest {}: {e}", db.display(), manifest_path.display()));
        let manifest = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", manifest_path.display()));
        let name = db.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        out.push(Fixture { name, db, manifest });
    }
    out.sort_by_key(Fixture::schema);
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    assert_eq!(out[0].schema(), 1, "the fixture of the release before versioned records is kept");
    out
}

/// A temporary data directory for the binary.
pub struct Data {
    dir: tempfile::TempDir,
}

impl Data {
    /// An empty data directory.
    pub fn new() -> Data {
        let dir = tempfile::Builder::new().prefix("messenger-chat-upgrade-").tempdir().expect("a temp dir");
        std::fs::create_dir_all(dir.path().join("data")).expect("create the data directory");
        Data { dir }
    }

    /// A data directory holding a copy of `file` as its database, and of
    /// the key kept beside it (`NAME.key`) as its `secret.key`.
    pub fn with_file(file: &Path) -> Data {
        let data = Data::new();
        std::fs::copy(file, data.db()).unwrap_or_else(|e| panic!("copy {}: {e}", file.display()));
        // The key kept beside the file (`NAME.key`, as the fixtures keep
        // theirs, or the `secret.key` of the data directory it is in),
        // owner-only: the database starts with its own key only.
        let named = file.with_extension("key");
        let key = if named.exists() { named } else { file.with_file_name("secret.key") };
        if key.exists() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::copy(&key, data.key()).unwrap_or_else(|e| panic!("copy {}: {e}", key.display()));
            std::fs::set_permissions(data.key(), std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
        }
        data
    }

    /// The data directory's `secret.key`.
    pub fn key(&self) -> PathBuf {
        self.dir().join("secret.key")
    }

    /// A data directory whose database file holds exactly `bytes`.
    pub fn with_bytes(bytes: &[u8]) -> Data {
        let data = Data::new();
        std::fs::write(data.db(), bytes).expect("write the database file");
        data
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn db(&self) -> PathBuf {
        self.dir().join(DB_FILE)
    }

    /// Runs `messenger-chat ARGS` on this data directory.
    pub fn cli(&self, args: &[&str]) -> Run {
        let mut cmd = self.command();
        cmd.args(args);
        Run::of(cmd.output().expect("run messenger-chat"))
    }

    /// Runs `messenger-chat serve`, which must stop by itself (a refusal)
    /// within a generous bound; a server that starts is stopped and fails the test.
    pub fn serve_refused(&self) -> Run {
        let mut cmd = self.command();
        cmd.arg("serve").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn messenger-chat serve");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().expect("wait for messenger-chat").is_some() {
                return Run::of(child.wait_with_output().expect("collect the output"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect the output");
                panic!("serve did not refuse within 60 s:\n{}", String::from_utf8_lossy(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `messenger-chat serve` until it says it listens, then stops it
    /// with SIGTERM; fails the test when it does not start within a
    /// generous bound or does not stop cleanly.
    pub fn serve_and_stop(&self) -> Run {
        use std::io::{BufRead, BufReader};
        let mut cmd = self.command();
        // Tests run side by side: the operators' listener on a port of its own.
        cmd.env("MESSENGER_CHAT_SERVER__METRICS_LISTEN", "127.0.0.1:0");
        cmd.arg("serve").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn messenger-chat serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("listening on") => break,
                Ok(line) => lines.push(line),
                Err(e) => {
                    let _ = child.kill();
                    let out = child.wait_with_output().expect("collect the output");
                    panic!(
                        "serve did not start ({e}):\n{}\n{}",
                        lines.join("\n"),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        let term = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("run kill");
        assert!(term.success(), "kill -TERM failed");
        let run = Run::of(child.wait_with_output().expect("collect the output"));
        assert!(run.ok, "serve stops cleanly on SIGTERM:\n{}", run.text());
        run
    }

    /// The binary with this data directory, a free port, no homeserver,
    /// and nothing from the developer's environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_messenger-chat"));
        for (key, _) in std::env::vars() {
            if key.starts_with("MESSENGER_CHAT_") {
                cmd.env_remove(key);
            }
        }
        cmd.current_dir(self.dir.path())
            .env("MESSENGER_CHAT_STORAGE__DATA_DIR", self.dir())
            .env("MESSENGER_CHAT_SERVER__LISTEN", "127.0.0.1:0")
            .env("MESSENGER_CHAT_MATRIX__HOMESERVER_URL", "http://127.0.0.1:9")
            .env("MESSENGER_CHAT_LOG__FORMAT", "human")
            .env("MESSENGER_CHAT_LOG__LEVEL", "info")
            .env("NO_COLOR", "1");
        cmd
    }
}

/// The outcome of one run of the binary.
pub struct Run {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn of(out: Output) -> Run {
        Run {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Both streams, for failure messages and searches.
    pub fn text(&self) -> String {
        format!("--- stdout ---\n{}--- stderr ---\n{}", self.stdout, self.stderr)
    }

    /// Asserts a refusal: exit status 1, no panic, and every one of `needles` said.
    #[track_caller]
    pub fn refused_saying(&self, needles: &[&str]) {
        let text = self.text();
        assert_eq!(self.code, Some(1), "expected a refusal (exit 1):\n{text}");
        assert!(!text.contains("panicked"), "a refusal, not a panic:\n{text}");
        for needle in needles {
            assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
        }
    }
}

/// Opens a stopped service's database file with redb directly.
pub fn open_raw(db: &Path) -> redb::Database {
    redb::Database::open(db).unwrap_or_else(|e| panic!("open {} with redb: {e}", db.display()))
}

/// A number the file keeps in `name_meta` (schema and cache versions).
pub fn meta(db: &Path, key: &str) -> Option<u64> {
    let db = open_raw(db);
    let r = db.begin_read().expect("a read transaction");
    let t = r.open_table(tables::NAME_META).expect("name_meta");
    t.get(key).expect("read name_meta").map(|v| codec::decode::<u64>(v.value()).expect("a number"))
}

/// Sets a number in `name_meta`, as another release would have written it.
pub fn set_meta(db: &Path, key: &str, value: u64) {
    let db = open_raw(db);
    let w = db.begin_write().expect("a write transaction");
    w.open_table(tables::NAME_META).expect("name_meta").insert(key, codec::encode(&value).as_slice()).expect("insert");
    w.commit().expect("commit");
}

/// The version byte of every room record, in room id order.
pub fn room_record_versions(db: &Path) -> Vec<u8> {
    let db = open_raw(db);
    let r = db.begin_read().expect("a read transaction");
    let t = r.open_table(tables::ROOMID_ROOM).expect("roomid_room");
    t.iter().expect("iterate").map(|e| e.expect("an entry").1.value()[0]).collect()
}

/// Every entry of every table, one line each: what a file holds, to show a
/// refused file holds exactly what it held (redb rewrites its own header
/// bytes on every open, so the bytes of a file it opened do not tell).
pub fn contents(db: &Path) -> Vec<String> {
    macro_rules! dump {
        ($r:expr, $out:expr, $($t:ident),*) => {$(
            if let Ok(t) = $r.open_table(tables::$t) {
                for e in t.iter().expect("iterate") {
                    let (k, v) = e.expect("an entry");
                    $out.push(format!("{} {:?} {:?}", stringify!($t), k.value(), v.value()));
                }
            }
        )*};
    }
    let db = open_raw(db);
    let r = db.begin_read().expect("a read transaction");
    let mut out = Vec::new();
    dump!(
        r,
        out,
        ROOMID_ROOM,
        ORGIDROOMID,
        ORGID_AUTOMATEDROOMID,
        ORGIDROOMID_JSON,
        ROOMID_ORGIDJSON,
        ORGID_DEFAULTROOMID,
        ORGIDEVENTID_ROOMID,
        MATRIXROOMID_ROOMID,
        USERIDROOMID,
        ROOMID_AVATAR,
        ORGID_ORG,
        ORGID_ROOMCOUNT,
        ORGIDRANGE_ROOMCOUNT,
        ORGIDUSERID_ROLE,
        USERIDORGID_ROLE,
        USERID_USER,
        TOKENHASH_TOKEN,
        USERIDTOKENID_TOKENHASH,
        SEQ_OUTBOX,
        NAME_COUNTER,
        NAME_META,
        DELETIONTIME_ROOMID,
        USERID_MATRIXACCOUNT,
        MATRIXROOMID_DELETEID
    );
    assert!(out.len() > 10, "a populated database: {out:?}");
    out
}
