//! Webhooks as the app's backend sees them: a local HTTPS receiver (its own
//! self-signed certificate, trusted by the service through
//! `webhooks.extra_ca_file`) that checks every delivery by the Standard
//! Webhooks rules with the secret from the create answer; deliveries
//! complete and in order, also across a receiver outage and a service
//! restart (kill -9); a slow receiver that does not slow the API; the URL rules; a
//! webhook marked failing after its retry window; who may manage webhooks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hmac::Mac;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::common::{TestServer, World};

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    /// 500 to everything.
    Fail,
    /// Never answers (holds the request open).
    Hang,
}

/// One request the receiver got, as it came.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: Bytes,
}

/// A local HTTPS receiver on 127.0.0.1 with a certificate of its own.
struct Receiver {
    addr: SocketAddr,
    ca_file: PathBuf,
    got: Arc<Mutex<Vec<Got>>>,
    mode: Arc<Mutex<Mode>>,
    /// Connections accepted, and of them those still open.
    opened: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
    tls: Arc<rustls::ServerConfig>,
    _dir: tempfile::TempDir,
}

impl Receiver {
    async fn start(mode: Mode) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let ca_file = dir.path().join("receiver.pem");
        std::fs::write(&ca_file, cert.cert.pem()).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut r = Receiver {
            addr: listener.local_addr().unwrap(),
            ca_file,
            got: Arc::default(),
            mode: Arc::new(Mutex::new(mode)),
            opened: Arc::default(),
            open: Arc::default(),
            task: None,
            tls: Arc::new(tls),
            _dir: dir,
        };
        r.serve(listener);
        r
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/hooks/in?source=test", self.addr.port())
    }

    fn serve(&mut self, listener: TcpListener) {
        let (got, mode, tls) = (self.got.clone(), self.mode.clone(), self.tls.clone());
        let (opened, open) = (self.opened.clone(), self.open.clone());
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                opened.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let open = open.clone();
                let (got, mode, acceptor) = (got.clone(), mode.clone(), tokio_rustls::TlsAcceptor::from(tls.clone()));
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        open.fetch_sub(1, Ordering::SeqCst);
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (got, mode) = (got.clone(), mode.clone());
                        async move {
                            let h = |n: &str| {
                                req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
                            };
                            let (id, timestamp, signature, content_type) =
                                (h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"), h("content-type"));
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let now = *mode.lock().unwrap();
                            got.lock().unwrap().push(Got { id, timestamp, signature, content_type, body });
                            let status = match now {
                                Mode::Ok => 204,
                                Mode::Fail => 500,
                                Mode::Hang => {
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                    500
                                }
                            };
                            let resp = http::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }));
    }

    /// Stops listening: connections are refused until [`Receiver::resume`].
    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    async fn resume(&mut self) {
        // The aborted task dropped the listener: the same port is free again.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Checks a delivery the way a receiver following Standard Webhooks does:
/// the timestamp within 5 minutes of now, and one of the `v1,` signatures
/// equal to HMAC-SHA256 with the secret's bytes over `id.timestamp.body`.
/// Returns the body as JSON.
#[track_caller]
fn verify(got: &Got, secret: &str) -> Value {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").expect("a whsec_ secret")).expect("base64 secret");
    assert!(key.len() >= 24, "the secret has at least 24 random bytes");
    let ts: i64 = got.timestamp.parse().expect("webhook-timestamp is Unix seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let now = i64::try_from(now).unwrap();
    assert!((now - ts).abs() <= 300, "timestamp {ts} is within 5 minutes of {now}");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", got.id, got.timestamp).as_bytes());
    mac.update(&got.body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    let ok = got.signature.split(' ').any(|s| s.strip_prefix("v1,") == Some(expected.as_str()));
    assert!(ok, "signature {:?} does not verify (expected v1,{expected})", got.signature);
    assert!(got.content_type.starts_with("application/json"), "content-type {:?}", got.content_type);
    serde_json::from_slice(&got.body).expect("a JSON body")
}

/// Settings for a receiver on this host.
fn env_for(r: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("MESSENGER_CHAT_WEBHOOKS__ALLOW_LOOPBACK", "true".into()),
        ("MESSENGER_CHAT_WEBHOOKS__EXTRA_CA_FILE", r.ca_file.display().to_string()),
        ("MESSENGER_CHAT_WEBHOOKS__RETRY_INITIAL_MS", "100".into()),
        ("MESSENGER_CHAT_WEBHOOKS__RETRY_MAX_SECS", "1".into()),
    ]
}

/// Settings for two receivers on this host: both certificates trusted, as
/// one PEM bundle in `webhooks.extra_ca_file`.
fn env_for_both(a: &Receiver, b: &Receiver) -> Vec<(&'static str, String)> {
    let bundle = a.ca_file.with_file_name("both.pem");
    let pem = std::fs::read_to_string(&a.ca_file).unwrap() + &std::fs::read_to_string(&b.ca_file).unwrap();
    std::fs::write(&bundle, pem).unwrap();
    let mut env = env_for(a);
    env.retain(|(k, _)| *k != "MESSENGER_CHAT_WEBHOOKS__EXTRA_CA_FILE");
    env.push(("MESSENGER_CHAT_WEBHOOKS__EXTRA_CA_FILE", bundle.display().to_string()));
    env
}

fn start(env: &[(&'static str, String)]) -> TestServer {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestServer::start_with(&pairs)
}

/// Every event after `after` as `GET /v1/events` shows it (all organizations).
async fn events_after(srv: &TestServer, mut after: u64) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let page = srv.get(&format!("/v1/events?after={after}&limit=1000"), &srv.api_token).await.expect(200).clone();
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return out;
        }
        after = page["next"].as_u64().unwrap();
        out.extend(events);
    }
}

/// Waits (up to 60 s) until `done` holds for what the receiver got.
async fn wait_for(r: &Receiver, what: &str, done: impl Fn(&[Got]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&r.got()) {
        assert!(Instant::now() < deadline, "waited 60 s for {what}; the receiver got {} requests", r.got().len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 60 s) until the webhook as GET shows it satisfies `done`.
async fn wait_webhook(srv: &TestServer, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let hook = srv.get(&format!("/v1/webhooks/{id}"), &srv.api_token).await.expect(200).clone();
        if done(&hook) {
            return hook;
        }
        assert!(Instant::now() < deadline, "waited 60 s for {what}; the webhook is {hook}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The bodies of the distinct deliveries, in the order first received (at
/// least once: a repeat is allowed, a gap or a reordering is not).
fn distinct(got: &[Got], secret: &str) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    got.iter().filter(|g| seen.insert(g.id.clone())).map(|g| verify(g, secret)).collect()
}

/// Some changes of every kind, by the API token.
async fn act(srv: &TestServer, org: i64, user: i64) {
    let api = &srv.api_token;
    let named = srv.put(&format!("/v1/organizations/{org}"), api, Some(json!({"name": format!("Org {org}")}))).await;
    assert!(named.status == 200 || named.status == 201, "{}", named.text);
    srv.put(&format!("/v1/users/{user}"), api, Some(json!({"displayName": "Wendy Webhook"}))).await.expect(201);
    srv.put(&format!("/v1/organizations/{org}/members/{user}"), api, Some(json!({"role": "admin"}))).await.expect(200);
    let body = json!({"name": "Hooks", "organizationID": org, "admins": [user]});
    let room = srv.post("/v1/chatrooms", api, Some(body)).await.expect(201)["roomID"].as_i64().unwrap();
    srv.patch(&format!("/v1/chatrooms/{room}"), api, Some(json!({"name": "Hooks 2"}))).await.expect(200);
    srv.delete(&format!("/v1/chatrooms/{room}"), api, None).await.expect(204);
}

/// Every event of a set of changes reaches the receiver, signed, in order,
/// with the body `GET /v1/events` shows; a filtered webhook gets only what
/// it asked for; the secret is shown once; the delivery log and metrics count them.
#[tokio::test]
async fn every_event_is_delivered_signed_and_in_order() {
    let all = Receiver::start(Mode::Ok).await;
    let rooms = Receiver::start(Mode::Ok).await;
    let srv = start(&env_for_both(&all, &rooms));
    let api = srv.api_token.clone();

    let made = srv.put("/v1/webhooks/crm", &api, Some(json!({"url": all.url(), "eventTypes": ["*"]}))).await;
    let made = made.expect(201).clone();
    assert_eq!(made["status"], "active");
    let secret = made["secret"].as_str().unwrap().to_string();
    let cursor = made["cursor"].as_u64().unwrap();
    srv.put("/v1/organizations/5", &api, Some(json!({"name": "Rooms only"}))).await.expect(201);
    // 5.0 is the integer 5 too (JSON Schema's integers include it).
    let filtered = json!({"url": rooms.url(), "eventTypes": ["room.*"], "organizationID": 5.0});
    let second = srv.put("/v1/webhooks/rooms-of-5", &api, Some(filtered)).await.expect(201).clone();
    let secret2 = second["secret"].as_str().unwrap().to_string();
    assert_ne!(secret, secret2);

    // The secret is shown once: never by GET, list, or a replacing PUT.
    let shown = srv.get("/v1/webhooks/crm", &api).await.expect(200).clone();
    assert!(shown.get("secret").is_none() && !shown.to_string().contains(&secret), "{shown}");
    let list = srv.get("/v1/webhooks", &api).await.expect(200).clone();
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains(&secret) && !list.to_string().contains(&secret2));
    let page = srv.get("/v1/webhooks?limit=1", &api).await.expect(200).clone();
    assert_eq!((page["webhooks"][0]["id"].clone(), page["next"].clone()), (json!("crm"), json!("crm")));
    let page = srv.get("/v1/webhooks?limit=1&after=crm", &api).await.expect(200).clone();
    assert_eq!(page["webhooks"][0]["id"], "rooms-of-5");

    act(&srv, 5, 51).await;
    act(&srv, 6, 61).await;
    let expected = events_after(&srv, cursor).await;
    assert!(expected.len() >= 12, "the changes made events: {expected:?}");
    wait_for(&all, "every event", |g| distinct(g, &secret).len() >= expected.len()).await;
    let received = distinct(&all.got(), &secret);
    assert_eq!(received, expected, "every event, in order, as GET /v1/events shows it");
    for g in all.got() {
        let body: Value = serde_json::from_slice(&g.body).unwrap();
        assert_eq!(g.id, body["id"].to_string(), "webhook-id is the event id");
    }

    let wanted: Vec<Value> = expected
        .iter()
        .filter(|e| e["organizationID"] == json!(5) && e["type"].as_str().unwrap().starts_with("room."))
        .cloned()
        .collect();
    assert!(wanted.len() >= 3, "organization 5 had room events");
    wait_for(&rooms, "organization 5's room events", |g| distinct(g, &secret2).len() >= wanted.len()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(distinct(&rooms.got(), &secret2), wanted, "only room.* of organization 5");

    // A replacing PUT keeps the secret (shows none) and the cursor.
    let again = srv.put("/v1/webhooks/crm", &api, Some(json!({"url": all.url(), "eventTypes": ["room.*", "user.*"]})));
    let again = again.await.expect(200).clone();
    assert!(again.get("secret").is_none(), "{again}");
    assert_eq!(again["eventTypes"], json!(["room.*", "user.*"]));
    srv.put("/v1/users/77", &api, Some(json!({"displayName": "Later"}))).await.expect(201);
    wait_for(&all, "the event after the replace", |g| g.len() > received.len()).await;
    let last = verify(all.got().last().unwrap(), &secret);
    assert_eq!(last["type"], "user.created", "signed with the same secret");

    // A rotated secret signs from then on; the old one no longer verifies.
    let rotated = srv.post("/v1/webhooks/crm/secret", &api, None).await.expect(200).clone();
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    let before = all.got().len();
    srv.put("/v1/users/78", &api, Some(json!({"displayName": "Rotated"}))).await.expect(201);
    wait_for(&all, "the event after the rotation", |g| g.len() > before).await;
    assert_eq!(verify(all.got().last().unwrap(), &new_secret)["type"], "user.created");

    // The delivery log and the metrics.
    let hook = srv.get("/v1/webhooks/crm", &api).await.expect(200).clone();
    let log = hook["deliveries"].as_array().unwrap();
    assert!(!log.is_empty() && log.iter().all(|d| d["status"] == 204 && d["latencyMs"].is_u64()), "{hook}");
    assert_eq!(hook["status"], "active");
    let metrics = srv.operator_get("/metrics").await.text;
    let ok: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("messenger_chat_webhook_deliveries_total{outcome=\"ok\"} "))
        .expect("the deliveries counter")
        .parse()
        .unwrap();
    assert!(ok as usize >= expected.len() + wanted.len(), "{metrics}");
    assert!(metrics.contains("messenger_chat_webhooks_failing 0"), "{metrics}");
    assert!(metrics.contains("messenger_chat_webhook_backlog_events"), "{metrics}");

    // Deleted: nothing more is sent to it.
    srv.delete("/v1/webhooks/crm", &api, None).await.expect(204);
    srv.get("/v1/webhooks/crm", &api).await.expect_problem(404);
    let before = all.got().len();
    srv.put("/v1/users/79", &api, Some(json!({"displayName": "Unseen"}))).await.expect(201);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(all.got().len(), before, "a deleted webhook gets nothing");
}

/// A receiver that refuses connections, then answers 500, gets every event
/// in order once it is back, also when the service was restarted meanwhile.
#[tokio::test]
async fn a_receiver_down_for_a_while_gets_everything_after_a_restart() {
    let mut r = Receiver::start(Mode::Ok).await;
    let mut srv = start(&env_for(&r));
    let api = srv.api_token.clone();
    let made = srv.put("/v1/webhooks/down", &api, Some(json!({"url": r.url(), "eventTypes": ["*"]}))).await;
    let made = made.expect(201).clone();
    let (secret, cursor) = (made["secret"].as_str().unwrap().to_string(), made["cursor"].as_u64().unwrap());

    r.stop();
    act(&srv, 7, 71).await;
    let hook = wait_webhook(&srv, "down", "a refused attempt", |h| h["status"] == "retrying").await;
    assert!(hook["deliveries"][0]["error"].as_str().is_some_and(|e| !e.is_empty()), "{hook}");
    assert!(hook["failingSince"].is_string(), "{hook}");

    // The service is killed while the receiver is down and started again
    // on the same database; more changes follow.
    let killed = std::process::Command::new("kill").arg("-KILL").arg(srv.pid().to_string()).status().unwrap();
    assert!(killed.success());
    srv.start_after_kill();
    act(&srv, 8, 81).await;
    r.set(Mode::Fail);
    r.resume().await;
    wait_for(&r, "an attempt answered 500", |g| !g.is_empty()).await;
    wait_webhook(&srv, "down", "a 500 in the log", |h| h["deliveries"][0]["status"] == 500).await;
    assert!(r.got().iter().all(|g| g.id == r.got()[0].id), "nothing after the failing event is sent before it");

    r.set(Mode::Ok);
    let expected = events_after(&srv, cursor).await;
    wait_for(&r, "every event", |g| distinct(g, &secret).len() >= expected.len()).await;
    assert_eq!(distinct(&r.got(), &secret), expected, "every event, in order, none lost");
    wait_webhook(&srv, "down", "active again", |h| h["status"] == "active").await;
}

/// A receiver that never answers holds only its own attempts: the API
/// answers at once meanwhile (bounds far below the attempt timeout).
#[tokio::test]
async fn a_slow_receiver_does_not_slow_the_api() {
    let r = Receiver::start(Mode::Hang).await;
    let mut env = env_for(&r);
    env.push(("MESSENGER_CHAT_WEBHOOKS__TIMEOUT_SECS", "60".into()));
    let mut srv = start(&env);
    let api = srv.api_token.clone();
    srv.put("/v1/webhooks/slow", &api, Some(json!({"url": r.url(), "eventTypes": ["*"]}))).await.expect(201);
    srv.put("/v1/organizations/9", &api, Some(json!({"name": "Slow"}))).await.expect(201);
    wait_for(&r, "a hung delivery", |g| !g.is_empty()).await;
    for i in 0..5 {
        let t = Instant::now();
        srv.put(&format!("/v1/users/{}", 90 + i), &api, Some(json!({"displayName": "Fast"}))).await.expect(201);
        srv.get("/v1/events?limit=5", &api).await.expect(200);
        srv.get("/v1/webhooks/slow", &api).await.expect(200);
        assert!(t.elapsed() < Duration::from_secs(10), "requests took {:?} during a hung delivery", t.elapsed());
    }
    assert_eq!(r.got().len(), 1, "one attempt at a time per webhook, still waiting");
    // Nor does it hold up a stop: SIGTERM ends the service long before the
    // attempt's 60 s are up.
    let t = Instant::now();
    assert!(srv.stop(), "a clean exit on SIGTERM\n{}", srv.stderr());
    assert!(t.elapsed() < Duration::from_secs(20), "the stop took {:?}", t.elapsed());
}

/// An attempt that gets no answer within `webhooks.timeout_secs` failed,
/// says so in the delivery log, and is retried.
#[tokio::test]
async fn an_attempt_without_an_answer_times_out_and_is_retried() {
    let r = Receiver::start(Mode::Hang).await;
    let mut env = env_for(&r);
    env.push(("MESSENGER_CHAT_WEBHOOKS__TIMEOUT_SECS", "1".into()));
    let srv = start(&env);
    let api = srv.api_token.clone();
    srv.put("/v1/webhooks/hung", &api, Some(json!({"url": r.url(), "eventTypes": ["*"]}))).await.expect(201);
    srv.put("/v1/organizations/4", &api, Some(json!({"name": "Hung"}))).await.expect(201);
    let hook = wait_webhook(&srv, "hung", "a timed-out attempt", |h| {
        h["deliveries"][0]["error"].as_str().is_some_and(|e| e.contains("webhooks.timeout_secs"))
    })
    .await;
    assert_eq!(hook["status"], "retrying");
    wait_for(&r, "a retry", |g| g.len() >= 2).await;
    let got = r.got();
    assert!(got.iter().all(|g| g.id == got[0].id), "the same event again");
}

/// After `webhooks.max_retry_hours` of failures the webhook is failing and
/// sent nothing more; PUT again, it resumes with the event it gave up on.
#[tokio::test]
async fn a_webhook_that_keeps_failing_is_marked_failing() {
    let r = Receiver::start(Mode::Fail).await;
    let mut env = env_for(&r);
    // 0.0005 hours: 1.8 seconds.
    env.push(("MESSENGER_CHAT_WEBHOOKS__MAX_RETRY_HOURS", "0.0005".into()));
    let srv = start(&env);
    let api = srv.api_token.clone();
    let body = json!({"url": r.url(), "eventTypes": ["organization.created"]});
    let made = srv.put("/v1/webhooks/flaky", &api, Some(body.clone())).await.expect(201).clone();
    let secret = made["secret"].as_str().unwrap().to_string();
    srv.put("/v1/organizations/3", &api, Some(json!({"name": "Flaky"}))).await.expect(201);
    let hook = wait_webhook(&srv, "flaky", "the webhook marked failing", |h| h["status"] == "failing").await;
    assert!(hook["deliveries"].as_array().unwrap().iter().all(|d| d["status"] == 500), "{hook}");
    let metrics = srv.operator_get("/metrics").await.text;
    assert!(metrics.contains("messenger_chat_webhooks_failing 1"), "{metrics}");
    let tried = r.got().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(r.got().len(), tried, "a failing webhook is sent nothing");

    r.set(Mode::Ok);
    let again = srv.put("/v1/webhooks/flaky", &api, Some(body)).await.expect(200).clone();
    assert_eq!(again["status"], "active");
    wait_for(&r, "the event it gave up on", |g| g.len() > tried).await;
    let body = verify(r.got().last().unwrap(), &secret);
    assert_eq!((body["type"].clone(), body["organizationID"].clone()), (json!("organization.created"), json!(3)));
}

/// URLs that break a rule are refused with 422 naming it; event types and
/// ids are checked; only API tokens manage webhooks.
#[tokio::test]
async fn bad_webhooks_and_callers_are_refused() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let put = |url: String| json!({"url": url, "eventTypes": ["room.*"]});
    let long = format!("https://example.com/{}", "a".repeat(2048));
    for (url, rule) in [
        ("ftp://example.com/in".to_string(), "http:// or https://"),
        ("javascript:alert(1)".to_string(), "http:// or https://"),
        (long, "at most 2048"),
        ("https://10.0.0.1/in".to_string(), "private"),
        ("https://169.254.169.254/latest/meta-data".to_string(), "link-local"),
        ("https://[fe80::1]/in".to_string(), "link-local"),
        ("https://127.0.0.1:8444/metrics".to_string(), "allow_loopback"),
        ("http://example.com/in".to_string(), "https://"),
    ] {
        let detail = srv.put("/v1/webhooks/bad", &w.api, Some(put(url.clone()))).await.expect_problem(422);
        assert!(detail.contains(rule), "{url}: {detail}");
    }
    let detail = srv
        .put("/v1/webhooks/bad", &w.api, Some(json!({"url": "https://example.com/", "eventTypes": ["room.nope"]})))
        .await
        .expect_problem(422);
    assert!(detail.contains("room.nope"), "{detail}");
    let detail =
        srv.put("/v1/webhooks/b%20d", &w.api, Some(put("https://example.com/".into()))).await.expect_problem(422);
    assert!(detail.contains("webhookID"), "{detail}");
    srv.get("/v1/webhooks/bad", &w.api).await.expect_problem(404);

    // A good one, then who may see and change it.
    srv.put("/v1/webhooks/good", &w.api, Some(put("https://example.com/in".into()))).await.expect(201);
    for (method, path) in [
        ("GET", "/v1/webhooks"),
        ("GET", "/v1/webhooks/good"),
        ("PUT", "/v1/webhooks/good"),
        ("DELETE", "/v1/webhooks/good"),
        ("POST", "/v1/webhooks/good/secret"),
    ] {
        let body = (method == "PUT").then(|| put("https://example.com/in".into()));
        srv.request(method, path, &w.owner.token, body.as_ref()).await.expect_problem(403);
        srv.raw(method, path, &[], b"").await.expect_problem(401);
    }
    srv.delete("/v1/webhooks/good", &w.api, None).await.expect(204);
    srv.delete("/v1/webhooks/good", &w.api, None).await.expect_problem(404);
}

/// An IPv6 address with a zone id (`%lo`, `%eth0`, or `%25eth0` as RFC 6874
/// writes it) names an interface of the service's own host: refused with
/// 422 at PUT whatever the address rules allow, and nothing is stored.
#[tokio::test]
async fn webhook_urls_with_a_zone_id_are_refused() {
    let srv = TestServer::start_with(&[
        ("MESSENGER_CHAT_WEBHOOKS__ALLOW_LOOPBACK", "true"),
        ("MESSENGER_CHAT_WEBHOOKS__ALLOW_PRIVATE", "true"),
    ]);
    let api = srv.api_token.clone();
    let put = |url: &str| json!({"url": url, "eventTypes": ["room.*"]});
    for url in
        ["https://[::1%lo]/", "https://[fe80::1%lo]/in", "https://[fd00::2%eth0]:8443/in", "https://[fe80::1%25eth0]/"]
    {
        let detail = srv.put("/v1/webhooks/zoned", &api, Some(put(url))).await.expect_problem(422);
        assert!(detail.contains("zone id"), "{url}: {detail}");
    }
    srv.get("/v1/webhooks/zoned", &api).await.expect_problem(404);
    // The same addresses without a zone pass the rules this server allows.
    srv.put("/v1/webhooks/plain", &api, Some(put("https://[fd00::2]:8443/in"))).await.expect(201);
}

/// A plain-http receiver on loopback that answers as HTTP/1.0 servers do
/// (the answer, then the connection closed, as Python's `http.server`
/// does): each event is delivered once, not retried as failed.
#[tokio::test]
async fn a_receiver_that_closes_after_answering_gets_each_event_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = got.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // The head, then as many body bytes as Content-Length says.
            let complete = loop {
                let Ok(n) = tcp.read(&mut chunk).await else { break None };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                let Some(end) = text.find("\r\n\r\n") else { continue };
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    break Some(text);
                }
            };
            if let Some(text) = complete {
                let id = text.lines().find_map(|l| l.strip_prefix("webhook-id: ")).unwrap_or_default().to_string();
                seen.lock().unwrap().push(id);
                let _ = tcp.write_all(b"HTTP/1.0 204 No Content\r\n\r\n").await;
            }
            let _ = tcp.shutdown().await;
        }
    });
    let srv = start(&[("MESSENGER_CHAT_WEBHOOKS__ALLOW_LOOPBACK", "true".into())]);
    let api = srv.api_token.clone();
    let url = format!("http://127.0.0.1:{port}/hooks");
    srv.put("/v1/webhooks/plain", &api, Some(json!({"url": url, "eventTypes": ["user.*"]}))).await.expect(201);
    for u in 31..34 {
        srv.put(&format!("/v1/users/{u}"), &api, Some(json!({"displayName": "Plain"}))).await.expect(201);
    }
    let hook = wait_webhook(&srv, "plain", "three deliveries", |h| {
        h["deliveries"].as_array().is_some_and(|d| d.iter().filter(|a| a["status"] == 204).count() == 3)
    })
    .await;
    assert!(hook["deliveries"].as_array().unwrap().iter().all(|a| a["status"] == 204), "no failed attempt: {hook}");
    assert_eq!(got.lock().unwrap().len(), 3, "each event once");
    task.abort();
}

