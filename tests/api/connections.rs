//! Slow and hostile clients (api.md, "Limits, slow and hostile clients"):
//! the head, body and idle timeouts, the connection cap, the token checked
//! before the body is read, `Connection: close` on answers sent before the
//! body was read, and `Allow` on 405. Spoken as raw HTTP/1.1 over real TLS
//! where the bytes on the wire matter, with hyper's clients elsewhere.
//!
//! The test servers run with short timeouts ([`TIMEOUTS`]). A bound on when
//! a connection closes is generous above (timeout + [`SLACK`]) and checked
//! below at half the timeout, which a loaded machine can only make later.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::common::{TestServer, World};

const HEAD_SECS: u64 = 2;
const BODY_SECS: u64 = 3;
const IDLE_SECS: u64 = 5;
/// How much later than its timeout a connection may close on a busy machine.
const SLACK: Duration = Duration::from_secs(5);

/// The test server's limits: short, and different from each other so that
/// the moment a connection closes tells which timeout closed it.
const TIMEOUTS: [(&str, &str); 4] = [
    ("MESSENGER_CHAT_SERVER__HEADER_TIMEOUT_SECS", "2"),
    ("MESSENGER_CHAT_SERVER__BODY_TIMEOUT_SECS", "3"),
    ("MESSENGER_CHAT_SERVER__IDLE_TIMEOUT_SECS", "5"),
    ("MESSENGER_CHAT_SERVER__MAX_HEADER_BYTES", "8192"),
];

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn start() -> TestServer {
    TestServer::start_with(&TIMEOUTS)
}

/// A TLS client configuration that trusts only the server's certificate,
/// offering `alpn` (nothing when empty).
pub(crate) fn tls_config(srv: &TestServer, alpn: &[u8]) -> rustls::ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(srv.data_dir().join("tls").join("cert.pem")).expect("the certificate") {
        roots.add(cert.expect("a PEM certificate")).expect("a usable certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !alpn.is_empty() {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    config
}

pub(crate) fn authority(srv: &TestServer) -> String {
    srv.url.strip_prefix("https://").expect("an https URL").to_string()
}

/// A TLS connection, handshake done, speaking `alpn`.
pub(crate) async fn tls(srv: &TestServer, alpn: &[u8]) -> TlsStream<TcpStream> {
    try_tls(srv, alpn).await.unwrap_or_else(|e| panic!("connect to {}: {e}", srv.url))
}

pub(crate) async fn try_tls(srv: &TestServer, alpn: &[u8]) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(authority(srv)).await.map_err(|e| format!("TCP connect: {e}"))?;
    let connect = TlsConnector::from(Arc::new(tls_config(srv, alpn)))
        .connect(ServerName::try_from("localhost").expect("a name"), tcp);
    match tokio::time::timeout(secs(10), connect).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
        Err(_) => Err("TLS handshake: no answer within 10 s".into()),
    }
}

/// A request body sent piece by piece, as the test decides.
type Chunks = StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::convert::Infallible>>>;

fn chunks(
    stream: impl futures_util::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>> + Send + 'static,
) -> Chunks {
    StreamBody::new(Box::pin(stream))
}

/// One HTTP/1.1 answer as read off the wire.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// Header names in lower case.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn closes(&self) -> bool {
        self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    #[track_caller]
    pub(crate) fn problem(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{self:?}");
        let body: serde_json::Value = serde_json::from_str(&self.body).expect("a JSON problem");
        assert_eq!(body["status"], status, "{self:?}");
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{self:?}");
        body
    }
}

/// Reads one answer (with a `Content-Length`) within `within`.
pub(crate) async fn read_answer<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> Result<Answer, String> {
    tokio::time::timeout(within, read_answer_now(stream)).await.map_err(|_| format!("no answer within {within:?}"))?
}

