//! With a real homeserver: rooms reach it and become `ready` with a Matrix
//! id, the Matrix-id form of a room path works, and login answers.
//!
//! Needs `SYNAPSE_URL` and `SYNAPSE_SHARED_SECRET_FILE` as exported by
//! `scripts/test-with-synapse.sh`; without them these tests say so and pass.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{TestServer, World, ids, room_id, stable};

/// A server on the shared Synapse. Every server gets its own account
/// prefix: each has its own key, hence its own Matrix passwords.
fn on_synapse() -> Option<(TestServer, String)> {
    on_synapse_with(&[])
}

/// [`on_synapse`] with more settings.
fn on_synapse_with(extra: &[(&str, &str)]) -> Option<(TestServer, String)> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (Ok(url), Ok(secret_file)) = (std::env::var("SYNAPSE_URL"), std::env::var("SYNAPSE_SHARED_SECRET_FILE")) else {
        panic!(
            "SYNAPSE_URL / SYNAPSE_SHARED_SECRET_FILE are not set: run these tests with scripts/test-with-synapse.sh"
        );
    };
    let prefix = format!("t{}n{}u", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let bot = format!("{prefix}bot");
    let mut env = vec![
        ("MESSENGER_CHAT_MATRIX__HOMESERVER_URL", url.as_str()),
        ("MESSENGER_CHAT_MATRIX__REGISTRATION_SHARED_SECRET_FILE", &secret_file),
        ("MESSENGER_CHAT_MATRIX__SERVER_NAME", "localhost"),
        ("MESSENGER_CHAT_MATRIX__USER_PREFIX", &prefix),
        ("MESSENGER_CHAT_MATRIX__BOT_LOCALPART", &bot),
        ("MESSENGER_CHAT_MATRIX__REQUEST_TIMEOUT_MS", "10000"),
    ];
    env.extend_from_slice(extra);
    Some((TestServer::start_with(&env), prefix))
}

