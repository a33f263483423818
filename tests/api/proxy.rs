//! The pass-through proxy and the client's address, against a homeserver of
//! the test's own that records every request reaching it: what must not
//! reach the homeserver does not, what is passed on arrives without the
//! headers the client said about itself, and the address the homeserver
//! hears is the client's as api.md defines it (the TCP peer, or a trusted
//! proxy's `X-Forwarded-For`), for the proxy and for login alike.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::common::{Http, TestServer};

/// One request as the homeserver received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path_and_query: String,
    headers: HeaderMap,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A homeserver stand-in on a free loopback port. Every answer is one JSON
/// object with the fields of every answer the service reads on the paths
/// these tests use (versions, shared-secret registration, login).
struct Upstream {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the upstream");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let record = record.clone();
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let _ = body.collect().await;
                        record.lock().unwrap().push(Seen {
                            method: parts.method.to_string(),
                            path_and_query: parts.uri.path_and_query().map(ToString::to_string).unwrap_or_default(),
                            headers: parts.headers,
                        });
                        let answer = json!({
                            "versions": ["v1.11"],
                            "nonce": "n0nce",
                            "user_id": "@u42:localhost",
                            "access_token": "syt_upstream",
                            "device_id": "PHONE",
                        });
                        let resp = hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(answer.to_string())))
                            .expect("a response");
                        Ok::<_, Infallible>(resp)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
        });
        Upstream { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests that reached it on `path` (query ignored).
    fn on(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path_and_query.split('?').next() == Some(path)).collect()
    }
}

/// A server with the proxy on, in front of `upstream`, and no homeserver
/// account management (no shared secret): only proxied requests reach it.
fn proxy_to(upstream: &Upstream, extra: &[(&str, &str)]) -> TestServer {
    let mut env =
        vec![("MESSENGER_CHAT_PROXY__ENABLED", "true"), ("MESSENGER_CHAT_MATRIX__HOMESERVER_URL", &upstream.url)];
    env.extend_from_slice(extra);
    TestServer::start_with(&env)
}

#[tokio::test]
async fn only_the_client_and_media_apis_reach_the_homeserver() {
    let upstream = Upstream::start().await;
    let srv = proxy_to(&upstream, &[]);

    // Paths that mean something else once normalized: refused as they are.
    for path in [
        "/_matrix/../_synapse/admin/v1/register",
        "/_matrix/client/../../_synapse/admin/v1/register",
        "/_matrix/./client/versions",
        "/_matrix/%2e%2e/_synapse/admin/v1/users",
        "/_matrix/%2E%2E/_synapse/admin/v1/users",
        "/_matrix/client/.%2e/.%2E/_synapse/admin/v1/users",
        "/_matrix//_synapse/admin",
        "/_matrix/client//v3/login",
        "/_matrix/client%2F..%2F..%2F_synapse/admin/v1/users",
        "/_matrix/client/%2f_synapse",
        "/_matrix/client/%5C..%5C_synapse",
        "/_matrix/client/%5c_synapse",
    ] {
        let detail = srv.raw("GET", path, &[], b"").await.expect_problem(400);
        assert!(detail.contains("path"), "{path}: {detail}");
        let with_body = srv.raw("POST", path, &[("content-type", "application/json")], b"{}").await;
        with_body.expect_problem(400);
    }
    // Outside the allow-list: not found, whatever the homeserver has there.
    for path in [
        "/_matrix/federation/v1/version",
        "/_matrix/key/v2/server",
        "/_matrix/",
        "/_matrix",
        "/_synapse/admin/v1/users",
        "/_synapse/admin/v1/register",
        "/_matrix/clientx/versions",
    ] {
        let detail = srv.raw("GET", path, &[], b"").await.expect_problem(404);
        assert!(detail.contains("/_matrix/client/"), "{path}: {detail}");
    }
    // The same over HTTP/2.
    let h2 = srv
        .client()
        .try_send(Http::H2, "GET", "/_matrix/%2e%2e/_synapse/admin/v1/users", &[], Vec::new())
        .await
        .expect("an HTTP/2 exchange");
    h2.expect_problem(400);
    assert!(upstream.seen().is_empty(), "refused requests reached the homeserver: {:?}", upstream.seen());

    // What the app needs does reach it, path and query unchanged.
    let versions = srv.raw("GET", "/_matrix/client/versions", &[], b"").await;
    assert_eq!(versions.expect(200)["versions"], json!(["v1.11"]), "{}", versions.text);
    srv.raw("GET", "/_matrix/media/v3/config?x=1", &[], b"").await.expect(200);
    let sync = "/_matrix/client/v3/rooms/%21abc%3Aexample.org/state/m.room.name/";
    srv.raw("GET", sync, &[], b"").await.expect(200);
    let seen: Vec<(String, String)> = upstream.seen().into_iter().map(|s| (s.method, s.path_and_query)).collect();
    assert_eq!(
        seen,
        vec![
            ("GET".to_string(), "/_matrix/client/versions".to_string()),
            ("GET".to_string(), "/_matrix/media/v3/config?x=1".to_string()),
            ("GET".to_string(), sync.to_string()),
        ]
    );
}

