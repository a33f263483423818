//! Authentication: which tokens open the door, in which header, and what a
//! caller without a valid token sees.

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::common::{TestServer, World};

#[tokio::test]
async fn a_request_without_a_valid_token_gets_401_with_www_authenticate() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let path = "/v1/chatrooms?organization_id=1";

    srv.raw("GET", path, &[], b"").await.expect_problem(401);
    let unknown_pat = format!("mcp_{}", "A".repeat(43));
    let unknown_api = format!("mca_{}", "A".repeat(43));
    for auth in [
        "Bearer ".to_string(),
        "Bearer hello".to_string(),
        format!("Bearer {unknown_pat}"),
        format!("Bearer {unknown_api}"),
        format!("Basic {}", w.api),
        format!("Bearer {}x", w.api),
        format!("Bearer {}", &w.owner.token[..w.owner.token.len() - 1]),
    ] {
        srv.raw("GET", path, &[("authorization", &auth)], b"").await.expect_problem(401);
    }
    srv.raw("GET", path, &[("api-token", &unknown_pat)], b"").await.expect_problem(401);
    srv.raw("GET", path, &[("api-token", "")], b"").await.expect_problem(401);

    // Writes are refused the same way and change nothing.
    let body = br#"{"name": "Sneaky", "organizationID": 1}"#;
    let resp = srv.raw("POST", "/v1/chatrooms", &[("content-type", "application/json")], body).await;
    resp.expect_problem(401);
    assert_eq!(srv.rooms(1).await["total"], 0);
}

#[tokio::test]
async fn the_401_detail_never_echoes_the_token() {
    let srv = TestServer::start();
    let almost = format!("mcp_{}", "S3cr3t".repeat(7));
    let resp = srv.get("/v1/user/credentials", &almost).await;
    let detail = resp.expect_problem(401);
    assert!(!resp.text.contains("S3cr3t"), "the problem repeats the token: {detail}");
}

#[tokio::test]
async fn tokens_work_as_bearer_or_api_token_header() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let path = "/v1/chatrooms?organization_id=1";
    for token in [&w.api, &w.owner.token, &w.member.token] {
        let bearer = format!("Bearer {token}");
        srv.raw("GET", path, &[("authorization", &bearer)], b"").await.expect(200);
        srv.raw("GET", path, &[("api-token", token)], b"").await.expect(200);
    }
    // The scheme name is case-insensitive (RFC 9110).
    let lower = format!("bearer {}", w.api);
    srv.raw("GET", path, &[("authorization", &lower)], b"").await.expect(200);
}

#[tokio::test]
async fn a_revoked_pat_gets_401() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    srv.get("/v1/chatrooms?organization_id=1", &w.revoked).await.expect_problem(401);
    srv.get("/v1/user/credentials", &w.revoked).await.expect_problem(401);
    srv.post("/v1/chatrooms/default", &w.revoked, Some(json!({"organizationID": 1}))).await.expect_problem(401);
    // The member's other token is untouched.
    srv.get("/v1/chatrooms?organization_id=1", &w.member.token).await.expect(200);
    assert_eq!(srv.rooms(1).await["total"], 0);
}

#[tokio::test]
async fn a_configured_api_token_works_and_none_is_generated() {
    let token = format!("mca_{}", "k".repeat(43));
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    let hashes = format!("[\"{hash}\"]");
    let srv = TestServer::start_with(&[("MESSENGER_CHAT_AUTH__API_TOKEN_HASHES", &hashes)]);
    assert!(
        srv.stdout_lines.iter().all(|l| !l.contains("API token")),
        "with a configured API token no other is generated: {:?}",
        srv.stdout_lines
    );
    srv.put("/v1/organizations/1", &token, Some(json!({"name": "Acme"}))).await.expect(201);
    let other = format!("mca_{}", "j".repeat(43));
    srv.put("/v1/organizations/1", &other, Some(json!({"name": "Evil"}))).await.expect_problem(401);
}

/// Expiry needs time to pass, so an old token is made the way the service
/// would have stored it: written into the server's database file while the
/// server is stopped (it holds the file exclusively while it runs).
#[tokio::test]
async fn an_expired_pat_gets_401() {
    use messenger_chat::model::{Token, TokenKind};
    let mut srv = TestServer::start();
    let w = World::new(&srv).await;
    let secret = format!("mcp_{}", "e".repeat(43));
    assert!(srv.stop(), "the server stops cleanly");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let store =
        messenger_chat::store::Store::open(&srv.data_dir().join("messenger-chat.redb"), 1 << 20).expect("open the db");
    store
        .write(|wr| {
            wr.put_token(&Token {
                id: 9_000,
                kind: TokenKind::Personal,
                user_id: 13,
                name: "last month".into(),
                hash: messenger_chat::secrets::token_hash(&secret),
                created_at: now - 30 * 86_400,
                expires_at: Some(now - 86_400),
                revoked: false,
            })
        })
        .expect("write the token");
    drop(store);
    srv.restart();
    let detail = srv.get("/v1/chatrooms?organization_id=1", &secret).await.expect_problem(401);
    assert!(detail.contains("expired"), "the detail should say the token expired: {detail}");
    srv.get("/v1/chatrooms?organization_id=1", &w.member.token).await.expect(200);
    srv.get("/v1/chatrooms?organization_id=1", &w.api).await.expect(200);
}
