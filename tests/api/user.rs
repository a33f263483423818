//! The calling user's Matrix side: credentials and login.

use serde_json::json;

use crate::common::{TestServer, World};

#[tokio::test]
async fn credentials_are_the_users_own_and_stable() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;

    let first = srv.get("/v1/user/credentials", &w.member.token).await;
    let first = first.expect(200).clone();
    let keys: Vec<&String> = first.as_object().expect("an object").keys().collect();
    assert_eq!(keys.len(), 2, "exactly username and password: {first}");
    assert_eq!(first["username"], "@u13:localhost");
    let password = first["password"].as_str().expect("a password");
    assert!(password.len() >= 16, "a generated password is long: {password:?}");

    let again = srv.get("/v1/user/credentials", &w.member.token).await;
    assert_eq!(again.expect(200), &first, "the same on every call");
    let via_api = srv.get("/v1/user/credentials?user_id=13", &w.api).await;
    assert_eq!(via_api.expect(200), &first, "the API token acting for user 13 sees the same");

    let other = srv.get("/v1/user/credentials", &w.owner.token).await;
    let other = other.expect(200);
    assert_eq!(other["username"], "@u11:localhost");
    assert_ne!(other["password"], first["password"], "every user has their own password");
    // A user in no organization has a Matrix account all the same.
    let outsider = srv.get("/v1/user/credentials", &w.outsider.token).await;
    assert_eq!(outsider.expect(200)["username"], "@u14:localhost");
}

#[tokio::test]
async fn the_api_token_must_name_the_user_for_credentials() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    srv.get("/v1/user/credentials", &w.api).await.expect_problem(400);
    srv.get("/v1/user/credentials?user_id=abc", &w.api).await.expect_problem(400);
    srv.get("/v1/user/credentials?user_id=0", &w.api).await.expect_problem(422);
    srv.get("/v1/user/credentials?user_id=-7", &w.api).await.expect_problem(422);
    srv.get("/v1/user/credentials?user_id=999", &w.api).await.expect_problem(404);
    srv.raw("GET", "/v1/user/credentials", &[], b"").await.expect_problem(401);
}

#[tokio::test]
async fn login_is_unavailable_without_a_homeserver() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let device = json!({"deviceID": "PHONE1"});
    srv.post("/v1/user/login", &w.member.token, Some(device.clone())).await.expect_problem(503);
    srv.post("/v1/user/login", &w.member.token, Some(json!({}))).await.expect_problem(503);
    srv.post("/v1/user/login?user_id=13", &w.api, Some(device.clone())).await.expect_problem(503);
    srv.raw("POST", "/v1/user/login", &[("content-type", "application/json")], b"{}").await.expect_problem(401);
    srv.post("/v1/user/login", &w.revoked, Some(device)).await.expect_problem(401);
    srv.post("/v1/user/login", &w.member.token, Some(json!({"deviceID": 5}))).await.expect_problem(400);
    let broken = format!("Bearer {}", w.member.token);
    let headers = [("authorization", broken.as_str()), ("content-type", "application/json")];
    srv.raw("POST", "/v1/user/login", &headers, b"{\"deviceID\":").await.expect_problem(400);
}
