//! What one request may cost, and whose allowance a call uses: lists are
//! capped and refused before any work on them when the caller may not change
//! the room, password derivations are bounded (503 with Retry-After beyond
//! the queue), and rate limits count per caller and user, after authorization.

use serde_json::{Value, json};

use crate::common::{TestServer, World, ids, stable};

/// `n` consecutive user ids from `from`.
fn run(from: i64, n: i64) -> Vec<i64> {
    (from..from + n).collect()
}

/// A JSON body with `token`, sent as is.
async fn send_json(srv: &TestServer, method: &str, path: &str, token: &str, body: &str) -> crate::common::Resp {
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    srv.raw(method, path, &headers, body.as_bytes()).await
}

#[tokio::test]
async fn lists_above_the_cap_are_refused_and_a_list_at_the_cap_passes() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;

    // 1,001 users over the three lists of a new room: refused, naming the key.
    let over = json!({"name": "Big", "organizationID": 1, "admins": run(1000, 1),
        "moderators": run(2000, 500), "assignedUsers": run(3000, 500)});
    let detail = srv.post("/v1/chatrooms", &w.api, Some(over)).await.expect_problem(422);
    assert!(detail.contains("rooms.max_users_per_request") && detail.contains("1001"), "{detail}");
    // The lists count together even where they name the same users.
    let same = json!({"name": "Big", "organizationID": 1, "admins": run(1000, 600), "assignedUsers": run(1000, 401)});
    srv.post("/v1/chatrooms", &w.api, Some(same)).await.expect_problem(422);
    assert_eq!(srv.rooms(1).await["total"], 0, "nothing was created");

    // Exactly 1,000: created with all of them (and the creating room admin is not counted).
    let at = json!({"name": "Big", "organizationID": 1, "admins": run(1000, 100),
        "moderators": run(2000, 400), "assignedUsers": run(3000, 500)});
    let created = srv.post("/v1/chatrooms", &w.owner.token, Some(at)).await.expect(201).clone();
    let mut admins = run(1000, 100);
    admins.insert(0, w.owner.id);
    assert_eq!(ids(&created["admins"]), admins);
    assert_eq!(ids(&created["moderators"]), run(2000, 400));
    assert_eq!(ids(&created["assignedUsers"]), run(3000, 500));
    let room = created["roomID"].as_i64().expect("a roomID");

    // Adding and removing: the same cap.
    let users = format!("/v1/chatrooms/{room}/users");
    let before = srv.room(room).await;
    for method in ["POST", "DELETE"] {
        let body = json!({"assignedUsers": run(5000, 1001)});
        let detail = srv.request(method, &users, &w.api, Some(&body)).await.expect_problem(422);
        assert!(detail.contains("rooms.max_users_per_request"), "{method}: {detail}");
        let body = json!({"moderators": run(6000, 1), "assignedUsers": run(5000, 1000)});
        srv.request(method, &users, &w.owner.token, Some(&body)).await.expect_problem(422);
    }
    assert_eq!(stable(&srv.room(room).await), stable(&before), "refused lists change nothing");

    let added = srv.post(&users, &w.api, Some(json!({"assignedUsers": run(5000, 1000)}))).await;
    let assigned = ids(&added.expect(200)["assignedUsers"]);
    assert_eq!(assigned.len(), 1500);
    assert_eq!(assigned[500..], run(5000, 1000)[..]);
    let removed = srv.delete(&users, &w.api, Some(json!({"assignedUsers": run(5000, 1000)}))).await;
    assert_eq!(ids(&removed.expect(200)["assignedUsers"]), run(3000, 500));
}

#[tokio::test]
async fn the_cap_is_the_configured_one() {
    let srv = TestServer::start_with(&[("MESSENGER_CHAT_ROOMS__MAX_USERS_PER_REQUEST", "3")]);
    let w = World::new(&srv).await;
    let room = w.room(&srv, "Board").await;
    let users = format!("/v1/chatrooms/{room}/users");
    let detail = srv.post(&users, &w.api, Some(json!({"admins": [31], "assignedUsers": [32, 33, 34]}))).await;
    assert!(detail.expect_problem(422).contains("at most 3"));
    let added = srv.post(&users, &w.api, Some(json!({"admins": [31], "assignedUsers": [32, 33]}))).await;
    assert_eq!(ids(&added.expect(200)["assignedUsers"]), vec![17, 32, 33]);
}

