//! An in-memory homeserver with the behaviour the reconciler and the login
//! rely on, for fast tests: accounts with passwords, rooms found again by
//! their marker, power levels, invites, joins and kicks, deletions that
//! finish only after their progress has been asked for a few times, and
//! logins; or, made [`FakeHomeserver::without_admin_api`], only what any
//! homeserver offers (claims through the user's own session, deletion by
//! emptying and leaving). On top, what a test needs: failures injected per operation
//! (retryable or final, for a number of calls), a call that never returns
//! (a crash of the caller, before or after the call took effect), calls
//! that take a while (to see what goes on meanwhile), and a record of every
//! call with the (tokio) times it came and took effect.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use super::{Deletion, DeletionToken, DesiredRoom, Homeserver, HomeserverError, HsFuture, Offers, Session};
use crate::model::{RoomId, RoomRole, UserId};

/// The operations of [`Homeserver`], to inject failures by and to find calls by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Check,
    Prepare,
    EnsureAccount,
    SetDisplayName,
    Deactivate,
    UploadAvatar,
    FindRoom,
    MadeRooms,
    CreateRoom,
    UpdateRoom,
    Join,
    StartDeletion,
    DeletionProgress,
    Login,
    /// Not a call of its own: the removal of one member (about: the user)
    /// within [`Homeserver::update_room`] or a deletion without purge, as
    /// Synapse's kick. A failure injected on it with
    /// [`FakeHomeserver::fail_about`] fails the update; in a deletion a
    /// [`HomeserverError::Refused`] leaves that member in the room (named in
    /// [`Deletion::Left`]) and any other error fails the deletion.
    Kick,
}

/// One call as the fake saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub op: Op,
    /// What it was about (a user, a room id, a marker), for messages.
    pub about: String,
    /// When the call came.
    pub started: tokio::time::Instant,
    /// When it took effect (or failed): later than `started` when delayed.
    pub at: tokio::time::Instant,
}

/// A member's state in a fake room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Invited,
    Joined,
    /// Kicked, left, or the invite withdrawn.
    Gone,
}

/// A room of the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRoom {
    pub marker: RoomId,
    pub name: String,
    pub topic: String,
    pub avatar_url: String,
    /// Power levels above 0, as the homeserver keeps them.
    pub levels: BTreeMap<UserId, i64>,
    /// The level needed to send a (non-state) event: 0, or 50 when read-only.
    pub events_default: i64,
    pub members: BTreeMap<UserId, Membership>,
    /// Made invite-only and left by the service (deleted without purge):
    /// the room and its history stay, the service cannot act in it any more.
    pub left: bool,
}

impl FakeRoom {
    /// The users invited or joined, ascending.
    #[must_use]
    pub fn present(&self) -> Vec<UserId> {
        self.members.iter().filter(|(_, m)| **m != Membership::Gone).map(|(u, _)| *u).collect()
    }

    /// The joined users, ascending.
    #[must_use]
    pub fn joined(&self) -> Vec<UserId> {
        self.members.iter().filter(|(_, m)| **m == Membership::Joined).map(|(u, _)| *u).collect()
    }
}

/// An account of the fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub password: String,
    pub display_name: Option<String>,
    pub deactivated: bool,
}

#[derive(Debug)]
struct Failure {
    op: Op,
    /// Only calls about this (a user, a room id, a marker), when set.
    about: Option<String>,
    remaining: u32,
    error: HomeserverError,
}

