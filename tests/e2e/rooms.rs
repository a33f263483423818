//! Rooms on the homeserver: creation with name, avatar, power levels and
//! invites; deletion; a scheduled deletion that fires.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use time::format_description::well_known::Rfc3339;

use crate::poll::eventually;
use crate::service::{CONVERGE, matrix_id, on_shared_synapse, room_id};

/// A real 1×1 transparent PNG.
pub const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// A real 1×1 transparent GIF, the avatar a PATCH changes to.
const GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

#[tokio::test]
async fn created_room_exists_on_synapse_as_described() {
    let (svc, admin) = on_shared_synapse().await;
    svc.org(1, "Acme").await;
    svc.user(1, "Ann Admin", Some((1, "member"))).await;
    svc.user(2, "Mo Moderator", Some((1, "member"))).await;
    svc.user(3, "Al Assigned", Some((1, "member"))).await;

    let created = svc
        .create_room(json!({
            "name": "Board", "organizationID": 1, "admins": [1], "moderators": [2], "assignedUsers": [3],
            "automationEnabled": false, "avatar": PNG,
        }))
        .await;
    let id = room_id(&created);
    let room = svc.ready(id, CONVERGE).await;
    let mx = matrix_id(&room);
    let avatar = room["avatarURL"].as_str().unwrap_or_default().to_string();
    assert!(avatar.starts_with("mxc://localhost/"), "avatarURL of a room with an avatar: {room}");

    let state = admin.state(&mx).await.unwrap_or_else(|| panic!("Synapse does not know {mx} of room {room}"));
    assert_eq!(state.creator(), svc.bot(), "the service's bot creates the room");
    assert_eq!(state.marker(), Some(id), "m.room.create carries the room id: {:?}", state.content("m.room.create", ""));
    assert_eq!(state.content("m.room.name", "")["name"], "Board");
    assert_eq!(state.content("m.room.avatar", "")["url"], avatar.as_str(), "m.room.avatar is the avatarURL");
    assert_eq!(state.content("m.room.join_rules", "")["join_rule"], "invite");
    let expected = [(svc.mxid(1), 100), (svc.mxid(2), 50)].into_iter().collect();
    assert_eq!(
        state.power_users(),
        expected,
        "power levels: admins 100, moderators 50, the bot (v12 creator) unlisted"
    );
    assert_eq!(state.level_of(&svc.mxid(3)), 0, "assigned users have no power");
    for user in [1, 2, 3] {
        assert_eq!(state.membership(&svc.mxid(user)), "invite", "user {user} invited; members: {:?}", state.members());
    }
    assert_eq!(state.membership(&svc.bot()), "join");

    let (status, bytes) = admin.download(&avatar).await;
    assert_eq!(status, 200, "download of the avatar {avatar}: {}", String::from_utf8_lossy(&bytes));
    assert_eq!(bytes.as_ref(), PNG, "the avatar on the homeserver is the uploaded image");

    // The accounts were made with the users' display names.
    for (user, name) in [(1, "Ann Admin"), (2, "Mo Moderator"), (3, "Al Assigned")] {
        let account = admin.user(&svc.mxid(user)).await.unwrap_or_else(|| panic!("no account for user {user}"));
        assert_eq!(account["displayname"], name, "{account}");
        assert_eq!(account["admin"], false, "app users are no server admins: {account}");
    }

    // Rename and a new avatar through PATCH.
    let patched = svc
        .call("PATCH", &format!("/v1/chatrooms/{id}"), &svc.api, Some(json!({"name": "Board 2", "avatar": GIF})))
        .await
        .expect(200)
        .clone();
    assert_eq!(patched["name"], "Board 2");
    let room = svc.ready(id, CONVERGE).await;
    let avatar2 = room["avatarURL"].as_str().unwrap_or_default().to_string();
    assert!(avatar2.starts_with("mxc://localhost/") && avatar2 != avatar, "a new avatarURL after PATCH: {room}");
    let state = admin.state(&mx).await.expect("the room exists");
    assert_eq!(state.content("m.room.name", "")["name"], "Board 2");
    assert_eq!(state.content("m.room.avatar", "")["url"], avatar2.as_str());
    let (status, bytes) = admin.download(&avatar2).await;
    assert_eq!((status, bytes.as_ref()), (200, GIF), "the new avatar on the homeserver");
}

