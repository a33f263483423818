//! The reconciler on the fake homeserver: failures, crashes, restarts and
//! backoff, in (tokio's paused) time that passes only when everything waits.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::Config;
use crate::domain::rooms::{NewRoom, RoomPatch, RoomRef, UserLists};
use crate::domain::sessions::Sessions;
use crate::domain::{ManualClock, Principal};
use crate::homeserver::fake::{FakeHomeserver, Membership, Op};
use crate::model::{OrgRole, RoomRole};
use crate::secrets::ServerKey;
use crate::store::Store;

/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600;

/// A database, a domain on it and a fake homeserver, shared by every
/// reconciler a test starts (each one a fresh process as far as its memory goes).
struct World {
    _dir: tempfile::TempDir,
    domain: Arc<Domain>,
    fake: Arc<FakeHomeserver>,
    /// What /metrics would show, across the reconcilers of the test.
    progress: Arc<Progress>,
    /// The domain's clock, moved by tests of schedules.
    clock: Arc<ManualClock>,
}

fn cheap_config() -> Config {
    let mut config = Config::default();
    // Argon2 at its floor: the tests derive many passwords.
    config.security.argon2_memory_kib = 8;
    config.security.argon2_iterations = 1;
    config
}

impl World {
    fn new() -> World {
        World::on(FakeHomeserver::new(), cheap_config())
    }

    /// A world whose homeserver has no admin API.
    fn without_admin_api() -> World {
        World::on(FakeHomeserver::without_admin_api(), cheap_config())
    }

    /// A world whose reconciler applies `n` entries at once (`matrix.concurrency`).
    fn with_concurrency(n: u32) -> World {
        let mut config = cheap_config();
        config.matrix.concurrency = n;
        World::on(FakeHomeserver::new(), config)
    }

    fn on(fake: FakeHomeserver, config: Config) -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.redb"), 1 << 20).unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let domain = Domain::new(store, Arc::new(config), ServerKey::from_bytes([7; 32]), clock.clone()).unwrap();
        let domain = Arc::new(domain);
        let progress = Arc::new(Progress::new(domain.clone()));
        World { _dir: dir, domain, fake: Arc::new(fake), progress, clock }
    }

    /// Organization 1 with users 1 (owner), 2 and 3 (members).
    fn org(&self) {
        let d = &self.domain;
        d.put_org(Principal::COMMAND_LINE, 1, "Acme").unwrap();
        for (u, role) in [(1, OrgRole::Owner), (2, OrgRole::Member), (3, OrgRole::Member)] {
            d.put_user(Principal::COMMAND_LINE, u, &format!("User {u}")).unwrap();
            d.set_member(Principal::COMMAND_LINE, 1, u, role).unwrap();
        }
    }

    /// A room of organization `org` with admin 1, moderator 2, assigned 3.
    fn room(&self, org: i64, name: &str) -> RoomId {
        let spec = NewRoom {
            org_id: org,
            name: Some(name.into()),
            topic: Some("a topic".into()),
            users: UserLists { admins: vec![1], moderators: vec![2], assigned: vec![3] },
            ..NewRoom::default()
        };
        self.domain.create_room(Principal::COMMAND_LINE, spec).unwrap().id
    }

    fn reconciler(&self) -> Reconciler {
        let hs: Arc<dyn Homeserver> = self.fake.clone();
        let sessions = Arc::new(Sessions::new(self.domain.clone(), Some(hs.clone())));
        Reconciler::new(self.domain.clone(), hs, sessions, self.progress.clone())
    }

    fn depth(&self) -> u64 {
        self.domain.store.read().unwrap().outbox_depth().unwrap()
    }

    /// Runs a fresh reconciler until the outbox is empty (within an hour of paused time).
    async fn settle(&self) {
        let task = tokio::spawn(self.reconciler().run());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        while self.depth() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the outbox never emptied: {:?}", self.outbox());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task.abort();
        let _ = task.await;
    }

    fn outbox(&self) -> Vec<(u64, OutboxOp)> {
        self.domain.store.read().unwrap().outbox_head(100).unwrap()
    }

    fn stored(&self, id: RoomId) -> crate::model::Room {
        self.domain.store.read().unwrap().room(id).unwrap().expect("the stored room")
    }

    /// Exactly one homeserver room for `id`, matching the stored room.
    fn assert_one_matching_room(&self, id: RoomId) {
        let room = self.stored(id);
        let found = self.fake.rooms_of(id);
        assert_eq!(found.len(), 1, "room {id}: exactly one homeserver room, got {found:?}");
        let (mx, hs) = &found[0];
        assert_eq!(&room.matrix_room_id, mx, "room {id}: the stored Matrix id");
        assert!(room.is_synced() && room.sync_error.is_none(), "room {id} synced: {room:?}");
        assert_eq!((hs.name.as_str(), hs.topic.as_str()), (room.name.as_str(), room.topic.as_str()));
        let levels: std::collections::BTreeMap<i64, i64> = room
            .members()
            .into_iter()
            .filter_map(|u| room.role_of(u).filter(|r| *r > RoomRole::Assigned).map(|r| (u, r.power_level())))
            .collect();
        assert_eq!(hs.levels, levels, "room {id}: power levels");
        assert_eq!(hs.present(), room.members(), "room {id}: invited or joined");
        assert_eq!(hs.joined(), room.claimed, "room {id}: joined are the claimed");
    }
}