/// A burst of events goes over one kept-alive connection (not a TCP and
/// TLS handshake per event), which is closed after
/// `webhooks.keep_alive_secs` of idleness; with 0, every delivery opens its own.
#[tokio::test]
async fn deliveries_reuse_one_connection_until_it_idles() {
    for (keep_alive, per_event) in [("3", false), ("0", true)] {
        let r = Receiver::start(Mode::Ok).await;
        let mut env = env_for(&r);
        env.push(("MESSENGER_CHAT_WEBHOOKS__KEEP_ALIVE_SECS", keep_alive.into()));
        let srv = start(&env);
        let api = srv.api_token.clone();
        let made = srv.put("/v1/webhooks/kept", &api, Some(json!({"url": r.url(), "eventTypes": ["user.*"]}))).await;
        let secret = made.expect(201)["secret"].as_str().unwrap().to_string();
        // Written at once: the events queue up faster than one delivery each.
        for u in 41..=48 {
            srv.put(&format!("/v1/users/{u}"), &api, Some(json!({"displayName": "Kept"}))).await.expect(201);
        }
        wait_for(&r, "eight deliveries", |g| distinct(g, &secret).len() == 8).await;
        let opened = r.opened.load(Ordering::SeqCst);
        if per_event {
            assert_eq!(opened, r.got().len(), "keep_alive_secs = 0: a connection per delivery");
        } else {
            assert_eq!(opened, 1, "one connection for the burst, not one per event");
            // Idle for over keep_alive_secs (3 s): the service closes it.
            let deadline = Instant::now() + Duration::from_secs(30);
            while r.open.load(Ordering::SeqCst) > 0 {
                assert!(Instant::now() < deadline, "the idle connection was still open after 30 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            srv.put("/v1/users/49", &api, Some(json!({"displayName": "Later"}))).await.expect(201);
            wait_for(&r, "the ninth delivery", |g| distinct(g, &secret).len() == 9).await;
            assert_eq!(r.opened.load(Ordering::SeqCst), 2, "a fresh connection after the idle one closed");
        }
    }
}

/// `webhooks.max_concurrent` bounds the attempts in flight over all
/// webhooks: with one slot, held by a hung attempt, another webhook waits
/// for it; it gets its event once the hung attempt times out.
#[tokio::test]
async fn attempts_in_flight_are_bounded() {
    let hung = Receiver::start(Mode::Hang).await;
    let fine = Receiver::start(Mode::Ok).await;
    let mut env = env_for_both(&hung, &fine);
    env.push(("MESSENGER_CHAT_WEBHOOKS__MAX_CONCURRENT", "1".into()));
    env.push(("MESSENGER_CHAT_WEBHOOKS__TIMEOUT_SECS", "8".into()));
    let srv = start(&env);
    let api = srv.api_token.clone();
    srv.put("/v1/webhooks/hung", &api, Some(json!({"url": hung.url(), "eventTypes": ["*"]}))).await.expect(201);
    srv.put("/v1/organizations/2", &api, Some(json!({"name": "Hold"}))).await.expect(201);
    wait_for(&hung, "the hung attempt", |g| !g.is_empty()).await;
    let made = srv.put("/v1/webhooks/fine", &api, Some(json!({"url": fine.url(), "eventTypes": ["*"]}))).await;
    let secret = made.expect(201)["secret"].as_str().unwrap().to_string();
    let t = Instant::now();
    srv.put("/v1/users/5", &api, Some(json!({"displayName": "Waits"}))).await.expect(201);
    tokio::time::sleep(Duration::from_secs(1)).await;
    if t.elapsed() < Duration::from_secs(6) {
        // Well inside the hung attempt's 8 s: the only slot is still taken.
        assert!(fine.got().is_empty(), "a second attempt ran while the only slot was taken");
    }
    wait_for(&fine, "the event once the slot is free", |g| !g.is_empty()).await;
    assert_eq!(verify(&fine.got()[0], &secret)["type"], "user.created");
}