#[tokio::test]
async fn deleted_room_is_emptied_and_purged() {
    let (svc, admin) = on_shared_synapse().await;
    svc.org(1, "Acme").await;
    let ann = svc.user(1, "Ann", Some((1, "member"))).await;
    svc.user(2, "Bob", Some((1, "member"))).await;
    let room =
        svc.create_room(json!({"name": "Doomed", "organizationID": 1, "admins": [1], "assignedUsers": [2]})).await;
    let id = room_id(&room);
    let mx = matrix_id(&svc.ready(id, CONVERGE).await);

    svc.call("POST", &format!("/v1/chatrooms/{id}/claim"), &ann, None).await.expect(200);
    let login = svc.call("POST", "/v1/user/login", &ann, Some(json!({"deviceID": "E2EDELETE"}))).await;
    let token = login.expect(200)["accessToken"].as_str().expect("an access token").to_string();
    eventually("the claimed room in Ann's joined_rooms", CONVERGE, || async {
        let joined = admin.matrix.user_joined_rooms(&token).await.map_err(|e| e.to_string())?;
        if joined.contains(&mx) { Ok(()) } else { Err(format!("{joined:?}")) }
    })
    .await;

    svc.call("DELETE", &format!("/v1/chatrooms/{id}"), &svc.api, None).await.expect(204);
    svc.call("GET", &format!("/v1/chatrooms/{id}"), &svc.api, None).await.expect_problem(404);
    eventually("the Matrix room purged (admin API: 404)", CONVERGE, || async {
        if admin.room_exists(&mx).await { Err(format!("{mx} still exists")) } else { Ok(()) }
    })
    .await;
    let joined = admin.matrix.user_joined_rooms(&token).await.expect("Ann's joined_rooms");
    assert!(!joined.contains(&mx), "Ann is still in the deleted room: {joined:?}");
    let (status, body) = admin
        .as_user(&token, Method::GET, &format!("/_matrix/client/v3/rooms/{}/state", crate::synapse::enc(&mx)), None)
        .await;
    assert!((400..500).contains(&status), "Ann can still read the deleted room's state: {status} {body}");
}

#[tokio::test]
async fn scheduled_deletion_fires() {
    let (svc, admin) = on_shared_synapse().await;
    svc.org(1, "Acme").await;
    svc.user(1, "Ann", Some((1, "member"))).await;
    let when = time::OffsetDateTime::now_utc().replace_nanosecond(0).expect("0 ns") + time::Duration::seconds(12);
    let when_text = when.format(&Rfc3339).expect("RFC 3339");
    let due = Instant::now() + Duration::from_secs_f64((when - time::OffsetDateTime::now_utc()).as_seconds_f64());
    let room = svc
        .create_room(
            json!({"name": "Short-lived", "organizationID": 1, "assignedUsers": [1], "scheduledDeletion": when_text}),
        )
        .await;
    let id = room_id(&room);
    assert_eq!(room["scheduledDeletion"], when_text.as_str(), "{room}");
    let mx = matrix_id(&svc.ready(id, Duration::from_secs(10)).await);
    assert!(admin.room_exists(&mx).await, "the Matrix room exists before its time");

    let gone = eventually("the room gone from the API after its scheduled deletion", CONVERGE, || async {
        let resp = svc.call("GET", &format!("/v1/chatrooms/{id}"), &svc.api, None).await;
        match resp.status {
            404 => Ok(Instant::now()),
            200 => Err("still listed".to_string()),
            other => panic!("GET a room due for deletion answered {other}: {}", resp.text),
        }
    })
    .await;
    assert!(
        gone + Duration::from_millis(500) >= due,
        "deleted {:.1} s before its scheduled time",
        (due - gone).as_secs_f64()
    );
    eventually("the Matrix room of the scheduled deletion purged", CONVERGE, || async {
        if admin.room_exists(&mx).await { Err(format!("{mx} still exists")) } else { Ok(()) }
    })
    .await;
}

