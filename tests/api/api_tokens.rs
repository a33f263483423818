//! API tokens as an operator manages them from the command line: the
//! first-start token says where it went and how to revoke it, stops working
//! once the config lists other tokens, `token list-api` shows ids and names
//! (never a secret), and `token revoke-api` makes a token get 401.

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::common::TestServer;

fn hash_of(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// `token list-api` (the server stopped): the rows after the header, split at tabs.
fn list(srv: &TestServer) -> (String, Vec<Vec<String>>) {
    let (ok, out, err) = srv.cli(&["token", "list-api"]);
    assert!(ok, "token list-api failed: {err}");
    let rows = out.lines().skip(1).map(|l| l.split('\t').map(str::to_string).collect()).collect();
    (out, rows)
}

/// Whether `token` is accepted as an API token (an idempotent administration call).
async fn works(srv: &TestServer, token: &str) -> bool {
    let resp = srv.put("/v1/organizations/1", token, Some(json!({"name": "Acme"}))).await;
    if resp.status == 401 {
        return false;
    }
    assert!(matches!(resp.status, 200 | 201), "{} {}", resp.status, resp.text);
    true
}

#[tokio::test]
async fn the_first_start_token_gives_way_to_configured_ones_and_revoked_tokens_get_401() {
    let mut srv = TestServer::start();
    let first = srv.api_token.clone();
    let said = srv.stdout_lines.join("\n");
    let id = hash_of(&first)[..12].to_string();
    assert!(said.contains("only its SHA-256 is kept") && said.contains("messenger-chat.redb"), "{said}");
    assert!(said.contains(&format!("token revoke-api {id}")), "the exact revoke command: {said}");
    assert!(said.contains("token list-api"), "{said}");
    assert!(works(&srv, &first).await);

    assert!(srv.stop());
    let (out, rows) = list(&srv);
    assert_eq!(rows, vec![vec![id.clone(), "first start".into(), "database".into(), "active".into()]], "{out}");
    assert!(!out.contains(&first) && !out.contains(&hash_of(&first)), "the list shows a secret or a whole hash: {out}");

    // The operator configures the backend's own token, named.
    let backend = format!("mca_{}", "b".repeat(43));
    let config = format!("[auth]\napi_token_hashes = [{{ hash = \"{}\", name = \"backend\" }}]\n", hash_of(&backend));
    std::fs::write(srv.work_dir().join("config.toml"), config).unwrap();
    srv.restart();
    assert!(srv.stdout_lines.iter().all(|l| !l.contains("API token")), "no new token: {:?}", srv.stdout_lines);
    let refused = srv.get("/v1/organizations/1/members", &first).await.expect_problem(401);
    assert!(refused.contains("auth.api_token_hashes"), "{refused}");
    assert!(works(&srv, &backend).await, "the configured token works");

    assert!(srv.stop());
    let backend_id = hash_of(&backend)[..12].to_string();
    let (out, rows) = list(&srv);
    assert_eq!(
        rows,
        vec![
            vec![backend_id.clone(), "backend".into(), "config auth.api_token_hashes[0]".into(), "active".into()],
            vec![
                id.clone(),
                "first start".into(),
                "database".into(),
                "not accepted: auth.api_token_hashes does not list it".into()
            ],
        ],
        "{out}"
    );
    assert!(!out.contains(&backend), "{out}");

    // Revoking the configured token: refused from the next start on, even
    // though the config still lists it, and the operator is told to remove it.
    let (ok, said, err) = srv.cli(&["token", "revoke-api", &backend_id]);
    assert!(ok, "{err}");
    assert!(said.contains("auth.api_token_hashes[0]") && said.contains("remove"), "{said}");
    let (ok, _, err) = srv.cli(&["token", "revoke-api", "0123456789ab"]);
    assert!(!ok && err.contains("no API token"), "{err}");
    let (_, rows) = list(&srv);
    assert_eq!(rows[0][3], "revoked");
    srv.restart();
    let refused = srv.get("/v1/organizations/1/members", &backend).await.expect_problem(401);
    assert!(refused.contains("revoked"), "{refused}");
    assert!(!works(&srv, &first).await);
}

#[tokio::test]
async fn a_revoked_first_start_token_gets_401_and_a_new_one_is_made() {
    let mut srv = TestServer::start();
    let first = srv.api_token.clone();
    assert!(works(&srv, &first).await);
    assert!(srv.stop());
    let id = hash_of(&first)[..12].to_string();
    let (ok, said, err) = srv.cli(&["token", "revoke-api", &id]);
    assert!(ok, "{err}");
    assert!(said.contains(&id) && !said.contains("remove"), "{said}");
    srv.restart();
    // Nothing else would let the operator in: the start makes a new token.
    let second = srv.api_token.clone();
    assert_ne!(second, first, "a new first-start token: {:?}", srv.stdout_lines);
    let refused = srv.get("/v1/organizations/1/members", &first).await.expect_problem(401);
    assert!(refused.contains("revoked"), "{refused}");
    assert!(works(&srv, &second).await);
    assert!(srv.stop());
    let (_, rows) = list(&srv);
    let status: Vec<(&str, &str)> = rows.iter().map(|r| (r[0].as_str(), r[3].as_str())).collect();
    assert_eq!(status, vec![(id.as_str(), "revoked"), (&hash_of(&second)[..12], "active")]);
}
