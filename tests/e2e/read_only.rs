//! Read-only rooms from Synapse's side: with the Matrix tokens the app gets
//! from `POST /v1/user/login`, a plain member's message (and reaction) is
//! refused by the homeserver while a moderator's goes through; turned off,
//! the member posts again; and an event room's `readOnlyAt` freezes it on
//! the homeserver by itself.

use std::time::Duration;

use http::Method;
use messenger_chat::matrix::{ErrCode, MatrixError};
use serde_json::{Value, json};

use crate::poll::eventually;
use crate::service::{CONVERGE, Service, matrix_id, on_shared_synapse, room_id};
use crate::synapse::{Admin, enc};

/// Claims the room for the user and logs them in: their Matrix access token.
async fn joined_session(svc: &Service, room: i64, pat: &str, device: &str) -> String {
    svc.call("POST", &format!("/v1/chatrooms/{room}/claim"), pat, None).await.expect(200);
    let login = svc.call("POST", "/v1/user/login", pat, Some(json!({"deviceID": device}))).await;
    login.expect(200)["accessToken"].as_str().expect("an access token").to_string()
}

/// `events_default` of the room's power levels as Synapse holds them (absent: 0).
async fn events_default(admin: &Admin, mx: &str) -> i64 {
    let state = admin.state(mx).await.unwrap_or_else(|| panic!("Synapse does not know {mx}"));
    state.content("m.room.power_levels", "")["events_default"].as_i64().unwrap_or(0)
}

/// Waits until Synapse holds `level` as the room's `events_default`.
async fn wait_for_events_default(admin: &Admin, mx: &str, level: i64, within: Duration) {
    eventually(&format!("events_default {level} in {mx}"), within, || async move {
        let now = events_default(admin, mx).await;
        if now == level { Ok(()) } else { Err(format!("events_default {now}")) }
    })
    .await;
}

#[track_caller]
fn assert_refused(sent: &Result<String, MatrixError>, who: &str) {
    match sent {
        Err(MatrixError::Api { status: 403, errcode: ErrCode::Forbidden, .. }) => {}
        other => panic!("{who}'s message in a read-only room: expected 403 M_FORBIDDEN, got {other:?}"),
    }
}

#[tokio::test]
async fn a_read_only_room_lets_only_moderators_and_admins_post() {
    let (svc, admin) = on_shared_synapse().await;
    svc.org(1, "Acme").await;
    let ann = svc.user(1, "Ann Admin", Some((1, "member"))).await;
    let mo = svc.user(2, "Mo Moderator", Some((1, "member"))).await;
    let al = svc.user(3, "Al Assigned", Some((1, "member"))).await;
    let body = json!({
        "name": "Announcements", "organizationID": 1, "admins": [1], "moderators": [2], "assignedUsers": [3],
        "readOnly": true,
    });
    let id = room_id(&svc.create_room(body).await);
    let room = svc.ready(id, CONVERGE).await;
    assert_eq!(room["readOnly"], true, "{room}");
    let mx = matrix_id(&room);
    assert_eq!(events_default(&admin, &mx).await, 50, "a room created read-only");

    let admin_session = joined_session(&svc, id, &ann, "E2EROANN").await;
    let moderator = joined_session(&svc, id, &mo, "E2EROMO").await;
    let member = joined_session(&svc, id, &al, "E2EROAL").await;

    let mut announcement = String::new();
    for (who, token) in [("the room admin", &admin_session), ("the moderator", &moderator)] {
        let sent = admin.matrix.send_text(token, &mx, &format!("ro-{who}"), "announcement").await;
        assert!(sent.as_ref().is_ok_and(|e| e.starts_with('$')), "{who} cannot post in a read-only room: {sent:?}");
        announcement = sent.unwrap_or_default();
    }
    let sent = admin.matrix.send_text(&member, &mx, "ro-1", "may I?").await;
    assert_refused(&sent, "a plain member");
    // A reaction to the moderator's announcement is an event like a message: refused too.
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.reaction/ro-react-1", enc(&mx));
    let reaction = json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": announcement, "key": "👍"}});
    let (status, answer) = admin.as_user(&member, Method::PUT, &path, Some(&reaction)).await;
    assert_eq!((status, &answer["errcode"]), (403, &json!("M_FORBIDDEN")), "a member's reaction: {answer}");

    // Off again: the member posts.
    let path = format!("/v1/chatrooms/{id}");
    let off = svc.call("PATCH", &path, &ann, Some(json!({"readOnly": false}))).await.expect(200).clone();
    assert_eq!(off["readOnly"], false, "{off}");
    wait_for_events_default(&admin, &mx, 0, CONVERGE).await;
    let sent = admin.matrix.send_text(&member, &mx, "ro-2", "thanks").await;
    assert!(
        sent.as_ref().is_ok_and(|e| e.starts_with('$')),
        "the member cannot post after read-only was turned off: {sent:?}"
    );

    // And on again by PATCH: refused again.
    svc.call("PATCH", &path, &svc.api, Some(json!({"readOnly": true}))).await.expect(200);
    wait_for_events_default(&admin, &mx, 50, CONVERGE).await;
    assert_refused(&admin.matrix.send_text(&member, &mx, "ro-3", "again?").await, "a plain member");
    // Only the level to post changed: the members' own levels are as listed.
    let state = admin.state(&mx).await.expect("the room");
    assert_eq!(
        (state.level_of(&svc.mxid(1)), state.level_of(&svc.mxid(2)), state.level_of(&svc.mxid(3))),
        (100, 50, 0)
    );
}

/// An event room's `readOnlyAt` freezes it on the homeserver by itself.
#[tokio::test]
async fn an_event_room_is_frozen_at_read_only_at() {
    let (svc, admin) = on_shared_synapse().await;
    svc.org(1, "Acme").await;
    let al = svc.user(3, "Al Assigned", Some((1, "member"))).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = json!({
        "name": "Launch party", "organizationID": 1, "eventID": 42, "assignedUsers": [3], "readOnlyAt": now + 3600,
    });
    let created = svc.call("POST", "/v1/chatrooms/event", &svc.api, Some(body)).await.expect(201).clone();
    let id = room_id(&created);
    let mx = matrix_id(&svc.ready(id, CONVERGE).await);
    let member = joined_session(&svc, id, &al, "E2EROEVENT").await;
    let before = admin.matrix.send_text(&member, &mx, "ev-1", "see you there").await;
    assert!(before.as_ref().is_ok_and(|e| e.starts_with('$')), "before readOnlyAt the member posts: {before:?}");
    assert_eq!(events_default(&admin, &mx).await, 0);

    // The event is over in two seconds.
    let soon = time::OffsetDateTime::now_utc().unix_timestamp() + 2;
    let path = format!("/v1/chatrooms/{id}");
    svc.call("PATCH", &path, &svc.api, Some(json!({"readOnlyAt": soon}))).await.expect(200);
    wait_for_events_default(&admin, &mx, 50, CONVERGE + Duration::from_secs(10)).await;
    let room: Value = svc.room(id).await;
    assert_eq!((&room["readOnly"], &room["readOnlyAt"]), (&json!(true), &Value::Null), "{room}");
    assert_refused(&admin.matrix.send_text(&member, &mx, "ev-2", "too late?").await, "a member after readOnlyAt");
}