#[tokio::test]
async fn scheduled_deletion_due_while_the_service_was_down_fires_at_start() {
    let (mut svc, admin) = on_shared_synapse().await;
    svc.org(1, "Acme").await;
    let when = time::OffsetDateTime::now_utc().replace_nanosecond(0).expect("0 ns") + time::Duration::seconds(10);
    let room = svc
        .create_room(json!({"name": "Missed", "organizationID": 1, "scheduledDeletion": when.format(&Rfc3339).expect("RFC 3339")}))
        .await;
    let id = room_id(&room);
    let mx = matrix_id(&svc.ready(id, Duration::from_secs(8)).await);
    svc.kill();
    // The service is down when the time comes: nothing to poll but the clock.
    let left = (when - time::OffsetDateTime::now_utc()).as_seconds_f64();
    assert!(left > 0.0, "the room's time passed before the service was stopped; make it later");
    tokio::time::sleep(Duration::from_secs_f64(left + 1.0)).await;
    svc.restart();
    eventually("the overdue room deleted after the restart", CONVERGE, || async {
        let resp = svc.call("GET", &format!("/v1/chatrooms/{id}"), &svc.api, None).await;
        if resp.status == 404 { Ok(()) } else { Err(format!("{} {}", resp.status, resp.text)) }
    })
    .await;
    eventually("the overdue room's Matrix room purged", CONVERGE, || async {
        if admin.room_exists(&mx).await { Err(format!("{mx} still exists")) } else { Ok(()) }
    })
    .await;
}

/// A topic set at creation, changed and cleared by PATCH is what Synapse's
/// `m.room.topic` says, and a room made without one has none there.
#[tokio::test]
async fn a_room_topic_is_the_matrix_rooms_topic() {
    let (svc, admin) = on_shared_synapse().await;
    svc.org(1, "Acme").await;
    svc.user(1, "Ann", Some((1, "member"))).await;
    let topic_on_synapse = |mx: String| {
        let admin = &admin;
        async move {
            let state = admin.state(&mx).await.unwrap_or_else(|| panic!("Synapse does not know {mx}"));
            state.event("m.room.topic", "").map(|e| e["content"]["topic"].as_str().unwrap_or_default().to_string())
        }
    };

    let created = svc
        .create_room(json!({"name": "Board", "organizationID": 1, "assignedUsers": [1], "topic": "Quarterly numbers"}))
        .await;
    assert_eq!(created["topic"], "Quarterly numbers");
    let id = room_id(&created);
    let mx = matrix_id(&svc.ready(id, CONVERGE).await);
    assert_eq!(topic_on_synapse(mx.clone()).await.as_deref(), Some("Quarterly numbers"), "set at creation");

    let path = format!("/v1/chatrooms/{id}");
    let patched = svc.call("PATCH", &path, &svc.api, Some(json!({"topic": "Next quarter\nand beyond"}))).await;
    assert_eq!(patched.expect(200)["topic"], "Next quarter\nand beyond");
    svc.ready(id, CONVERGE).await;
    assert_eq!(topic_on_synapse(mx.clone()).await.as_deref(), Some("Next quarter\nand beyond"), "changed by PATCH");

    svc.call("PATCH", &path, &svc.api, Some(json!({"topic": null}))).await.expect(200);
    svc.ready(id, CONVERGE).await;
    assert_eq!(topic_on_synapse(mx.clone()).await.unwrap_or_default(), "", "cleared by PATCH");

    let plain = svc.create_room(json!({"name": "Plain", "organizationID": 1})).await;
    let plain_mx = matrix_id(&svc.ready(room_id(&plain), CONVERGE).await);
    assert_eq!(topic_on_synapse(plain_mx).await, None, "a room without a topic has no m.room.topic");
}
