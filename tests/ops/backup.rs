//! Backup while serving: `GET /v1/export` streams the dump of a running
//! service from one snapshot, `messenger-chat import` restores it into a
//! new data directory, and `messenger-chat export` tells an operator how to
//! back up when the service holds the database.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use crate::common::{self, TestServer};

/// How long any one step may take before the test fails (generous: the
/// machine is shared).
const STEP: Duration = Duration::from_secs(60);

/// `GET /v1/export` with the API token on a connection of its own. Returns
/// the response with its body still unread, and the connection's task (abort
/// it to hang up).
async fn start_export(srv: &TestServer) -> (http::Response<Incoming>, JoinHandle<()>) {
    let cert_pem = std::fs::read(srv.data_dir().join("tls").join("cert.pem")).expect("the certificate");
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&cert_pem) {
        roots.add(cert.expect("PEM certificate")).expect("usable certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let authority = srv.url.strip_prefix("https://").expect("an https URL").to_string();
    let tcp = tokio::net::TcpStream::connect(&authority).await.expect("connect");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("HTTP handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get("/v1/export")
        .header("host", &authority)
        .header("authorization", format!("Bearer {}", srv.api_token))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(STEP, send.send_request(req)).await.expect("an answer in time").expect("an answer");
    assert_eq!(resp.status(), 200, "GET /v1/export");
    (resp, conn)
}

/// The next piece of a response body; `None` at its end.
async fn next_chunk(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let frame = tokio::time::timeout(STEP, body.frame()).await.expect("the export stalled");
        match frame {
            None => return None,
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    return Some(data);
                }
            }
            Some(Err(e)) => panic!("the export broke off: {e}"),
        }
    }
}

/// Rooms of organization 1 with 4 MiB avatars: the dump (about 22 MB) then
/// cannot sit whole in the queue and the socket buffers between the
/// service and a client that stops reading, so the service is still
/// streaming while the client waits.
async fn big_rooms(srv: &TestServer) -> Vec<i64> {
    let avatar = base64::engine::general_purpose::STANDARD.encode(common::png_of_size(4 << 20));
    let mut ids = Vec::new();
    for i in 0..4 {
        let body = json!({"organizationID": 1, "name": format!("big {i}"), "avatar": avatar});
        ids.push(common::room_id(srv.post("/v1/chatrooms", &srv.api_token, Some(body)).await.expect(201)));
    }
    ids
}

/// What a burst worker did: a room or an organization, acknowledged with 201.
#[derive(Debug, Clone)]
struct Acked {
    /// `"room"` or `"organization"`.
    kind: &'static str,
    id: i64,
    name: String,
    /// The export's phase when the request was sent and when its 201 came.
    sent: u8,
    acked: u8,
}

/// Phases of the export, as the burst workers see them.
const BEFORE: u8 = 0;
const REQUESTED: u8 = 1;
/// The first bytes of the dump arrived: its snapshot is taken.
const STREAMING: u8 = 2;

/// Creates organizations and rooms in them until `stop`, recording each 201
/// with the export's phase at sending and at acknowledgement.
async fn burst(
    client: common::Client,
    auth: String,
    worker: i64,
    phase: Arc<AtomicU8>,
    log: Log,
    stop: Arc<AtomicBool>,
) {
    let mut org = 0;
    for i in 0..5000 {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let sent = phase.load(Ordering::SeqCst);
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let (kind, name, resp) = if i % 5 == 0 {
            org = 1000 * (worker + 1) + i / 5;
            let name = format!("org {org}");
            let body = serde_json::to_vec(&json!({"name": name})).unwrap();
            ("organization", name, client.send("PUT", &format!("/v1/organizations/{org}"), &headers, body).await)
        } else {
            let name = format!("burst {worker}-{i}");
            let body = serde_json::to_vec(&json!({"organizationID": org, "name": name})).unwrap();
            ("room", name, client.send("POST", "/v1/chatrooms", &headers, body).await)
        };
        let acked = phase.load(Ordering::SeqCst);
        assert_eq!(resp.status, 201, "{} answered {}: {}", resp.request, resp.status, resp.text);
        let id = if kind == "room" { common::room_id(&resp.body) } else { org };
        log.lock().unwrap().push(Acked { kind, id, name, sent, acked });
    }
}

/// Every write the burst workers got a 201 for.
type Log = Arc<std::sync::Mutex<Vec<Acked>>>;

