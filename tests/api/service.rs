//! The service around the API: health, readiness, metrics, documentation,
//! routing misses, TLS, files on disk and stopping.

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use crate::common::{Client, Http, TestServer};

/// Prometheus text format with the service's own series.
#[track_caller]
fn assert_metrics(metrics: &crate::common::Resp) {
    metrics.expect(200);
    assert!(metrics.header("content-type").starts_with("text/plain"), "{:?}", metrics.header("content-type"));
    assert!(metrics.text.contains("# TYPE"), "Prometheus text format: {}", metrics.text);
    assert!(metrics.text.contains("messenger_chat_outbox_depth"), "{}", metrics.text);
}

/// Metrics and the details of readiness are for operators: on the public
/// listener with an API token only, on the operators' listener without one.
#[tokio::test]
async fn health_and_metrics() {
    let srv = TestServer::start();
    srv.raw("GET", "/healthz", &[], b"").await.expect(200);

    srv.raw("GET", "/metrics", &[], b"").await.expect_problem(401);
    srv.get("/metrics", "mca_not-a-token").await.expect_problem(401);
    let w = crate::common::World::new(&srv).await;
    srv.get("/metrics", &w.owner.token).await.expect_problem(403);
    assert_metrics(&srv.get("/metrics", &srv.api_token).await);
    assert!(!srv.metrics_url.is_empty(), "the start names the operators' listener: {:?}", srv.stdout_lines);
    assert_metrics(&srv.operator_get("/metrics").await);

    // Readiness: a plain status for everyone, the details for operators.
    let plain = srv.raw("GET", "/readyz", &[], b"").await;
    assert_eq!(plain.expect(200), &json!({"status": "ready"}));
    assert_eq!(srv.get("/readyz", &w.owner.token).await.expect(200), &json!({"status": "ready"}));
    for detailed in [srv.get("/readyz", &srv.api_token).await, srv.operator_get("/readyz").await] {
        let body = detailed.expect(200);
        assert_eq!(body["homeserver"], "not configured", "{body}");
        assert!(body["outboxDepth"].is_u64(), "{body}");
    }
    srv.operator_get("/healthz").await.expect(200);
    // The operators' listener serves nothing else.
    srv.operator_get("/v1/chatrooms?organization_id=1").await.expect_problem(404);
}

/// Every answered request is counted once under its route and status, and
/// only the pairs that happened are listed (a status the service rarely
/// answers, like 418 here never, does not appear).
#[tokio::test]
async fn requests_are_counted_by_route_and_status() {
    let srv = TestServer::start();
    for _ in 0..3 {
        srv.raw("GET", "/healthz", &[], b"").await.expect(200);
    }
    for _ in 0..2 {
        srv.raw("GET", "/metrics", &[], b"").await.expect_problem(401);
    }
    srv.raw("GET", "/no/such/path", &[], b"").await.expect_problem(404);
    let text = srv.operator_get("/metrics").await.text;
    let counted: Vec<&str> = text.lines().filter(|l| l.starts_with("messenger_chat_http_requests_total{")).collect();
    assert_eq!(
        counted,
        [
            r#"messenger_chat_http_requests_total{method="GET",route="/healthz",status="200"} 3"#,
            r#"messenger_chat_http_requests_total{method="GET",route="/metrics",status="401"} 2"#,
            r#"messenger_chat_http_requests_total{method="",route="unmatched",status="404"} 1"#,
        ],
        "{text}"
    );
}

/// `server.metrics_listen = ""` turns the operators' listener off.
#[tokio::test]
async fn the_operators_listener_can_be_turned_off() {
    let srv = TestServer::start_with(&[("MESSENGER_CHAT_SERVER__METRICS_LISTEN", "")]);
    assert!(srv.metrics_url.is_empty(), "{:?}", srv.stdout_lines);
    assert_metrics(&srv.get("/metrics", &srv.api_token).await);
}

