//! The rules on a real database and a pinned clock, without HTTP: the role
//! table of the contract, automation and demotion, the default room,
//! scheduled deletion and token expiry by moving the clock, and login
//! through the session service on the fake homeserver.

use std::sync::Arc;

use super::rooms::{NewRoom, RoomPatch, RoomRef, UserLists};
use super::sessions::Sessions;
use super::{Domain, ManualClock, Principal};
use crate::config::Config;
use crate::error::{Error, Remedy};
use crate::homeserver::Homeserver;
use crate::homeserver::fake::FakeHomeserver;
use crate::model::{Actor, OrgRole, RoomId, RoomRole};
use crate::secrets::ServerKey;
use crate::store::{Read, Store};

/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600;

/// An API token caller: the token whose id is `0a0b0c0d0e0f`.
const API: Principal = Principal::Api(super::ApiCaller::Token([10, 11, 12, 13, 14, 15]));

struct World {
    _dir: tempfile::TempDir,
    d: Arc<Domain>,
    clock: Arc<ManualClock>,
}

/// Organization 1: owner 1, admin 2, members 3 to 6; user 7 outside it.
const OWNER: i64 = 1;
const ADMIN: i64 = 2;
const ROOM_ADMIN: i64 = 3;
const MODERATOR: i64 = 4;
const LISTED: i64 = 5;
const UNLISTED: i64 = 6;
const OUTSIDER: i64 = 7;

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db.redb"), 1 << 20).unwrap();
    let mut config = Config::default();
    config.security.argon2_memory_kib = 8;
    config.security.argon2_iterations = 1;
    let clock = Arc::new(ManualClock::new(T0));
    let d = Arc::new(Domain::new(store, Arc::new(config), ServerKey::from_bytes([3; 32]), clock.clone()).unwrap());
    d.put_org(API, 1, "Acme").unwrap();
    for u in OWNER..=OUTSIDER {
        d.put_user(API, u, &format!("User {u}")).unwrap();
    }
    for (u, role) in [
        (OWNER, OrgRole::Owner),
        (ADMIN, OrgRole::Admin),
        (ROOM_ADMIN, OrgRole::Member),
        (MODERATOR, OrgRole::Member),
        (LISTED, OrgRole::Member),
        (UNLISTED, OrgRole::Member),
    ] {
        d.set_member(API, 1, u, role).unwrap();
    }
    World { _dir: dir, d, clock }
}

impl World {
    /// A custom room with a room admin, a moderator and a listed user.
    fn room(&self) -> RoomId {
        let spec = NewRoom {
            org_id: 1,
            name: Some("Board".into()),
            users: UserLists { admins: vec![ROOM_ADMIN], moderators: vec![MODERATOR], assigned: vec![LISTED] },
            ..NewRoom::default()
        };
        self.d.create_room(API, spec).unwrap().id
    }

    fn stored(&self, id: RoomId) -> crate::model::Room {
        self.d.store.read().unwrap().room(id).unwrap().expect("the room")
    }
}

/// The callers of the role table, as (name, principal).
fn callers() -> Vec<(&'static str, Principal)> {
    vec![
        ("API token", API),
        ("org owner", Principal::User(OWNER)),
        ("org admin", Principal::User(ADMIN)),
        ("room admin", Principal::User(ROOM_ADMIN)),
        ("room moderator", Principal::User(MODERATOR)),
        ("listed user", Principal::User(LISTED)),
        ("unlisted member", Principal::User(UNLISTED)),
        ("outsider", Principal::User(OUTSIDER)),
    ]
}

/// Whether `result` is allowed (Ok) or forbidden; anything else fails the test.
fn allowed<T: std::fmt::Debug>(what: &str, who: &str, result: Result<T, Error>) -> bool {
    match result {
        Ok(_) => true,
        Err(Error::Forbidden(_)) => false,
        Err(e) => panic!("{what} by {who}: neither allowed nor forbidden: {e:?}"),
    }
}