/// Waits until `ready` holds, failing the test after [`STEP`].
async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within {STEP:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The dump's lines as JSON, checked for what any consistent dump holds:
/// a header whose record count is the number of lines after it, and no
/// record that refers to an organization or room the dump lacks.
fn parse_dump(text: &str) -> Vec<Value> {
    assert!(text.ends_with('\n'), "the dump ends with a complete line");
    let lines: Vec<Value> = text
        .lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {}: not JSON ({e}): {l:.200}", i + 1)))
        .collect();
    let header = &lines[0];
    assert_eq!(header["record"], "header", "the first line is the header");
    assert_eq!(header["format"], "messenger-chat-export");
    assert_eq!(header["records"].as_u64(), Some(lines.len() as u64 - 1), "the header counts every line after it");
    let of = |kind: &'static str| lines.iter().filter(move |l| l["record"] == kind);
    let orgs: BTreeSet<i64> = of("organization").map(|o| o["id"].as_i64().unwrap()).collect();
    let rooms: BTreeSet<i64> = of("room").map(|r| r["id"].as_i64().unwrap()).collect();
    for room in of("room") {
        let org = room["org_id"].as_i64().unwrap();
        assert!(orgs.contains(&org), "room {} refers to organization {org}, which the dump lacks", room["id"]);
    }
    for member in of("member") {
        let org = member["organization"].as_i64().unwrap();
        assert!(orgs.contains(&org), "a member of organization {org}, which the dump lacks");
    }
    for avatar in of("avatar") {
        let room = avatar["room"].as_i64().unwrap();
        assert!(rooms.contains(&room), "an avatar of room {room}, which the dump lacks");
    }
    lines
}

/// Ids of the records of one kind in a dump.
fn ids_of(dump: &[Value], kind: &str) -> BTreeSet<i64> {
    dump.iter().filter(|l| l["record"] == kind).map(|l| l["id"].as_i64().unwrap()).collect()
}

/// `messenger-chat import` (the real binary) of `dump` into a new data directory
/// `data`, with the server key and certificate of `from` copied as an operator would.
fn restore(dump: &Path, data: &Path, from: &Path) {
    let out = super::cli(data, &["import", dump.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported"), "{out:?}");
    std::fs::copy(from.join("secret.key"), data.join("secret.key")).unwrap();
    std::fs::create_dir_all(data.join("tls")).unwrap();
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(from.join("tls").join(f), data.join("tls").join(f)).unwrap();
    }
}

/// A write burst runs while `GET /v1/export` streams: the dump is one
/// consistent snapshot (its header counts its lines; nothing in it refers
/// to a missing organization or room), holds every organization and room
/// acknowledged before the export was requested and none whose request was
/// sent after its first bytes arrived; imported into an empty database it
/// serves exactly that. A client that hangs up mid-download stops the export.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_during_a_write_burst_restores_every_acknowledged_room() {
    let mut srv = TestServer::start();
    srv.put("/v1/organizations/1", &srv.api_token, Some(json!({"name": "Acme"}))).await.expect(201);
    let big = big_rooms(&srv).await;

    let phase = Arc::new(AtomicU8::new(BEFORE));
    let stop = Arc::new(AtomicBool::new(false));
    let log = Log::default();
    let auth = format!("Bearer {}", srv.api_token);
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (client, auth, phase, log, stop) =
                (srv.client().clone(), auth.clone(), phase.clone(), log.clone(), stop.clone());
            tokio::spawn(burst(client, auth, w, phase, log, stop))
        })
        .collect();
    let count = |p: fn(&Acked) -> bool| log.lock().unwrap().iter().filter(|a| p(a)).count();
    wait_for("60 writes acknowledged before the export", || count(|a| a.acked == BEFORE) >= 60).await;

    phase.store(REQUESTED, Ordering::SeqCst);
    let (resp, conn) = start_export(&srv).await;
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut dump = next_chunk(&mut body).await.expect("a first chunk").to_vec();
    phase.store(STREAMING, Ordering::SeqCst);
    // The download waits, unread, while writes sent after its snapshot are
    // acknowledged: the service serves them while the export streams.
    wait_for("30 writes sent and acknowledged while the export streams", || count(|a| a.sent == STREAMING) >= 30).await;
    while let Some(chunk) = next_chunk(&mut body).await {
        dump.extend_from_slice(&chunk);
    }
    conn.abort();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("a burst worker panicked");
    }
    let acked = log.lock().unwrap().clone();

    assert_eq!(headers["content-type"], "application/jsonl");
    assert_eq!(headers["cache-control"], "no-store");
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"messenger-chat-") && disposition.ends_with(".jsonl\""),
        "{disposition}"
    );
    let text = String::from_utf8(dump).expect("UTF-8");
    let lines = parse_dump(&text);
    let (orgs, rooms) = (ids_of(&lines, "organization"), ids_of(&lines, "room"));
    let before: Vec<&Acked> = acked.iter().filter(|a| a.acked == BEFORE).collect();
    let after: Vec<&Acked> = acked.iter().filter(|a| a.sent == STREAMING).collect();
    assert!(before.len() >= 30, "only {} writes were acknowledged before the export", before.len());
    assert!(after.len() >= 30, "only {} writes were sent while the export streamed", after.len());
    for a in &before {
        let held = if a.kind == "room" { &rooms } else { &orgs };
        assert!(held.contains(&a.id), "{} {} was acknowledged before the export but is not in it", a.kind, a.id);
    }
    for a in &after {
        let held = if a.kind == "room" { &rooms } else { &orgs };
        assert!(!held.contains(&a.id), "{} {} was sent after the snapshot but is in the dump", a.kind, a.id);
    }
    for id in &big {
        assert!(rooms.contains(id), "big room {id}");
    }
    assert_eq!(lines.iter().filter(|l| l["record"] == "avatar").count(), big.len(), "every avatar is in the dump");

    // A client that hangs up mid-download: the export task stops (and its
    // read transaction ends) instead of waiting for a reader forever.
    let (resp, conn) = start_export(&srv).await;
    let mut body = resp.into_body();
    next_chunk(&mut body).await.expect("a first chunk");
    conn.abort();
    drop(body);
    wait_for("the service notices the client went away", || {
        srv.stderr().contains("export: stopped, the client went away")
    })
    .await;
    srv.get("/v1/chatrooms/1", &srv.api_token).await.expect(200);

    // Restore into an empty data directory with the real binary's import.
    let target = tempfile::tempdir().unwrap();
    let data = target.path().join("data");
    let file = target.path().join("backup.jsonl");
    std::fs::write(&file, &text).unwrap();
    restore(&file, &data, srv.data_dir());
    srv.restart_with(&[("MESSENGER_CHAT_STORAGE__DATA_DIR", data.to_str().unwrap())]);
    for a in &before {
        if a.kind == "room" {
            assert_eq!(srv.room(a.id).await["name"], a.name.as_str(), "room {} after the restore", a.id);
        } else {
            srv.get(&format!("/v1/organizations/{}/members", a.id), &srv.api_token).await.expect(200);
        }
    }
    for a in &after {
        let path = if a.kind == "room" {
            format!("/v1/chatrooms/{}", a.id)
        } else {
            format!("/v1/organizations/{}/members", a.id)
        };
        srv.get(&path, &srv.api_token).await.expect_problem(404);
    }
    for id in &big {
        assert_eq!(srv.room(*id).await["roomID"], *id);
    }
    // The restored service exports the very same bytes.
    let again = srv.get("/v1/export", &srv.api_token).await;
    assert_eq!(again.status, 200);
    assert!(again.text == text, "the restored service's export differs from the backup");
}

