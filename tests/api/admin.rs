//! Administration (API token only): organizations, their members, users and
//! their personal access tokens.

use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::common::{TestServer, World, ids};

/// The name an organization's default room gets is the organization's name:
/// the one black-box window onto a stored organization name.
async fn org_name_via_default_room(srv: &TestServer, org: i64) -> String {
    let created = srv
        .post("/v1/chatrooms/default", &srv.api_token, Some(json!({"organizationID": org, "automationEnabled": false})))
        .await;
    let name = created.expect(201)["name"].as_str().expect("a name").to_string();
    srv.delete(&format!("/v1/chatrooms/default/{org}"), &srv.api_token, None).await.expect(204);
    name
}

#[tokio::test]
async fn an_organization_is_created_renamed_and_deleted_with_its_rooms() {
    let srv = TestServer::start();
    let api = &srv.api_token;

    let created = srv.put("/v1/organizations/7", api, Some(json!({"name": "  Acme  "}))).await;
    assert_eq!(created.expect(201), &json!({"organizationID": 7, "name": "Acme"}), "the name is trimmed");
    let renamed = srv.put("/v1/organizations/7", api, Some(json!({"name": "Acme Corp"}))).await;
    assert_eq!(renamed.expect(200), &json!({"organizationID": 7, "name": "Acme Corp"}));
    assert_eq!(org_name_via_default_room(&srv, 7).await, "Acme Corp");

    let room = srv.post("/v1/chatrooms", api, Some(json!({"name": "Board", "organizationID": 7}))).await;
    let room = crate::common::room_id(room.expect(201));
    srv.put("/v1/organizations/7/members/5", api, Some(json!({"role": "member"}))).await.expect(200);

    srv.delete("/v1/organizations/7", api, None).await.expect(204);
    srv.get(&format!("/v1/chatrooms/{room}"), api).await.expect_problem(404);
    srv.get("/v1/chatrooms?organization_id=7", api).await.expect_problem(404);
    srv.get("/v1/organizations/7/members", api).await.expect_problem(404);
    srv.delete("/v1/organizations/7", api, None).await.expect_problem(404);

    // Created again, it starts empty.
    srv.put("/v1/organizations/7", api, Some(json!({"name": "Acme"}))).await.expect(201);
    assert_eq!(srv.members(7).await, json!([]));
    assert_eq!(srv.get("/v1/chatrooms?organization_id=7", api).await.expect(200), &json!({"entries": [], "total": 0}));
}

#[tokio::test]
async fn an_organization_name_has_1_to_255_characters() {
    let srv = TestServer::start();
    let api = &srv.api_token;
    srv.put("/v1/organizations/1", api, Some(json!({"name": "Acme"}))).await.expect(201);

    for bad in [String::new(), "   ".to_string(), "x".repeat(256), "y".repeat(300)] {
        srv.put("/v1/organizations/1", api, Some(json!({"name": bad}))).await.expect_problem(422);
        srv.put("/v1/organizations/2", api, Some(json!({"name": bad}))).await.expect_problem(422);
    }
    assert_eq!(org_name_via_default_room(&srv, 1).await, "Acme", "a rejected rename changes nothing");
    srv.get("/v1/organizations/2/members", api).await.expect_problem(404);

    let long = "z".repeat(255);
    srv.put("/v1/organizations/2", api, Some(json!({"name": long}))).await.expect(201);
    // Non-ASCII names count characters, not bytes.
    let umlauts = "ä".repeat(255);
    srv.put("/v1/organizations/3", api, Some(json!({"name": umlauts}))).await.expect(201);
}

#[tokio::test]
async fn organization_and_user_ids_must_be_positive_integers() {
    let srv = TestServer::start();
    let api = &srv.api_token;
    for id in ["0", "-1"] {
        srv.put(&format!("/v1/organizations/{id}"), api, Some(json!({"name": "X"}))).await.expect_problem(422);
        srv.put(&format!("/v1/users/{id}"), api, Some(json!({"displayName": "X"}))).await.expect_problem(422);
        srv.delete(&format!("/v1/organizations/{id}"), api, None).await.expect_problem(422);
        srv.put(&format!("/v1/organizations/1/members/{id}"), api, Some(json!({"role": "member"})))
            .await
            .expect_problem(422);
        srv.post(&format!("/v1/users/{id}/tokens"), api, Some(json!({}))).await.expect_problem(422);
    }
    for id in ["abc", "1.5"] {
        srv.put(&format!("/v1/organizations/{id}"), api, Some(json!({"name": "X"}))).await.expect_problem(400);
        srv.put(&format!("/v1/users/{id}"), api, Some(json!({"displayName": "X"}))).await.expect_problem(400);
    }
}