/// A homeserver is configured (a registration secret) but nobody listens at
/// its address: the service serves, but is not ready, and says why (the
/// homeserver's error only to operators); login, which needs the homeserver
/// now, is 503.
#[tokio::test]
async fn not_ready_while_the_homeserver_does_not_answer() {
    let srv = TestServer::start_with(&[("MESSENGER_CHAT_MATRIX__REGISTRATION_SHARED_SECRET", "test-secret")]);
    srv.raw("GET", "/healthz", &[], b"").await.expect(200);
    let ready = srv.raw("GET", "/readyz", &[], b"").await;
    let reason = ready.expect_problem(503);
    assert!(reason.contains("homeserver"), "/readyz names the reason: {reason}");
    let detailed = srv.operator_get("/readyz").await.expect_problem(503);
    let with_token = srv.get("/readyz", &srv.api_token).await.expect_problem(503);
    assert_eq!(detailed, with_token);
    assert!(detailed.contains("homeserver") && detailed != reason, "{detailed} / {reason}");
    assert!(!reason.contains(&detailed), "{reason}");

    let w = crate::common::World::new(&srv).await;
    let login = json!({"deviceID": "PHONE1"});
    let resp = srv.post("/v1/user/login", &w.member.token, Some(login)).await;
    assert!(matches!(resp.status, 502 | 503), "login without a homeserver: {} {}", resp.status, resp.text);
    resp.expect_problem(resp.status);
    let room = w.room(&srv, "Board").await;
    assert_eq!(srv.room(room).await["syncState"], "pending");
}