/// Only an API token may take a backup: no token gets 401, a personal
/// access token (even an organization owner's) 403, both problem+json. With
/// the API token, in either header, the answer is the same bytes
/// `messenger-chat export` writes once the service is stopped.
#[tokio::test]
async fn export_needs_an_api_token_and_matches_the_cli() {
    let mut srv = TestServer::start();
    let w = common::World::new(&srv).await;
    w.room_from(&srv, json!({"name": "Board", "avatar": common::png(), "moderators": [w.room_mod.id]})).await;

    let none = srv.raw("GET", "/v1/export", &[], b"").await;
    assert!(none.expect_problem(401).contains("needs a token"), "{}", none.text);
    srv.get("/v1/export", "mca_not-a-token").await.expect_problem(401);
    srv.get("/v1/export", &w.revoked).await.expect_problem(401);
    for pat in [&w.owner.token, &w.member.token] {
        let refused = srv.get("/v1/export", pat).await;
        assert!(refused.expect_problem(403).contains("API token"), "{}", refused.text);
        assert!(!refused.text.contains("messenger-chat-export"), "a refused export leaks nothing");
    }

    let by_bearer = srv.get("/v1/export", &srv.api_token).await;
    assert_eq!(by_bearer.status, 200, "{}", by_bearer.text);
    assert_eq!(by_bearer.header("content-type"), "application/jsonl");
    assert_eq!(by_bearer.header("cache-control"), "no-store");
    let by_header = srv.raw("GET", "/v1/export", &[("api-token", &srv.api_token)], b"").await;
    assert_eq!(by_header.status, 200, "{}", by_header.text);
    assert!(by_bearer.text == by_header.text, "two exports of an unchanged database differ");
    let lines = parse_dump(&by_bearer.text);
    assert!(lines.len() > 10, "a populated export: {}", by_bearer.text);
    assert!(!by_bearer.text.contains(&w.owner.token), "an export never holds a token");

    assert!(srv.stop(), "the server stops cleanly");
    let offline = super::cli(srv.data_dir(), &["export"]).stdout;
    assert!(offline == by_bearer.text.as_bytes(), "GET /v1/export and `messenger-chat export` differ");
}