#[tokio::test(start_paused = true)]
async fn a_room_reaches_the_homeserver_as_stored() {
    let w = World::new();
    w.org();
    let id = w.room(1, "Board");
    w.domain.claim(3, &crate::domain::rooms::RoomRef::Id(id)).unwrap();
    w.settle().await;
    w.assert_one_matching_room(id);
    for u in 1..=3 {
        let account = w.fake.account(u).expect("an account per listed user");
        assert_eq!(account.display_name.as_deref(), Some(format!("User {u}").as_str()));
    }
}

/// Every operation a room's creation and a later change use, failing once
/// (retryably): the step is retried and the room ends as stored, once.
#[tokio::test(start_paused = true)]
async fn each_step_failing_once_is_retried() {
    for op in
        [Op::Prepare, Op::EnsureAccount, Op::MadeRooms, Op::CreateRoom, Op::Join, Op::UploadAvatar, Op::UpdateRoom]
    {
        for error in [
            HomeserverError::Unreachable("connection refused".into()),
            HomeserverError::Failing("homeserver error 500".into()),
        ] {
            let w = World::new();
            w.org();
            let png = b"\x89PNG\r\n\x1a\n-a-tiny-avatar".to_vec();
            let spec = NewRoom {
                org_id: 1,
                name: Some("Board".into()),
                users: UserLists { admins: vec![1], moderators: vec![2], assigned: vec![3] },
                avatar: Some(png),
                ..NewRoom::default()
            };
            let id = w.domain.create_room(Principal::COMMAND_LINE, spec).unwrap().id;
            w.domain.claim(3, &crate::domain::rooms::RoomRef::Id(id)).unwrap();
            w.fake.fail(op, 1, error.clone());
            w.settle().await;
            // A change afterwards goes through update_room.
            w.domain
                .update_room(
                    Principal::COMMAND_LINE,
                    &crate::domain::rooms::RoomRef::Id(id),
                    crate::domain::rooms::RoomPatch { name: Some("Board 2".into()), ..Default::default() },
                )
                .unwrap();
            w.fake.fail(op, 1, error.clone());
            w.settle().await;
            w.assert_one_matching_room(id);
            assert!(!w.fake.calls_of(op).is_empty(), "{op:?} was called");
            assert!(w.stored(id).avatar_url.starts_with("mxc://fake/"), "{op:?}: the avatar uploaded");
        }
    }
}

/// A crash between any two homeserver calls (and in the middle of one,
/// after it took effect): a new reconciler on the same database ends with
/// exactly one homeserver room per stored room, in the stored state.
#[tokio::test(start_paused = true)]
async fn a_crash_between_any_two_steps_ends_in_one_room() {
    // With a claim the Matrix id is written down before the join; without
    // one it is written with the outcome, in one transaction.
    for claimed in [true, false] {
        let setup = || {
            let w = World::new();
            w.org();
            let id = w.room(1, "Board");
            if claimed {
                w.domain.claim(3, &crate::domain::rooms::RoomRef::Id(id)).unwrap();
            }
            (w, id)
        };
        // How many calls a whole sync takes, from an undisturbed run.
        let calls = {
            let (w, _) = setup();
            w.settle().await;
            w.fake.calls().len()
        };
        assert!(calls >= 5, "a sync takes several calls: {calls}");
        for at in 1..=calls {
            for applied in [false, true] {
                let (w, id) = setup();
                w.fake.hang_at(at, applied);
                let first = tokio::spawn(w.reconciler().run());
                w.fake.hung().await;
                // The crash: the process and everything it held in memory are gone.
                first.abort();
                let _ = first.await;
                w.fake.stop_hanging();
                w.settle().await;
                w.assert_one_matching_room(id);
                let why = format!("claimed: {claimed}, call {at} (applied: {applied})");
                assert_eq!(w.fake.rooms().len(), 1, "{why}: no second room anywhere");
            }
        }
    }
}

/// While the homeserver cannot be reached, the pause between tries doubles
/// up to 30 s and stays there; once it answers, the work is done.
#[tokio::test(start_paused = true)]
async fn backoff_is_capped() {
    let w = World::new();
    w.org();
    let id = w.room(1, "Board");
    w.fake.fail(Op::Prepare, 12, HomeserverError::Unreachable("connection refused".into()));
    w.settle().await;
    w.assert_one_matching_room(id);
    let tries: Vec<tokio::time::Instant> = w.fake.calls_of(Op::Prepare).iter().map(|c| c.at).collect();
    assert_eq!(tries.len(), 13);
    let pauses: Vec<u64> = tries.windows(2).map(|t| u64::try_from((t[1] - t[0]).as_millis()).unwrap()).collect();
    assert_eq!(pauses, [250, 500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000, 30_000, 30_000]);
}