/// Every action of the role table in the contract, by every kind of caller.
#[test]
fn the_role_table() {
    // (action, who may: API, owner, admin, room admin, moderator, listed, unlisted, outsider)
    type Action = fn(&World, Principal) -> bool;
    let table: Vec<(&str, [bool; 8], Action)> = vec![
        ("read a room", [true, true, true, true, true, true, true, false], |w, p| {
            let id = w.room();
            allowed("read", "", w.d.get_room(&w.d.store.read().unwrap(), p, &RoomRef::Id(id)))
        }),
        ("list rooms", [true, true, true, true, true, true, true, false], |w, p| {
            allowed("list", "", w.d.list_rooms(&w.d.store.read().unwrap(), p, 1, Some((0, 10)), |_| {}))
        }),
        ("create a custom room", [true, true, true, false, false, false, false, false], |w, p| {
            let spec = NewRoom { org_id: 1, name: Some("New".into()), ..NewRoom::default() };
            allowed("create", "", w.d.create_room(p, spec))
        }),
        ("create the default room", [true, true, true, false, false, false, false, false], |w, p| {
            allowed("create default", "", w.d.create_default_room(p, 1, false, None))
        }),
        ("remove the default room", [true, true, true, false, false, false, false, false], |w, p| {
            w.d.create_default_room(API, 1, false, None).unwrap();
            allowed("remove default", "", w.d.delete_default_room(p, 1))
        }),
        ("update a custom room", [true, true, true, true, false, false, false, false], |w, p| {
            let id = w.room();
            let patch = RoomPatch { name: Some("Renamed".into()), ..RoomPatch::default() };
            allowed("update", "", w.d.update_room(p, &RoomRef::Id(id), patch))
        }),
        ("delete a custom room", [true, true, true, true, false, false, false, false], |w, p| {
            let id = w.room();
            allowed("delete", "", w.d.delete_room(p, &RoomRef::Id(id)))
        }),
        ("add an admin", [true, true, true, true, false, false, false, false], |w, p| {
            let id = w.room();
            let lists = UserLists { admins: vec![UNLISTED], ..UserLists::default() };
            allowed("add admin", "", w.d.add_users(p, &RoomRef::Id(id), &lists))
        }),
        ("add an assigned user", [true, true, true, true, true, false, false, false], |w, p| {
            let id = w.room();
            let lists = UserLists { assigned: vec![UNLISTED], ..UserLists::default() };
            allowed("add assigned", "", w.d.add_users(p, &RoomRef::Id(id), &lists))
        }),
        ("remove an assigned user", [true, true, true, true, true, false, false, false], |w, p| {
            let id = w.room();
            let lists = UserLists { assigned: vec![LISTED], ..UserLists::default() };
            allowed("remove assigned", "", w.d.remove_users(p, &RoomRef::Id(id), &lists))
        }),
        ("remove a moderator", [true, true, true, true, false, false, false, false], |w, p| {
            let id = w.room();
            let lists = UserLists { moderators: vec![MODERATOR], ..UserLists::default() };
            allowed("remove moderator", "", w.d.remove_users(p, &RoomRef::Id(id), &lists))
        }),
        // A claim acts for a user: the API token acts for the listed user.
        ("claim a custom room", [true, false, false, true, true, true, false, false], |w, p| {
            let id = w.room();
            let user = match p {
                Principal::Api(_) => LISTED,
                Principal::User(u) => u,
            };
            allowed("claim", "", w.d.claim(user, &RoomRef::Id(id)))
        }),
        ("claim the default room", [true, true, true, true, true, true, true, false], |w, p| {
            let id = w.d.create_default_room(API, 1, false, None).unwrap().id;
            let user = match p {
                Principal::Api(_) => UNLISTED,
                Principal::User(u) => u,
            };
            allowed("claim default", "", w.d.claim(user, &RoomRef::Id(id)))
        }),
    ];
    for (action, expected, run) in &table {
        for ((who, p), want) in callers().into_iter().zip(expected) {
            let w = world();
            assert_eq!(run(&w, p), *want, "{action} by the {who}");
        }
    }
}

/// The checks made before a body is read agree with the rules the whole
/// request meets: whoever they refuse, the full request refuses too, and
/// with one organization they refuse exactly those.
#[test]
fn the_checks_before_the_body_agree_with_the_role_table() {
    for (who, p) in callers() {
        let w = world();
        let r = w.d.store.read().unwrap();
        let spec = NewRoom { org_id: 1, name: Some("New".into()), ..NewRoom::default() };
        let gate = allowed("gate create", who, w.d.may_create_rooms(&r, p));
        assert_eq!(gate, allowed("create", who, w.d.create_room(p, spec)), "create by the {who}");
        let id = w.room();
        let default = w.d.create_default_room(API, 1, false, None).unwrap().id;
        for room in [id, default] {
            let r = w.d.store.read().unwrap();
            let gate = allowed("gate update", who, w.d.may_update_room(&r, p, &RoomRef::Id(room)));
            let patch = RoomPatch { name: Some("Renamed".into()), ..RoomPatch::default() };
            assert_eq!(
                gate,
                allowed("update", who, w.d.update_room(p, &RoomRef::Id(room), patch)),
                "update by the {who}"
            );
        }
    }
}