#[derive(Debug)]
struct Delay {
    op: Op,
    /// Only calls about this, when set.
    about: Option<String>,
    pause: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Hang {
    /// The number of the call (1-based, all operations counted) that never returns.
    at: usize,
    /// Whether it takes effect before it hangs.
    applied: bool,
}

#[derive(Debug, Default)]
struct State {
    prepared: bool,
    accounts: BTreeMap<UserId, Account>,
    rooms: BTreeMap<String, FakeRoom>,
    /// Deletion token → (room id, looks at its progress still needed).
    deletions: BTreeMap<String, (String, u32)>,
    next_id: u64,
    calls: Vec<Call>,
    failures: Vec<Failure>,
    delays: Vec<Delay>,
    /// Calls that came, including those not done yet: (operation, about).
    begun: Vec<(Op, String)>,
    hang: Option<Hang>,
    /// Looks at a deletion's progress before it is done.
    deletion_polls: u32,
}

/// The in-memory homeserver.
pub struct FakeHomeserver {
    state: Mutex<State>,
    /// What it offers; a test may change it, as an operator changes
    /// `matrix.admin_api` between two starts.
    offers: Mutex<Offers>,
    hung: Arc<Notify>,
}

impl Default for FakeHomeserver {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHomeserver {
    /// A homeserver that offers everything; a deletion is done on the
    /// second look at its progress.
    #[must_use]
    pub fn new() -> Self {
        Self::offering(Offers::everything("the fake offers everything"))
    }

    /// A homeserver with the client-server API only (no admin API).
    #[must_use]
    pub fn without_admin_api() -> Self {
        Self::offering(Offers::client_api_only("the fake has no admin API"))
    }

    fn offering(offers: Offers) -> Self {
        FakeHomeserver {
            state: Mutex::new(State { deletion_polls: 2, ..State::default() }),
            offers: Mutex::new(offers),
            hung: Arc::new(Notify::new()),
        }
    }

    /// What it offers from now on.
    pub fn set_offers(&self, offers: Offers) {
        *self.offers.lock().unwrap_or_else(PoisonError::into_inner) = offers;
    }

