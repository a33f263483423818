//! Logging the app in to Matrix: the tokens of `POST /v1/user/login` work
//! on the homeserver, a claim joins the room, refresh works, and a
//! deactivated user is refused.

use messenger_chat::matrix::ErrCode;
use serde_json::json;

use crate::poll::eventually;
use crate::service::{CONVERGE, matrix_id, on_shared_synapse, room_id};

#[tokio::test]
async fn login_claim_send_and_refresh() {
    let (svc, admin) = on_shared_synapse().await;
    svc.org(1, "Acme").await;
    let ann = svc.user(1, "Ann", Some((1, "member"))).await;
    svc.user(2, "Bob", Some((1, "member"))).await;
    let id = room_id(&svc.create_room(json!({"name": "Lobby", "organizationID": 1, "assignedUsers": [1]})).await);
    let mx = matrix_id(&svc.ready(id, CONVERGE).await);

    let resp = svc.call("POST", "/v1/user/login", &ann, Some(json!({"deviceID": "E2EPHONE1"}))).await;
    let login = resp.expect(200).clone();
    assert_eq!(login["userID"], svc.mxid(1).as_str(), "{login}");
    assert_eq!(login["deviceID"], "E2EPHONE1", "{login}");
    assert_eq!(login["wellKnown"]["m.homeserver"]["base_url"], admin.hs.url.as_str(), "{login}");
    assert!(login["expiresInMS"].as_u64().is_some_and(|ms| ms > 0), "refreshable login: {login}");
    let access = login["accessToken"].as_str().filter(|t| !t.is_empty()).expect("an access token").to_string();
    let refresh = login["refreshToken"].as_str().filter(|t| !t.is_empty()).expect("a refresh token").to_string();

    let me = admin.matrix.whoami(&access).await.expect("whoami with the access token");
    assert_eq!(me.user_id, svc.mxid(1));
    assert_eq!(me.device_id.as_deref(), Some("E2EPHONE1"));
    let joined = admin.matrix.user_joined_rooms(&access).await.expect("joined_rooms");
    assert!(!joined.contains(&mx), "joined before claiming (only invited): {joined:?}");

    let claimed = svc.call("POST", &format!("/v1/chatrooms/{id}/claim"), &ann, None).await.expect(200).clone();
    assert_eq!(claimed["syncState"], "ready", "the claim reached the homeserver within sync_wait: {claimed}");
    let joined = admin.matrix.user_joined_rooms(&access).await.expect("joined_rooms");
    assert!(joined.contains(&mx), "after the claim, {mx} is not in Ann's joined_rooms {joined:?}");
    let event = admin.matrix.send_text(&access, &mx, "e2e-1", "hello from the app").await;
    assert!(event.as_ref().is_ok_and(|e| e.starts_with('$')), "Ann cannot send into the claimed room: {event:?}");

    let refreshed = admin.matrix.refresh(&refresh).await.expect("the refresh token refreshes");
    assert_ne!(refreshed.access_token, access);
    let me = admin.matrix.whoami(&refreshed.access_token).await.expect("whoami with the refreshed token");
    assert_eq!((me.user_id, me.device_id.as_deref()), (svc.mxid(1), Some("E2EPHONE1")));

    // Bob is in no room. The API token acts for him; without a device id
    // the homeserver picks one.
    let resp = svc.call("POST", "/v1/user/login?user_id=2", &svc.api, Some(json!({}))).await;
    let login = resp.expect(200).clone();
    assert_eq!(login["userID"], svc.mxid(2).as_str(), "{login}");
    let device = login["deviceID"].as_str().filter(|d| !d.is_empty()).expect("a device id").to_string();
    let me = admin.matrix.whoami(login["accessToken"].as_str().unwrap_or_default()).await.expect("Bob's whoami");
    assert_eq!((me.user_id, me.device_id), (svc.mxid(2), Some(device)));
    let account = admin.user(&svc.mxid(2)).await.expect("Bob's account exists");
    assert_eq!(account["displayname"], "Bob", "{account}");
}

#[tokio::test]
async fn deactivated_user_cannot_log_in() {
    let (svc, admin) = on_shared_synapse().await;
    svc.org(1, "Acme").await;
    let ann = svc.user(1, "Ann", Some((1, "member"))).await;
    let id = room_id(&svc.create_room(json!({"name": "Lobby", "organizationID": 1, "assignedUsers": [1]})).await);
    let mx = matrix_id(&svc.ready(id, CONVERGE).await);
    svc.call("POST", &format!("/v1/chatrooms/{id}/claim"), &ann, None).await.expect(200);
    let resp = svc.call("POST", "/v1/user/login", &ann, Some(json!({"deviceID": "E2EGONE"}))).await;
    let access = resp.expect(200)["accessToken"].as_str().expect("an access token").to_string();
    admin.matrix.whoami(&access).await.expect("the session works before deactivation");

    svc.call("DELETE", "/v1/users/1", &svc.api, None).await.expect(204);
    let with_pat = svc.call("POST", "/v1/user/login", &ann, Some(json!({"deviceID": "E2EGONE"}))).await;
    with_pat.expect_problem(401);
    let for_user = svc.call("POST", "/v1/user/login?user_id=1", &svc.api, Some(json!({"deviceID": "E2EGONE"}))).await;
    assert!(
        (400..500).contains(&for_user.status),
        "login for a deactivated user answered {} (expected a 4xx): {}",
        for_user.status,
        for_user.text
    );
    for_user.expect_problem(for_user.status);

    // The homeserver's side: account deactivated, session ended, out of the room.
    let u1 = svc.mxid(1);
    eventually("the Matrix account deactivated", CONVERGE, || async {
        let account = admin.user(&u1).await.ok_or("no account")?;
        if account["deactivated"] == true { Ok(()) } else { Err(account.to_string()) }
    })
    .await;
    let err = admin.matrix.whoami(&access).await.expect_err("the old session still works after deactivation");
    assert!(err.is(&ErrCode::UnknownToken), "{err:?}");
    eventually("the deactivated user out of the room", CONVERGE, || async {
        let state = admin.state(&mx).await.ok_or("the room is gone")?;
        if state.membership(&u1) == "leave" { Ok(()) } else { Err(format!("members {:?}", state.members())) }
    })
    .await;
}