/// The default room belongs to the organization: a room admin of it who is
/// a member may manage its users but not change it; nobody gives it a
/// deletion time (409, with the remedy); it is not deleted as a room.
#[test]
fn the_default_room_rules() {
    let w = world();
    let id = w.d.create_default_room(API, 1, false, None).unwrap().id;
    let at = RoomRef::Id(id);
    w.d.add_users(API, &at, &UserLists { admins: vec![ROOM_ADMIN], ..UserLists::default() }).unwrap();
    let rename = || RoomPatch { name: Some("Ours".into()), ..RoomPatch::default() };
    assert!(matches!(w.d.update_room(Principal::User(ROOM_ADMIN), &at, rename()), Err(Error::Forbidden(_))));
    let lists = UserLists { assigned: vec![UNLISTED], ..UserLists::default() };
    w.d.add_users(Principal::User(ROOM_ADMIN), &at, &lists).expect("a room admin manages its users");
    w.d.update_room(Principal::User(ADMIN), &at, rename()).expect("an org admin changes it");
    for p in [API, Principal::User(OWNER)] {
        let deletion = RoomPatch { scheduled_deletion: Some(Some(T0 + 60)), ..RoomPatch::default() };
        let e = w.d.update_room(p, &at, deletion).unwrap_err();
        assert!(matches!(e.kind(), Error::Conflict(_)), "{e:?}");
        assert_eq!(e.remedy(), Some(Remedy::RemoveDefaultRoom(1)));
    }
    let e = w.d.delete_room(API, &at).unwrap_err();
    assert!(matches!(e.kind(), Error::Conflict(_)) && e.remedy() == Some(Remedy::RemoveDefaultRoom(1)), "{e:?}");
    let e = w.d.create_default_room(API, 1, false, None).unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "one default room: {e:?}");
    w.d.delete_default_room(Principal::User(OWNER), 1).unwrap();
    assert!(w.d.store.read().unwrap().room(id).unwrap().is_none());
}

/// Automation: every member joins, owners/admins are room admins; a demoted
/// admin drops to assignedUsers where automation gave the role and keeps an
/// explicit one; a removed member leaves.
#[test]
fn automation_and_demotion() {
    let w = world();
    let spec = NewRoom {
        org_id: 1,
        name: Some("All hands".into()),
        users: UserLists { moderators: vec![LISTED], ..UserLists::default() },
        automation: true,
        ..NewRoom::default()
    };
    let id = w.d.create_room(Principal::User(OWNER), spec).unwrap().id;
    let room = w.stored(id);
    assert_eq!(room.admins, vec![OWNER, ADMIN], "owners/admins are room admins");
    assert_eq!(room.moderators, vec![LISTED], "an explicit role stays");
    assert_eq!(room.assigned, vec![ROOM_ADMIN, MODERATOR, UNLISTED], "every other member joins");
    // The owner created it (explicit admin); the admin's role is automation's.
    w.d.set_member(API, 1, ADMIN, OrgRole::Member).unwrap();
    w.d.set_member(API, 1, OWNER, OrgRole::Member).unwrap();
    let room = w.stored(id);
    assert_eq!(room.role_of(ADMIN), Some(RoomRole::Assigned), "the demoted admin drops");
    assert_eq!(room.role_of(OWNER), Some(RoomRole::Admin), "the creator's role is explicit");
    w.d.set_member(API, 1, ADMIN, OrgRole::Admin).unwrap();
    assert_eq!(w.stored(id).role_of(ADMIN), Some(RoomRole::Admin), "and rises again when promoted");
    // A new member joins; a removed one leaves.
    w.d.set_member(API, 1, OUTSIDER, OrgRole::Member).unwrap();
    assert_eq!(w.stored(id).role_of(OUTSIDER), Some(RoomRole::Assigned));
    w.d.remove_member(API, 1, LISTED).unwrap();
    assert_eq!(w.stored(id).role_of(LISTED), None, "removed from the organization: out of its rooms");
}

