//! The operator's bad day with the disk: a damaged database file is never
//! served or written to, and a full disk is an outage the service recovers
//! from by itself, without losing an acknowledged write.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use serde_json::json;

use crate::common::TestServer;

/// Rooms in the damaged database, as in the report that found the problem.
const ROOMS: usize = 200;
/// The room whose pages are overwritten.
const VICTIM: &str = "damage-victim-room-0100";

/// `PUT /v1/organizations/1` with the API token.
async fn create_org(srv: &TestServer) {
    srv.put("/v1/organizations/1", &srv.api_token, Some(json!({"name": "Acme"}))).await.expect(201);
}

/// Creates organization 1 and [`ROOMS`] rooms in it (one named [`VICTIM`]).
async fn fill(srv: &TestServer) {
    create_org(srv).await;
    for i in 0..ROOMS {
        let name = if i == 100 { VICTIM.to_string() } else { format!("room-{i:04}") };
        srv.post("/v1/chatrooms", &srv.api_token, Some(json!({"name": name, "organizationID": 1}))).await.expect(201);
    }
}

/// Overwrites with random bytes every 4 KiB page of the file that holds
/// the victim room's name: the live copy of its records among them.
fn damage(file: &Path) {
    let mut bytes = std::fs::read(file).expect("read the database file");
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let needle = VICTIM.as_bytes();
    let pages: Vec<usize> =
        bytes.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(at, _)| at / 4096 * 4096).collect();
    assert!(!pages.is_empty(), "the victim room is not in {}", file.display());
    for page in pages {
        let end = (page + 4096).min(bytes.len());
        rng.fill_bytes(&mut bytes[page..end]);
    }
    std::fs::write(file, &bytes).expect("write the damaged file");
}

/// `check` on the stopped server's data says the file is damaged: the
/// damage is real, not in free pages.
fn assert_check_finds_damage(srv: &TestServer) {
    let (ok, out, err) = srv.cli(&["check"]);
    assert!(!ok && format!("{out}{err}").contains("damaged"), "check should find the damage:\n{out}\n{err}");
}

fn assert_refusal_says_what_to_do(said: &str, file: &Path) {
    for part in [&file.display().to_string(), "damaged", "check --repair", "restore the data directory from a backup"] {
        assert!(said.contains(part), "the refused start should say {part:?}:\n{said}");
    }
}

#[tokio::test]
async fn verify_on_start_refuses_a_damaged_file_and_leaves_it_untouched() {
    let mut srv = TestServer::start();
    fill(&srv).await;
    assert!(srv.stop(), "a clean stop");
    let file = srv.data_dir().join("messenger-chat.redb");
    damage(&file);
    assert_check_finds_damage(&srv);
    // `check` may leave its mark in the header; what counts is the start after it.
    let damaged = std::fs::read(&file).expect("read the file");

    let said = srv
        .serve_refused(&[("MESSENGER_CHAT_STORAGE__VERIFY_ON_START", "true")], Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("a damaged file must not be served with storage.verify_on_start: {e}"));
    assert_refusal_says_what_to_do(&said, &file);
    assert!(std::fs::read(&file).expect("read the file") == damaged, "the refused start wrote into the file");
}

#[tokio::test]
async fn after_a_kill_a_damaged_file_is_refused_by_default() {
    let mut srv = TestServer::start();
    fill(&srv).await;
    let killed = Command::new("kill").arg("-9").arg(srv.pid().to_string()).status().expect("run kill");
    assert!(killed.success());
    srv.reap();
    let file = srv.data_dir().join("messenger-chat.redb");
    damage(&file);
    assert_check_finds_damage(&srv);
    let damaged = std::fs::read(&file).expect("read the file");

    let said = srv
        .serve_refused(&[], Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("a damaged file left by a crash must not be served: {e}"));
    assert_refusal_says_what_to_do(&said, &file);
    assert!(std::fs::read(&file).expect("read the file") == damaged, "the refused start wrote into the file");
}

/// A tmpfs mounted for one test, unmounted (and its mount point removed)
/// when dropped, also when the test fails.
struct Tmpfs {
    at: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let parent = tempfile::Builder::new().prefix("messenger-chat-tmpfs-").tempdir().expect("create a temp dir");
        let at = parent.path().join("data");
        std::fs::create_dir(&at).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a {size} tmpfs as the data directory and must run as root (CI does): mount said {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { at, _parent: parent }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// Fills the file system of `dir` with a file until no byte more fits.
fn fill_disk(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create the filler");
    let chunk = vec![7u8; 64 * 1024];
    let mut small = false;
    loop {
        let piece = if small { &chunk[..512] } else { &chunk[..] };
        match f.write(piece) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) && !small => small = true,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("fill the disk: {e}"),
        }
    }
    let _ = f.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_507_keeps_reads_and_recovers_without_a_restart() {
    let disk = Tmpfs::mount("24m");
    let mut srv = TestServer::start_in(Some(&disk.at), &[]);
    let api = srv.api_token.clone();
    create_org(&srv).await;
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let created =
            srv.post("/v1/chatrooms", &api, Some(json!({"name": format!("before-{i}"), "organizationID": 1})));
        acknowledged.push(crate::common::room_id(created.await.expect(201)));
    }