/// A homeserver that asks the service to slow down is waited for as asked.
#[tokio::test(start_paused = true)]
async fn a_rate_limit_is_waited_out_as_asked() {
    let w = World::new();
    w.org();
    let id = w.room(1, "Board");
    w.fake.fail(Op::CreateRoom, 1, HomeserverError::RateLimited { retry_after: Some(Duration::from_secs(7)) });
    w.settle().await;
    w.assert_one_matching_room(id);
    let tries = w.fake.calls_of(Op::CreateRoom);
    assert_eq!(tries.len(), 2);
    assert!(tries[1].at - tries[0].at >= Duration::from_secs(7), "{tries:?}");
}

/// One organization whose room keeps failing does not hold up another's:
/// the other room is made while the first waits, and the first follows
/// once its failures end.
#[tokio::test(start_paused = true)]
async fn one_failing_organization_does_not_hold_up_others() {
    let w = World::new();
    w.org();
    w.domain.put_org(Principal::COMMAND_LINE, 2, "Beta").unwrap();
    w.domain.put_user(Principal::COMMAND_LINE, 9, "Nine").unwrap();
    w.domain.set_member(Principal::COMMAND_LINE, 2, 9, OrgRole::Owner).unwrap();
    let failing = w.room(1, "Board");
    let spec = NewRoom {
        org_id: 2,
        name: Some("Beta room".into()),
        users: UserLists { admins: vec![9], ..UserLists::default() },
        ..NewRoom::default()
    };
    let other = w.domain.create_room(Principal::COMMAND_LINE, spec).unwrap().id;
    // The first room's creation, first in the outbox, fails ten times.
    let error = HomeserverError::Failing("homeserver error 500 for this room".into());
    w.fake.fail_about(Op::CreateRoom, &failing.to_string(), 10, error);
    let task = tokio::spawn(w.reconciler().run());
    // Made in the first pass, not after the failing room's retries.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while w.stored(other).matrix_room_id.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the other organization's room waits for the failing one");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pending = w.stored(failing);
    assert!(pending.matrix_room_id.is_empty(), "the failing room is still failing");
    assert!(pending.sync_error.as_deref().is_some_and(|e| e.contains("500")), "it says why: {pending:?}");
    task.abort();
    let _ = task.await;
    w.settle().await;
    w.assert_one_matching_room(failing);
    w.assert_one_matching_room(other);
}

/// A deletion goes on across restarts, its token kept in the database: a
/// new reconciler asks for the progress of the same deletion (it does not
/// start another) and follows it to the end.
#[tokio::test(start_paused = true)]
async fn a_deletion_is_followed_to_completion_across_restarts() {
    let w = World::new();
    w.org();
    let id = w.room(1, "Doomed");
    w.settle().await;
    let mx = w.stored(id).matrix_room_id.clone();
    w.fake.set_deletion_polls(30);
    w.domain.delete_room(Principal::COMMAND_LINE, &crate::domain::rooms::RoomRef::Id(id)).unwrap();
    let first = tokio::spawn(w.reconciler().run());
    while w.fake.calls_of(Op::DeletionProgress).len() < 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.abort();
    let _ = first.await;
    let token = w.domain.store.read().unwrap().delete_id(&mx).unwrap();
    assert!(token.is_some(), "the deletion's progress token is in the database");
    assert_eq!(w.fake.rooms_of(id).len(), 1, "not deleted yet");
    w.settle().await;
    assert_eq!(w.fake.calls_of(Op::StartDeletion).len(), 1, "one deletion, followed, not started again");
    assert!(w.fake.rooms_of(id).is_empty(), "the homeserver room is gone");
    assert_eq!(w.domain.store.read().unwrap().delete_id(&mx).unwrap(), None, "and its token forgotten");
}

/// A deletion the homeserver forgot (its restart) while the room still
/// exists is started again; one it forgot after finishing is done.
#[tokio::test(start_paused = true)]
async fn a_lost_deletion_is_started_again() {
    let w = World::new();
    w.org();
    let id = w.room(1, "Doomed");
    w.settle().await;
    w.fake.set_deletion_polls(30);
    w.domain.delete_room(Principal::COMMAND_LINE, &crate::domain::rooms::RoomRef::Id(id)).unwrap();
    let first = tokio::spawn(w.reconciler().run());
    while w.fake.calls_of(Op::DeletionProgress).is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.abort();
    let _ = first.await;
    w.fake.forget_deletions();
    w.fake.set_deletion_polls(2);
    w.settle().await;
    assert_eq!(w.fake.calls_of(Op::StartDeletion).len(), 2, "started again once it was lost");
    assert!(w.fake.rooms_of(id).is_empty());
}

/// A deletion under way holds up nothing: rooms queued behind it are made
/// while it goes on.
#[tokio::test(start_paused = true)]
async fn a_long_deletion_does_not_hold_up_other_rooms() {
    let w = World::new();
    w.org();
    let doomed = w.room(1, "Doomed");
    w.settle().await;
    w.fake.set_deletion_polls(1000);
    w.domain.delete_room(Principal::COMMAND_LINE, &crate::domain::rooms::RoomRef::Id(doomed)).unwrap();
    let next = w.room(1, "Next");
    let task = tokio::spawn(w.reconciler().run());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !w.stored(next).is_synced() {
        assert!(tokio::time::Instant::now() < deadline, "the new room waits for the deletion");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.fake.rooms_of(doomed).len(), 1, "the deletion still goes on");
    task.abort();
    let _ = task.await;
    w.assert_one_matching_room(next);
}