    fn offered(&self) -> Offers {
        self.offers.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next `times` calls of `op` fail with `error`.
    pub fn fail(&self, op: Op, times: u32, error: HomeserverError) {
        self.lock().failures.push(Failure { op, about: None, remaining: times, error });
    }

    /// The next `times` calls of `op` about `about` (as [`Call::about`]
    /// shows it: a user, a room id, a marker) fail with `error`.
    pub fn fail_about(&self, op: Op, about: &str, times: u32, error: HomeserverError) {
        self.lock().failures.push(Failure { op, about: Some(about.to_string()), remaining: times, error });
    }

    /// From now on, calls of `op` (about `about` only, when given) wait
    /// `pause` of (tokio) time before they take effect.
    pub fn delay(&self, op: Op, about: Option<&str>, pause: Duration) {
        self.lock().delays.push(Delay { op, about: about.map(str::to_string), pause });
    }

    /// Calls take effect at once again.
    pub fn clear_delays(&self) {
        self.lock().delays.clear();
    }

    /// How many calls of `op` came so far, including those still under way.
    #[must_use]
    pub fn begun(&self, op: Op) -> usize {
        self.lock().begun.iter().filter(|(o, _)| *o == op).count()
    }

    /// Call number `at` (counting every call from the first, 1-based) never
    /// returns: taking effect first when `applied`. [`FakeHomeserver::hung`]
    /// tells when it happened.
    pub fn hang_at(&self, at: usize, applied: bool) {
        self.lock().hang = Some(Hang { at, applied });
    }

    /// No call hangs any more.
    pub fn stop_hanging(&self) {
        self.lock().hang = None;
    }

    /// Resolves once a call hangs.
    pub async fn hung(&self) {
        self.hung.notified().await;
    }

    /// How many looks at its progress a deletion takes.
    pub fn set_deletion_polls(&self, polls: u32) {
        self.lock().deletion_polls = polls.max(1);
    }

    /// Forgets every deletion under way, as Synapse does when it restarts.
    pub fn forget_deletions(&self) {
        self.lock().deletions.clear();
    }

    /// Every call so far.
    #[must_use]
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The calls of one operation so far.
    #[must_use]
    pub fn calls_of(&self, op: Op) -> Vec<Call> {
        self.lock().calls.iter().filter(|c| c.op == op).cloned().collect()
    }

    /// The rooms made for the service's room `marker` that still exist.
    #[must_use]
    pub fn rooms_of(&self, marker: RoomId) -> Vec<(String, FakeRoom)> {
        self.lock().rooms.iter().filter(|(_, r)| r.marker == marker).map(|(id, r)| (id.clone(), r.clone())).collect()
    }

    /// Every room that exists.
    #[must_use]
    pub fn rooms(&self) -> BTreeMap<String, FakeRoom> {
        self.lock().rooms.clone()
    }

    /// The account of app user `user`.
    #[must_use]
    pub fn account(&self, user: UserId) -> Option<Account> {
        self.lock().accounts.get(&user).cloned()
    }

    /// Runs one call: records it, fails or hangs it as told, else applies `effect`.
    async fn call<T>(
        &self,
        op: Op,
        about: String,
        effect: impl FnOnce(&mut State) -> Result<T, HomeserverError>,
    ) -> Result<T, HomeserverError> {
        let started = tokio::time::Instant::now();
        let pause = {
            let mut s = self.lock();
            s.begun.push((op, about.clone()));
            s.delays.iter().find(|d| d.op == op && d.about.as_ref().is_none_or(|a| *a == about)).map(|d| d.pause)
        };
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        match self.step(op, about, started, effect) {
            Some(result) => result,
            None => {
                self.hung.notify_one();
                std::future::pending().await
            }
        }
    }

    /// The call under the lock; `None` when it hangs.
    fn step<T>(
        &self,
        op: Op,
        about: String,
        started: tokio::time::Instant,
        effect: impl FnOnce(&mut State) -> Result<T, HomeserverError>,
    ) -> Option<Result<T, HomeserverError>> {
        let mut s = self.lock();
        let failure = s
            .failures
            .iter_mut()
            .find(|f| f.op == op && f.remaining > 0 && f.about.as_ref().is_none_or(|a| *a == about));
        if let Some(f) = failure {
            f.remaining -= 1;
            let error = f.error.clone();
            s.calls.push(Call { op, about, started, at: tokio::time::Instant::now() });
            return Some(Err(error));
        }
        s.calls.push(Call { op, about, started, at: tokio::time::Instant::now() });
        let n = s.calls.len();
        match s.hang.filter(|h| h.at == n) {
            None => Some(effect(&mut s)),
            Some(h) => {
                if h.applied {
                    drop(effect(&mut s));
                }
                None
            }
        }
    }
}

fn refused(why: impl Into<String>) -> HomeserverError {
    HomeserverError::Refused(why.into())
}

impl State {
    fn next(&mut self, what: &str) -> String {
        self.next_id += 1;
        format!("{what}{}", self.next_id)
    }

    /// A room the service is in.
    fn room(&mut self, room_id: &str) -> Result<&mut FakeRoom, HomeserverError> {
        match self.rooms.get_mut(room_id) {
            None => Err(refused(format!("M_NOT_FOUND: no room {room_id}"))),
            Some(r) if r.left => Err(refused(format!("M_FORBIDDEN: the bot left {room_id}"))),
            Some(r) => Ok(r),
        }
    }

    /// A user's own session, as the password opens it.
    fn own_session(&self, user: UserId, password: &str) -> Result<&Account, HomeserverError> {
        match self.accounts.get(&user) {
            Some(a) if a.password == password && a.deactivated => Err(HomeserverError::Deactivated),
            Some(a) if a.password == password => Ok(a),
            _ => Err(refused("M_FORBIDDEN: invalid username or password")),
        }
    }

    /// The failure injected on the removal of `user` ([`Op::Kick`]), used up.
    fn kick_refusal(&mut self, user: UserId) -> Option<HomeserverError> {
        let about = user.to_string();
        let f = self
            .failures
            .iter_mut()
            .find(|f| f.op == Op::Kick && f.remaining > 0 && f.about.as_ref().is_none_or(|a| *a == about))?;
        f.remaining -= 1;
        Some(f.error.clone())
    }

