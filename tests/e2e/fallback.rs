//! `matrix.admin_api`: the service without Synapse's admin API (`"off"`),
//! on the real Synapse — claims through the user's own session, display
//! names and deactivation too, and a deletion that empties, closes and
//! leaves the room, its history staying there; and `"auto"` finding it.

use http::Method;
use serde_json::{Value, json};

use crate::poll::eventually;
use crate::service::{CONVERGE, SYNC_WAIT_MS, Service, matrix_id, room_id};
use crate::synapse::{Admin, enc, shared};

/// The detailed `/readyz` once the service has settled its use of the
/// admin API (`adminApi.used` no longer `null`).
async fn settled_readyz(svc: &Service) -> Value {
    eventually("adminApi settled in /readyz", CONVERGE, || async {
        let resp = svc.call("GET", "/readyz", &svc.api, None).await;
        if resp.status == 200 && !resp.body["adminApi"]["used"].is_null() {
            Ok(resp.body.clone())
        } else {
            Err(format!("{} {}", resp.status, resp.text))
        }
    })
    .await
}

/// The room's events, newest first, as the admin API lists them.
async fn timeline(admin: &Admin, room: &str) -> Vec<Value> {
    let path = format!("/_synapse/admin/v1/rooms/{}/messages?dir=b&limit=200", enc(room));
    let (status, body) = admin.call(Method::GET, &path, None).await;
    assert_eq!(status, 200, "the timeline of {room}: {body}");
    body["chunk"].as_array().cloned().unwrap_or_default()
}