#[tokio::test]
async fn members_are_listed_by_user_id_and_roles_can_change() {
    let srv = TestServer::start();
    let api = &srv.api_token;
    srv.put("/v1/organizations/1", api, Some(json!({"name": "Acme"}))).await.expect(201);

    for (user, role) in [(30, "member"), (10, "owner"), (20, "admin")] {
        let set = srv.put(&format!("/v1/organizations/1/members/{user}"), api, Some(json!({"role": role}))).await;
        assert_eq!(set.expect(200), &json!({"userID": user, "role": role}));
    }
    assert_eq!(
        srv.members(1).await,
        json!([
            {"userID": 10, "role": "owner"},
            {"userID": 20, "role": "admin"},
            {"userID": 30, "role": "member"},
        ])
    );

    srv.put("/v1/organizations/1/members/30", api, Some(json!({"role": "admin"}))).await.expect(200);
    for bad in [json!({"role": "king"}), json!({"role": ""}), json!({"role": "Owner"})] {
        srv.put("/v1/organizations/1/members/30", api, Some(bad)).await.expect_problem(422);
    }
    srv.put("/v1/organizations/1/members/30", api, Some(json!({"role": 1}))).await.expect_problem(400);
    srv.put("/v1/organizations/9/members/30", api, Some(json!({"role": "member"}))).await.expect_problem(404);
    assert_eq!(srv.members(1).await[2], json!({"userID": 30, "role": "admin"}), "rejected changes change nothing");

    // Setting a role created the user record: the user can get a token.
    srv.post("/v1/users/30/tokens", api, Some(json!({"name": "phone"}))).await.expect(201);

    srv.delete("/v1/organizations/1/members/20", api, None).await.expect(204);
    srv.delete("/v1/organizations/1/members/20", api, None).await.expect_problem(404);
    srv.delete("/v1/organizations/9/members/10", api, None).await.expect_problem(404);
    let left: Vec<_> = srv.members(1).await.as_array().unwrap().iter().map(|m| m["userID"].clone()).collect();
    assert_eq!(left, vec![json!(10), json!(30)]);
}

#[tokio::test]
async fn a_member_removed_from_the_organization_leaves_all_its_rooms() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let room = w.room(&srv, "Board").await;
    let second = w.room(&srv, "Kitchen").await;

    for user in [w.room_admin.id, w.room_mod.id, w.assigned.id] {
        srv.delete(&format!("/v1/organizations/1/members/{user}"), &w.api, None).await.expect(204);
    }
    for r in [room, second] {
        let got = srv.room(r).await;
        assert_eq!(ids(&got["admins"]), Vec::<i64>::new(), "{got}");
        assert_eq!(ids(&got["moderators"]), Vec::<i64>::new(), "{got}");
        assert_eq!(ids(&got["assignedUsers"]), Vec::<i64>::new(), "{got}");
    }
    // No longer a member: not even reading.
    srv.get(&format!("/v1/chatrooms/{room}"), &w.room_admin.token).await.expect_problem(403);
}

#[tokio::test]
async fn a_user_is_created_renamed_deactivated_and_reactivated() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let api = &w.api;

    let created = srv.put("/v1/users/40", api, Some(json!({"displayName": "Ann"}))).await;
    assert_eq!(created.expect(201), &json!({"userID": 40, "displayName": "Ann", "deactivated": false}));
    let renamed = srv.put("/v1/users/40", api, Some(json!({"displayName": "Ann B."}))).await;
    assert_eq!(renamed.expect(200), &json!({"userID": 40, "displayName": "Ann B.", "deactivated": false}));

    // The room admin of a room is deactivated: their token stops working,
    // they leave the room and the organization.
    let room = w.room(&srv, "Board").await;
    srv.get(&format!("/v1/chatrooms/{room}"), &w.room_admin.token).await.expect(200);
    srv.delete(&format!("/v1/users/{}", w.room_admin.id), api, None).await.expect(204);
    srv.get(&format!("/v1/chatrooms/{room}"), &w.room_admin.token).await.expect_problem(401);
    assert_eq!(ids(&srv.room(room).await["admins"]), Vec::<i64>::new());
    let members = srv.members(1).await;
    assert!(
        members.as_array().unwrap().iter().all(|m| m["userID"] != w.room_admin.id),
        "a deactivated user stays in no organization: {members}"
    );
    srv.post(&format!("/v1/users/{}/tokens", w.room_admin.id), api, Some(json!({}))).await.expect_problem(404);

    // PUT reactivates; the old token stays revoked, a new one works.
    let back = srv.put(&format!("/v1/users/{}", w.room_admin.id), api, Some(json!({"displayName": "Rita"}))).await;
    assert_eq!(back.expect(200)["deactivated"], false);
    srv.get("/v1/user/credentials", &w.room_admin.token).await.expect_problem(401);
    let fresh = srv.post(&format!("/v1/users/{}/tokens", w.room_admin.id), api, Some(json!({}))).await;
    let fresh = fresh.expect(201)["token"].as_str().unwrap().to_string();
    srv.get("/v1/user/credentials", &fresh).await.expect(200);

    srv.delete("/v1/users/999", api, None).await.expect_problem(404);
}