/// Polls the room until the homeserver matches it.
async fn wait_ready(srv: &TestServer, room: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = srv.room(room).await;
        if now["syncState"] == "ready" {
            return now;
        }
        assert!(Instant::now() < deadline, "room {room} did not become ready within 60 s: {now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn path_encoded(matrix_id: &str) -> String {
    matrix_id.replace('!', "%21").replace(':', "%3A")
}

#[tokio::test]
async fn a_room_reaches_the_homeserver_and_answers_to_its_matrix_id() {
    let Some((srv, _prefix)) = on_synapse() else { return };
    srv.raw("GET", "/readyz", &[], b"").await.expect(200);
    let w = World::new(&srv).await;
    let room = w.room(&srv, "Board").await;
    let ready = wait_ready(&srv, room).await;
    let matrix_id = ready["matrixRoomID"].as_str().expect("a Matrix room id").to_string();
    // Room version 12 ids have no `:server` part; older ones do.
    assert!(matrix_id.starts_with('!') && matrix_id.len() > 1, "{ready}");
    assert!(ready["syncError"].is_null(), "{ready}");
    // The event log says so, as the system: `room.ready` with the Matrix id, after `room.created`.
    let log = srv.get("/v1/events?organization_id=1&limit=1000", &w.api).await.expect(200).clone();
    let of_room: Vec<&serde_json::Value> =
        log["events"].as_array().unwrap().iter().filter(|e| e["data"]["roomID"] == json!(room)).collect();
    assert_eq!(of_room[0]["type"], "room.created", "{log}");
    let ready_event = of_room.iter().find(|e| e["type"] == "room.ready").expect("a room.ready event");
    assert_eq!(ready_event["actor"], json!({"type": "system"}));
    assert_eq!(ready_event["data"]["matrixRoomID"], matrix_id.as_str());

    // Changes reach the homeserver too.
    let path = format!("/v1/chatrooms/{room}");
    let renamed = srv.patch(&path, &w.room_admin.token, Some(json!({"name": "Boardroom"}))).await;
    assert_eq!(renamed.expect(200)["name"], "Boardroom");
    let claimed = srv.post(&format!("{path}/claim"), &w.assigned.token, None).await;
    assert_eq!(ids(&claimed.expect(200)["assignedUsers"]), vec![17]);
    let added = srv.post(&format!("{path}/users"), &w.api, Some(json!({"assignedUsers": [13]}))).await;
    assert_eq!(ids(&added.expect(200)["assignedUsers"]), vec![13, 17]);
    let ready = wait_ready(&srv, room).await;
    assert_eq!(ready["matrixRoomID"], matrix_id.as_str(), "the Matrix room stays the same");

    for path in [format!("/v1/chatrooms/{}", path_encoded(&matrix_id)), format!("/v1/chatrooms/{matrix_id}")] {
        // The claim below changes the room; let each round start from a synced room.
        let ready = wait_ready(&srv, room).await;
        let found = srv.get(&path, &w.member.token).await;
        assert_eq!(stable(found.expect(200)), stable(&ready), "{path}");
        let claimed = srv.post(&format!("{path}/claim"), &w.room_mod.token, None).await;
        assert_eq!(room_id(claimed.expect(200)), room);
    }
}

#[tokio::test]
async fn login_returns_a_matrix_session() {
    let Some((srv, prefix)) = on_synapse() else { return };
    let w = World::new(&srv).await;
    let credentials = srv.get("/v1/user/credentials", &w.member.token).await;
    assert_eq!(credentials.expect(200)["username"], format!("@{prefix}13:localhost"));

    let login = srv.post("/v1/user/login", &w.member.token, Some(json!({"deviceID": "PHONE1"}))).await;
    let session = login.expect(200).clone();
    assert!(session["accessToken"].as_str().is_some_and(|t| !t.is_empty()), "{session}");
    assert_eq!(session["deviceID"], "PHONE1");
    assert_eq!(session["userID"], format!("@{prefix}13:localhost"));
    assert!(session["expiresInMS"].is_u64(), "{session}");
    assert!(session["refreshToken"].is_string(), "{session}");
    assert!(session["wellKnown"]["m.homeserver"]["base_url"].is_string(), "{session}");

    let for_user = srv.post("/v1/user/login?user_id=11", &w.api, Some(json!({}))).await;
    assert_eq!(for_user.expect(200)["userID"], format!("@{prefix}11:localhost"));
}

/// The app needs one host: with `proxy.enabled` the homeserver's client API
/// is reached through the service, and the credentials it hands out log in there.
#[tokio::test]
async fn the_credentials_log_in_through_the_proxy() {
    let Some((srv, prefix)) = on_synapse_with(&[("MESSENGER_CHAT_PROXY__ENABLED", "true")]) else { return };
    let w = World::new(&srv).await;
    let versions = srv.raw("GET", "/_matrix/client/versions", &[], b"").await;
    assert!(versions.expect(200)["versions"].is_array(), "{}", versions.text);

    let credentials = srv.get("/v1/user/credentials", &w.member.token).await.expect(200).clone();
    let login = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": credentials["username"]},
        "password": credentials["password"],
    });
    let body = serde_json::to_vec(&login).unwrap();
    // Credentials handed out are credentials that work: the account exists by now.
    let session = srv.raw("POST", "/_matrix/client/v3/login", &[("content-type", "application/json")], &body).await;
    let session = session.expect(200);
    assert_eq!(session["user_id"], format!("@{prefix}13:localhost"));
    let token = format!("Bearer {}", session["access_token"].as_str().expect("an access token"));
    let whoami = srv.raw("GET", "/_matrix/client/v3/account/whoami", &[("authorization", &token)], b"").await;
    assert_eq!(whoami.expect(200)["user_id"], format!("@{prefix}13:localhost"));
}