/// The value of a counter in `/metrics`, `None` when it is not listed.
async fn metric(svc: &Service, name: &str) -> Option<u64> {
    let text = svc.call("GET", "/metrics", &svc.api, None).await.text;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn without_the_admin_api_claims_join_and_deleted_rooms_are_left_with_their_history() {
    let hs = shared();
    let admin = Admin::new(&hs).await;
    let svc = Service::start_with(&hs, SYNC_WAIT_MS, &[("MESSENGER_CHAT_MATRIX__ADMIN_API", "off")]);
    let ready = settled_readyz(&svc).await;
    assert_eq!(ready["adminApi"]["setting"], "off", "{ready}");
    assert_eq!(ready["adminApi"]["used"], false, "{ready}");
    let bot = admin.user(&svc.bot()).await.expect("the bot's account");
    assert_eq!(bot["admin"], false, "with admin_api = off the bot is no server admin: {bot}");

    svc.org(1, "Acme").await;
    let ann = svc.user(1, "Ann", Some((1, "member"))).await;
    svc.user(2, "Bob", Some((1, "member"))).await;
    svc.user(3, "Cy", Some((1, "member"))).await;
    let room =
        svc.create_room(json!({"name": "Doomed", "organizationID": 1, "admins": [1], "assignedUsers": [2, 3]})).await;
    let id = room_id(&room);
    let mx = matrix_id(&svc.ready(id, CONVERGE).await);

    // A claim: the bot's invite, accepted by Ann's own session.
    svc.call("POST", &format!("/v1/chatrooms/{id}/claim"), &ann, None).await.expect(200);
    let login = svc.call("POST", "/v1/user/login", &ann, Some(json!({"deviceID": "E2EFALLBACK"}))).await;
    let token = login.expect(200)["accessToken"].as_str().expect("an access token").to_string();
    eventually("the claimed room in Ann's joined_rooms", CONVERGE, || async {
        let joined = admin.matrix.user_joined_rooms(&token).await.map_err(|e| e.to_string())?;
        if joined.contains(&mx) { Ok(()) } else { Err(format!("{joined:?}")) }
    })
    .await;
    let state = admin.state(&mx).await.expect("the room exists");
    assert_eq!(state.membership(&svc.mxid(2)), "invite", "{:?}", state.members());

    // A display name and a deactivation, through the users' own sessions.
    let put = svc.call("PUT", "/v1/users/2", &svc.api, Some(json!({"displayName": "Bobby"}))).await;
    put.expect(200);
    eventually("Bob's new display name on Synapse", CONVERGE, || async {
        let user = admin.user(&svc.mxid(2)).await.ok_or("no account")?;
        if user["displayname"] == "Bobby" { Ok(()) } else { Err(user.to_string()) }
    })
    .await;
    svc.call("DELETE", "/v1/users/3", &svc.api, None).await.expect(204);
    eventually("Cy's account deactivated on Synapse", CONVERGE, || async {
        let user = admin.user(&svc.mxid(3)).await.ok_or("no account")?;
        if user["deactivated"] == true { Ok(()) } else { Err(user.to_string()) }
    })
    .await;

    // The deletion: everyone out, the room invite-only, the bot gone; the
    // room and its history stay on Synapse, which the log and /metrics say.
    assert_eq!(metric(&svc, "messenger_chat_rooms_left_with_history_total").await, Some(0));
    svc.call("DELETE", &format!("/v1/chatrooms/{id}"), &svc.api, None).await.expect(204);
    svc.call("GET", &format!("/v1/chatrooms/{id}"), &svc.api, None).await.expect_problem(404);
    eventually("the deletion counted in /metrics", CONVERGE, || async {
        match metric(&svc, "messenger_chat_rooms_left_with_history_total").await {
            Some(1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(admin.room_exists(&mx).await, "the room stays on the homeserver");
    // Synapse keeps no current state of a room its users have all left: the
    // timeline tells, and is the history that stays.
    let history = timeline(&admin, &mx).await;
    let latest = |kind: &str, key: &str| {
        history.iter().find(|e| e["type"] == kind && e["state_key"] == key).map(|e| e["content"].clone())
    };
    assert_eq!(latest("m.room.name", "").unwrap_or_default()["name"], "Doomed", "the history is kept");
    let rules = latest("m.room.join_rules", "").unwrap_or_default();
    assert_eq!(rules["join_rule"], "invite", "invite-only: {rules}");
    for user in [svc.bot(), svc.mxid(1), svc.mxid(2), svc.mxid(3)] {
        let member = latest("m.room.member", &user).unwrap_or_default();
        assert_eq!(member["membership"], "leave", "{user} is out: {member}");
    }
    let joined = admin.matrix.user_joined_rooms(&token).await.expect("Ann's joined_rooms");
    assert!(!joined.contains(&mx), "Ann is still in the deleted room: {joined:?}");
    let (status, body) = admin
        .as_user(&token, Method::POST, &format!("/_matrix/client/v3/rooms/{}/join", enc(&mx)), Some(&json!({})))
        .await;
    // Invite-only, and nobody of this homeserver is left in it to let her in.
    assert!((400..500).contains(&status), "Ann cannot come back: {status} {body}");
    let joined = admin.matrix.user_joined_rooms(&token).await.expect("Ann's joined_rooms");
    assert!(!joined.contains(&mx), "Ann came back into the deleted room: {joined:?}");
    let log = svc.log();
    assert!(log.contains("history stays on the homeserver"), "the log says what was kept:\n{log}");
    assert!(log.contains("homeserver admin API not used"), "the log says so at start:\n{log}");
}

#[tokio::test]
async fn auto_probes_the_admin_api_and_uses_it() {
    let svc = Service::start(&shared(), SYNC_WAIT_MS);
    svc.org(1, "Acme").await;
    let ready = settled_readyz(&svc).await;
    assert_eq!(ready["adminApi"]["setting"], "auto", "{ready}");
    assert_eq!(ready["adminApi"]["used"], true, "{ready}");
    assert!(ready["adminApi"]["why"].as_str().is_some_and(|w| w.contains("probe")), "{ready}");
    eventually("the log says the admin API is in use", CONVERGE, || async {
        if svc.log().contains("homeserver admin API in use") { Ok(()) } else { Err(svc.log_tail()) }
    })
    .await;
}

/// A bot that is no server admin (made under `"off"`): `"on"` refuses to go
/// on (`/readyz` 503 naming the key, nothing made on the homeserver), and
/// `"auto"` finds the admin API refused and goes on without it.
#[tokio::test]
async fn on_waits_for_the_admin_api_and_auto_goes_on_without_it() {
    const KEY: &str = "MESSENGER_CHAT_MATRIX__ADMIN_API";
    let hs = shared();
    let mut svc = Service::start_with(&hs, SYNC_WAIT_MS, &[(KEY, "off")]);
    settled_readyz(&svc).await;
    svc.org(1, "Acme").await;
    svc.user(1, "Ann", Some((1, "member"))).await;

    svc.kill();
    svc.set_env(KEY, "on");
    svc.restart();
    let refused = eventually("/readyz 503 naming matrix.admin_api", CONVERGE, || async {
        let resp = svc.call("GET", "/readyz", &svc.api, None).await;
        let detail = resp.body["detail"].as_str().unwrap_or_default().to_string();
        if resp.status == 503 && detail.contains("matrix.admin_api") { Ok(detail) } else { Err(resp.text) }
    })
    .await;
    assert!(refused.contains("matrix.admin_api = \"on\""), "the detail names the setting: {refused}");
    let room = svc.create_room(json!({"name": "Waits", "organizationID": 1, "assignedUsers": [1]})).await;
    let id = room_id(&room);
    assert_eq!(room["syncState"], "pending", "nothing is made on the homeserver: {room}");

    svc.kill();
    svc.set_env(KEY, "auto");
    svc.restart();
    let ready = settled_readyz(&svc).await;
    assert_eq!(ready["adminApi"]["setting"], "auto", "{ready}");
    assert_eq!(ready["adminApi"]["used"], false, "the probe was refused: {ready}");
    assert!(ready["adminApi"]["why"].as_str().is_some_and(|w| w.contains("no server admin")), "{ready}");
    svc.ready(id, CONVERGE).await;
}