/// `messenger-chat export` while the service runs: refused, with the exact
/// commands to back up instead. Run as printed (with `API_TOKEN` set), the
/// curl command writes a dump that `import` restores.
#[tokio::test]
async fn export_while_the_service_runs_prints_the_backup_command() {
    // A fixed port, so that the configuration the command line reads names
    // the port the service listens on (as it does outside tests).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let srv = TestServer::start_with(&[("MESSENGER_CHAT_SERVER__LISTEN", &listen)]);
    srv.put("/v1/organizations/1", &srv.api_token, Some(json!({"name": "Acme"}))).await.expect(201);
    let room = srv.post("/v1/chatrooms", &srv.api_token, Some(json!({"organizationID": 1, "name": "Ops"}))).await;
    let room = common::room_id(room.expect(201));

    let work = tempfile::tempdir().unwrap();
    let run = |program: &str, args: &[&str]| {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars() {
            if key.starts_with("MESSENGER_CHAT_") || key == "API_TOKEN" {
                cmd.env_remove(key);
            }
        }
        cmd.args(args)
            .current_dir(work.path())
            .env("MESSENGER_CHAT_STORAGE__DATA_DIR", srv.data_dir())
            .env("MESSENGER_CHAT_SERVER__LISTEN", &listen)
            .env("API_TOKEN", &srv.api_token)
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"))
    };
    let busy = run(env!("CARGO_BIN_EXE_messenger-chat"), &["export", "--out", "backup.jsonl"]);
    let said = String::from_utf8_lossy(&busy.stderr).into_owned();
    assert!(!busy.status.success(), "export must refuse a database the service holds: {said}");
    assert!(said.contains("held by the running service"), "{said}");
    assert!(said.contains("without it every Matrix password changes"), "{said}");
    assert!(!said.contains(&srv.api_token), "the hint never prints a token");
    let command = |starts: &str| {
        said.lines()
            .map(str::trim)
            .find(|l| l.starts_with(starts))
            .unwrap_or_else(|| panic!("no `{starts}…` line in: {said}"))
            .to_string()
    };
    let curl = command("curl ");
    assert!(curl.contains(&format!("https://127.0.0.1:{port}/v1/export")), "{curl}");
    let cp = command("cp ");
    assert!(cp.contains(&srv.data_dir().join("secret.key").display().to_string()), "{cp}");

    // Exactly as printed, through a shell, with the token in API_TOKEN.
    for line in [&curl, &cp] {
        let done = run("sh", &["-c", line]);
        assert!(done.status.success(), "`{line}` failed: {}", String::from_utf8_lossy(&done.stderr));
    }
    let dump = work.path().join("backup.jsonl");
    let text = std::fs::read_to_string(&dump).expect("curl wrote backup.jsonl");
    let lines = parse_dump(&text);
    assert!(ids_of(&lines, "room").contains(&room), "the backup holds room {room}");
    assert_eq!(
        std::fs::read(work.path().join("backup-secret.key")).unwrap(),
        std::fs::read(srv.data_dir().join("secret.key")).unwrap(),
        "the key file was copied"
    );

    // A token curl is refused with `-f`: the command fails instead of
    // writing an error page as the backup.
    let refused = run("sh", &["-c", &curl.replace("$API_TOKEN", "mca_wrong")]);
    assert!(!refused.status.success(), "curl -f with a wrong token must fail");

    // And the backup restores with the real binary's import.
    let data = work.path().join("restored");
    let out = super::cli(&data, &["import", dump.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("imported {} records", lines.len() - 1)));
}