/// A scheduled deletion happens when the clock reaches it, not before; a
/// time in the past is refused.
#[test]
fn scheduled_deletion_by_moving_the_clock() {
    let w = world();
    let in_an_hour = RoomPatch { scheduled_deletion: Some(Some(T0 + 3600)), ..RoomPatch::default() };
    let id = w.room();
    w.d.update_room(API, &RoomRef::Id(id), in_an_hour).unwrap();
    let other = w.room();
    assert_eq!(w.d.delete_due_rooms().unwrap(), 0);
    w.clock.advance(3599);
    assert_eq!(w.d.delete_due_rooms().unwrap(), 0, "a second early");
    w.clock.advance(1);
    assert_eq!(w.d.delete_due_rooms().unwrap(), 1);
    assert!(w.d.store.read().unwrap().room(id).unwrap().is_none(), "deleted when due");
    assert!(w.d.store.read().unwrap().room(other).unwrap().is_some(), "the other room stays");
    let past = RoomPatch { scheduled_deletion: Some(Some(T0)), ..RoomPatch::default() };
    let e = w.d.update_room(API, &RoomRef::Id(other), past).unwrap_err();
    assert!(matches!(&e, Error::Invalid { field, .. } if field == "scheduledDeletion"), "{e:?}");
}

/// A default room that came with a deletion time from outside the API (a
/// hand-made dump) is not deleted when the time comes: the time goes.
#[test]
fn the_timer_keeps_a_default_room() {
    let w = world();
    let id = w.d.create_default_room(API, 1, false, None).unwrap().id;
    let room = w.stored(id);
    let mut scheduled = room.clone();
    scheduled.scheduled_deletion = Some(T0 + 60);
    w.d.store.write(|wr| wr.put_room(&scheduled, Some(&room))).unwrap();
    w.clock.advance(60);
    assert_eq!(w.d.delete_due_rooms().unwrap(), 0, "nothing deleted");
    let kept = w.stored(id);
    assert_eq!(kept.scheduled_deletion, None, "the time is dropped");
    assert_eq!(w.d.store.read().unwrap().default_room_id(1).unwrap(), Some(id));
    assert_eq!(w.d.delete_due_rooms().unwrap(), 0, "and nothing is due any more");
}

/// A personal access token works until its expiry, by the clock, and
/// never after; revoked, it stops at once.
#[test]
fn token_expiry_by_moving_the_clock() {
    let w = world();
    let issued = w.d.issue_token(API, LISTED, Some("phone"), Some(2)).unwrap();
    let who = || w.d.authenticate(&w.d.store.read().unwrap(), &issued.secret);
    assert_eq!(who().unwrap(), Principal::User(LISTED));
    w.clock.advance(2 * 86_400 - 1);
    assert_eq!(who().unwrap(), Principal::User(LISTED), "a second before its expiry");
    w.clock.advance(1);
    assert!(matches!(who(), Err(Error::Unauthorized(m)) if m.contains("expired")));
    let fresh = w.d.issue_token(API, LISTED, None, None).unwrap();
    w.d.revoke_token(API, LISTED, i64::try_from(fresh.record.id).unwrap()).unwrap();
    let e = w.d.authenticate(&w.d.store.read().unwrap(), &fresh.secret).unwrap_err();
    assert!(matches!(e, Error::Unauthorized(m) if m.contains("revoked")));
}

/// The CLI and the API say the same remedy in their own terms.
#[test]
fn remedies_speak_to_each_front_end() {
    let w = world();
    let e = w.d.set_member(API, 9, 1, OrgRole::Member).unwrap_err();
    assert_eq!(e.to_string(), "no organization 9");
    assert_eq!(e.for_cli(), "no organization 9: create it with `messenger-chat org put 9 --name <name>`");
    w.d.deactivate_user(API, UNLISTED).unwrap();
    let e = w.d.set_member(API, 1, UNLISTED, OrgRole::Member).unwrap_err();
    assert!(e.for_cli().contains("messenger-chat user put 6"), "{}", e.for_cli());
    assert!(!e.for_cli().contains("/v1/"), "no HTTP in a shell user's message: {}", e.for_cli());
}

