//! Operating the service: certificate reload on SIGHUP, graceful stop on
//! SIGTERM under load, export / import through the command line, and
//! backups of a running service (`backup`).

#[path = "../api/common/mod.rs"]
#[expect(dead_code, reason = "the shared harness serves several test targets")]
mod common;

mod backup;
mod storage;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::TestServer;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio_rustls::TlsConnector;

/// One kept-alive HTTP/1.1 connection that trusts only `cert_pem`.
async fn connect(url: &str, cert_pem: &[u8]) -> Result<SendRequest<Full<Bytes>>, String> {
    let addr = url.strip_prefix("https://").expect("https URL").to_string();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem) {
        roots.add(cert.expect("PEM certificate")).expect("usable certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

async fn health(send: &mut SendRequest<Full<Bytes>>) -> Result<u16, String> {
    let req = http::Request::get("/healthz").header("host", "localhost").body(Full::new(Bytes::new())).unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok(status)
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().expect("run kill");
    assert!(ok.success(), "kill -{sig} {pid} failed");
}

/// SIGHUP re-reads the certificate: new connections get the new one, a
/// connection opened before keeps working.
#[tokio::test]
async fn sighup_swaps_the_certificate_without_dropping_connections() {
    let srv = TestServer::start();
    let tls_dir = srv.data_dir().join("tls");
    let old_pem = std::fs::read(tls_dir.join("cert.pem")).unwrap();
    let mut open = connect(&srv.url, &old_pem).await.expect("connect with the first certificate");
    assert_eq!(health(&mut open).await.unwrap(), 200);

    let fresh = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    std::fs::write(tls_dir.join("key.pem"), fresh.signing_key.serialize_pem()).unwrap();
    std::fs::write(tls_dir.join("cert.pem"), fresh.cert.pem()).unwrap();
    signal(srv.pid(), "HUP");

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut with_new = loop {
        match connect(&srv.url, fresh.cert.pem().as_bytes()).await {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("no connection with the new certificate: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(health(&mut with_new).await.unwrap(), 200);
    assert!(connect(&srv.url, &old_pem).await.is_err(), "a new connection must not get the old certificate");
    assert_eq!(health(&mut open).await.expect("the connection opened before SIGHUP still works"), 200);
}

/// SIGTERM in the middle of a burst of writes: every room acknowledged with
/// 201 is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_burst_loses_no_acknowledged_room() {
    let mut srv = TestServer::start();
    srv.put("/v1/organizations/1", &srv.api_token, Some(json!({"name": "Acme"}))).await.expect(201);
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(i64, String)>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let client = srv.client().clone();
    let auth = format!("Bearer {}", srv.api_token);
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (client, auth, acked, count) = (client.clone(), auth.clone(), acked.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                let name = format!("burst {worker}-{i}");
                let body = serde_json::to_vec(&json!({"organizationID": 1, "name": name})).unwrap();
                let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
                match client.try_send(common::Http::H1, "POST", "/v1/chatrooms", &headers, body).await {
                    Ok(r) if r.status == 201 => {
                        acked.lock().unwrap().push((r.body["roomID"].as_i64().unwrap(), name));
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) if r.status >= 500 => panic!("{} answered {}: {}", r.request, r.status, r.text),
                    _ => return,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < 20 {
        assert!(Instant::now() < deadline, "the burst did not get going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal(srv.pid(), "TERM");
    for t in tasks {
        t.await.expect("a burst worker panicked");
    }
    srv.restart();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 20, "only {} rooms were acknowledged", acked.len());
    for (id, name) in &acked {
        assert_eq!(srv.room(*id).await["name"], name.as_str(), "room {id} was acknowledged but is not stored");
    }
    let listed = srv.get("/v1/chatrooms?organization_id=1&all=true", &srv.api_token).await;
    assert!(listed.expect(200)["total"].as_u64().unwrap() >= acked.len() as u64);
}

fn cli(data_dir: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_messenger-chat"));
    for (key, _) in std::env::vars() {
        if key.starts_with("MESSENGER_CHAT_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .args(args)
        .current_dir(data_dir.parent().unwrap())
        .env("MESSENGER_CHAT_STORAGE__DATA_DIR", data_dir)
        .output()
        .expect("run messenger-chat");
    assert!(out.status.success(), "messenger-chat {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Export from a populated database (the service stopped), import into an empty
/// one, export again: the same bytes; and the restored service answers alike.
#[tokio::test]
async fn export_import_export_is_identical() {
    let srv = TestServer::start();
    let w = common::World::new(&srv).await;
    let room =
        w.room_from(&srv, json!({"name": "Board", "avatar": common::png(), "moderators": [w.room_mod.id]})).await;
    // The service holds the database exclusively: administration runs while it is stopped.
    let mut srv = srv;
    let busy = Command::new(env!("CARGO_BIN_EXE_messenger-chat"))
        .arg("export")
        .env("MESSENGER_CHAT_STORAGE__DATA_DIR", srv.data_dir())
        .output()
        .unwrap();
    assert!(!busy.status.success(), "export must refuse a database the service holds");
    assert!(String::from_utf8_lossy(&busy.stderr).contains("/v1/export"), "{}", String::from_utf8_lossy(&busy.stderr));
    let creds = srv.get(&format!("/v1/user/credentials?user_id={}", w.member.id), &srv.api_token).await;
    let password = creds.expect(200)["password"].clone();
    assert!(srv.stop(), "the server stops cleanly");
    let exported = cli(srv.data_dir(), &["export"]);
    // The dump needs the key: export says so, naming the file and its fingerprint.
    let said = String::from_utf8_lossy(&exported.stderr).into_owned();
    let key_file = std::fs::canonicalize(srv.data_dir().join("secret.key")).unwrap();
    assert!(said.contains(&format!("back up the server key {}", key_file.display())), "{said}");
    assert!(said.contains("(fingerprint "), "{said}");
    let first = exported.stdout;
    let text = String::from_utf8(first.clone()).unwrap();
    assert!(text.lines().count() > 10, "a populated export: {text}");
    assert!(!text.contains(&w.member.token), "an export never holds a token");

    let target = tempfile::tempdir().unwrap();
    let data = target.path().join("data");
    let dump = target.path().join("dump.jsonl");
    std::fs::write(&dump, &first).unwrap();
    cli(&data, &["import", dump.to_str().unwrap()]);
    let second = cli(&data, &["export"]).stdout;
    assert_eq!(String::from_utf8(second).unwrap(), text);

    let refused = Command::new(env!("CARGO_BIN_EXE_messenger-chat"))
        .args(["import", dump.to_str().unwrap()])
        .env("MESSENGER_CHAT_STORAGE__DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(!refused.status.success(), "import into a non-empty database must be refused");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not empty"));

    // Restore as an operator would: the dump, plus the key file and the
    // certificate from the backup. The same tokens work, the same room is
    // served and the Matrix password is unchanged.
    std::fs::copy(srv.data_dir().join("secret.key"), data.join("secret.key")).unwrap();
    std::fs::create_dir_all(data.join("tls")).unwrap();
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(srv.data_dir().join("tls").join(f), data.join("tls").join(f)).unwrap();
    }
    srv.restart_with(&[("MESSENGER_CHAT_STORAGE__DATA_DIR", data.to_str().unwrap())]);
    let id = room["roomID"].as_i64().unwrap();
    let served = srv.get(&format!("/v1/chatrooms/{id}"), &w.member.token).await;
    assert_eq!(served.expect(200), &room);
    let creds = srv.get("/v1/user/credentials", &w.member.token).await;
    assert_eq!(creds.expect(200)["password"], password);
}
