//! The homeserver half of the benchmark (scripts/bench-matrix.sh runs it):
//! login through the service against login straight at Synapse, on one
//! machine in one run, and room creation throughput against Synapse.
//!
//! bench_matrix <service_url> <cert.pem> <api_token> <synapse_url> <logins> <rooms>

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

type Conn = SendRequest<Full<Bytes>>;

async fn https(url: &str, cert_pem: &str) -> Conn {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert_pem).expect("read the certificate") {
        roots.add(c.expect("a PEM certificate")).expect("a usable certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("https://")).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("HTTP handshake");
    tokio::spawn(conn);
    send
}

async fn plain(url: &str) -> Conn {
    let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("http://")).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("HTTP handshake");
    tokio::spawn(conn);
    send
}

async fn call(conn: &mut Conn, method: &str, path: &str, auth: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut req = http::Request::builder().method(method).uri(path).header("host", "localhost");
    if let Some(token) = auth {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let bytes = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(&b).expect("JSON"))
        }
        None => Bytes::new(),
    };
    conn.ready().await.expect("connection ready");
    let resp = conn.send_request(req.body(Full::new(bytes)).expect("request")).await.expect("answer");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, service, cert, api, synapse, logins, rooms] = args.as_slice() else {
        panic!("usage: bench_matrix <service_url> <cert.pem> <api_token> <synapse_url> <logins> <rooms>")
    };
    let (logins, rooms): (usize, usize) = (logins.parse().expect("logins"), rooms.parse().expect("rooms"));
    let mut svc = https(service, cert).await;
    let ok = |(status, body): (u16, Value), want: u16| {
        assert_eq!(status, want, "{body}");
        body
    };
    ok(call(&mut svc, "PUT", "/v1/organizations/1", Some(api), Some(json!({"name": "Bench"}))).await, 201);
    for u in 1..=4 {
        ok(
            call(
                &mut svc,
                "PUT",
                &format!("/v1/users/{u}"),
                Some(api),
                Some(json!({"displayName": format!("User {u}")})),
            )
            .await,
            201,
        );
        ok(
            call(
                &mut svc,
                "PUT",
                &format!("/v1/organizations/1/members/{u}"),
                Some(api),
                Some(json!({"role": "member"})),
            )
            .await,
            200,
        );
    }
    let pat = ok(call(&mut svc, "POST", "/v1/users/1/tokens", Some(api), Some(json!({"name": "bench"}))).await, 201);
    let pat = pat["token"].as_str().expect("token").to_string();
    // The first login makes the Matrix account; it is not measured.
    ok(call(&mut svc, "POST", "/v1/user/login", Some(&pat), Some(json!({"deviceID": "WARM"}))).await, 200);
    let creds = ok(call(&mut svc, "GET", "/v1/user/credentials", Some(&pat), None).await, 200);
    let (user, password) =
        (creds["username"].as_str().unwrap().to_string(), creds["password"].as_str().unwrap().to_string());

    // The password derivation the service does per login, with the shipped parameters.
    let key = messenger_chat::secrets::ServerKey::from_bytes([7; 32]);
    let security = messenger_chat::config::SecurityConfig::default();
    let argon: Vec<Duration> = (0..logins)
        .map(|_| {
            let t = Instant::now();
            key.matrix_password(&security, &user).expect("derive");
            t.elapsed()
        })
        .collect();

    let mut hs = plain(synapse).await;
    let mut via_service = Vec::with_capacity(logins);
    let mut direct = Vec::with_capacity(logins);
    for i in 0..logins {
        // Interleaved, so both see the same machine load.
        let t = Instant::now();
        ok(call(&mut svc, "POST", "/v1/user/login", Some(&pat), Some(json!({"deviceID": format!("S{i}")}))).await, 200);
        via_service.push(t.elapsed());
        let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                          "password": password, "device_id": format!("D{i}"), "refresh_token": true});
        let t = Instant::now();
        ok(call(&mut hs, "POST", "/_matrix/client/v3/login", None, Some(body)).await, 200);
        direct.push(t.elapsed());
    }
    let (m_service, m_direct, m_argon) = (median_ms(via_service), median_ms(direct), median_ms(argon));
    let overhead = m_service - m_direct - m_argon;

    // Room creation: requests answer at once (sync_wait 0); the clock runs
    // until the homeserver matches every room.
    let started = Instant::now();
    for i in 0..rooms {
        let body = json!({"organizationID": 1, "name": format!("Room {i}"), "admins": [1], "moderators": [2], "assignedUsers": [3, 4]});
        ok(call(&mut svc, "POST", "/v1/chatrooms", Some(api), Some(body)).await, 201);
    }
    let accepted = started.elapsed();
    loop {
        let list = ok(call(&mut svc, "GET", "/v1/chatrooms?organization_id=1&all=true", Some(api), None).await, 200);
        let ready = list["entries"].as_array().unwrap().iter().filter(|r| r["syncState"] == "ready").count();
        if ready == rooms {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "rooms did not converge: {ready}/{rooms}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let converged = started.elapsed();

    println!("| measure | value |");
    println!("|---|---|");
    println!("| login through the service, median | {m_service:.1} ms |");
    println!("| login straight at Synapse, median | {m_direct:.1} ms |");
    println!("| Argon2id password derivation, median | {m_argon:.1} ms |");
    println!(
        "| service overhead beyond the derivation | {overhead:.1} ms (target ≤ 2 ms: {}) |",
        if overhead <= 2.0 { "PASS" } else { "FAIL" }
    );
    println!(
        "| {rooms} rooms accepted | {:.2} s ({:.0} rooms/s) |",
        accepted.as_secs_f64(),
        rooms as f64 / accepted.as_secs_f64()
    );
    println!(
        "| {rooms} rooms on Synapse (created, named, powers, 4 members each) | {:.1} s ({:.2} rooms/s) |",
        converged.as_secs_f64(),
        rooms as f64 / converged.as_secs_f64()
    );
}