/// Login through the session service: the account is made on first need
/// with the derived password, the homeserver URL is the configured one, and
/// the homeserver's answers are sorted as the app sees them.
#[tokio::test]
async fn login_through_the_session_service() {
    let w = world();
    let fake = Arc::new(FakeHomeserver::new());
    let hs: Arc<dyn Homeserver> = fake.clone();
    let sessions = Arc::new(Sessions::new(w.d.clone(), Some(hs)));
    let login = sessions.login(LISTED, Some("PHONE"), None, None).await.unwrap();
    assert_eq!(login.session.device_id, "PHONE");
    assert_eq!(login.homeserver_url, "http://127.0.0.1:8008", "matrix.homeserver_url, as configured");
    let account = fake.account(LISTED).expect("made on first need");
    let creds = sessions.credentials(LISTED).await.unwrap();
    assert_eq!(account.password, creds.password, "with the derived password");
    assert_eq!(creds.username, w.d.ids.user(LISTED));
    assert!(w.d.store.read().unwrap().has_matrix_account(LISTED).unwrap());

    let e = sessions.login(LISTED, Some(""), None, None).await.unwrap_err();
    assert!(matches!(&e, Error::Invalid { field, .. } if field == "deviceID"), "{e:?}");
    fake.fail(
        crate::homeserver::fake::Op::Login,
        1,
        crate::homeserver::HomeserverError::RateLimited { retry_after: Some(std::time::Duration::from_millis(1500)) },
    );
    let e = sessions.login(LISTED, None, None, None).await.unwrap_err();
    assert!(matches!(e, Error::RateLimited { retry_after_secs: 2, .. }), "{e:?}");
    fake.fail(crate::homeserver::fake::Op::Login, 1, crate::homeserver::HomeserverError::Unreachable("down".into()));
    assert!(matches!(sessions.login(LISTED, None, None, None).await, Err(Error::Unavailable(_))));
    fake.fail(crate::homeserver::fake::Op::Login, 1, crate::homeserver::HomeserverError::Failing("500".into()));
    assert!(matches!(sessions.login(LISTED, None, None, None).await, Err(Error::HomeserverRefused(_))));
    fake.fail(crate::homeserver::fake::Op::Login, 1, crate::homeserver::HomeserverError::Deactivated);
    assert!(matches!(sessions.login(LISTED, None, None, None).await, Err(Error::Forbidden(_))));

    let none = Arc::new(Sessions::new(w.d.clone(), None));
    assert!(matches!(none.login(LISTED, None, None, None).await, Err(Error::Unavailable(_))));
    let creds = none.credentials(LISTED).await.expect("credentials need no homeserver");
    assert_eq!(creds.password, sessions.credentials(LISTED).await.unwrap().password, "stable across calls");
}

/// The whole event log, oldest first, as (type, organization, actor, data).
fn log_after(w: &World, after: u64) -> Vec<crate::model::Event> {
    w.d.store.read().unwrap().events_after(None, after, usize::MAX).unwrap()
}

fn last_event(w: &World) -> u64 {
    w.d.store.read().unwrap().last_event_id().unwrap()
}

/// What a stretch of the log says: (type, organization, actor), in order.
fn kinds(events: &[crate::model::Event]) -> Vec<(&str, Option<i64>, Actor)> {
    events.iter().map(|e| (e.kind.as_str(), e.org_id, e.actor.clone())).collect()
}

fn data(e: &crate::model::Event) -> serde_json::Value {
    serde_json::from_str(&e.data).unwrap()
}

/// The actor of [`API`] in the log: the id of the token.
fn api_actor() -> Actor {
    Actor::ApiToken("0a0b0c0d0e0f".into())
}

