//! Fair shares of the connection slots (api.md, "Limits, slow and hostile
//! clients"): one client address cannot hold every connection, and at the
//! cap a connection with no request in flight is closed for a new client
//! before a new one is refused. Flooding clients speak from 127.0.0.2 (Linux
//! routes all of 127/8 to the loopback interface), the other client from
//! 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::common::TestServer;
use crate::connections::{authority, closed_within, head, read_answer, tls_config, try_tls};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A TLS connection from the local address `from`, handshake done, speaking HTTP/1.1.
async fn tls_from(srv: &TestServer, from: &str) -> Result<TlsStream<TcpStream>, String> {
    let server: SocketAddr = authority(srv).parse().expect("the server's address");
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket.bind(format!("{from}:0").parse().expect("an address")).map_err(|e| format!("bind {from}: {e}"))?;
    let tcp = socket.connect(server).await.map_err(|e| format!("TCP connect: {e}"))?;
    let connect = TlsConnector::from(Arc::new(tls_config(srv, b"http/1.1")))
        .connect(ServerName::try_from("localhost").expect("a name"), tcp);
    match tokio::time::timeout(secs(10), connect).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
        Err(_) => Err("TLS handshake: no answer within 10 s".into()),
    }
}

/// The id of the last event in the log (0 when empty), as the API token reads it.
async fn last_event(srv: &TestServer) -> u64 {
    let mut after = 0;
    loop {
        let page = srv.get(&format!("/v1/events?after={after}&limit=1000"), &srv.api_token).await.expect(200).clone();
        let next = page["next"].as_u64().expect("next");
        if next == after {
            return after;
        }
        after = next;
    }
}

/// A long poll of the API token on `conn`: a request in flight for up to 30 s.
async fn start_long_poll(srv: &TestServer, conn: &mut TlsStream<TcpStream>, after: u64) {
    let auth = format!("Bearer {}", srv.api_token);
    let poll = head(srv, "GET", &format!("/v1/events?after={after}&wait=30"), &[("authorization", &auth)]);
    conn.write_all(poll.as_bytes()).await.expect("send a long poll");
}

/// `GET /healthz` on a new connection from 127.0.0.1, answered 200: the
/// connection, kept open (idle) by the server.
async fn healthz_served(srv: &TestServer) -> Result<TlsStream<TcpStream>, String> {
    let mut conn = tls_from(srv, "127.0.0.1").await?;
    conn.write_all(head(srv, "GET", "/healthz", &[]).as_bytes()).await.map_err(|e| e.to_string())?;
    let answer = read_answer(&mut conn, secs(5)).await?;
    if answer.status == 200 { Ok(conn) } else { Err(format!("answered {}", answer.status)) }
}

/// The value of a metric line `name` on the operators' listener.
async fn metric(srv: &TestServer, name: &str) -> u64 {
    let page = srv.operator_get("/metrics").await;
    let line = page.text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '));
    let line = line.unwrap_or_else(|| panic!("no {name} in /metrics:\n{}", page.text));
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("a number: {line}"))
}

/// Connections from one address beyond `server.max_connections_per_address`
/// are closed right after accept, even with slots free; a client from
/// another address is served while that address holds its share with
/// requests in flight; the refusals are counted and logged.
#[tokio::test]
async fn a_flood_from_one_address_leaves_another_address_served() {
    let srv = TestServer::start_with(&[
        ("MESSENGER_CHAT_SERVER__MAX_CONNECTIONS", "6"),
        ("MESSENGER_CHAT_SERVER__MAX_CONNECTIONS_PER_ADDRESS", "3"),
        ("MESSENGER_CHAT_SERVER__HEADER_TIMEOUT_SECS", "30"),
    ]);
    let last = last_event(&srv).await;
    let mut flood = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        match tls_from(&srv, "127.0.0.2").await {
            Ok(mut conn) => {
                start_long_poll(&srv, &mut conn, last).await;
                flood.push(conn);
            }
            Err(_) => refused += 1,
        }
    }
    assert_eq!((flood.len(), refused), (3, 7), "127.0.0.2 holds max_connections_per_address = 3");
    for _ in 0..5 {
        healthz_served(&srv).await.expect("127.0.0.1 is served while 127.0.0.2 holds its share");
    }
    // The three of 127.0.0.2 were served too: their polls get the next event.
    srv.put("/v1/organizations/7", &srv.api_token, Some(json!({"name": "Initech"}))).await.expect(201);
    for conn in &mut flood {
        let answer = read_answer(conn, secs(10)).await.expect("a long poll of 127.0.0.2 is answered");
        assert!(answer.status == 200 && answer.body.contains("organization.created"), "{answer:?}");
    }
    assert_eq!(metric(&srv, "messenger_chat_connections_refused_total{reason=\"address\"}").await, 7);
    let log = srv.stderr();
    let warnings = log.matches("server.max_connections_per_address open from one address").count();
    assert!((1..=2).contains(&warnings), "7 refusals logged {warnings} warnings\n{log}");
    assert!(log.contains("127.0.0.2 has 3 open"), "the warning names the address\n{log}");
}

/// At `server.max_connections`, a new client is served by closing the
/// connection that waited longest without a request in flight: first one
/// that never sent a request, then an idle keep-alive one; a connection with
/// a request in flight is never closed for it.
#[tokio::test]
async fn at_the_cap_idle_connections_make_room_for_a_new_client() {
    let srv = TestServer::start_with(&[
        ("MESSENGER_CHAT_SERVER__MAX_CONNECTIONS", "3"),
        ("MESSENGER_CHAT_SERVER__HEADER_TIMEOUT_SECS", "30"),
        ("MESSENGER_CHAT_SERVER__IDLE_TIMEOUT_SECS", "60"),
    ]);
    let last = last_event(&srv).await;
    // Three open: one silent since its handshake, one idle after an answer, one with a long poll.
    let mut silent = try_tls(&srv, b"http/1.1").await.expect("a first connection");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut idle = try_tls(&srv, b"http/1.1").await.expect("a second connection");
    idle.write_all(head(&srv, "GET", "/healthz", &[]).as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut idle, secs(5)).await.expect("an answer").status, 200);
    let mut busy = try_tls(&srv, b"http/1.1").await.expect("a third connection");
    start_long_poll(&srv, &mut busy, last).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let first = healthz_served(&srv).await.expect("a new client is served at the cap");
    assert!(closed_within(&mut silent, secs(5)).await.is_some(), "the silent connection made room");
    // Open now: the idle one, the busy one, the first new client's (idle since later).
    let second = healthz_served(&srv).await.expect("a second new client is served at the cap");
    assert!(closed_within(&mut idle, secs(5)).await.is_some(), "the idle connection made room");
    drop((first, second));
    // The long poll is still waiting, and gets the next event.
    srv.put("/v1/organizations/7", &srv.api_token, Some(json!({"name": "Initech"}))).await.expect(201);
    let answer = read_answer(&mut busy, secs(10)).await.expect("the long poll is answered");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.contains("organization.created"), "{answer:?}");
    assert!(metric(&srv, "messenger_chat_connections_closed_for_room_total").await >= 2);
    assert!(srv.stderr().contains("connections closed to make room"), "{}", srv.stderr());
}
