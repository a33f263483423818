//! The service remembers who holds a token between requests; none of that
//! may outlive a change. Each test warms the cache with a few requests, makes
//! the change, and checks the very next request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::common::{TestServer, World};

const ROOMS: &str = "/v1/chatrooms?organization_id=1";

/// Uses a token a few times, so the service has it remembered.
async fn warm(srv: &TestServer, token: &str) {
    for _ in 0..3 {
        srv.get(ROOMS, token).await.expect(200);
    }
}

/// The id of the user's PAT named `name`.
async fn token_id(srv: &TestServer, api: &str, user: i64, name: &str) -> i64 {
    let list = srv.get(&format!("/v1/users/{user}/tokens"), api).await;
    let tokens = list.expect(200).as_array().expect("a list").clone();
    tokens.iter().find(|t| t["name"] == name).and_then(|t| t["id"].as_i64()).expect("the token is listed")
}

#[tokio::test]
async fn a_revoked_pat_is_refused_on_the_very_next_request() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    warm(&srv, &w.member.token).await;
    let id = token_id(&srv, &w.api, w.member.id, "phone").await;
    srv.delete(&format!("/v1/users/{}/tokens/{id}", w.member.id), &w.api, None).await.expect(204);
    let detail = srv.get(ROOMS, &w.member.token).await.expect_problem(401);
    assert!(detail.contains("revoked"), "{detail}");
    srv.get("/v1/user/credentials", &w.member.token).await.expect_problem(401);
    // Everyone else's token is still remembered and still works.
    srv.get(ROOMS, &w.owner.token).await.expect(200);
}

/// Requests keep coming with the token while it is revoked: every request
/// sent after the revocation was answered is refused, whatever was in
/// flight when it happened.
#[tokio::test]
async fn no_request_sent_after_a_revocation_gets_in() {
    let srv = Arc::new(TestServer::start());
    let w = World::new(&srv).await;
    warm(&srv, &w.member.token).await;
    let id = token_id(&srv, &w.api, w.member.id, "phone").await;
    let revoked_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (srv, token, revoked_at, stop) = (srv.clone(), w.member.token.clone(), revoked_at.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut after = 0;
            while !stop.load(Ordering::Acquire) {
                let revoked_before_sending = revoked_at.lock().unwrap().is_some();
                let status = srv.get(ROOMS, &token).await.status;
                assert!(matches!(status, 200 | 401), "{status}");
                if revoked_before_sending {
                    assert_eq!(status, 401, "a request sent after the revocation was let in");
                    after += 1;
                }
            }
            after
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    srv.delete(&format!("/v1/users/{}/tokens/{id}", w.member.id), &w.api, None).await.expect(204);
    *revoked_at.lock().unwrap() = Some(Instant::now());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Release);
    let mut after = 0;
    for c in clients {
        after += c.await.expect("a client task");
    }
    assert!(after > 0, "requests were sent after the revocation");
}

#[tokio::test]
async fn a_deactivated_users_token_is_refused_on_the_very_next_request() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    warm(&srv, &w.member.token).await;
    srv.delete(&format!("/v1/users/{}", w.member.id), &w.api, None).await.expect(204);
    srv.get(ROOMS, &w.member.token).await.expect_problem(401);
    srv.get(ROOMS, &w.owner.token).await.expect(200);
}

#[tokio::test]
async fn a_role_change_applies_on_the_very_next_request() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let (user, token) = (w.member.id, &w.member.token);
    let create = || json!({"name": "Board", "organizationID": 1});
    warm(&srv, token).await;
    srv.post("/v1/chatrooms", token, Some(create())).await.expect_problem(403);

    let set = |role: &'static str| {
        let srv = &srv;
        let api = w.api.clone();
        async move {
            let path = format!("/v1/organizations/1/members/{user}");
            srv.put(&path, &api, Some(json!({"role": role}))).await.expect(200);
        }
    };
    set("admin").await;
    srv.post("/v1/chatrooms", token, Some(create())).await.expect(201);
    set("member").await;
    srv.post("/v1/chatrooms", token, Some(create())).await.expect_problem(403);
    srv.get(ROOMS, token).await.expect(200);
    srv.delete(&format!("/v1/organizations/1/members/{user}"), &w.api, None).await.expect(204);
    srv.get(ROOMS, token).await.expect_problem(403);
}

/// Expiry needs time to pass: a token expiring a few seconds after the
/// restart is written while the server is stopped (it holds the file
/// exclusively while it runs), used until it expires, and refused after.
#[tokio::test]
async fn a_remembered_pat_is_refused_once_it_expires() {
    use messenger_chat::model::{Token, TokenKind};
    let mut srv = TestServer::start();
    let w = World::new(&srv).await;
    let secret = format!("mcp_{}", "x".repeat(43));
    assert!(srv.stop(), "the server stops cleanly");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let expires_at = now + 8;
    let store =
        messenger_chat::store::Store::open(&srv.data_dir().join("messenger-chat.redb"), 1 << 20).expect("open the db");
    store
        .write(|wr| {
            wr.put_token(&Token {
                id: 9_000,
                kind: TokenKind::Personal,
                user_id: w.member.id,
                name: "short".into(),
                hash: messenger_chat::secrets::token_hash(&secret),
                created_at: now,
                expires_at: Some(expires_at),
                revoked: false,
            })
        })
        .expect("write the token");
    drop(store);
    srv.restart();
    warm(&srv, &secret).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let until = Duration::from_secs(expires_at as u64).saturating_sub(now);
    assert!(until > Duration::ZERO, "the token expired before it could be used: a very slow start");
    tokio::time::sleep(until + Duration::from_millis(50)).await;
    let detail = srv.get(ROOMS, &secret).await.expect_problem(401);
    assert!(detail.contains("expired"), "{detail}");
    srv.get(ROOMS, &w.member.token).await.expect(200);
}

/// With the cache off every request reads the token records, and behaves the same.
#[tokio::test]
async fn the_cache_can_be_turned_off() {
    let srv = TestServer::start_with(&[("MESSENGER_CHAT_AUTH__TOKEN_CACHE_ENTRIES", "0")]);
    let w = World::new(&srv).await;
    warm(&srv, &w.member.token).await;
    let id = token_id(&srv, &w.api, w.member.id, "phone").await;
    srv.delete(&format!("/v1/users/{}/tokens/{id}", w.member.id), &w.api, None).await.expect(204);
    srv.get(ROOMS, &w.member.token).await.expect_problem(401);
}