/// Every event type, produced by the action that should produce it, with
/// the actor that did it, in the order of the changes.
#[test]
fn every_change_is_in_the_event_log_with_its_actor() {
    let w = world();
    // The world's own making: the organization, the users, the members.
    let made = log_after(&w, 0);
    assert_eq!(
        kinds(&made[..2]),
        vec![("organization.created", Some(1), api_actor()), ("user.created", None, api_actor())]
    );
    assert_eq!(made.iter().filter(|e| e.kind == "member.added").count(), 6);
    assert!(made.windows(2).all(|p| p[0].id < p[1].id && p[0].time <= p[1].time), "ascending ids");
    assert!(made.iter().all(|e| e.time == T0), "times from the pinned clock");

    // Rooms: created by an owner's PAT, renamed by the API token, users
    // added by a room admin, one removed, a claim.
    let mut at = last_event(&w);
    let spec = NewRoom {
        org_id: 1,
        name: Some("Board".into()),
        users: UserLists { admins: vec![ROOM_ADMIN], assigned: vec![LISTED, MODERATOR], ..UserLists::default() },
        ..NewRoom::default()
    };
    let id = w.d.create_room(Principal::User(OWNER), spec).unwrap().id;
    let room = RoomRef::Id(id);
    w.clock.advance(10);
    w.d.update_room(API, &room, RoomPatch { name: Some("Board 2".into()), ..RoomPatch::default() }).unwrap();
    let lists = UserLists { moderators: vec![MODERATOR], assigned: vec![UNLISTED], ..UserLists::default() };
    w.d.add_users(Principal::User(ROOM_ADMIN), &room, &lists).unwrap();
    let gone = UserLists { assigned: vec![UNLISTED], ..UserLists::default() };
    w.d.remove_users(Principal::User(ROOM_ADMIN), &room, &gone).unwrap();
    w.d.claim(LISTED, &room).unwrap();
    w.d.claim_as(API, UNLISTED, &RoomRef::Id(w.d.create_default_room(API, 1, true, None).unwrap().id)).unwrap();
    let step = log_after(&w, at);
    let owner = Actor::User(OWNER);
    assert_eq!(
        kinds(&step),
        vec![
            ("room.created", Some(1), owner.clone()),
            ("room.updated", Some(1), api_actor()),
            ("room.members_changed", Some(1), Actor::User(ROOM_ADMIN)),
            ("room.members_changed", Some(1), Actor::User(ROOM_ADMIN)),
            ("room.claimed", Some(1), Actor::User(LISTED)),
            ("room.created", Some(1), api_actor()),
            ("room.claimed", Some(1), api_actor()),
        ]
    );
    assert_eq!(data(&step[0])["room"]["admins"], serde_json::json!([OWNER, ROOM_ADMIN]), "the room as created");
    assert_eq!(data(&step[1])["changed"], serde_json::json!({"name": "Board 2"}));
    assert_eq!(step[1].time, T0 + 10);
    assert_eq!(
        data(&step[2]),
        serde_json::json!({
            "roomID": id, "by": "request",
            "added": [{"userID": UNLISTED, "role": "assignedUser"}], "removed": [],
            "promoted": [{"userID": MODERATOR, "from": "assignedUser", "to": "moderator"}], "demoted": [],
        })
    );
    assert_eq!(data(&step[3])["removed"], serde_json::json!([UNLISTED]));
    assert_eq!(data(&step[4]), serde_json::json!({"roomID": id, "userID": LISTED}));
    assert_eq!(data(&step[6])["userID"], serde_json::json!(UNLISTED), "an API token claiming for a user");

    // Organization roles: a demotion moves the automated default room by automation.
    at = last_event(&w);
    w.d.set_member(API, 1, ADMIN, OrgRole::Member).unwrap();
    let step = log_after(&w, at);
    assert_eq!(
        kinds(&step),
        vec![("member.role_changed", Some(1), api_actor()), ("room.members_changed", Some(1), api_actor()),]
    );
    assert_eq!(data(&step[0]), serde_json::json!({"userID": ADMIN, "from": "admin", "to": "member"}));
    assert_eq!(data(&step[1])["by"], "automation");
    assert_eq!(
        data(&step[1])["demoted"],
        serde_json::json!([{"userID": ADMIN, "from": "admin", "to": "assignedUser"}])
    );

    // Tokens: issued and revoked, never the secret.
    at = last_event(&w);
    let issued = w.d.issue_token(API, LISTED, Some("phone"), Some(2)).unwrap();
    w.d.revoke_token(API, LISTED, i64::try_from(issued.record.id).unwrap()).unwrap();
    let step = log_after(&w, at);
    assert_eq!(kinds(&step), vec![("token.issued", None, api_actor()), ("token.revoked", None, api_actor())]);
    assert_eq!(data(&step[0])["tokenID"], serde_json::json!(issued.record.id));
    assert!(step.iter().all(|e| !e.data.contains(&issued.secret)), "no secret in the log");

    // A member removed, a user deactivated: they leave the rooms by automation.
    at = last_event(&w);
    w.d.remove_member(API, 1, UNLISTED).unwrap();
    w.d.issue_token(API, MODERATOR, None, None).unwrap();
    w.d.deactivate_user(API, MODERATOR).unwrap();
    let step = log_after(&w, at);
    assert_eq!(
        kinds(&step),
        vec![
            ("member.removed", Some(1), api_actor()),
            ("room.members_changed", Some(1), api_actor()),
            ("token.issued", None, api_actor()),
            ("user.deactivated", None, api_actor()),
            ("token.revoked", None, api_actor()),
            ("member.removed", Some(1), api_actor()),
            ("room.members_changed", Some(1), api_actor()),
            ("room.members_changed", Some(1), api_actor()),
        ]
    );
    assert_eq!(data(&step[1])["removed"], serde_json::json!([UNLISTED]), "out of the default room it claimed");
    assert_eq!(data(&step[5])["reason"], "deactivated");
    assert_eq!(data(&step[6])["removed"], serde_json::json!([MODERATOR]));

    // Deletions: by request, by schedule (the system), with the organization.
    at = last_event(&w);
    let doomed = w.room();
    let in_an_hour = RoomPatch { scheduled_deletion: Some(Some(T0 + 3600)), ..RoomPatch::default() };
    w.d.update_room(Principal::User(ROOM_ADMIN), &RoomRef::Id(doomed), in_an_hour).unwrap();
    w.clock.advance(3600);
    assert_eq!(w.d.delete_due_rooms().unwrap(), 1);
    w.d.delete_room(Principal::User(OWNER), &room).unwrap();
    w.d.put_org(API, 1, "Acme 2").unwrap();
    w.d.delete_org(API, 1).unwrap();
    let step = log_after(&w, at);
    assert_eq!(
        kinds(&step),
        vec![
            ("room.created", Some(1), api_actor()),
            ("room.updated", Some(1), Actor::User(ROOM_ADMIN)),
            ("room.deleted", Some(1), Actor::System),
            ("room.deleted", Some(1), owner),
            ("organization.renamed", Some(1), api_actor()),
            ("organization.deleted", Some(1), api_actor()),
            ("room.deleted", Some(1), api_actor()),
        ]
    );
    let reasons: Vec<_> = [2, 3, 6].iter().map(|&i| data(&step[i])["reason"].clone()).collect();
    assert_eq!(reasons, ["schedule", "request", "organizationDeleted"]);
    assert_eq!(data(&step[4]), serde_json::json!({"name": "Acme 2", "previousName": "Acme"}));
}