/// A step the homeserver refuses is not retried: the reason stays on the
/// room and the outbox goes on.
#[tokio::test(start_paused = true)]
async fn a_refused_step_is_recorded_and_not_retried() {
    let w = World::new();
    w.org();
    let id = w.room(1, "Board");
    w.fake.fail(Op::CreateRoom, 1, HomeserverError::Refused("M_FORBIDDEN: not today".into()));
    w.settle().await;
    let room = w.stored(id);
    assert_eq!(room.sync_error.as_deref(), Some("M_FORBIDDEN: not today"));
    assert!(room.matrix_room_id.is_empty());
    assert_eq!(w.fake.calls_of(Op::CreateRoom).len(), 1);
}

/// Removing a member takes them out of the homeserver room; deactivating a
/// user deactivates the account.
#[tokio::test(start_paused = true)]
async fn membership_and_deactivation_follow_the_database() {
    let w = World::new();
    w.org();
    let id = w.room(1, "Board");
    w.settle().await;
    w.domain.remove_member(Principal::COMMAND_LINE, 1, 3).unwrap();
    w.domain.deactivate_user(Principal::COMMAND_LINE, 2).unwrap();
    w.settle().await;
    w.assert_one_matching_room(id);
    let (_, hs) = &w.fake.rooms_of(id)[0];
    assert_eq!(hs.members.get(&3), Some(&Membership::Gone), "the removed member was kicked");
    assert!(w.fake.account(2).unwrap().deactivated);
    assert!(!w.domain.store.read().unwrap().has_matrix_account(2).unwrap(), "forgotten as made");
}

/// Without the admin API a claim is an invite the user's own session
/// accepts (the fake refuses a join without one), at the room's creation
/// and later; display names and deactivation go through the user's session too.
#[tokio::test(start_paused = true)]
async fn without_the_admin_api_claims_and_accounts_go_through_the_users_own_session() {
    let w = World::without_admin_api();
    w.org();
    let id = w.room(1, "Board");
    w.domain.claim(3, &crate::domain::rooms::RoomRef::Id(id)).unwrap();
    w.settle().await;
    w.assert_one_matching_room(id);
    w.domain.claim(1, &crate::domain::rooms::RoomRef::Id(id)).unwrap();
    w.settle().await;
    w.assert_one_matching_room(id);
    assert_eq!(w.fake.rooms_of(id)[0].1.joined(), [1, 3]);
    let joins: Vec<String> = w.fake.calls_of(Op::Join).into_iter().map(|c| c.about).collect();
    assert_eq!(joins.len(), 2, "{joins:?}");
    assert!(joins.iter().all(|j| j.ends_with("(own session)")), "{joins:?}");
    assert!(w.fake.offers().is_some_and(|o| !o.all()), "settled at start: no admin API");

    w.domain.put_user(Principal::COMMAND_LINE, 2, "Renamed").unwrap();
    w.domain.deactivate_user(Principal::COMMAND_LINE, 3).unwrap();
    w.settle().await;
    assert_eq!(w.fake.account(2).unwrap().display_name.as_deref(), Some("Renamed"));
    assert!(w.fake.account(3).unwrap().deactivated);
    assert_eq!(w.progress.errors(), 0, "no step failed on the way");
}

/// Without the admin API a deleted room is emptied, made invite-only and
/// left, once; the room and its history stay on the homeserver, which
/// /metrics counts.
#[tokio::test(start_paused = true)]
async fn without_the_admin_api_a_deleted_room_is_emptied_and_left() {
    let w = World::without_admin_api();
    w.org();
    let id = w.room(1, "Doomed");
    w.domain.claim(3, &crate::domain::rooms::RoomRef::Id(id)).unwrap();
    w.settle().await;
    let mx = w.stored(id).matrix_room_id.clone();
    assert_eq!(w.progress.rooms_left_with_history(), 0);
    w.domain.delete_room(Principal::COMMAND_LINE, &crate::domain::rooms::RoomRef::Id(id)).unwrap();
    w.settle().await;
    let rooms = w.fake.rooms();
    let left = rooms.get(&mx).expect("the room stays on the homeserver");
    assert!(left.left, "the service left it: {left:?}");
    assert!(left.present().is_empty(), "everyone removed: {left:?}");
    assert_eq!(w.fake.calls_of(Op::StartDeletion).len(), 1);
    assert!(w.fake.calls_of(Op::DeletionProgress).is_empty(), "nothing to follow");
    assert_eq!(w.domain.store.read().unwrap().delete_id(&mx).unwrap(), None, "no token kept");
    assert_eq!(w.progress.rooms_left_with_history(), 1);
    // A restart does not find it again among the rooms the service made.
    let next = w.room(1, "Next");
    w.settle().await;
    w.assert_one_matching_room(next);
    assert!(w.fake.rooms().get(&mx).is_some_and(|r| r.left), "not touched again");
    assert_eq!(w.fake.calls_of(Op::StartDeletion).len(), 1);
}

