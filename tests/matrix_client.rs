//! The homeserver client against a real Synapse.
//!
//! Needs `SYNAPSE_URL` and `SYNAPSE_SHARED_SECRET_FILE`, as printed by
//! `scripts/synapse.sh start DIR`. Without them every test fails: a skipped
//! homeserver test would pass CI without having tested anything.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use messenger_chat::config::MatrixConfig;
use messenger_chat::matrix::{
    DeleteStatus, ErrCode, HomeserverClient, MatrixError, Membership, NewRoom, PowerLevels, Registration,
};

/// A 1×1 transparent PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

const BOT_PASSWORD: &str = "bot-password-for-tests";

fn config() -> MatrixConfig {
    let missing = |name: &str| {
        panic!(
            "{name} is not set: these tests need a running Synapse. Start one with \
             `scripts/synapse.sh install && eval \"$(scripts/synapse.sh start /tmp/syn-test)\"` \
             and export SYNAPSE_URL and SYNAPSE_SHARED_SECRET_FILE"
        )
    };
    let url = std::env::var("SYNAPSE_URL").unwrap_or_else(|_| missing("SYNAPSE_URL"));
    let secret_file =
        std::env::var("SYNAPSE_SHARED_SECRET_FILE").unwrap_or_else(|_| missing("SYNAPSE_SHARED_SECRET_FILE"));
    MatrixConfig {
        homeserver_url: url,
        server_name: "localhost".into(),
        registration_shared_secret_file: secret_file,
        bot_localpart: "messenger-chat-test-bot".into(),
        user_prefix: "mct".into(),
        request_timeout_ms: 20_000,
        ..MatrixConfig::default()
    }
}

/// A client whose bot account exists.
async fn bot() -> HomeserverClient {
    let client = HomeserverClient::new(&config(), BOT_PASSWORD.into()).expect("client");
    client.versions().await.expect("Synapse answers /_matrix/client/versions");
    client.ensure_bot().await.expect("bot registration");
    client
}

/// Ids no earlier run against the same Synapse has used, below 2^53 (the
/// largest integer canonical JSON allows, and so the largest marker).
fn unique() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let micros = u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros()).unwrap();
    (micros % 10_000_000_000_000) * 100 + COUNTER.fetch_add(1, Ordering::Relaxed) % 100
}

/// An app user id no earlier run has used.
fn unique_user() -> i64 {
    i64::try_from(unique()).expect("below 2^53")
}

/// Registers a fresh app user and returns (user id, password).
async fn new_user(client: &HomeserverClient) -> (String, String) {
    let n = unique_user();
    let password = format!("pw-{n}");
    let created = client.register(&client.ids().localpart(n), &password, false, Some("Test User")).await.unwrap();
    assert_eq!(created, Registration::Created { user_id: client.ids().user(n) });
    (client.ids().user(n), password)
}

fn membership_of(members: &[messenger_chat::matrix::Member], user: &str) -> Option<Membership> {
    members.iter().find(|m| m.user_id == user).map(|m| m.membership.clone())
}