    /// A deletion without purge: everyone out who may be removed, the room
    /// left; as Synapse's adapter, a member whose removal is refused stays.
    fn empty_and_leave(&mut self, room_id: &str) -> Result<Deletion, HomeserverError> {
        let present = match self.rooms.get(room_id) {
            Some(room) if !room.left => room.present(),
            _ => return Ok(Deletion::Left { stayed: Vec::new() }),
        };
        let mut stayed = Vec::new();
        for user in present {
            match self.kick_refusal(user) {
                None => {}
                Some(HomeserverError::Refused(_)) => {
                    stayed.push(format!("@u{user}:fake"));
                    continue;
                }
                Some(e) => return Err(e),
            }
            if let Some(room) = self.rooms.get_mut(room_id) {
                room.members.insert(user, Membership::Gone);
            }
        }
        if let Some(room) = self.rooms.get_mut(room_id) {
            room.left = true;
        }
        Ok(Deletion::Left { stayed })
    }

    fn require_account(&self, user: UserId) -> Result<(), HomeserverError> {
        match self.accounts.get(&user) {
            Some(_) => Ok(()),
            None => Err(refused(format!("M_NOT_FOUND: no account of user {user}"))),
        }
    }
}

fn levels_of(desired: &DesiredRoom) -> BTreeMap<UserId, i64> {
    desired
        .members
        .iter()
        .filter(|(_, role)| *role > RoomRole::Assigned)
        .map(|(u, role)| (*u, role.power_level()))
        .collect()
}

impl Homeserver for FakeHomeserver {
    fn offers(&self) -> Option<Offers> {
        self.lock().prepared.then(|| self.offered())
    }

    fn check(&self) -> HsFuture<'_, ()> {
        Box::pin(self.call(Op::Check, String::new(), |_| Ok(())))
    }

    fn prepare(&self) -> HsFuture<'_, ()> {
        Box::pin(self.call(Op::Prepare, String::new(), |s| {
            s.prepared = true;
            Ok(())
        }))
    }