/// Pages of one organization, cursors and who may read them.
#[test]
fn the_log_is_read_a_page_after_a_cursor() {
    let w = world();
    w.d.put_org(API, 2, "Beta").unwrap();
    w.d.set_member(API, 2, OUTSIDER, OrgRole::Owner).unwrap();
    let r = w.d.store.read().unwrap();
    let all = w.d.events(&r, API, None, 0, 1000).unwrap();
    assert_eq!(all.events.len(), 16, "1 organization, 7 users, 6 members, then another organization and its owner");
    let of_1 = w.d.events(&r, Principal::User(OWNER), Some(1), 0, 1000).unwrap();
    assert!(of_1.events.iter().all(|e| e.org_id == Some(1)));
    assert_eq!(of_1.events.len(), 7);
    // Two at a time, each page after the last one's cursor.
    let first = w.d.events(&r, Principal::User(ADMIN), Some(1), 0, 2).unwrap();
    let second = w.d.events(&r, Principal::User(ADMIN), Some(1), first.next, 2).unwrap();
    let ids: Vec<u64> = first.events.iter().chain(&second.events).map(|e| e.id).collect();
    assert_eq!(ids, of_1.events[..4].iter().map(|e| e.id).collect::<Vec<_>>());
    let end = w.d.events(&r, API, Some(1), of_1.next, 10).unwrap();
    assert_eq!((end.events.len(), end.next), (0, of_1.next), "nothing after the last: the same cursor");

    // Plain members and outsiders may not; a PAT names its organization.
    for p in [Principal::User(LISTED), Principal::User(OUTSIDER)] {
        assert!(matches!(w.d.events(&r, p, Some(1), 0, 10), Err(Error::Forbidden(_))), "{p:?}");
    }
    assert!(matches!(w.d.events(&r, Principal::User(OWNER), None, 0, 10), Err(Error::Malformed(_))));
    // A cursor from the future, and one of another organization.
    let last = all.next;
    let e = w.d.events(&r, API, Some(1), last + 1, 10).unwrap_err();
    assert!(matches!(&e, Error::Malformed(m) if m.contains("beyond the last event")), "{e:?}");
    let e = w.d.events(&r, Principal::User(OWNER), Some(1), last, 10).unwrap_err();
    assert!(matches!(&e, Error::Forbidden(m) if m.contains("organization 1")), "{e:?}");
    assert!(matches!(w.d.events(&r, API, Some(9), 0, 10), Err(Error::Remedied { .. })), "unknown organization: 404");
}