/// With the pass-through proxy on, the app's homeserver is the service:
/// login's `wellKnown` names the service as the app reached it, the same
/// URL its own `/.well-known/matrix/client` gives, and a configured
/// `proxy.public_url` wins over both.
#[tokio::test]
async fn login_through_the_proxy_points_the_app_at_the_service() {
    let hs = crate::synapse::shared();
    let svc = crate::service::Service::start_with(
        &hs,
        crate::service::SYNC_WAIT_MS,
        &[("MESSENGER_CHAT_PROXY__ENABLED", "true")],
    );
    svc.org(1, "Acme").await;
    let ann = svc.user(1, "Ann", Some((1, "member"))).await;
    let login =
        svc.call("POST", "/v1/user/login", &ann, Some(json!({"deviceID": "E2EPROXY"}))).await.expect(200).clone();
    let base = login["wellKnown"]["m.homeserver"]["base_url"].as_str().expect("a base_url").to_string();
    assert!(base.starts_with("https://127.0.0.1:"), "login names the service as reached, got {base}");
    assert_ne!(base, hs.url, "login names the homeserver behind the proxy");
    let well_known = svc.call("GET", "/.well-known/matrix/client", "", None).await.expect(200).clone();
    assert_eq!(well_known["m.homeserver"]["base_url"], base.as_str(), "{well_known}");

    let public =
        [("MESSENGER_CHAT_PROXY__ENABLED", "true"), ("MESSENGER_CHAT_PROXY__PUBLIC_URL", "https://chat.example.org")];
    let svc = crate::service::Service::start_with(&hs, crate::service::SYNC_WAIT_MS, &public);
    svc.org(1, "Acme").await;
    let ann = svc.user(1, "Ann", Some((1, "member"))).await;
    let login =
        svc.call("POST", "/v1/user/login", &ann, Some(json!({"deviceID": "E2EPROXY"}))).await.expect(200).clone();
    assert_eq!(login["wellKnown"]["m.homeserver"]["base_url"], "https://chat.example.org", "{login}");
}

/// The value of one metric line on the public `/metrics` (API token).
async fn metric(svc: &crate::service::Service, name: &str) -> u64 {
    let resp = svc.call("GET", "/metrics", &svc.api, None).await;
    resp.expect(200);
    let text = resp.text;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}"))
}

/// With room for one derived password, two users logging in by turns push
/// each other out of the cache: each login after an eviction derives again
/// and still works on Synapse, a login of the user kept derives nothing, and
/// a deactivated user's password leaves memory at once.
#[tokio::test]
async fn login_works_after_a_password_cache_eviction() {
    let hs = crate::synapse::shared();
    let admin = crate::synapse::Admin::new(&hs).await;
    let svc = crate::service::Service::start_with(
        &hs,
        crate::service::SYNC_WAIT_MS,
        &[("MESSENGER_CHAT_SECURITY__PASSWORD_CACHE_SIZE", "1")],
    );
    svc.org(1, "Acme").await;
    let ann = svc.user(1, "Ann", Some((1, "member"))).await;
    let bob = svc.user(2, "Bob", Some((1, "member"))).await;
    const DERIVED: &str = "messenger_chat_password_derivations_total";
    const KEPT: &str = "messenger_chat_password_cache_entries";

    let login = |who: &str, device: &str| {
        let body = json!({"deviceID": device});
        let who = who.to_string();
        let svc = &svc;
        async move { svc.call("POST", "/v1/user/login", &who, Some(body)).await.expect(200).clone() }
    };
    // The background sync makes both accounts (deriving both passwords): let it end first.
    eventually("the outbox drained", CONVERGE, || async {
        match metric(&svc, "messenger_chat_outbox_depth").await {
            0 => Ok(()),
            n => Err(format!("{n} left")),
        }
    })
    .await;
    login(&ann, "E2EKEEP1").await;
    let after_first = metric(&svc, DERIVED).await;
    login(&ann, "E2EKEEP2").await;
    assert_eq!(metric(&svc, DERIVED).await, after_first, "Ann's second login derived her password again");
    login(&bob, "E2EKEEP3").await;
    assert_eq!(metric(&svc, DERIVED).await, after_first + 1, "Bob's first login derives his");
    assert_eq!(metric(&svc, KEPT).await, 1, "password_cache_size = 1 keeps one");
    // Ann's password left for Bob's: derived again, and Synapse takes it.
    let again = login(&ann, "E2EKEEP4").await;
    assert_eq!(metric(&svc, DERIVED).await, after_first + 2, "Ann's password was still kept beside Bob's");
    let access = again["accessToken"].as_str().expect("an access token");
    let me = admin.matrix.whoami(access).await.expect("the session after the eviction works on Synapse");
    assert_eq!((me.user_id, me.device_id.as_deref()), (svc.mxid(1), Some("E2EKEEP4")));

    svc.call("DELETE", "/v1/users/1", &svc.api, None).await.expect(204);
    assert_eq!(metric(&svc, KEPT).await, 0, "the deactivated user's password is still in memory");
}