    let filler = fill_disk(&disk.at);
    // The first write that needs space fails: 507, never a 500.
    let mut full = None;
    for i in 0..50 {
        let body = json!({"name": format!("while-full-{i}"), "topic": "x".repeat(1000), "organizationID": 1});
        let resp = srv.post("/v1/chatrooms", &api, Some(body)).await;
        match resp.status {
            201 => acknowledged.push(crate::common::room_id(&resp.body)),
            507 => {
                full = Some(resp);
                break;
            }
            other => panic!("a write on a full disk answered {other}: {}", resp.text),
        }
    }
    let full = full.expect("no write answered 507 on a full disk");
    let detail = full.expect_problem(507);
    assert!(detail.contains(&disk.at.display().to_string()), "the problem should name the data directory: {detail}");
    let retry: u64 = full.header("retry-after").parse().expect("a Retry-After in seconds");
    assert!(retry > 0);

    // The database is reopened while the disk stays full (redb refuses
    // everything after a failed write until then); meanwhile a request
    // answers at once: 200, or 503 with Retry-After.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !srv.stderr().contains("reopened the database") {
        let read = srv.get(&format!("/v1/chatrooms/{}", acknowledged[0]), &api).await;
        if read.status != 200 {
            assert_eq!(read.status, 503, "a read while the database is reopened: {}", read.text);
            assert!(!read.header("retry-after").is_empty(), "a 503 while reopening says when to retry");
        }
        assert!(Instant::now() < deadline, "the database was not reopened within 30 s:\n{}", srv.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Writes keep answering 507.
    for _ in 0..3 {
        let again = srv.post("/v1/chatrooms", &api, Some(json!({"name": "refused", "organizationID": 1}))).await;
        assert_eq!(again.status, 507, "a write while the disk is full: {}\n{}", again.text, srv.stderr());
    }
    for id in &acknowledged {
        srv.get(&format!("/v1/chatrooms/{id}"), &api).await.expect(200);
    }
    let ready = srv.operator_get("/readyz").await;
    let why = ready.expect_problem(503);
    assert!(why.contains("full") && why.contains(&disk.at.display().to_string()), "/readyz: {why}");
    let metrics = srv.operator_get("/metrics").await.text.clone();
    assert!(metrics.contains("messenger_chat_disk_full_events_total 1"), "{metrics}");

    // Space again: writes resume by themselves, nothing acknowledged is lost.
    std::fs::remove_file(&filler).expect("free the disk");
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let resp = srv.post("/v1/chatrooms", &api, Some(json!({"name": "after", "organizationID": 1}))).await;
        match resp.status {
            201 => break crate::common::room_id(&resp.body),
            503 | 507 => {}
            other => panic!("a write after space came back answered {other}: {}", resp.text),
        }
        assert!(Instant::now() < deadline, "writes did not resume within 60 s of freeing space");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    acknowledged.push(after);
    // Ready again as far as the database goes (no homeserver runs in this test).
    let ready = srv.operator_get("/readyz").await;
    assert!(!ready.text.contains("full"), "/readyz after space came back: {}", ready.text);
    for id in &acknowledged {
        srv.get(&format!("/v1/chatrooms/{id}"), &api).await.expect(200);
    }
    let metrics = srv.operator_get("/metrics").await.text.clone();
    assert!(metrics.contains("messenger_chat_store_writable 1"), "{metrics}");
    // And after a restart, from the file.
    srv.restart();
    for id in &acknowledged {
        srv.get(&format!("/v1/chatrooms/{id}"), &api).await.expect(200);
    }
    drop(srv);
    drop(disk);
}

#[tokio::test]
async fn damage_met_while_serving_answers_500_and_stops_every_write() {
    let mut srv = TestServer::start();
    fill(&srv).await;
    assert!(srv.stop(), "a clean stop");
    let file = srv.data_dir().join("messenger-chat.redb");
    damage(&file);
    // Trusted as redb closed it: the damage is met when a request reaches it.
    srv.restart();
    let api = srv.api_token.clone();
    let mut statuses = std::collections::BTreeMap::new();
    let mut offset = 0;
    while offset < ROOMS + 50 {
        let page = srv.get(&format!("/v1/chatrooms?organization_id=1&limit=50&offset={offset}"), &api).await;
        *statuses.entry(page.status).or_insert(0) += 1;
        offset += 50;
    }
    for id in 1..=ROOMS + 5 {
        let one = srv.get(&format!("/v1/chatrooms/{id}"), &api).await;
        *statuses.entry(one.status).or_insert(0) += 1;
    }
    assert!(statuses.contains_key(&500), "no read met the damage: {statuses:?}\n{}", srv.stderr());
    let before = std::fs::read(&file).expect("read the file");
    for i in 0..20 {
        let body = json!({"name": format!("after-damage-{i}"), "organizationID": 1});
        let refused = srv.post("/v1/chatrooms", &api, Some(body)).await;
        let detail = refused.expect_problem(503);
        assert!(detail.contains("damaged"), "{detail}");
    }
    let ready = srv.operator_get("/readyz").await;
    let why = ready.expect_problem(503);
    for part in [&file.display().to_string(), "damaged", "check --repair"] {
        assert!(why.contains(part), "/readyz should say {part:?}: {why}");
    }
    let metrics = srv.operator_get("/metrics").await.text.clone();
    assert!(metrics.contains("messenger_chat_store_writable 0"), "{metrics}");
    let log = srv.stderr();
    assert!(log.contains("check --repair"), "the log should say what to do:\n{log}");
    assert!(std::fs::read(&file).expect("read the file") == before, "a write reached the damaged file");
}