#[tokio::test]
async fn what_the_client_says_about_itself_stays_with_the_service() {
    let upstream = Upstream::start().await;
    let srv = proxy_to(&upstream, &[]);
    let pat = "mcp_someonespersonaltoken";
    srv.raw(
        "GET",
        "/_matrix/client/v3/account/whoami",
        &[
            ("api-token", pat),
            ("cookie", "session=abc"),
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "http"),
            ("authorization", "Bearer syt_matrix_access_token"),
            ("accept-language", "de"),
        ],
        b"",
    )
    .await
    .expect(200);
    let seen = upstream.on("/_matrix/client/v3/account/whoami");
    assert_eq!(seen.len(), 1, "{seen:?}");
    let s = &seen[0];
    for stripped in ["api-token", "cookie", "forwarded", "x-real-ip", "x-forwarded-host"] {
        assert_eq!(s.header(stripped), None, "{stripped} reached the homeserver: {:?}", s.headers);
    }
    // The service's own view of the client: the TCP peer, over TLS.
    assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"), "{:?}", s.headers);
    assert_eq!(s.header("x-forwarded-proto"), Some("https"), "{:?}", s.headers);
    // The Matrix client's own headers pass.
    assert_eq!(s.header("authorization"), Some("Bearer syt_matrix_access_token"));
    assert_eq!(s.header("accept-language"), Some("de"));
    assert!(!format!("{:?}", s.headers).contains(pat), "the PAT reached the homeserver");

    // One of the service's own tokens sent as Authorization stays here too.
    srv.raw("GET", "/_matrix/client/v3/pushrules/", &[("authorization", &format!("Bearer {pat}"))], b"")
        .await
        .expect(200);
    let seen = upstream.on("/_matrix/client/v3/pushrules/");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].header("authorization"), None, "{:?}", seen[0].headers);
}

/// 127.0.0.1 plays the reverse proxy: trusted in one server's config, not
/// in the other's. Login, which goes to the homeserver's own login, sends
/// the same address as the proxy does.
#[tokio::test]
async fn a_trusted_proxy_names_the_client_an_untrusted_one_does_not() {
    let forged = [("x-forwarded-for", "6.6.6.6, 203.0.113.7")];
    for (trusted, expected) in [(true, "203.0.113.7"), (false, "127.0.0.1")] {
        let upstream = Upstream::start().await;
        let mut extra = vec![("MESSENGER_CHAT_MATRIX__REGISTRATION_SHARED_SECRET", "test-secret")];
        if trusted {
            extra.push(("MESSENGER_CHAT_SERVER__TRUSTED_PROXIES", "[\"10.0.0.0/8\", \"127.0.0.1\"]"));
        }
        let srv = proxy_to(&upstream, &extra);
        srv.raw("GET", "/_matrix/client/v3/profile/x", &forged, b"").await.expect(200);
        let proxied = upstream.on("/_matrix/client/v3/profile/x");
        assert_eq!(proxied.len(), 1, "{proxied:?}");
        assert_eq!(proxied[0].header("x-forwarded-for"), Some(expected), "trusted: {trusted}");

        let api = srv.api_token.clone();
        srv.put("/v1/users/42", &api, Some(json!({"displayName": "Ann"}))).await.expect(201);
        let auth = format!("Bearer {api}");
        let login = srv
            .raw(
                "POST",
                "/v1/user/login?user_id=42",
                &[forged[0], ("authorization", auth.as_str()), ("content-type", "application/json")],
                br#"{"deviceID": "PHONE"}"#,
            )
            .await;
        assert_eq!(login.expect(200)["accessToken"], "syt_upstream", "{}", login.text);
        let logins: Vec<Seen> =
            upstream.on("/_matrix/client/v3/login").into_iter().filter(|s| s.method == "POST").collect();
        let user_login = logins
            .iter()
            .find(|s| s.header("x-forwarded-for").is_some())
            .unwrap_or_else(|| panic!("no login with the client's address reached the homeserver: {logins:?}"));
        assert_eq!(user_login.header("x-forwarded-for"), Some(expected), "login, trusted: {trusted}");
    }
}

