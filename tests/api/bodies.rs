//! Request bodies and the memory they take (docs/operations.md, "Memory for request
//! bodies"): a caller without rights is refused before a large body is
//! read, only the avatar routes take megabytes, and what is buffered at once
//! is bounded by `server.body_budget_bytes`, with 503 beyond it and 429
//! beyond one caller's share. Spoken as raw HTTP/1.1 over TLS, so that a
//! body can be held half sent.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::common::{TestServer, World};
use crate::connections::{Answer, head, read_answer, try_tls};

/// A JSON object padded with spaces to `len` bytes.
fn padded(object: &serde_json::Value, len: usize) -> Bytes {
    let mut body = serde_json::to_vec(object).unwrap();
    assert!(body.len() <= len);
    body.resize(len, b' ');
    Bytes::from(body)
}

fn headers<'a>(auth: &'a str, len: &'a str) -> [(&'a str, &'a str); 3] {
    [("authorization", auth), ("content-type", "application/json"), ("content-length", len)]
}

/// Sends a whole body while reading the answer, which may come before the
/// body is sent: the answer, or why there was none.
async fn send_reading(srv: &TestServer, method: &str, path: &str, token: &str, body: Bytes) -> Result<Answer, String> {
    let conn = try_tls(srv, b"http/1.1").await?;
    let (mut rd, mut wr) = tokio::io::split(conn);
    let auth = format!("Bearer {token}");
    let len = body.len().to_string();
    let head = head(srv, method, path, &headers(&auth, &len));
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        for piece in body.chunks(64 * 1024) {
            wr.write_all(piece).await?;
        }
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let answer = read_answer(&mut rd, Duration::from_secs(120)).await;
    writer.abort();
    answer
}

/// A request whose head and the first `sent` bytes of its `declared`-byte
/// body are sent; the rest is for the test to send, or never.
async fn hold(
    srv: &TestServer,
    method: &str,
    path: &str,
    token: &str,
    body: &[u8],
    sent: usize,
) -> TlsStream<TcpStream> {
    let mut conn = try_tls(srv, b"http/1.1").await.unwrap();
    let auth = format!("Bearer {token}");
    let len = body.len().to_string();
    conn.write_all(head(srv, method, path, &headers(&auth, &len)).as_bytes()).await.unwrap();
    conn.write_all(&body[..sent]).await.unwrap();
    conn.flush().await.unwrap();
    conn
}