#[tokio::test]
async fn the_api_describes_itself() {
    let srv = TestServer::start();
    let spec = srv.raw("GET", "/openapi.json", &[], b"").await;
    spec.expect(200);
    assert!(spec.header("content-type").starts_with("application/json"), "{:?}", spec.header("content-type"));
    assert!(spec.body["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "OpenAPI 3.1: {}", spec.text);
    let docs = srv.raw("GET", "/docs", &[], b"").await;
    docs.expect(200);
    assert!(docs.header("content-type").starts_with("text/html"), "{:?}", docs.header("content-type"));
}

#[tokio::test]
async fn an_unknown_route_is_404_and_a_wrong_method_405() {
    let srv = TestServer::start();
    let api = srv.api_token.clone();
    for path in ["/", "/v1", "/v1/nothing", "/v2/chatrooms", "/v1/chatrooms/1/nothing", "/healthz/x"] {
        let detail = srv.get(path, &api).await.expect_problem(404);
        assert!(detail.starts_with("no route"), "{path}: {detail}");
    }
    for (method, path) in [
        ("PUT", "/v1/chatrooms"),
        ("PUT", "/v1/chatrooms/default/1"),
        ("GET", "/v1/chatrooms/1/users"),
        ("PATCH", "/v1/users/1/tokens"),
        ("PUT", "/v1/chatrooms/1"),
        ("GET", "/v1/chatrooms/1/claim"),
        ("POST", "/v1/user/credentials"),
        ("GET", "/v1/user/login"),
        ("POST", "/v1/organizations/1"),
        ("POST", "/healthz"),
    ] {
        srv.request(method, path, &api, Some(&json!({}))).await.expect_problem(405);
    }
}

#[tokio::test]
async fn the_server_speaks_tls_with_its_own_certificate() {
    let srv = TestServer::start();
    let cert = srv.data_dir().join("tls").join("cert.pem");
    // The certificate names localhost as well as 127.0.0.1.
    let port = srv.url.rsplit(':').next().unwrap();
    let by_name = Client::new(&format!("https://localhost:{port}"), &cert);
    by_name.send("GET", "/healthz", &[], Vec::new()).await.expect(200);

    // On disk: the database and a private server key.
    assert!(srv.data_dir().join("messenger-chat.redb").is_file());
    let key = srv.data_dir().join("secret.key");
    let mode = std::fs::metadata(&key).expect("secret.key exists").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "secret.key is readable by its owner only");
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly() {
    let mut srv = TestServer::start();
    srv.raw("GET", "/healthz", &[], b"").await.expect(200);
    assert!(srv.stop(), "exit status 0 after SIGTERM\n{}", srv.stderr());
}

#[tokio::test]
async fn http2_is_spoken_as_well() {
    let srv = TestServer::start();
    let auth = format!("Bearer {}", srv.api_token);
    let put = srv
        .client()
        .try_send(
            Http::H2,
            "PUT",
            "/v1/organizations/1",
            &[("authorization", &auth), ("content-type", "application/json")],
            br#"{"name": "Acme"}"#.to_vec(),
        )
        .await
        .expect("an HTTP/2 exchange");
    assert_eq!(put.expect(201), &json!({"organizationID": 1, "name": "Acme"}));
    let members = srv
        .client()
        .try_send(Http::H2, "GET", "/v1/organizations/1/members", &[("authorization", &auth)], Vec::new())
        .await
        .expect("an HTTP/2 exchange");
    assert_eq!(members.expect(200), &json!([]));
}

#[tokio::test]
async fn a_client_that_trusts_another_certificate_is_refused() {
    let srv = TestServer::start();
    let other = TestServer::start();
    // Each server made its own certificate; this client trusts the other one's.
    let stranger = Client::new(&srv.url, &other.data_dir().join("tls").join("cert.pem"));
    let err = stranger
        .try_send(Http::H1, "GET", "/healthz", &[], Vec::new())
        .await
        .expect_err("the handshake must fail against an untrusted certificate");
    assert!(err.contains("TLS handshake"), "{err}");
}

#[tokio::test]
async fn the_matrix_proxy_is_off_unless_enabled() {
    let srv = TestServer::start();
    let detail = srv.raw("GET", "/_matrix/client/versions", &[], b"").await.expect_problem(404);
    assert!(detail.starts_with("no route"), "{detail}");

    // On, but nobody listens at the homeserver's address.
    let on = TestServer::start_with(&[("MESSENGER_CHAT_PROXY__ENABLED", "true")]);
    let resp = on.raw("GET", "/_matrix/client/versions", &[], b"").await;
    assert!(matches!(resp.status, 502 | 503), "{} {}", resp.status, resp.text);
    resp.expect_problem(resp.status);
    on.raw("GET", "/healthz", &[], b"").await.expect(200);
}

#[tokio::test]
async fn event_and_default_are_paths_not_room_ids() {
    // `/v1/chatrooms/event` and `/v1/chatrooms/default` are routes of their
    // own; a method they do not answer is 405, not a room named "event".
    let srv = TestServer::start();
    let w = crate::common::World::new(&srv).await;
    let room = w.room(&srv, "Board").await;
    for (method, path) in [
        ("PATCH", "/v1/chatrooms/event"),
        ("DELETE", "/v1/chatrooms/event"),
        ("GET", "/v1/chatrooms/default"),
        ("PATCH", "/v1/chatrooms/default"),
        ("DELETE", "/v1/chatrooms/default"),
    ] {
        let detail = srv.request(method, path, &w.api, Some(&json!({"name": "X"}))).await.expect_problem(405);
        assert!(detail.contains("/openapi.json"), "{method} {path}: {detail}");
    }
    // Their own methods and the room routes answer as before.
    srv.get("/v1/chatrooms/event?organization_id=1&event_id=5", &w.api).await.expect_problem(404);
    srv.post("/v1/chatrooms/default", &w.api, Some(json!({"organizationID": 1}))).await.expect(201);
    srv.patch(&format!("/v1/chatrooms/{room}"), &w.api, Some(json!({"name": "Renamed"}))).await.expect(200);
    srv.get("/v1/chatrooms/abc", &w.api).await.expect_problem(400);
}