#[tokio::test]
async fn a_caller_who_may_not_change_the_room_is_refused_before_the_lists_are_read() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let room = w.room(&srv, "Board").await;
    let before = srv.room(room).await;
    // Two million ids, each of which would be refused (not positive, repeated,
    // two thousand times the cap): the caller's answer must come first.
    let list = vec!["-1"; 2_000_000].join(",");
    let users_body = format!("{{\"assignedUsers\": [{list}]}}");
    let users = format!("/v1/chatrooms/{room}/users");
    for method in ["POST", "DELETE"] {
        for (who, token) in [("outsider", &w.outsider.token), ("member", &w.member.token)] {
            let resp = send_json(&srv, method, &users, token, &users_body).await;
            let detail = resp.expect_problem(403);
            assert!(!detail.contains("max_users_per_request"), "{method} by the {who}: {detail}");
        }
        for token in [&w.outsider.token, &w.api] {
            send_json(&srv, method, "/v1/chatrooms/9999/users", token, &users_body).await.expect_problem(404);
        }
        // Allowed to change the room: then the body itself is refused, by
        // its size before its lists are read.
        let detail = send_json(&srv, method, &users, &w.api, &users_body).await.expect_problem(413);
        assert!(detail.contains("server.max_small_body_bytes"), "{detail}");
    }
    let create = |org: i64| format!("{{\"name\": \"Big\", \"organizationID\": {org}, \"assignedUsers\": [{list}]}}");
    for token in [&w.outsider.token, &w.member.token, &w.other_owner.token] {
        send_json(&srv, "POST", "/v1/chatrooms", token, &create(1)).await.expect_problem(403);
    }
    send_json(&srv, "POST", "/v1/chatrooms", &w.api, &create(99)).await.expect_problem(404);
    send_json(&srv, "POST", "/v1/chatrooms", &w.api, &create(1)).await.expect_problem(422);
    assert_eq!(stable(&srv.room(room).await), stable(&before), "nothing changed");
    assert_eq!(srv.rooms(1).await["total"], 1, "nothing was created");
}

#[tokio::test]
async fn the_same_user_twice_in_one_list_is_refused_for_every_caller() {
    let srv = TestServer::start();
    let w = World::new(&srv).await;
    let room = w.room(&srv, "Board").await;
    let before = srv.room(room).await;
    let users = format!("/v1/chatrooms/{room}/users");
    // A moderator may change assignedUsers, so the list is looked at: one repeat in 1,000.
    let mut list = run(100, 999);
    list.push(600);
    for token in [&w.room_mod.token, &w.room_admin.token, &w.api] {
        let detail = srv.post(&users, token, Some(json!({"assignedUsers": list}))).await.expect_problem(422);
        assert!(detail.contains("assignedUsers names user 600 twice"), "{detail}");
        srv.delete(&users, token, Some(json!({"assignedUsers": [17, 17]}))).await.expect_problem(422);
    }
    let create = json!({"name": "Dup", "organizationID": 1, "moderators": [16, 3, 16]});
    let detail = srv.post("/v1/chatrooms", &w.owner.token, Some(create)).await.expect_problem(422);
    assert!(detail.contains("moderators names user 16 twice"), "{detail}");
    assert_eq!(stable(&srv.room(room).await), stable(&before));
}

/// Every limit counted once per call, with no refill during the test.
fn slow_refill() -> [(&'static str, &'static str); 3] {
    [
        ("MESSENGER_CHAT_LIMITS__TOKEN_ISSUE_REFILL_SECS", "600"),
        ("MESSENGER_CHAT_LIMITS__CREDENTIALS_REFILL_SECS", "600"),
        ("MESSENGER_CHAT_LIMITS__LOGIN_REFILL_SECS", "600"),
    ]
}

#[track_caller]
fn expect_rate_limited(resp: &crate::common::Resp) {
    resp.expect_problem(429);
    let secs: u64 = resp.header("retry-after").parse().unwrap_or_else(|_| {
        panic!("{}: 429 without a Retry-After in seconds: {:?}", resp.request, resp.header("retry-after"))
    });
    assert!((1..=600).contains(&secs), "{}: Retry-After {secs}", resp.request);
}

#[tokio::test]
async fn a_member_cannot_use_up_the_api_tokens_token_issue_allowance() {
    let srv = TestServer::start_with(&slow_refill());
    let w = World::new(&srv).await;
    let path = format!("/v1/users/{}/tokens", w.owner.id);
    let body = json!({"name": "phone"});
    for _ in 0..20 {
        srv.post(&path, &w.member.token, Some(body.clone())).await.expect_problem(403);
        srv.post(&path, &w.owner.token, Some(body.clone())).await.expect_problem(403);
    }
    // World issued one token for the owner; a burst of 10 leaves 9.
    for n in 0..9 {
        let issued = srv.post(&path, &w.api, Some(body.clone())).await;
        assert_eq!(issued.status, 201, "issue {n}: {}", issued.text);
    }
    expect_rate_limited(&srv.post(&path, &w.api, Some(body.clone())).await);
    // Another user's allowance is their own.
    srv.post(&format!("/v1/users/{}/tokens", w.admin.id), &w.api, Some(body)).await.expect(201);
}