async fn read_answer_now<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Result<Answer, String> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) => return Err(format!("the connection closed after {} bytes of a head", raw.len())),
            Ok(_) => raw.push(byte[0]),
            Err(e) => return Err(format!("read the head: {e}")),
        }
    }
    let head = String::from_utf8(raw).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status =
        status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(|e| format!("read the body: {e}"))?;
    Ok(Answer { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// Waits (at most `limit`) for the server to close the connection; how long it took.
pub(crate) async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// A request head for `path` on the test server.
pub(crate) fn head(srv: &TestServer, method: &str, path: &str, extra: &[(&str, &str)]) -> String {
    let mut h = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", authority(srv));
    for (n, v) in extra {
        h.push_str(&format!("{n}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h
}

#[tokio::test]
async fn a_connection_that_sends_nothing_after_the_handshake_is_closed_at_the_head_timeout() {
    let srv = start();
    let mut conn = tls(&srv, b"http/1.1").await;
    let took = closed_within(&mut conn, secs(HEAD_SECS) + SLACK)
        .await
        .expect("an idle connection was still open well after server.header_timeout_secs");
    assert!(took >= secs(HEAD_SECS) / 2, "closed after {took:?}, before the head timeout of {HEAD_SECS} s");
}

#[tokio::test]
async fn a_trickled_head_is_cut_at_the_head_timeout() {
    let srv = start();
    let mut conn = tls(&srv, b"http/1.1").await;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n").await.unwrap();
    let started = Instant::now();
    // One byte of a never-ending header every 300 ms: the connection is never
    // idle, yet the head never completes.
    let mut sink = [0u8; 512];
    let took = loop {
        if conn.write_all(b"x").await.is_err() {
            break started.elapsed();
        }
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut sink)).await {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < secs(HEAD_SECS) + SLACK,
            "a trickled head was still being read {:?} after it began",
            started.elapsed()
        );
    };
    assert!(took >= secs(HEAD_SECS) / 2, "cut after {took:?}, before the head timeout of {HEAD_SECS} s");
}

/// On a keep-alive connection, the next head is bounded from its first byte
/// by the head timeout, not by the (here much longer) idle timeout.
#[tokio::test]
async fn a_trickled_later_head_is_cut_at_the_head_timeout() {
    let srv = TestServer::start_with(&[
        ("MESSENGER_CHAT_SERVER__HEADER_TIMEOUT_SECS", "2"),
        ("MESSENGER_CHAT_SERVER__IDLE_TIMEOUT_SECS", "60"),
    ]);
    let mut conn = tls(&srv, b"http/1.1").await;
    conn.write_all(head(&srv, "GET", "/healthz", &[]).as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut conn, secs(10)).await.unwrap().status, 200);
    tokio::time::sleep(secs(1)).await;
    conn.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let mut sink = [0u8; 512];
    let took = loop {
        if conn.write_all(b"x").await.is_err() {
            break started.elapsed();
        }
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut sink)).await {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < secs(HEAD_SECS) + SLACK,
            "a trickled second head was read for {took:?}",
            took = started.elapsed()
        );
    };
    assert!(took >= secs(HEAD_SECS) / 2, "cut after {took:?}, before the head timeout of {HEAD_SECS} s");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let srv = start();
    let mut conn = tls(&srv, b"http/1.1").await;
    conn.write_all(head(&srv, "GET", "/healthz", &[]).as_bytes()).await.unwrap();
    let answer = read_answer(&mut conn, secs(10)).await.unwrap();
    assert_eq!(answer.status, 200);
    assert!(!answer.closes(), "a plain GET keeps the connection: {answer:?}");
    let took = closed_within(&mut conn, secs(IDLE_SECS) + SLACK)
        .await
        .expect("an idle keep-alive connection was still open well after server.idle_timeout_secs");
    // Half the idle timeout is beyond the head timeout: the wait for a
    // next request is not cut as if it were a slow head.
    assert!(took >= secs(IDLE_SECS) / 2, "closed after {took:?}, before the idle timeout of {IDLE_SECS} s");
}