/// Without the admin API, a member the homeserver refuses to kick (Synapse's
/// 403 for a peer of the bot's power in a room version before 12) stays in
/// the deleted room; everyone else is still removed, the room still left,
/// the deletion not retried (the answer would not change), and /metrics
/// counts who stayed.
#[tokio::test(start_paused = true)]
async fn without_the_admin_api_a_member_who_cannot_be_removed_stays_and_is_counted() {
    let w = World::without_admin_api();
    w.org();
    let id = w.room(1, "Doomed");
    w.domain.claim(3, &crate::domain::rooms::RoomRef::Id(id)).unwrap();
    w.settle().await;
    let mx = w.stored(id).matrix_room_id.clone();
    w.fake.fail_about(Op::Kick, "1", 1, HomeserverError::Refused("M_FORBIDDEN: not enough power".into()));
    w.domain.delete_room(Principal::COMMAND_LINE, &crate::domain::rooms::RoomRef::Id(id)).unwrap();
    w.settle().await;
    let left = w.fake.rooms().get(&mx).cloned().expect("the room stays on the homeserver");
    assert!(left.left, "the service left it anyway: {left:?}");
    assert_eq!(left.present(), [1], "only the one who could not be kicked stays: {left:?}");
    assert_eq!(w.fake.calls_of(Op::StartDeletion).len(), 1, "not retried");
    assert_eq!(w.progress.rooms_left_with_history(), 1);
    assert_eq!(w.progress.members_left_in_deleted_rooms(), 1, "the member who stayed is counted");
    assert_eq!(w.progress.errors(), 0, "not a failed step");
    assert_eq!(w.depth(), 0);
}

/// Without the admin API, a kick that fails for a while (the homeserver
/// failing, not refusing) fails the deletion, which is retried until
/// everyone is out.
#[tokio::test(start_paused = true)]
async fn without_the_admin_api_a_kick_failing_once_is_retried() {
    let w = World::without_admin_api();
    w.org();
    let id = w.room(1, "Doomed");
    w.settle().await;
    let mx = w.stored(id).matrix_room_id.clone();
    w.fake.fail_about(Op::Kick, "2", 1, HomeserverError::Failing("502 from the proxy".into()));
    w.domain.delete_room(Principal::COMMAND_LINE, &crate::domain::rooms::RoomRef::Id(id)).unwrap();
    w.settle().await;
    let left = w.fake.rooms().get(&mx).cloned().expect("the room stays on the homeserver");
    assert!(left.left && left.present().is_empty(), "everyone out in the end: {left:?}");
    assert_eq!(w.fake.calls_of(Op::StartDeletion).len(), 2, "tried again after the failure");
    assert_eq!(w.progress.members_left_in_deleted_rooms(), 0);
    assert_eq!(w.progress.errors(), 1);
}

/// A member removed from a room whom the homeserver refuses to kick (every
/// time, as a 403 for power would): the room's `syncError` says so, the
/// rest of the change is applied, and the refusal is not asked again on its
/// own (only a later change to the room tries again).
#[tokio::test(start_paused = true)]
async fn a_refused_kick_is_recorded_on_the_room() {
    let w = World::new();
    w.org();
    let id = w.room(1, "Board");
    w.settle().await;
    w.fake.fail_about(Op::Kick, "3", u32::MAX, HomeserverError::Refused("M_FORBIDDEN: not enough power".into()));
    let room = crate::domain::rooms::RoomRef::Id(id);
    let three = UserLists { assigned: vec![3], ..UserLists::default() };
    w.domain.remove_users(Principal::COMMAND_LINE, &room, &three).unwrap();
    let rename = crate::domain::rooms::RoomPatch { name: Some("Renamed".into()), ..Default::default() };
    w.domain.update_room(Principal::COMMAND_LINE, &room, rename).unwrap();
    w.settle().await;
    let stored = w.stored(id);
    assert_eq!(stored.sync_error.as_deref(), Some("M_FORBIDDEN: not enough power"), "{stored:?}");
    assert!(!stored.is_synced(), "not shown as ready: {stored:?}");
    let (_, hs) = &w.fake.rooms_of(id)[0];
    assert_eq!(hs.members.get(&3), Some(&Membership::Invited), "still in the room: {hs:?}");
    assert_eq!(hs.name, "Renamed", "the rest of the change applied: {hs:?}");
    // One try per change queued (two), then none while nothing changes.
    let tried = w.fake.calls_of(Op::UpdateRoom).len();
    assert_eq!(tried, 2);
    let task = tokio::spawn(w.reconciler().run());
    tokio::time::sleep(Duration::from_secs(600)).await;
    task.abort();
    let _ = task.await;
    assert_eq!(w.fake.calls_of(Op::UpdateRoom).len(), tried, "not retried on its own");
}