#[tokio::test]
async fn a_display_name_has_1_to_255_characters() {
    let srv = TestServer::start();
    let api = &srv.api_token;
    srv.put("/v1/users/1", api, Some(json!({"displayName": "Ann"}))).await.expect(201);
    for bad in [String::new(), " ".to_string(), "n".repeat(256), "n".repeat(300)] {
        srv.put("/v1/users/1", api, Some(json!({"displayName": bad}))).await.expect_problem(422);
        srv.put("/v1/users/2", api, Some(json!({"displayName": bad}))).await.expect_problem(422);
    }
    srv.put("/v1/users/1", api, Some(json!({"displayName": 5}))).await.expect_problem(400);
    // The rejected PUTs neither renamed user 1 nor created user 2.
    let again = srv.put("/v1/users/1", api, Some(json!({"displayName": "Ann"}))).await;
    assert_eq!(again.expect(200)["displayName"], "Ann");
    srv.post("/v1/users/2/tokens", api, Some(json!({}))).await.expect_problem(404);
}

fn parse_time(v: &serde_json::Value) -> OffsetDateTime {
    let s = v.as_str().unwrap_or_else(|| panic!("expected an RFC 3339 time, got {v}"));
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("{s} is not RFC 3339: {e}"))
}

#[track_caller]
fn assert_days_from_now(v: &serde_json::Value, days: i64) {
    let at = parse_time(v);
    let expected = OffsetDateTime::now_utc() + time::Duration::days(days);
    let off = (at - expected).abs();
    assert!(off <= time::Duration::days(1), "expiresAt {at} is not {days} days from now");
}

#[tokio::test]
async fn personal_access_tokens_are_issued_listed_and_revoked() {
    let srv = TestServer::start();
    let api = &srv.api_token;
    srv.put("/v1/users/5", api, Some(json!({"displayName": "Ann"}))).await.expect(201);

    let phone = srv.post("/v1/users/5/tokens", api, Some(json!({"name": "phone", "expiresInDays": 30}))).await;
    let phone = phone.expect(201).clone();
    let secret = phone["token"].as_str().expect("the token").to_string();
    assert!(secret.starts_with("mcp_") && secret.len() == 4 + 43, "a PAT looks like mcp_ + 43 chars: {secret}");
    assert_days_from_now(&phone["expiresAt"], 30);
    let default = srv.post("/v1/users/5/tokens", api, Some(json!({}))).await;
    assert_days_from_now(&default.expect(201)["expiresAt"], 90);
    let longest = srv.post("/v1/users/5/tokens", api, Some(json!({"name": "tablet", "expiresInDays": 365}))).await;
    assert_days_from_now(&longest.expect(201)["expiresAt"], 365);
    let unnamed = srv.post("/v1/users/5/tokens", api, Some(json!({"expiresInDays": 2}))).await;
    assert_days_from_now(&unnamed.expect(201)["expiresAt"], 2);

    let listed = srv.get("/v1/users/5/tokens", api).await;
    let list = listed.expect(200).as_array().expect("a list").clone();
    assert_eq!(list.len(), 4, "{}", listed.text);
    assert!(!listed.text.contains(&secret[4..]), "the list must never show a token: {}", listed.text);
    let first = list.iter().find(|t| t["id"] == phone["id"]).expect("the phone token is listed");
    assert_eq!(first["name"], "phone");
    assert_eq!(first["revoked"], false);
    assert_eq!(parse_time(&first["expiresAt"]), parse_time(&phone["expiresAt"]));
    assert!(parse_time(&first["createdAt"]) <= OffsetDateTime::now_utc() + time::Duration::minutes(1));
    for key in ["id", "name", "createdAt", "expiresAt", "revoked"] {
        assert!(list.iter().all(|t| t.get(key).is_some()), "every token shows {key}: {}", listed.text);
    }

    srv.get("/v1/user/credentials", &secret).await.expect(200);
    srv.delete(&format!("/v1/users/5/tokens/{}", phone["id"]), api, None).await.expect(204);
    srv.get("/v1/user/credentials", &secret).await.expect_problem(401);
    let listed = srv.get("/v1/users/5/tokens", api).await;
    let revoked = listed.expect(200).as_array().unwrap().iter().find(|t| t["id"] == phone["id"]).cloned();
    assert_eq!(revoked.expect("a revoked token is still listed")["revoked"], true);

    srv.delete("/v1/users/5/tokens/9999", api, None).await.expect_problem(404);
    srv.delete("/v1/users/5/tokens/0", api, None).await.expect_problem(422);
    srv.post("/v1/users/999/tokens", api, Some(json!({}))).await.expect_problem(404);
    srv.get("/v1/users/999/tokens", api).await.expect_problem(404);
}