#[tokio::test]
async fn a_users_own_calls_do_not_use_up_the_api_tokens_allowance_for_them() {
    let srv = TestServer::start_with(&slow_refill());
    let w = World::new(&srv).await;
    let mine = "/v1/user/credentials";
    let for_member = format!("/v1/user/credentials?user_id={}", w.member.id);
    let first = srv.get(mine, &w.member.token).await.expect(200).clone();
    for _ in 1..10 {
        assert_eq!(srv.get(mine, &w.member.token).await.expect(200), &first);
    }
    expect_rate_limited(&srv.get(mine, &w.member.token).await);
    // The backend still gets the member's credentials, ten times, then it is limited too.
    for _ in 0..10 {
        assert_eq!(srv.get(&for_member, &w.api).await.expect(200), &first);
    }
    expect_rate_limited(&srv.get(&for_member, &w.api).await);
    // … and neither touched the others' allowances.
    srv.get(mine, &w.owner.token).await.expect(200);
    srv.get(&format!("/v1/user/credentials?user_id={}", w.owner.id), &w.api).await.expect(200);

    // Login: the member's own ten attempts (503: no homeserver here) use up
    // their bucket, not the API token's for them.
    let device = json!({"deviceID": "PHONE"});
    for _ in 0..10 {
        srv.post("/v1/user/login", &w.member.token, Some(device.clone())).await.expect_problem(503);
    }
    expect_rate_limited(&srv.post("/v1/user/login", &w.member.token, Some(device.clone())).await);
    let login_for_member = format!("/v1/user/login?user_id={}", w.member.id);
    srv.post(&login_for_member, &w.api, Some(device.clone())).await.expect_problem(503);
    // Refused calls (a PAT naming another user) take nothing: the owner,
    // who used one call above, still has nine of their own.
    let someone_else = format!("/v1/user/credentials?user_id={}", w.admin.id);
    for _ in 0..20 {
        srv.get(&someone_else, &w.owner.token).await.expect_problem(403);
    }
    for _ in 0..9 {
        srv.get(mine, &w.owner.token).await.expect(200);
    }
    expect_rate_limited(&srv.get(mine, &w.owner.token).await);
}

#[tokio::test]
async fn derivations_beyond_the_slots_and_the_queue_get_503_with_retry_after() {
    // One derivation at a time, one waiting, each long enough (64 MiB, 3
    // passes) that a burst of requests finds both taken.
    let srv = TestServer::start_with(&[
        ("MESSENGER_CHAT_SECURITY__ARGON2_CONCURRENCY", "1"),
        ("MESSENGER_CHAT_SECURITY__ARGON2_QUEUE", "1"),
        ("MESSENGER_CHAT_SECURITY__ARGON2_MEMORY_KIB", "65536"),
        ("MESSENGER_CHAT_SECURITY__ARGON2_ITERATIONS", "3"),
        ("MESSENGER_CHAT_LIMITS__CREDENTIALS_BURST", "1000"),
    ]);
    let w = World::new(&srv).await;
    let users = [w.owner.id, w.admin.id, w.member.id, w.outsider.id, w.room_admin.id, w.room_mod.id, w.assigned.id];
    let paths: Vec<String> =
        (0..32).map(|n| format!("/v1/user/credentials?user_id={}", users[n % users.len()])).collect();
    let answers = futures_util::future::join_all(paths.iter().map(|p| srv.get(p, &w.api))).await;

    let mut ok = 0;
    let mut busy = 0;
    let mut seen: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
    for resp in &answers {
        match resp.status {
            200 => {
                ok += 1;
                seen.insert(resp.request.clone(), resp.body.clone());
            }
            503 => {
                busy += 1;
                let detail = resp.expect_problem(503);
                assert!(detail.contains("retry"), "{detail}");
                assert_eq!(resp.header("retry-after"), "1", "{}: 503 without Retry-After", resp.request);
            }
            other => panic!("{} answered {other} (expected 200 or 503): {}", resp.request, resp.text),
        }
    }
    assert!(busy > 0, "none of {} concurrent derivations was refused ({ok} answered 200)", answers.len());
    assert!(ok > 0, "every concurrent derivation was refused");
    // Once the crowd is gone, each is answered, with what the lucky ones got.
    for path in &paths {
        let again = srv.get(path, &w.api).await.expect(200).clone();
        if let Some(earlier) = seen.get(&format!("GET {path}")) {
            assert_eq!(&again, earlier, "{path}");
        }
    }
}