/// A purge begun with the admin API, then a start without it (the setting
/// changed): the stored token cannot be followed, so the room is emptied
/// and left instead, and the token forgotten.
#[tokio::test(start_paused = true)]
async fn a_purge_begun_with_the_admin_api_is_finished_without_it() {
    let w = World::new();
    w.org();
    let id = w.room(1, "Doomed");
    w.settle().await;
    let mx = w.stored(id).matrix_room_id.clone();
    w.fake.set_deletion_polls(30);
    w.domain.delete_room(Principal::COMMAND_LINE, &crate::domain::rooms::RoomRef::Id(id)).unwrap();
    let first = tokio::spawn(w.reconciler().run());
    while w.fake.calls_of(Op::DeletionProgress).is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.abort();
    let _ = first.await;
    assert!(w.domain.store.read().unwrap().delete_id(&mx).unwrap().is_some(), "a purge under way");
    w.fake.set_offers(crate::homeserver::Offers::client_api_only("turned off"));
    w.settle().await;
    assert!(w.fake.rooms().get(&mx).is_some_and(|r| r.left && r.present().is_empty()));
    assert_eq!(w.domain.store.read().unwrap().delete_id(&mx).unwrap(), None, "its token forgotten");
    assert_eq!(w.progress.rooms_left_with_history(), 1);
}

/// The reconciler writes `room.ready` once the homeserver's room matches,
/// and `room.sync_failed` with the homeserver's error when a step fails,
/// both as the system.
#[tokio::test(start_paused = true)]
async fn ready_and_failed_syncs_are_in_the_event_log() {
    let w = World::new();
    w.org();
    let id = w.room(1, "Board");
    w.fake.fail(Op::CreateRoom, 1, HomeserverError::Failing("homeserver error 500: try later".into()));
    w.settle().await;
    let log = w.domain.store.read().unwrap().events_after(Some(1), 0, 100).unwrap();
    let rooms: Vec<(&str, &crate::model::Actor)> =
        log.iter().filter(|e| e.kind.starts_with("room.")).map(|e| (e.kind.as_str(), &e.actor)).collect();
    let system = crate::model::Actor::System;
    assert_eq!(
        rooms,
        vec![
            ("room.created", &crate::model::Actor::CommandLine),
            ("room.sync_failed", &system),
            ("room.ready", &system)
        ]
    );
    let data = |kind: &str| -> serde_json::Value {
        serde_json::from_str(&log.iter().find(|e| e.kind == kind).unwrap().data).unwrap()
    };
    assert!(data("room.sync_failed")["error"].as_str().unwrap().contains("homeserver error 500"));
    assert_eq!(data("room.ready")["matrixRoomID"], serde_json::json!(w.stored(id).matrix_room_id));

    // Each change is ready again once the homeserver has it.
    let patch = crate::domain::rooms::RoomPatch { name: Some("Board 2".into()), ..Default::default() };
    w.domain.update_room(Principal::COMMAND_LINE, &crate::domain::rooms::RoomRef::Id(id), patch).unwrap();
    w.settle().await;
    let after = w.domain.store.read().unwrap().events_after(Some(1), log.last().unwrap().id, 100).unwrap();
    let kinds: Vec<&str> = after.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["room.updated", "room.ready"]);
}

/// The most calls among `calls` under way at one time (each from when it
/// came to when it took effect).
fn most_at_once(calls: &[crate::homeserver::fake::Call]) -> usize {
    let mut edges: Vec<(tokio::time::Instant, i32)> = Vec::new();
    for c in calls {
        // An end before a start at the same instant: back to back is not at once.
        edges.push((c.started, 1));
        edges.push((c.at, -1));
    }
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    usize::try_from(most).unwrap()
}