/// A metric's value on the operators' listener (0 when absent).
async fn metric(srv: &TestServer, line_start: &str) -> u64 {
    let text = srv.operator_get("/metrics").await.text;
    text.lines().find_map(|l| l.strip_prefix(line_start).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

/// Waits (at most 30 s) until the service holds `bytes` of request bodies.
async fn until_held(srv: &TestServer, bytes: u64) {
    for _ in 0..300 {
        if metric(srv, "messenger_chat_request_body_bytes ").await == bytes {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the service never held {bytes} bytes of bodies");
}

/// Peak resident memory of the service, in KiB.
fn peak_rss_kib(srv: &TestServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.pid())).expect("the service's status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// 32 bodies just under `server.max_body_bytes` at once, from users who
/// may create no room and not change the room they PATCH (one in no
/// organization, one a plain member): each gets its 403 without its body being buffered,
/// the service's peak memory stays far below what 32 bodies would take,
/// and it answers normally afterwards.
#[tokio::test]
async fn many_large_bodies_from_callers_without_rights_are_answered_without_being_buffered() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let room = w.room(&srv, "Board").await;
    let before = srv.room(room).await;
    let body = padded(&json!({"name": "Big", "organizationID": 1}), 25_000_000);
    let patch = padded(&json!({"name": "Taken"}), 25_000_000);
    let room_path = format!("/v1/chatrooms/{room}");
    let sends = (0..32).map(|i| {
        let token = if i % 2 == 0 { &w.outsider.token } else { &w.member.token };
        match i % 4 {
            0 | 1 => send_reading(&srv, "POST", "/v1/chatrooms", token, body.clone()),
            2 => send_reading(&srv, "POST", "/v1/chatrooms/event", token, body.clone()),
            _ => send_reading(&srv, "PATCH", &room_path, token, patch.clone()),
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    for (i, answer) in answers.iter().enumerate() {
        let answer = answer.as_ref().unwrap_or_else(|e| panic!("request {i} got no answer: {e}"));
        assert!(answer.status == 503 || (400..500).contains(&answer.status), "request {i}: {answer:?}");
        answer.problem(answer.status);
    }
    let peak_mib = peak_rss_kib(&srv) / 1024;
    assert!(peak_mib < 400, "the service's peak RSS reached {peak_mib} MiB for 32 bodies it refused");
    srv.get("/v1/chatrooms?organization_id=1", &w.owner.token).await.expect(200);
    assert_eq!(srv.rooms(1).await["total"], 1, "nothing was created");
    assert_eq!(crate::common::stable(&srv.room(room).await), crate::common::stable(&before), "nothing changed");
}

/// A body that every route took before (up to `server.max_body_bytes`) is
/// now 413 on a route that carries no avatar, naming the key to raise; the
/// same body still reaches an avatar route.
#[tokio::test]
async fn a_route_without_an_avatar_takes_a_small_body_only() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let user = padded(&json!({"displayName": "Zed"}), 300 * 1024);
    let answer = send_reading(&srv, "PUT", "/v1/users/30", &w.api, user.clone()).await.unwrap();
    let detail = answer.problem(413)["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("server.max_small_body_bytes") && detail.contains("262144"), "{detail}");
    srv.put("/v1/users/30", &w.api, Some(json!({"displayName": "Zed"}))).await.expect(201);

    // 30,000 ids, thirty times rooms.max_users_per_request: 413 before it is parsed.
    let room = w.room(&srv, "Board").await;
    let ids = vec!["123456789012"; 30_000].join(",");
    let list = Bytes::from(format!("{{\"assignedUsers\": [{ids}]}}"));
    let answer = send_reading(&srv, "POST", &format!("/v1/chatrooms/{room}/users"), &w.api, list).await.unwrap();
    answer.problem(413);

    let room_body = padded(&json!({"name": "Padded", "organizationID": 1}), 300 * 1024);
    let answer = send_reading(&srv, "POST", "/v1/chatrooms", &w.owner.token, room_body).await.unwrap();
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(srv.rooms(1).await["total"], 2, "the avatar route took the padded body");
}

/// With a budget of 200,000 bytes and bodies of up to 65,536: one caller
/// may hold 65,536 (its share: a quarter of the budget, at least one whole
/// body); a second body of the same caller gets 429, a body beyond the
/// budget 503, both with `Retry-After`; a held body still completes, and
/// the bytes are given back when the bodies are gone.
#[tokio::test]
async fn bodies_beyond_the_budget_get_503_and_beyond_a_callers_share_429() {
    let srv = TestServer::start_with(&[
        ("MESSENGER_CHAT_ROOMS__MAX_AVATAR_BYTES", "1024"),
        ("MESSENGER_CHAT_SERVER__MAX_BODY_BYTES", "65536"),
        ("MESSENGER_CHAT_SERVER__BODY_BUDGET_BYTES", "200000"),
    ]);
    let w = World::new(&srv).await;
    let body = |org: i64| padded(&json!({"name": "Held", "organizationID": org}), 60_000);
    let path = "/v1/chatrooms";

    let mut owner = hold(&srv, "POST", path, &w.owner.token, &body(1), 1000).await;
    until_held(&srv, 60_000).await;
    let mut again = hold(&srv, "POST", path, &w.owner.token, &body(1), 1000).await;
    let answer = read_answer(&mut again, Duration::from_secs(30)).await.unwrap();
    let detail = answer.problem(429)["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("server.body_budget_bytes"), "{detail}");
    assert_eq!(answer.header("retry-after"), Some("1"), "{answer:?}");

    let _admin = hold(&srv, "POST", path, &w.admin.token, &body(1), 1000).await;
    let _other = hold(&srv, "POST", path, &w.other_owner.token, &body(2), 1000).await;
    until_held(&srv, 180_000).await;
    let mut api = hold(&srv, "POST", path, &w.api, &body(1), 1000).await;
    let answer = read_answer(&mut api, Duration::from_secs(30)).await.unwrap();
    let detail = answer.problem(503)["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("server.body_budget_bytes"), "{detail}");
    assert_eq!(answer.header("retry-after"), Some("1"), "{answer:?}");
    let refused = "messenger_chat_request_bodies_refused_total{reason=";
    assert_eq!(metric(&srv, &format!("{refused}\"budget\"}} ")).await, 1);
    assert_eq!(metric(&srv, &format!("{refused}\"caller_share\"}} ")).await, 1);

    // The held body completes.
    owner.write_all(&body(1)[1000..]).await.unwrap();
    let answer = read_answer(&mut owner, Duration::from_secs(30)).await.unwrap();
    assert_eq!(answer.status, 201, "{answer:?}");
    drop((owner, _admin, _other));
    until_held(&srv, 0).await;
    let answer = send_reading(&srv, "POST", path, &w.api, body(1)).await.unwrap();
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(srv.rooms(1).await["total"], 2);
}