/// An idle timeout shorter than the head timeout is kept too: the first
/// answer starts the idle clock, and the connection closes at it, not at
/// the head timeout that bounded the wait for that first request.
#[tokio::test]
async fn an_idle_timeout_shorter_than_the_head_timeout_is_kept() {
    let srv = TestServer::start_with(&[
        ("MESSENGER_CHAT_SERVER__HEADER_TIMEOUT_SECS", "30"),
        ("MESSENGER_CHAT_SERVER__IDLE_TIMEOUT_SECS", "2"),
    ]);
    let mut conn = tls(&srv, b"http/1.1").await;
    conn.write_all(head(&srv, "GET", "/healthz", &[]).as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut conn, secs(10)).await.unwrap().status, 200);
    let took = closed_within(&mut conn, secs(2) + SLACK)
        .await
        .expect("an idle connection was still open well after server.idle_timeout_secs (2 s; head timeout 30 s)");
    assert!(took >= secs(1), "closed after {took:?}, before the idle timeout of 2 s");
}

#[tokio::test]
async fn a_keep_alive_connection_serves_request_after_request() {
    let srv = start();
    let mut conn = tls(&srv, b"http/1.1").await;
    // Requests spread over more than the head timeout, each gap shorter than the idle timeout.
    for _ in 0..3 {
        conn.write_all(head(&srv, "GET", "/healthz", &[]).as_bytes()).await.unwrap();
        assert_eq!(read_answer(&mut conn, secs(10)).await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_at_the_idle_timeout() {
    let srv = start();
    let io = tls(&srv, b"h2").await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("an HTTP/2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("{}/healthz", srv.url)).body(Full::new(Bytes::new())).unwrap();
    let resp = send.send_request(req).await.expect("an answer over HTTP/2");
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let started = Instant::now();
    tokio::time::timeout(secs(IDLE_SECS) + SLACK, conn)
        .await
        .expect("an idle HTTP/2 connection was still open well after server.idle_timeout_secs")
        .unwrap()
        .ok();
    let took = started.elapsed();
    assert!(took >= secs(IDLE_SECS) / 2, "closed after {took:?}, before the idle timeout of {IDLE_SECS} s");
}

/// A body sent a byte at a time, never finishing, is cut by the total bound
/// even though it never stalls for long: 408, and the connection closes.
#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let srv = start();
    srv.put("/v1/organizations/1", &srv.api_token, Some(serde_json::json!({"name": "Acme"}))).await.expect(201);
    let mut conn = tls(&srv, b"http/1.1").await;
    let auth = format!("Bearer {}", srv.api_token);
    let h = head(
        &srv,
        "POST",
        "/v1/chatrooms",
        &[("authorization", &auth), ("content-type", "application/json"), ("content-length", "1000")],
    );
    conn.write_all(h.as_bytes()).await.unwrap();
    conn.write_all(b"{\"name\": \"Slow").await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(conn);
    let trickle = tokio::spawn(async move {
        while wr.write_all(b"w").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let answer = read_answer(&mut rd, secs(BODY_SECS) + SLACK)
        .await
        .expect("a trickled body was still being read well after server.body_timeout_secs");
    let took = started.elapsed();
    let detail = answer.problem(408)["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("server.body_timeout_secs"), "the detail names the limit: {detail}");
    assert!(answer.closes(), "a 408 before the body ended says `Connection: close`: {answer:?}");
    assert!(took >= secs(BODY_SECS) / 2, "cut after {took:?}, before the body timeout of {BODY_SECS} s");
    assert!(closed_within(&mut rd, SLACK).await.is_some(), "the connection stays open after the 408");
    trickle.abort();
    // Nothing was created.
    assert_eq!(srv.rooms(1).await["total"], 0);
}

/// The head of a 20 MiB upload without a valid token, and a little of its
/// body: the answer is 401 at once (not a 408 after waiting for the body,
/// which never comes), and the connection closes with `Connection: close`.
#[tokio::test]
async fn an_unauthenticated_large_body_gets_401_without_being_read() {
    let srv = start();
    let twenty_mib = (20 * 1024 * 1024).to_string();
    let unknown = format!("Bearer mca_{}", "A".repeat(43));
    let pat_and_api = format!("Bearer {}", srv.api_token);
    let cases: [Vec<(&str, &str)>; 3] = [
        vec![],
        vec![("authorization", &unknown)],
        // Both headers, different tokens: ambiguous, so no valid token.
        vec![("authorization", &pat_and_api), ("api-token", &unknown[7..])],
    ];
    for extra in cases {
        let mut headers = vec![("content-type", "application/json"), ("content-length", twenty_mib.as_str())];
        headers.extend(extra.iter().copied());
        let mut conn = tls(&srv, b"http/1.1").await;
        conn.write_all(head(&srv, "POST", "/v1/chatrooms", &headers).as_bytes()).await.unwrap();
        conn.write_all(&[b' '; 4096]).await.unwrap();
        let answer = read_answer(&mut conn, secs(BODY_SECS) + SLACK).await.unwrap();
        answer.problem(401);
        assert!(answer.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{answer:?}");
        assert!(answer.closes(), "a 401 with the body unread says `Connection: close`: {answer:?}");
        assert!(closed_within(&mut conn, SLACK).await.is_some(), "the connection stays open after the 401");
    }
}

/// A client that sends its whole 20 MiB body before it reads the answer
/// (as simple clients do) gets the 401 that went out after the head: the
/// server drains the body it will not read (for at most the head timeout,
/// 10 s here) instead of closing a socket with unread bytes, which would
/// reset the connection under the client's writes.
#[tokio::test]
async fn a_client_that_uploads_before_reading_gets_the_401() {
    let srv = TestServer::start();
    let mut conn = tls(&srv, b"http/1.1").await;
    let headers = [("content-type", "application/json"), ("content-length", "20971520")];
    conn.write_all(head(&srv, "POST", "/v1/chatrooms", &headers).as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    for i in 0..320 {
        if let Err(e) = conn.write_all(&chunk).await {
            panic!("the upload failed after {} KiB: {e}", i * 64);
        }
    }
    conn.flush().await.unwrap();
    let answer = read_answer(&mut conn, secs(10)).await.expect("the 401 after the upload");
    answer.problem(401);
    assert!(answer.closes(), "{answer:?}");
}

/// After answers sent before the body was read (405, 401), the client's next
/// request is answered: on a fresh connection, and by a pooling client that
/// reuses its connections.
#[tokio::test]
async fn after_a_405_or_401_to_a_request_with_a_body_the_next_request_is_answered() {
    let srv = start();
    let json = [("content-type", "application/json"), ("content-length", "27")];
    for (method, path) in [("POST", "/healthz"), ("POST", "/v1/chatrooms"), ("PUT", "/v1/chatrooms")] {
        let mut conn = tls(&srv, b"http/1.1").await;
        conn.write_all(head(&srv, method, path, &json).as_bytes()).await.unwrap();
        conn.write_all(br#"{"name": "x", "other": 1}  "#).await.unwrap();
        let answer = read_answer(&mut conn, secs(10)).await.unwrap();
        assert!(answer.status == 405 || answer.status == 401, "{method} {path}: {answer:?}");
        assert!(answer.closes(), "{method} {path}: answered with the body unread, without `Connection: close`");
        assert!(closed_within(&mut conn, SLACK).await.is_some(), "{method} {path}: the connection stays open");
        let mut fresh = tls(&srv, b"http/1.1").await;
        fresh.write_all(head(&srv, "GET", "/healthz", &[]).as_bytes()).await.unwrap();
        assert_eq!(
            read_answer(&mut fresh, secs(10)).await.unwrap().status,
            200,
            "fresh connection after {method} {path}"
        );
    }

    // A pooling client: each answer tells it whether the connection may be reused.
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(&srv, b""))
        .https_only()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    let url = srv.url.clone();
    let send = |method: &str, path: &str, body: &'static [u8]| {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{url}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        let client = client.clone();
        async move {
            let resp = tokio::time::timeout(secs(10), client.request(req)).await.expect("an answer within 10 s");
            resp.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}"))
        }
    };
    for round in 0..10 {
        assert_eq!(send("PUT", "/v1/chatrooms", b"{\"name\": \"a\"}").await, Ok(405), "round {round}");
        assert_eq!(send("GET", "/healthz", b"").await, Ok(200), "round {round}: after a 405");
        assert_eq!(send("POST", "/v1/chatrooms", b"{\"name\": \"a\"}").await, Ok(401), "round {round}");
        assert_eq!(send("GET", "/healthz", b"").await, Ok(200), "round {round}: after a 401");
    }
}

/// An answer given after the whole body was read keeps the connection.
#[tokio::test]
async fn an_error_after_the_body_was_read_keeps_the_connection() {
    let srv = start();
    let mut conn = tls(&srv, b"http/1.1").await;
    let auth = format!("Bearer {}", srv.api_token);
    let bad = b"{\"name\": ";
    let len = bad.len().to_string();
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json"), ("content-length", &len)];
    conn.write_all(head(&srv, "POST", "/v1/chatrooms", &headers).as_bytes()).await.unwrap();
    conn.write_all(bad).await.unwrap();
    let answer = read_answer(&mut conn, secs(10)).await.unwrap();
    answer.problem(400);
    assert!(!answer.closes(), "the body was read, the connection may stay: {answer:?}");
    conn.write_all(head(&srv, "GET", "/healthz", &[]).as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut conn, secs(10)).await.unwrap().status, 200, "the next request on the same connection");
}

/// HTTP/2: a 401 to an upload that never finishes ends that stream only;
/// the connection goes on serving.
#[tokio::test]
async fn over_http2_a_401_to_an_unfinished_upload_leaves_the_connection_usable() {
    let srv = start();
    let io = tls(&srv, b"h2").await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake::<_, _, Chunks>(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("an HTTP/2 handshake");
    tokio::spawn(conn);
    // A body that sends 4 KiB and then never ends.
    let stalled = || {
        let first = futures_util::stream::iter([Ok(Frame::data(Bytes::from(vec![b' '; 4096])))]);
        chunks(futures_util::StreamExt::chain(first, futures_util::stream::pending()))
    };
    let empty = || chunks(futures_util::stream::empty());
    for _ in 0..3 {
        let req = http::Request::post(format!("{}/v1/chatrooms", srv.url))
            .header("content-type", "application/json")
            .header("content-length", "20971520")
            .body(stalled())
            .unwrap();
        let resp = tokio::time::timeout(secs(10), send.send_request(req)).await.expect("an answer").expect("an answer");
        assert_eq!(resp.status(), 401);
        let req = http::Request::get(format!("{}/healthz", srv.url)).body(empty()).unwrap();
        let resp = tokio::time::timeout(secs(10), send.send_request(req)).await.expect("an answer").expect("an answer");
        assert_eq!(resp.status(), 200, "the next request on the same HTTP/2 connection");
    }
}

#[tokio::test]
async fn a_405_names_the_methods_of_the_path() {
    let srv = start();
    for (method, path, allow) in [
        ("PUT", "/v1/chatrooms", "GET, POST"),
        ("POST", "/v1/chatrooms/5", "GET, PATCH, DELETE"),
        ("GET", "/v1/chatrooms/5/users", "POST, DELETE"),
        ("PATCH", "/v1/users/3", "PUT, DELETE"),
        ("DELETE", "/healthz", "GET"),
        ("POST", "/openapi.json", "GET"),
    ] {
        let resp = srv.raw(method, path, &[], b"").await;
        resp.expect_problem(405);
        assert_eq!(resp.header("allow"), allow, "{method} {path}");
    }
}

/// A request head above `server.max_header_bytes` gets 431 on HTTP/1.1.
#[tokio::test]
async fn a_head_above_max_header_bytes_gets_431() {
    let srv = start();
    let big = "x".repeat(9000);
    let mut conn = tls(&srv, b"http/1.1").await;
    conn.write_all(head(&srv, "GET", "/healthz", &[("x-padding", &big)]).as_bytes()).await.unwrap();
    let answer = read_answer(&mut conn, secs(10)).await.unwrap();
    assert_eq!(answer.status, 431, "{answer:?}");
    // Below the limit, the same request is served.
    let small = "x".repeat(4000);
    let resp = srv.raw("GET", "/healthz", &[("x-padding", &small)], b"").await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn both_token_headers_with_different_tokens_get_401() {
    let srv = start();
    let member = World::new(&srv).await.member;
    let path = "/v1/chatrooms?organization_id=1";
    let api = format!("Bearer {}", srv.api_token);
    let detail =
        srv.raw("GET", path, &[("authorization", &api), ("api-token", &member.token)], b"").await.expect_problem(401);
    assert!(detail.contains("API-TOKEN"), "the detail says what is wrong: {detail}");
    let pat = format!("Bearer {}", member.token);
    srv.raw("GET", path, &[("authorization", &pat), ("api-token", &srv.api_token)], b"").await.expect_problem(401);
    // The same token in both is one token.
    srv.raw("GET", path, &[("authorization", &api), ("api-token", &srv.api_token)], b"").await.expect(200);
    srv.raw("GET", path, &[("authorization", &pat), ("api-token", &member.token)], b"").await.expect(200);
}

/// SIGTERM waits for requests in flight, not for connections without one:
/// a TCP connection that never starts TLS, one that sends nothing after the
/// handshake, a first head still trickling in, and the drain after a 401 to
/// an unread upload. With every timeout and the grace at 30 s, the process
/// is gone well before any of them, and the request in flight is answered.
#[tokio::test]
async fn sigterm_waits_for_requests_in_flight_only() {
    let mut srv = TestServer::start_with(&[
        ("MESSENGER_CHAT_SERVER__HEADER_TIMEOUT_SECS", "30"),
        ("MESSENGER_CHAT_SERVER__BODY_TIMEOUT_SECS", "30"),
        ("MESSENGER_CHAT_SERVER__IDLE_TIMEOUT_SECS", "60"),
        ("MESSENGER_CHAT_SERVER__SHUTDOWN_GRACE_SECS", "30"),
    ]);
    let no_tls = TcpStream::connect(authority(&srv)).await.unwrap();
    let silent = tls(&srv, b"http/1.1").await;
    let mut slow = tls(&srv, b"http/1.1").await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-slow: ").await.unwrap();
    let mut upload = tls(&srv, b"http/1.1").await;
    let unread = [("content-type", "application/json"), ("content-length", "20971520")];
    upload.write_all(head(&srv, "POST", "/v1/chatrooms", &unread).as_bytes()).await.unwrap();
    upload.write_all(&[b' '; 4096]).await.unwrap();
    read_answer(&mut upload, secs(10)).await.unwrap().problem(401);
    // A request whose body is half sent when the signal comes.
    let body = br#"{"name": "Acme"}"#;
    let auth = format!("Bearer {}", srv.api_token);
    let len = body.len().to_string();
    let mut in_flight = tls(&srv, b"http/1.1").await;
    let h = head(
        &srv,
        "PUT",
        "/v1/organizations/1",
        &[("authorization", &auth), ("content-type", "application/json"), ("content-length", &len)],
    );
    in_flight.write_all(h.as_bytes()).await.unwrap();
    in_flight.write_all(&body[..6]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let stopping = tokio::task::spawn_blocking(move || {
        let clean = srv.stop();
        (clean, srv.stderr())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    in_flight.write_all(&body[6..]).await.unwrap();
    let answer = read_answer(&mut in_flight, secs(10)).await.expect("the request in flight is answered");
    assert_eq!(answer.status, 201, "{answer:?}");
    let (clean, stderr) = stopping.await.unwrap();
    let took = started.elapsed();
    assert!(clean, "exit status 0 after SIGTERM\n{stderr}");
    assert!(took < secs(10), "SIGTERM took {took:?} with one short request in flight (grace 30 s)\n{stderr}");
    drop((no_tls, silent, slow, upload));
}

/// Connections beyond `server.max_connections`, while every open one has a
/// request in flight (none can be closed to make room), are closed at once,
/// with a warning now and then rather than a line each; once connections
/// close, new ones are served again.
#[tokio::test]
async fn connections_beyond_max_connections_are_refused() {
    let srv = TestServer::start_with(&[
        ("MESSENGER_CHAT_SERVER__MAX_CONNECTIONS", "3"),
        ("MESSENGER_CHAT_SERVER__HEADER_TIMEOUT_SECS", "30"),
    ]);
    let last = srv.get("/v1/events?limit=1000", &srv.api_token).await.expect(200)["next"].as_u64().unwrap();
    let auth = format!("Bearer {}", srv.api_token);
    let poll = head(&srv, "GET", &format!("/v1/events?after={last}&wait=30"), &[("authorization", &auth)]);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = tls(&srv, b"http/1.1").await;
        conn.write_all(poll.as_bytes()).await.unwrap();
        held.push(conn);
    }
    // The polls are in flight before the next connections come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..20 {
        let refused = try_tls(&srv, b"http/1.1").await;
        let served = match refused {
            Err(_) => false,
            Ok(mut conn) => {
                let _ = conn.write_all(head(&srv, "GET", "/healthz", &[]).as_bytes()).await;
                read_answer(&mut conn, secs(2)).await.is_ok()
            }
        };
        assert!(!served, "connection {} beyond server.max_connections = 3 was served", i + 1);
    }
    drop(held);
    // The server sees the three go and serves again.
    let deadline = Instant::now() + secs(10);
    loop {
        let answer = match try_tls(&srv, b"http/1.1").await {
            Ok(mut conn) => {
                let _ = conn.write_all(head(&srv, "GET", "/healthz", &[]).as_bytes()).await;
                read_answer(&mut conn, secs(2)).await.ok()
            }
            Err(_) => None,
        };
        if answer.is_some_and(|a| a.status == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "/healthz was not served again after the held connections closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warnings = srv.stderr().matches("connections refused").count();
    assert!((1..=3).contains(&warnings), "20 refusals logged {warnings} warnings\n{}", srv.stderr());
}

/// With `server.h2_max_concurrent_streams` = 2 and two uploads in flight on
/// one HTTP/2 connection, a third request waits for one of them to end.
#[tokio::test]
async fn http2_streams_per_connection_are_bounded() {
    let mut env = TIMEOUTS.to_vec();
    env.push(("MESSENGER_CHAT_SERVER__H2_MAX_CONCURRENT_STREAMS", "2"));
    let srv = TestServer::start_with(&env);
    let io = tls(&srv, b"h2").await;
    let (send, conn) = hyper::client::conn::http2::handshake::<_, _, Chunks>(TokioExecutor::new(), TokioIo::new(io))
        .await
        .expect("an HTTP/2 handshake");
    tokio::spawn(conn);
    let auth = format!("Bearer {}", srv.api_token);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(&str, u16)>();
    for _ in 0..2 {
        let req = http::Request::post(format!("{}/v1/chatrooms", srv.url))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(chunks(futures_util::stream::pending()))
            .unwrap();
        let (mut send, done) = (send.clone(), done_tx.clone());
        tokio::spawn(async move {
            let status = send.send_request(req).await.map_or(0, |r| r.status().as_u16());
            let _ = done.send(("upload", status));
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let req = http::Request::get(format!("{}/healthz", srv.url)).body(chunks(futures_util::stream::empty())).unwrap();
    let (mut send3, done) = (send.clone(), done_tx.clone());
    tokio::spawn(async move {
        let status = send3.send_request(req).await.map_or(0, |r| r.status().as_u16());
        let _ = done.send(("healthz", status));
    });
    let first = tokio::time::timeout(secs(BODY_SECS) + SLACK, done_rx.recv()).await.expect("an answer").unwrap();
    assert_eq!(first, ("upload", 408), "the third request was served while two streams were open");
    let mut rest = Vec::new();
    for _ in 0..2 {
        rest.push(tokio::time::timeout(secs(BODY_SECS) + SLACK, done_rx.recv()).await.expect("an answer").unwrap());
    }
    assert!(rest.contains(&("healthz", 200)), "{rest:?}");
}