/// Retention: events older than `events.retention_days` go, by the clock,
/// a bounded batch at a time; ids go on from where they were.
#[test]
fn old_events_are_pruned_by_the_clock() {
    let w = world();
    let before = log_after(&w, 0);
    assert_eq!(w.d.prune_events().unwrap(), 0, "nothing is 90 days old");
    w.clock.advance(90 * 86_400);
    w.d.put_org(API, 2, "Beta").unwrap();
    assert_eq!(w.d.prune_events().unwrap(), 0, "90 days old is not older than 90 days");
    w.clock.advance(1);
    assert_eq!(w.d.prune_events().unwrap(), before.len(), "the world's events, 90 days old");
    let left = log_after(&w, 0);
    assert_eq!(kinds(&left), vec![("organization.created", Some(2), api_actor())]);
    assert!(w.d.store.read().unwrap().events_after(Some(1), 0, 100).unwrap().is_empty(), "the index follows");
    w.d.put_org(API, 3, "Gamma").unwrap();
    assert_eq!(log_after(&w, 0).last().unwrap().id, left[0].id + 1, "ids never reused");

    // A batch at a time: more than one batch is due.
    for i in 0..crate::domain::events::PRUNE_BATCH + 5 {
        w.d.put_org(API, 10 + i64::try_from(i).unwrap(), "Many").unwrap();
    }
    w.clock.advance(91 * 86_400);
    assert_eq!(w.d.prune_events().unwrap(), crate::domain::events::PRUNE_BATCH);
    assert_eq!(w.d.prune_events().unwrap(), 7);
    assert_eq!(w.d.prune_events().unwrap(), 0);
}

/// A derived password is kept, so the next login derives nothing; beyond
/// `security.password_cache_size` the least recently used one leaves and its
/// user's next login derives it again and still works; a deactivated user's
/// password is wiped at once; with a size of 0 every login derives.
#[tokio::test]
async fn derived_passwords_are_kept_evicted_and_wiped() {
    for size in [1, 0] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.redb"), 1 << 20).unwrap();
        let mut config = Config::default();
        config.security.argon2_memory_kib = 8;
        config.security.argon2_iterations = 1;
        config.security.password_cache_size = size;
        let clock = Arc::new(ManualClock::new(T0));
        let d = Arc::new(Domain::new(store, Arc::new(config), ServerKey::from_bytes([3; 32]), clock).unwrap());
        d.put_org(Principal::COMMAND_LINE, 1, "Acme").unwrap();
        for u in [1, 2] {
            d.put_user(Principal::COMMAND_LINE, u, &format!("User {u}")).unwrap();
            d.set_member(Principal::COMMAND_LINE, 1, u, OrgRole::Member).unwrap();
        }
        let fake = Arc::new(FakeHomeserver::new());
        let hs: Arc<dyn Homeserver> = fake.clone();
        let sessions = Arc::new(Sessions::new(d.clone(), Some(hs)));
        let cache = d.password_cache();

        sessions.login(1, Some("A1"), None, None).await.expect("first login");
        sessions.login(1, Some("A2"), None, None).await.expect("second login");
        assert_eq!(d.derivations_done(), if size == 0 { 2 } else { 1 }, "size {size}: derived once when kept");
        assert_eq!(cache.holds(1), size > 0);
        sessions.login(2, Some("B1"), None, None).await.expect("another user's login");
        if size > 0 {
            assert!(cache.holds(2) && !cache.holds(1), "the least recently used left");
            assert_eq!(cache.len(), 1, "never more than the size");
        }
        let before = d.derivations_done();
        let again = sessions.login(1, Some("A3"), None, None).await.expect("login after the eviction");
        assert_eq!(again.session.device_id, "A3");
        assert_eq!(d.derivations_done(), before + 1, "derived again after leaving the cache");
        assert_eq!(fake.account(1).unwrap().password, sessions.credentials(1).await.unwrap().password);

        d.deactivate_user(Principal::COMMAND_LINE, 1).unwrap();
        assert!(!cache.holds(1), "a deactivated user's password is wiped at once");
        d.forget_all_passwords();
        assert!(cache.is_empty(), "all wiped when the service stops");
    }
}