    fn ensure_account<'a>(
        &'a self,
        user: UserId,
        password: &'a str,
        display_name: Option<&'a str>,
    ) -> HsFuture<'a, bool> {
        Box::pin(self.call(Op::EnsureAccount, user.to_string(), move |s| {
            if s.accounts.contains_key(&user) {
                return Ok(false);
            }
            let account = Account {
                password: password.to_string(),
                display_name: display_name.map(str::to_string),
                deactivated: false,
            };
            s.accounts.insert(user, account);
            Ok(true)
        }))
    }

    fn set_display_name<'a>(&'a self, user: UserId, name: &'a str, own: Option<&'a str>) -> HsFuture<'a, ()> {
        let offered = self.offered().accounts_without_session;
        Box::pin(self.call(Op::SetDisplayName, user.to_string(), move |s| {
            match own {
                Some(password) => drop(s.own_session(user, password)?),
                None if !offered => return Err(refused("M_UNRECOGNIZED: no admin API")),
                None => {}
            }
            let account = s.accounts.get_mut(&user).ok_or_else(|| refused(format!("no account of user {user}")))?;
            account.display_name = Some(name.to_string());
            Ok(())
        }))
    }

    fn deactivate<'a>(&'a self, user: UserId, own: Option<&'a str>) -> HsFuture<'a, ()> {
        let offered = self.offered().accounts_without_session;
        Box::pin(self.call(Op::Deactivate, user.to_string(), move |s| {
            match own.map(|password| s.own_session(user, password)) {
                Some(Err(HomeserverError::Deactivated)) => return Ok(()),
                Some(Err(e)) => return Err(e),
                Some(Ok(_)) => {}
                None if !offered => return Err(refused("M_UNRECOGNIZED: no admin API")),
                None => {}
            }
            if let Some(account) = s.accounts.get_mut(&user) {
                account.deactivated = true;
                for room in s.rooms.values_mut() {
                    if let Some(m) = room.members.get_mut(&user) {
                        *m = Membership::Gone;
                    }
                }
            }
            Ok(())
        }))
    }

    fn upload_avatar<'a>(&'a self, content_type: &'a str, bytes: Bytes) -> HsFuture<'a, String> {
        Box::pin(self.call(Op::UploadAvatar, format!("{content_type}, {} bytes", bytes.len()), |s| {
            Ok(format!("mxc://fake/{}", s.next("media")))
        }))
    }

    fn find_room(&self, marker: RoomId) -> HsFuture<'_, Option<String>> {
        Box::pin(self.call(Op::FindRoom, marker.to_string(), move |s| {
            Ok(s.rooms.iter().find(|(_, r)| r.marker == marker && !r.left).map(|(id, _)| id.clone()))
        }))
    }

    fn made_rooms(&self) -> HsFuture<'_, Vec<(String, RoomId)>> {
        Box::pin(self.call(Op::MadeRooms, String::new(), |s| {
            Ok(s.rooms.iter().filter(|(_, r)| !r.left).map(|(id, r)| (id.clone(), r.marker)).collect())
        }))
    }

    fn create_room<'a>(&'a self, desired: &'a DesiredRoom) -> HsFuture<'a, String> {
        Box::pin(self.call(Op::CreateRoom, desired.marker.to_string(), move |s| {
            if !s.prepared {
                return Err(refused("M_FORBIDDEN: the bot is not ready (prepare first)"));
            }
            for (u, _) in &desired.members {
                s.require_account(*u)?;
            }
            let id = format!("!{}:fake", s.next("room"));
            let room = FakeRoom {
                marker: desired.marker,
                name: desired.name.clone(),
                topic: desired.topic.clone(),
                avatar_url: desired.avatar_url.clone(),
                levels: levels_of(desired),
                events_default: desired.events_default(),
                members: desired.members.iter().map(|(u, _)| (*u, Membership::Invited)).collect(),
                left: false,
            };
            s.rooms.insert(id.clone(), room);
            Ok(id)
        }))
    }

    fn update_room<'a>(&'a self, room_id: &'a str, desired: &'a DesiredRoom) -> HsFuture<'a, Vec<UserId>> {
        let admin_join = self.offered().join_without_session;
        Box::pin(self.call(Op::UpdateRoom, room_id.to_string(), move |s| {
            for (u, _) in &desired.members {
                s.require_account(*u)?;
            }
            let room = s.room(room_id)?;
            room.name.clone_from(&desired.name);
            room.topic.clone_from(&desired.topic);
            room.avatar_url.clone_from(&desired.avatar_url);
            room.levels = levels_of(desired);
            room.events_default = desired.events_default();
            let mut to_join = Vec::new();
            for (u, _) in &desired.members {
                let now = room.members.get(u).copied();
                if desired.joined.binary_search(u).is_ok() {
                    if admin_join {
                        room.members.insert(*u, Membership::Joined);
                    } else if now != Some(Membership::Joined) {
                        room.members.insert(*u, Membership::Invited);
                        to_join.push(*u);
                    }
                } else if !matches!(now, Some(Membership::Invited | Membership::Joined)) {
                    room.members.insert(*u, Membership::Invited);
                }
            }
            let unlisted: Vec<UserId> = room
                .present()
                .into_iter()
                .filter(|u| desired.members.binary_search_by_key(u, |(v, _)| *v).is_err())
                .collect();
            // Removals come last, as in Synapse's adapter; a refused one
            // fails the update with what came before it applied.
            for user in unlisted {
                if let Some(e) = s.kick_refusal(user) {
                    return Err(e);
                }
                s.room(room_id)?.members.insert(user, Membership::Gone);
            }
            Ok(to_join)
        }))
    }

    fn join<'a>(&'a self, room_id: &'a str, user: UserId, own: Option<&'a str>) -> HsFuture<'a, ()> {
        let admin_join = self.offered().join_without_session;
        let about = format!("{user} in {room_id}{}", if own.is_some() { " (own session)" } else { "" });
        Box::pin(self.call(Op::Join, about, move |s| {
            s.require_account(user)?;
            match own {
                // The user's own session accepts an invite, as on any homeserver.
                Some(password) => {
                    s.own_session(user, password)?;
                    let room = s.room(room_id)?;
                    if !matches!(room.members.get(&user), Some(Membership::Invited | Membership::Joined)) {
                        return Err(refused(format!("M_FORBIDDEN: user {user} is not invited to {room_id}")));
                    }
                    room.members.insert(user, Membership::Joined);
                }
                None if !admin_join => return Err(refused("M_UNRECOGNIZED: no admin API")),
                None => {
                    s.room(room_id)?.members.insert(user, Membership::Joined);
                }
            }
            Ok(())
        }))
    }

    fn start_deletion<'a>(&'a self, room_id: &'a str) -> HsFuture<'a, Deletion> {
        let purge = self.offered().purge_rooms;
        Box::pin(self.call(Op::StartDeletion, room_id.to_string(), move |s| {
            if !purge {
                return s.empty_and_leave(room_id);
            }
            let Ok(room) = s.room(room_id) else { return Ok(Deletion::Done) };
            for m in room.members.values_mut() {
                *m = Membership::Gone;
            }
            let token = s.next("deletion");
            let polls = s.deletion_polls;
            s.deletions.insert(token.clone(), (room_id.to_string(), polls));
            Ok(Deletion::Running(DeletionToken(token)))
        }))
    }

    fn deletion_progress<'a>(&'a self, room_id: &'a str, token: &'a DeletionToken) -> HsFuture<'a, Deletion> {
        let purge = self.offered().purge_rooms;
        Box::pin(self.call(Op::DeletionProgress, room_id.to_string(), move |s| {
            if !purge {
                // A token of a purge begun where one was offered: no longer followed.
                return s.empty_and_leave(room_id);
            }
            let Some((room, polls)) = s.deletions.get_mut(&token.0) else {
                return Ok(if s.rooms.contains_key(room_id) {
                    Deletion::Failed(format!("the delete of {room_id} was lost; starting it again"))
                } else {
                    Deletion::Done
                });
            };
            if room != room_id {
                return Err(refused(format!("deletion {} is of {room}, not {room_id}", token.0)));
            }
            *polls -= 1;
            if *polls > 0 {
                return Ok(Deletion::Running(token.clone()));
            }
            s.deletions.remove(&token.0);
            s.rooms.remove(room_id);
            Ok(Deletion::Done)
        }))
    }

    fn login<'a>(
        &'a self,
        user: UserId,
        password: &'a str,
        device: Option<&'a str>,
        client_addr: Option<IpAddr>,
    ) -> HsFuture<'a, Session> {
        let about = format!("{user} from {client_addr:?}");
        Box::pin(self.call(Op::Login, about, move |s| {
            let account = s.accounts.get(&user).ok_or_else(|| refused("M_FORBIDDEN: invalid username or password"))?;
            if account.deactivated {
                return Err(HomeserverError::Deactivated);
            }
            if account.password != password {
                return Err(refused("M_FORBIDDEN: invalid username or password"));
            }
            let device_id = device.map_or_else(|| s.next("DEVICE"), str::to_string);
            Ok(Session {
                access_token: s.next("access"),
                device_id,
                user_id: format!("@u{user}:fake"),
                expires_in_ms: Some(300_000),
                refresh_token: Some(s.next("refresh")),
            })
        }))
    }
}