/// Deletes a room with the v2 admin API and follows it until it completes.
async fn delete_and_wait(client: &HomeserverClient, room_id: &str) {
    let delete_id = client.delete_room(room_id).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = client.delete_status(&delete_id).await.unwrap();
        if status.is_finished() {
            assert_eq!(status, DeleteStatus::Complete);
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "delete still {status:?} after 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn registration_is_idempotent() {
    let client = bot().await;
    assert_eq!(client.ensure_bot().await.unwrap(), Registration::AlreadyExists);

    let n = unique_user();
    let localpart = client.ids().localpart(n);
    let first = client.register(&localpart, "pw", false, None).await.unwrap();
    assert_eq!(first, Registration::Created { user_id: format!("@mct{n}:localhost") });
    assert_eq!(client.register(&localpart, "other", false, None).await.unwrap(), Registration::AlreadyExists);

    let err = client.register("Not Valid!", "pw", false, None).await.unwrap_err();
    assert!(err.is(&ErrCode::InvalidUsername), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn wrong_shared_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "not-the-secret\n").unwrap();
    let config = MatrixConfig { registration_shared_secret_file: file.display().to_string(), ..config() };
    let client = HomeserverClient::new(&config, BOT_PASSWORD.into()).unwrap();
    let err = client.register(&client.ids().localpart(unique_user()), "pw", false, None).await.unwrap_err();
    assert!(matches!(err, MatrixError::Api { status: 403, .. }), "{err:?}");
}

#[tokio::test]
async fn room_lifecycle_in_room_version_12() {
    let client = bot().await;
    let (admin, admin_pw) = new_user(&client).await;
    let (moderator, _) = new_user(&client).await;
    let (member, _) = new_user(&client).await;

    let avatar = client.upload_media("image/png", Some("avatar.png"), Bytes::from_static(PNG)).await.unwrap();
    assert!(avatar.starts_with("mxc://localhost/"), "{avatar}");

    let marker = unique();
    let room = NewRoom {
        marker,
        name: "Board".into(),
        topic: None,
        avatar_url: Some(avatar.clone()),
        users: BTreeMap::from([(admin.clone(), 100), (moderator.clone(), 50), (client.bot_user_id().to_string(), 100)]),
        invite: vec![admin.clone(), moderator.clone(), member.clone()],
        events_default: None,
        room_version: None,
    };
    let room_id = client.create_room(&room).await.unwrap();

    // A retry after a crash finds the same room.
    assert_eq!(client.find_room_by_marker(marker).await.unwrap(), Some(room_id.clone()));
    assert!(client.marked_rooms().await.unwrap().contains(&(room_id.clone(), marker)));
    assert_eq!(client.find_room_by_marker(unique()).await.unwrap(), None);

    let creators = client.room_creators(&room_id).await.unwrap();
    assert_eq!(creators.room_version, "12", "Synapse's default room version");
    assert_eq!(creators.privileged, vec![client.bot_user_id().to_string()]);

    // What a Matrix client would see.
    let name: serde_json::Value = client.get_state(&room_id, "m.room.name", "").await.unwrap().unwrap();
    assert_eq!(name["name"], "Board");
    let av: serde_json::Value = client.get_state(&room_id, "m.room.avatar", "").await.unwrap().unwrap();
    assert_eq!(av["url"], avatar.as_str());
    let rules: serde_json::Value = client.get_state(&room_id, "m.room.join_rules", "").await.unwrap().unwrap();
    assert_eq!(rules["join_rule"], "invite");
    assert!(client.get_state::<serde_json::Value>(&room_id, "m.room.topic", "").await.unwrap().is_none());

    let pl = client.power_levels(&room_id).await.unwrap();
    assert_eq!(pl.users, BTreeMap::from([(admin.clone(), 100), (moderator.clone(), 50)]), "v12: creator not listed");
    assert_eq!(pl.level_of(&member), 0);
    let before_events = pl.other.get("events").cloned();
    assert!(before_events.is_some(), "Synapse's default power levels have an events map");

    let members = client.members(&room_id).await.unwrap();
    assert_eq!(membership_of(&members, client.bot_user_id()), Some(Membership::Join));
    for u in [&admin, &moderator, &member] {
        assert_eq!(membership_of(&members, u), Some(Membership::Invite), "{u}");
    }

    // Claim: the admin join API joins an invited user.
    assert_eq!(client.admin_join(&room_id, &admin).await.unwrap(), room_id);
    assert!(!client.ensure_joined(&room_id, &admin).await.unwrap());
    assert_eq!(membership_of(&client.members(&room_id).await.unwrap(), &admin), Some(Membership::Join));
    let session = client.login_user(&admin, &admin_pw, Some("ADMINPHONE"), None).await.unwrap();
    assert!(client.user_joined_rooms(&session.access_token).await.unwrap().contains(&room_id));
    client.send_text(&session.access_token, &room_id, "txn1", "hello").await.unwrap();

    // Promote the moderator, demote the admin (allowed: the v12 creator
    // outranks everyone), and try to list the bot: it must stay out.
    let changes = BTreeMap::from([
        (moderator.clone(), Some(100)),
        (admin.clone(), None),
        (client.bot_user_id().to_string(), Some(100)),
    ]);
    assert!(client.set_user_levels(&room_id, &changes).await.unwrap());
    let pl = client.power_levels(&room_id).await.unwrap();
    assert_eq!(pl.users, BTreeMap::from([(moderator.clone(), 100)]));
    assert_eq!(pl.other.get("events").cloned(), before_events, "untouched keys survive");
    assert!(!client.set_user_levels(&room_id, &changes).await.unwrap(), "no change, no event");
    let sent = client
        .modify_power_levels(&room_id, |p| {
            p.other.insert("invite".into(), 50.into());
        })
        .await
        .unwrap();
    assert!(sent);
    assert_eq!(client.power_levels(&room_id).await.unwrap().other["invite"], 50);

    // Rename and new avatar.
    client.set_room_name(&room_id, "Board 2").await.unwrap();
    let avatar2 = client.upload_media("image/png", None, Bytes::from_static(PNG)).await.unwrap();
    client.set_room_avatar(&room_id, &avatar2).await.unwrap();
    let name: serde_json::Value = client.get_state(&room_id, "m.room.name", "").await.unwrap().unwrap();
    assert_eq!(name["name"], "Board 2");
    client.set_room_topic(&room_id, "Quarterly numbers").await.unwrap();
    let topic: serde_json::Value = client.get_state(&room_id, "m.room.topic", "").await.unwrap().unwrap();
    assert_eq!(topic["topic"], "Quarterly numbers");

    // Remove users: a joined one and an invited one.
    client.kick(&room_id, &admin, Some("removed from the room")).await.unwrap();
    client.kick(&room_id, &member, None).await.unwrap();
    let members = client.members(&room_id).await.unwrap();
    assert_eq!(membership_of(&members, &admin), Some(Membership::Leave));
    assert_eq!(membership_of(&members, &member), Some(Membership::Leave));
    assert!(!client.user_joined_rooms(&session.access_token).await.unwrap().contains(&room_id));
    // Kicking someone who is not in the room is refused, not ignored;
    // remove_member is the idempotent form.
    let err = client.kick(&room_id, &member, None).await.unwrap_err();
    assert!(err.is(&ErrCode::Forbidden), "{err:?}");
    assert!(!client.remove_member(&room_id, &member, None).await.unwrap());
    assert_eq!(client.membership(&room_id, &member).await.unwrap(), Some(Membership::Leave));

    // Join the (invited) moderator, then delete the room.
    assert!(client.ensure_joined(&room_id, &moderator).await.unwrap());
    delete_and_wait(&client, &room_id).await;
    assert_eq!(client.find_room_by_marker(marker).await.unwrap(), None);
    assert!(!client.room_exists(&room_id).await.unwrap(), "purged");
    // A retried delete of a room that is gone is accepted and completes.
    delete_and_wait(&client, &room_id).await;
    let err = client.delete_status("no-such-delete").await.unwrap_err();
    assert!(err.is(&ErrCode::NotFound), "{err:?}");
    assert!(!client.joined_rooms().await.unwrap().contains(&room_id));
    let err = client.members(&room_id).await.unwrap_err();
    assert!(matches!(err, MatrixError::Api { .. }), "{err:?}");
}

#[tokio::test]
async fn room_version_10_lists_the_bot() {
    let client = bot().await;
    let (user, _) = new_user(&client).await;
    let (other, _) = new_user(&client).await;
    let room = NewRoom {
        marker: unique(),
        name: "Old".into(),
        topic: Some("Set at creation".into()),
        avatar_url: None,
        users: BTreeMap::from([(user.clone(), 50)]),
        invite: vec![user.clone()],
        events_default: None,
        room_version: Some("10".into()),
    };
    let room_id = client.create_room(&room).await.unwrap();
    let topic: serde_json::Value = client.get_state(&room_id, "m.room.topic", "").await.unwrap().unwrap();
    assert_eq!(topic["topic"], "Set at creation");
    let creators = client.room_creators(&room_id).await.unwrap();
    assert_eq!(creators.room_version, "10");
    assert!(creators.privileged.is_empty());
    assert!(client.get_state::<serde_json::Value>(&room_id, "m.room.avatar", "").await.unwrap().is_none());

    let pl: PowerLevels = client.power_levels(&room_id).await.unwrap();
    assert_eq!(pl.level_of(client.bot_user_id()), 100, "before v12 the bot's power is its users entry");
    assert_eq!(pl.level_of(&user), 50);

    client.set_user_levels(&room_id, &BTreeMap::from([(other.clone(), Some(100))])).await.unwrap();
    let pl = client.power_levels(&room_id).await.unwrap();
    assert_eq!(pl.level_of(client.bot_user_id()), 100, "read-modify-write keeps the bot");
    assert_eq!(pl.level_of(&other), 100);
    // Before v12 the bot, at 100, cannot lower another user at 100: the
    // auth rules forbid changing a level equal to the sender's own.
    let err = client.set_user_levels(&room_id, &BTreeMap::from([(other.clone(), Some(50))])).await.unwrap_err();
    assert!(err.is(&ErrCode::Forbidden), "{err:?}");
    assert!(client.room_exists(&room_id).await.unwrap());
    assert_eq!(client.membership(&room_id, &other).await.unwrap(), None);
    assert!(client.ensure_invited(&room_id, &other).await.unwrap());
    assert!(!client.ensure_invited(&room_id, &other).await.unwrap(), "second time: nothing to do");
    let members = client.members(&room_id).await.unwrap();
    assert_eq!(membership_of(&members, &other), Some(Membership::Invite));

    // Admin join of a user the room never invited; a second join is
    // refused by Synapse, and ensure_joined is the idempotent form.
    let (stranger, _) = new_user(&client).await;
    client.admin_join(&room_id, &stranger).await.unwrap();
    let err = client.admin_join(&room_id, &stranger).await.unwrap_err();
    assert!(err.is(&ErrCode::Forbidden), "{err:?}");
    assert!(!client.ensure_joined(&room_id, &stranger).await.unwrap());
    assert_eq!(client.membership(&room_id, &stranger).await.unwrap(), Some(Membership::Join));
    assert!(client.remove_member(&room_id, &stranger, Some("bye")).await.unwrap());
    assert!(!client.remove_member(&room_id, &stranger, Some("bye")).await.unwrap());
}

#[tokio::test]
async fn user_login_whoami_refresh() {
    let client = bot().await;
    let (user, password) = new_user(&client).await;
    let app_addr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

    let login = client.login_user(&user, &password, Some("PHONE1"), Some(app_addr)).await.unwrap();
    assert_eq!(login.user_id, user);
    assert_eq!(login.device_id, "PHONE1");
    assert!(login.expires_in_ms.is_some_and(|ms| ms > 0), "{login:?}");
    let refresh_token = login.refresh_token.clone().expect("refresh token granted");

    let me = client.whoami(&login.access_token).await.unwrap();
    assert_eq!(me.user_id, user);
    assert_eq!(me.device_id.as_deref(), Some("PHONE1"));

    let refreshed = client.refresh(&refresh_token).await.unwrap();
    assert_ne!(refreshed.access_token, login.access_token);
    assert!(refreshed.refresh_token.is_some());
    let me = client.whoami(&refreshed.access_token).await.unwrap();
    assert_eq!(me.device_id.as_deref(), Some("PHONE1"));

    // Without a device id the homeserver picks one.
    let other = client.login_user(&user, &password, None, None).await.unwrap();
    assert!(!other.device_id.is_empty());
    assert_ne!(other.device_id, "PHONE1");

    let err = client.login_user(&user, "wrong", Some("PHONE1"), Some(app_addr)).await.unwrap_err();
    assert!(err.is(&ErrCode::Forbidden), "{err:?}");
    assert!(!err.is_retryable());

    let err = client.whoami("not-a-token").await.unwrap_err();
    assert!(err.is(&ErrCode::UnknownToken), "{err:?}");
    let err = client.refresh("not-a-token").await.unwrap_err();
    assert!(matches!(err, MatrixError::Api { status: 401, .. }), "{err:?}");
}

#[tokio::test]
async fn display_name_and_deactivation() {
    let client = bot().await;
    let (user, password) = new_user(&client).await;
    assert_eq!(client.display_name(&user).await.unwrap().as_deref(), Some("Test User"));
    client.set_display_name(&user, "Renamed").await.unwrap();
    assert_eq!(client.display_name(&user).await.unwrap().as_deref(), Some("Renamed"));

    let session = client.login_user(&user, &password, Some("D1"), None).await.unwrap();
    client.deactivate(&user).await.unwrap();
    let err = client.whoami(&session.access_token).await.unwrap_err();
    assert!(err.is(&ErrCode::UnknownToken), "deactivation logs out: {err:?}");
    let err = client.login_user(&user, &password, Some("D1"), None).await.unwrap_err();
    // Synapse answers a deactivated account's password login as a wrong password.
    assert!(err.is(&ErrCode::Forbidden), "{err:?}");

    // Registration without a display name gets the localpart; an unknown
    // account has none.
    let n = unique_user();
    client.register(&client.ids().localpart(n), "pw", false, None).await.unwrap();
    assert_eq!(client.display_name(&client.ids().user(n)).await.unwrap(), Some(client.ids().localpart(n)));
    assert_eq!(client.display_name("@nobody-here:localhost").await.unwrap(), None);
}

#[tokio::test]
async fn bot_logs_in_again_when_its_token_is_gone() {
    let first = bot().await;
    first.joined_rooms().await.unwrap();
    // A second client logs the bot in on the same device, which ends the
    // first client's token on the homeserver.
    let second = bot().await;
    second.joined_rooms().await.unwrap();
    first.joined_rooms().await.expect("the first client logs in again by itself");
}

/// A read-only room as the service makes one: created with
/// `events_default` 50, a plain member's message is refused (403
/// `M_FORBIDDEN`) and a moderator's accepted; with `events_default` back to
/// 0 through a read-modify-write of the power levels, the member posts, and
/// the users' levels are untouched.
#[tokio::test]
async fn read_only_room_refuses_plain_members() {
    let client = bot().await;
    let (moderator, moderator_pw) = new_user(&client).await;
    let (member, member_pw) = new_user(&client).await;
    let room = NewRoom {
        marker: unique(),
        name: "Announcements".into(),
        topic: None,
        avatar_url: None,
        users: BTreeMap::from([(moderator.clone(), 50)]),
        events_default: Some(50),
        invite: vec![moderator.clone(), member.clone()],
        room_version: None,
    };
    let room_id = client.create_room(&room).await.unwrap();
    assert_eq!(client.power_levels(&room_id).await.unwrap().other["events_default"], 50);
    for user in [&moderator, &member] {
        client.admin_join(&room_id, user).await.unwrap();
    }
    let mod_session = client.login_user(&moderator, &moderator_pw, Some("MODPHONE"), None).await.unwrap();
    let member_session = client.login_user(&member, &member_pw, Some("MEMBERPHONE"), None).await.unwrap();

    let err = client.send_text(&member_session.access_token, &room_id, "ro1", "may I?").await.unwrap_err();
    assert!(matches!(err, MatrixError::Api { status: 403, .. }) && err.is(&ErrCode::Forbidden), "{err:?}");
    let sent = client.send_text(&mod_session.access_token, &room_id, "ro2", "announcement").await.unwrap();
    assert!(sent.starts_with('$'), "{sent}");

    let changed = client
        .modify_power_levels(&room_id, |pl| {
            pl.other.insert("events_default".into(), 0.into());
        })
        .await
        .unwrap();
    assert!(changed);
    let pl = client.power_levels(&room_id).await.unwrap();
    assert_eq!((pl.other["events_default"].as_i64(), pl.level_of(&moderator), pl.level_of(&member)), (Some(0), 50, 0));
    let sent = client.send_text(&member_session.access_token, &room_id, "ro3", "thanks").await.unwrap();
    assert!(sent.starts_with('$'), "{sent}");
}