/// Rooms go to the homeserver several at once, never more than
/// `matrix.concurrency`, while the changes of one room go one after
/// another: a room deleted while its rename is under way on the homeserver
/// is deleted only once the rename is done, and a second rename waits for
/// the first.
#[tokio::test(start_paused = true)]
async fn changes_to_one_room_go_in_order_while_rooms_go_together() {
    let w = World::with_concurrency(4);
    w.org();
    let ids: Vec<RoomId> = (0..8).map(|i| w.room(1, &format!("R{i}"))).collect();
    w.settle().await;
    let mx: Vec<String> = ids.iter().map(|id| w.stored(*id).matrix_room_id.clone()).collect();
    let rename = |id: RoomId, name: &str| {
        let patch = crate::domain::rooms::RoomPatch { name: Some(name.into()), ..Default::default() };
        w.domain.update_room(Principal::COMMAND_LINE, &crate::domain::rooms::RoomRef::Id(id), patch).unwrap();
    };
    // Each homeserver change takes a second.
    w.fake.delay(Op::UpdateRoom, None, Duration::from_secs(1));
    w.fake.delay(Op::StartDeletion, None, Duration::from_secs(1));
    w.fake.set_deletion_polls(1);
    let before = w.fake.calls().len();
    // Two renames each before the reconciler starts: two entries of one room
    // that could go together, were the order of a room not kept.
    for id in &ids {
        rename(*id, "second");
        rename(*id, "second again");
    }
    let task = tokio::spawn(w.reconciler().run());
    // The first renames are on their way; then more changes to the same rooms.
    while w.fake.begun(Op::UpdateRoom) < 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (i, id) in ids.iter().enumerate() {
        if i % 2 == 0 {
            w.domain.delete_room(Principal::COMMAND_LINE, &crate::domain::rooms::RoomRef::Id(*id)).unwrap();
        } else {
            rename(*id, "third");
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while w.depth() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the outbox never emptied: {:?}", w.outbox());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    let _ = task.await;

    let calls: Vec<_> = w.fake.calls()[before..].to_vec();
    let updates: Vec<_> = calls.iter().filter(|c| c.op == Op::UpdateRoom).cloned().collect();
    assert_eq!(most_at_once(&updates), 4, "renames of different rooms go four at once, never more");
    for (i, m) in mx.iter().enumerate() {
        let of_room: Vec<_> = calls.iter().filter(|c| c.about == *m).cloned().collect();
        assert_eq!(most_at_once(&of_room), 1, "room {i}: two changes at once: {of_room:?}");
        let ops: Vec<Op> = of_room.iter().map(|c| c.op).collect();
        if i % 2 == 0 {
            assert!(w.fake.rooms_of(ids[i]).is_empty(), "room {i} deleted");
            if ops.contains(&Op::UpdateRoom) {
                // Its rename had begun: it ended before the deletion began.
                assert_eq!(ops[0], Op::UpdateRoom, "room {i}: {ops:?}");
                assert!(ops[1..].iter().all(|o| *o != Op::UpdateRoom), "room {i}: {ops:?}");
            }
            assert!(ops.contains(&Op::StartDeletion), "room {i}: {ops:?}");
        } else {
            w.assert_one_matching_room(ids[i]);
            assert_eq!(w.fake.rooms_of(ids[i])[0].1.name, "third", "room {i}: the last name won");
        }
    }
    let renamed_then_deleted =
        (0..8).step_by(2).filter(|i| calls.iter().any(|c| c.about == mx[*i] && c.op == Op::UpdateRoom));
    assert!(renamed_then_deleted.count() >= 2, "the deletions came while renames were under way");
}

/// One slow room holds up only itself when more than one entry may go at
/// once: another organization's room queued after it reaches the
/// homeserver meanwhile. One at a time, the same room waits behind it.
#[tokio::test(start_paused = true)]
async fn a_slow_room_does_not_hold_up_others() {
    for concurrency in [2, 1] {
        let w = World::with_concurrency(concurrency);
        w.org();
        w.domain.put_org(Principal::COMMAND_LINE, 2, "Beta").unwrap();
        w.domain.put_user(Principal::COMMAND_LINE, 9, "Nine").unwrap();
        w.domain.set_member(Principal::COMMAND_LINE, 2, 9, OrgRole::Owner).unwrap();
        // The accounts exist first, so that only the rooms are in the outbox.
        w.settle().await;
        let slow = w.room(1, "Slow");
        let spec = NewRoom {
            org_id: 2,
            name: Some("Beta room".into()),
            users: UserLists { admins: vec![9], ..UserLists::default() },
            ..NewRoom::default()
        };
        let other = w.domain.create_room(Principal::COMMAND_LINE, spec).unwrap().id;
        w.fake.delay(Op::CreateRoom, Some(&slow.to_string()), Duration::from_secs(3600));
        let task = tokio::spawn(w.reconciler().run());
        tokio::time::sleep(Duration::from_secs(60)).await;
        let made = !w.stored(other).matrix_room_id.is_empty();
        assert_eq!(made, concurrency > 1, "concurrency {concurrency}: the other room made within a minute");
        assert!(w.stored(slow).matrix_room_id.is_empty(), "the slow room is still on its way");
        task.abort();
        let _ = task.await;
        w.fake.clear_delays();
        w.settle().await;
        w.assert_one_matching_room(slow);
        w.assert_one_matching_room(other);
    }
}

/// Importing many users (each a new Matrix account, a derivation and a
/// registration) does not hold up another organization's room: user entries
/// take at most half of the slots while a room waits. One at a time, the
/// room waits behind every account.
#[tokio::test(start_paused = true)]
async fn many_new_accounts_do_not_hold_up_other_organizations() {
    for concurrency in [4, 1] {
        let w = World::with_concurrency(concurrency);
        w.org();
        w.settle().await;
        w.domain.put_org(Principal::COMMAND_LINE, 2, "Import").unwrap();
        for u in 100..300 {
            w.domain.put_user(Principal::COMMAND_LINE, u, &format!("Imported {u}")).unwrap();
            w.domain.set_member(Principal::COMMAND_LINE, 2, u, OrgRole::Member).unwrap();
        }
        let room = w.room(1, "Board");
        // Each account takes the homeserver 100 ms to make.
        w.fake.delay(Op::EnsureAccount, None, Duration::from_millis(100));
        let task = tokio::spawn(w.reconciler().run());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let synced = w.stored(room).is_synced();
        assert_eq!(synced, concurrency > 1, "concurrency {concurrency}: the room made within 2 s");
        let made = (100..300).filter(|u| w.fake.account(*u).is_some()).count();
        assert!(made < 200, "the accounts are still being made: {made}");
        task.abort();
        let _ = task.await;
        w.settle().await;
        w.assert_one_matching_room(room);
        assert!((100..300).all(|u| w.fake.account(u).is_some()), "every imported user has an account");
        assert_eq!(w.fake.calls_of(Op::EnsureAccount).len(), 203, "each account made once");
    }
}

/// The one homeserver room of `id`.
fn homeserver_room(w: &World, id: RoomId) -> crate::homeserver::fake::FakeRoom {
    let found = w.fake.rooms_of(id);
    assert_eq!(found.len(), 1, "room {id}: exactly one homeserver room, got {found:?}");
    found[0].1.clone()
}

/// The last `room.updated` of the log: its actor and what it says changed.
fn last_room_update(w: &World) -> (crate::model::Actor, serde_json::Value) {
    let r = w.domain.store.read().unwrap();
    let page = w.domain.events(&r, Principal::COMMAND_LINE, Some(1), 0, 1000).unwrap();
    let e = page.events.iter().rev().find(|e| e.kind == "room.updated").expect("a room.updated event");
    let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
    (e.actor.clone(), data["changed"].clone())
}

/// `readOnly` on: the homeserver room lets only moderators and admins post
/// (`events_default` 50); off: everyone again (0). Each turn is logged.
#[tokio::test(start_paused = true)]
async fn read_only_sets_the_level_needed_to_post() {
    let w = World::new();
    w.org();
    let id = w.room(1, "Board");
    w.settle().await;
    assert_eq!(homeserver_room(&w, id).events_default, 0, "a new room: everyone posts");

    let on = RoomPatch { read_only: Some(true), ..RoomPatch::default() };
    let room = w.domain.update_room(Principal::User(1), &RoomRef::Id(id), on).unwrap();
    assert!(room.read_only);
    w.settle().await;
    w.assert_one_matching_room(id);
    assert_eq!(homeserver_room(&w, id).events_default, 50, "read-only: moderators and admins only");
    assert_eq!(last_room_update(&w), (crate::model::Actor::User(1), serde_json::json!({"readOnly": true})));

    let off = RoomPatch { read_only: Some(false), ..RoomPatch::default() };
    w.domain.update_room(Principal::User(1), &RoomRef::Id(id), off).unwrap();
    w.settle().await;
    assert_eq!(homeserver_room(&w, id).events_default, 0, "read-only off: everyone posts again");
    assert_eq!(last_room_update(&w).1, serde_json::json!({"readOnly": false}));

    // Created read-only: the homeserver room is made so.
    let spec = NewRoom {
        org_id: 1,
        name: Some("Announcements".into()),
        users: UserLists { assigned: vec![2, 3], ..UserLists::default() },
        read_only: true,
        ..NewRoom::default()
    };
    let frozen = w.domain.create_room(Principal::COMMAND_LINE, spec).unwrap().id;
    w.settle().await;
    assert_eq!(homeserver_room(&w, frozen).events_default, 50);
}

/// `readOnlyAt` of an event room: nothing before the time; when the clock
/// reaches it the service makes the room read-only by itself (the system
/// as actor, the schedule cleared), and the homeserver follows.
#[tokio::test(start_paused = true)]
async fn read_only_at_comes_when_the_clock_does() {
    let w = World::new();
    w.org();
    let spec = NewRoom {
        org_id: 1,
        event_id: Some(42),
        name: Some("Launch party".into()),
        users: UserLists { admins: vec![1], assigned: vec![2, 3], ..UserLists::default() },
        read_only_at: Some(T0 + 3600),
        ..NewRoom::default()
    };
    let id = w.domain.create_room(Principal::COMMAND_LINE, spec).unwrap().id;
    w.settle().await;
    assert_eq!(homeserver_room(&w, id).events_default, 0);

    w.clock.advance(3599);
    assert_eq!(w.domain.make_due_rooms_read_only().unwrap(), 0, "not before its time");
    assert!(!w.stored(id).read_only);
    w.clock.advance(1);
    assert_eq!(w.domain.make_due_rooms_read_only().unwrap(), 1);
    let room = w.stored(id);
    assert!(room.read_only && room.read_only_at.is_none(), "read-only, the schedule done: {room:?}");
    assert_eq!(w.domain.make_due_rooms_read_only().unwrap(), 0, "once");
    w.settle().await;
    w.assert_one_matching_room(id);
    assert_eq!(homeserver_room(&w, id).events_default, 50);
    assert_eq!(
        last_room_update(&w),
        (crate::model::Actor::System, serde_json::json!({"readOnly": true, "readOnlyAt": null}))
    );

    // A time in the past is refused; a schedule can be cancelled.
    let at = RoomPatch { read_only_at: Some(Some(T0 + 7200)), ..RoomPatch::default() };
    let past = RoomPatch { read_only_at: Some(Some(T0)), ..RoomPatch::default() };
    let e = w.domain.update_room(Principal::User(1), &RoomRef::Id(id), past).unwrap_err();
    assert!(e.to_string().contains("lies in the past"), "{e}");
    w.domain.update_room(Principal::User(1), &RoomRef::Id(id), at).unwrap();
    let cancel = RoomPatch { read_only_at: Some(None), ..RoomPatch::default() };
    w.domain.update_room(Principal::User(1), &RoomRef::Id(id), cancel).unwrap();
    w.clock.advance(7200);
    assert_eq!(w.domain.make_due_rooms_read_only().unwrap(), 0, "cancelled");
}