#[tokio::test]
async fn a_token_lives_1_to_365_days() {
    let srv = TestServer::start();
    let api = &srv.api_token;
    srv.put("/v1/users/5", api, Some(json!({"displayName": "Ann"}))).await.expect(201);
    for days in [0, -1, 366, 10_000] {
        srv.post("/v1/users/5/tokens", api, Some(json!({"expiresInDays": days}))).await.expect_problem(422);
    }
    for bad in [json!({"expiresInDays": "thirty"}), json!({"expiresInDays": 1.5}), json!({"name": 3})] {
        srv.post("/v1/users/5/tokens", api, Some(bad)).await.expect_problem(400);
    }
    assert_eq!(srv.get("/v1/users/5/tokens", api).await.expect(200), &json!([]), "no token was issued");
    srv.post("/v1/users/5/tokens", api, Some(json!({"expiresInDays": 1}))).await.expect(201);
}

#[tokio::test]
async fn administration_needs_the_api_token() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let owner = &w.owner.token;

    srv.put("/v1/organizations/1", owner, Some(json!({"name": "Mine"}))).await.expect_problem(403);
    srv.put("/v1/organizations/5", owner, Some(json!({"name": "Mine"}))).await.expect_problem(403);
    srv.delete("/v1/organizations/1", owner, None).await.expect_problem(403);
    srv.get("/v1/organizations/1/members", owner).await.expect_problem(403);
    srv.put("/v1/organizations/1/members/13", owner, Some(json!({"role": "owner"}))).await.expect_problem(403);
    srv.delete("/v1/organizations/1/members/12", owner, None).await.expect_problem(403);
    srv.put("/v1/users/11", owner, Some(json!({"displayName": "Me"}))).await.expect_problem(403);
    srv.delete("/v1/users/12", owner, None).await.expect_problem(403);
    srv.post("/v1/users/11/tokens", owner, Some(json!({}))).await.expect_problem(403);
    srv.get("/v1/users/11/tokens", owner).await.expect_problem(403);
    srv.delete("/v1/users/11/tokens/1", owner, None).await.expect_problem(403);

    assert_eq!(org_name_via_default_room(&srv, 1).await, "Acme");
    srv.get("/v1/organizations/5/members", &w.api).await.expect_problem(404);
    let members = srv.members(1).await;
    assert!(members.as_array().unwrap().contains(&json!({"userID": 13, "role": "member"})), "{members}");
    assert!(members.as_array().unwrap().contains(&json!({"userID": 12, "role": "admin"})), "{members}");
    let tokens = srv.get("/v1/users/11/tokens", &w.api).await;
    assert_eq!(tokens.expect(200).as_array().unwrap().len(), 1, "{}", tokens.text);
    srv.get("/v1/user/credentials", &w.admin.token).await.expect(200);
}

#[tokio::test]
async fn administration_bodies_are_checked_like_room_bodies() {
    let srv = TestServer::start();
    let api = srv.api_token.clone();
    srv.put("/v1/organizations/1", &api, Some(json!({"name": "Acme"}))).await.expect(201);
    srv.put("/v1/users/5", &api, Some(json!({"displayName": "Ann"}))).await.expect(201);

    for (method, path) in [
        ("PUT", "/v1/organizations/1"),
        ("PUT", "/v1/organizations/1/members/5"),
        ("PUT", "/v1/users/5"),
        ("POST", "/v1/users/5/tokens"),
    ] {
        srv.raw_api(method, path, Some("application/json"), b"{\"name\": ").await.expect_problem(400);
        srv.raw_api(method, path, Some("text/plain"), b"{}").await.expect_problem(415);
        let typo = srv.request(method, path, &api, Some(&json!({"nmae": "x"}))).await.expect_problem(400);
        assert!(typo.contains("nmae"), "{method} {path}: the detail names the unknown field: {typo}");
    }
    assert_eq!(org_name_via_default_room(&srv, 1).await, "Acme");
    assert_eq!(srv.members(1).await, json!([]));
    assert_eq!(srv.get("/v1/users/5/tokens", &api).await.expect(200), &json!([]));
}

#[tokio::test]
async fn a_token_is_revoked_only_through_its_own_user() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let tokens = srv.get("/v1/users/11/tokens", &w.api).await.expect(200).clone();
    let owners_token = tokens[0]["id"].as_i64().expect("a token id");
    srv.delete(&format!("/v1/users/12/tokens/{owners_token}"), &w.api, None).await.expect_problem(404);
    srv.get("/v1/user/credentials", &w.owner.token).await.expect(200);
    assert_eq!(srv.get("/v1/users/11/tokens", &w.api).await.expect(200), &tokens);
}