#[tokio::test]
async fn the_well_known_document_names_the_service_itself() {
    let upstream = Upstream::start().await;
    let srv = proxy_to(&upstream, &[]);
    let doc = srv.raw("GET", "/.well-known/matrix/client", &[], b"").await;
    assert_eq!(doc.expect(200), &json!({"m.homeserver": {"base_url": srv.url}}), "{}", doc.text);
    assert_eq!(doc.header("access-control-allow-origin"), "*");
    assert!(doc.header("content-type").starts_with("application/json"), "{:?}", doc.header("content-type"));
    let preflight = srv.raw("OPTIONS", "/.well-known/matrix/client", &[("origin", "https://app.example")], b"").await;
    assert_eq!(preflight.status, 204, "{}", preflight.text);
    assert_eq!(preflight.header("access-control-allow-origin"), "*");
    let post = srv.raw("POST", "/.well-known/matrix/client", &[], b"").await;
    post.expect_problem(405);
    assert!(post.header("allow").contains("GET"), "{:?}", post.headers);
    assert!(upstream.seen().is_empty(), "the homeserver was asked: {:?}", upstream.seen());

    // With the public URL configured, that URL.
    let named = proxy_to(&upstream, &[("MESSENGER_CHAT_PROXY__PUBLIC_URL", "https://chat.example.org/")]);
    let doc = named.raw("GET", "/.well-known/matrix/client", &[], b"").await;
    assert_eq!(doc.expect(200), &json!({"m.homeserver": {"base_url": "https://chat.example.org"}}));

    // Without the proxy the service has no such document.
    let off = TestServer::start();
    off.raw("GET", "/.well-known/matrix/client", &[], b"").await.expect_problem(404);
}

/// `/readyz` answers from the homeserver check a background task repeats:
/// twenty probes do not become twenty calls to the homeserver.
#[tokio::test]
async fn readiness_probes_do_not_reach_the_homeserver() {
    let upstream = Upstream::start().await;
    let srv = TestServer::start_with(&[
        ("MESSENGER_CHAT_MATRIX__HOMESERVER_URL", &upstream.url),
        ("MESSENGER_CHAT_MATRIX__REGISTRATION_SHARED_SECRET", "test-secret"),
    ]);
    for _ in 0..20 {
        let ready = srv.raw("GET", "/readyz", &[], b"").await;
        assert_eq!(ready.expect(200), &json!({"status": "ready"}));
    }
    let checks = upstream.on("/_matrix/client/versions").len();
    assert!((1..20).contains(&checks), "20 probes made {checks} homeserver checks");
}

/// A request body that breaks off (a chunk size that is not hex) is the
/// client's fault: 400 problem+json, not a 502 that blames the homeserver.
/// A proxied request with a whole body still passes afterwards.
#[tokio::test]
async fn a_malformed_body_through_the_proxy_gets_400() {
    use tokio::io::AsyncWriteExt;

    use crate::connections::{head, read_answer, tls};

    let upstream = Upstream::start().await;
    let srv = proxy_to(&upstream, &[]);
    let mut conn = tls(&srv, b"http/1.1").await;
    let headers = [("content-type", "application/json"), ("transfer-encoding", "chunked")];
    conn.write_all(head(&srv, "POST", "/_matrix/client/v3/login", &headers).as_bytes()).await.unwrap();
    conn.write_all(b"5\r\n{\"a\":\r\nzz\r\nnot a chunk\r\n").await.unwrap();
    conn.flush().await.unwrap();
    let answer = read_answer(&mut conn, std::time::Duration::from_secs(30)).await.unwrap();
    let problem = answer.problem(400);
    assert!(problem["detail"].as_str().unwrap().contains("request body"), "{problem}");

    let whole = srv.raw("POST", "/_matrix/client/v3/login", &[("content-type", "application/json")], b"{}").await;
    whole.expect(200);
}
