//! The homeserver as the service sees it: one trait, [`Homeserver`], in the
//! service's own words (this account exists, this room looks like this, this
//! user joins, this room goes, this user logs in), and what implements it:
//!
//! - [`synapse::Synapse`]: the adapter for Synapse, over the HTTP client in
//!   `crate::matrix` (shared-secret registration and the admin API);
//! - [`fake::FakeHomeserver`]: an in-memory homeserver with the same
//!   behaviour, for the unit tests of the domain and the reconciler.
//!
//! A new homeserver needs an adapter: implement the trait, say what it
//! [`offers`](Homeserver::offers), and sort its failures into
//! [`HomeserverError`]'s retryable and final kinds. The reconciler
//! (`crate::reconciler`) decides what to call and when, and keeps what must
//! survive a restart (the Matrix room id, the progress of a deletion) in the
//! database; an adapter keeps nothing of its own that matters after a crash.

pub mod fake;
pub mod synapse;

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use crate::model::{Room, RoomId, RoomRole, UserId};

/// What every homeserver call returns: boxed, so the trait can be used as
/// `dyn Homeserver` (one allocation per call, small beside a request).
pub type HsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, HomeserverError>> + Send + 'a>>;

/// The homeserver, in the service's words. Every method may be called again
/// after a failure or a restart with the same arguments and must then do no
/// harm: creating a room is the one exception, which is why rooms carry the
/// service's room id as a marker that [`Homeserver::find_room`] looks for.
pub trait Homeserver: Send + Sync {
    /// What this homeserver offers beyond the client-server API, as
    /// [`Homeserver::prepare`] found out (a probe, or the configuration);
    /// `None` before that.
    fn offers(&self) -> Option<Offers>;

    /// Whether the homeserver answers at all, and can be used as
    /// configured (`matrix.admin_api = "on"` with the admin API refused:
    /// [`HomeserverError::Misconfigured`]), for `/readyz`.
    fn check(&self) -> HsFuture<'_, ()>;

    /// Makes the service's own account (the bot, which creates and owns
    /// every room) ready to act, and settles what the homeserver
    /// [`offers`](Homeserver::offers). Called before any other step, and
    /// again after it failed.
    fn prepare(&self) -> HsFuture<'_, ()>;

    /// Makes sure app user `user`'s account exists, with `password` and
    /// `display_name` when it is made now; an existing account is left as it
    /// is. True when it was made now.
    fn ensure_account<'a>(
        &'a self,
        user: UserId,
        password: &'a str,
        display_name: Option<&'a str>,
    ) -> HsFuture<'a, bool>;

    /// Sets the display name of an existing account; with `own`, the
    /// user's password, through the user's own session (for a homeserver
    /// without [`Offers::accounts_without_session`]).
    fn set_display_name<'a>(&'a self, user: UserId, name: &'a str, own: Option<&'a str>) -> HsFuture<'a, ()>;

    /// Deactivates the account: logged out, out of its rooms, no more
    /// logins. An account that does not exist, or is deactivated already,
    /// is fine. `own`: as for [`Homeserver::set_display_name`].
    fn deactivate<'a>(&'a self, user: UserId, own: Option<&'a str>) -> HsFuture<'a, ()>;

    /// Stores an avatar image; returns the URI rooms name it by.
    fn upload_avatar<'a>(&'a self, content_type: &'a str, bytes: Bytes) -> HsFuture<'a, String>;

    /// The homeserver room made earlier for the service's room `marker`, if any.
    fn find_room(&self, marker: RoomId) -> HsFuture<'_, Option<String>>;

    /// Every room the service made there, with its marker: what a restart
    /// compares with the database, once, to find rooms a crash left behind.
    fn made_rooms(&self) -> HsFuture<'_, Vec<(String, RoomId)>>;

    /// Creates a room that matches `desired` (name, topic, avatar, powers,
    /// invites of every listed user), marked with `desired.marker`; returns
    /// its id. The claimed users are joined afterwards with
    /// [`Homeserver::join`], once the id is recorded. Not idempotent: after
    /// a failure whose outcome is unknown, ask [`Homeserver::find_room`] first.
    fn create_room<'a>(&'a self, desired: &'a DesiredRoom) -> HsFuture<'a, String>;

    /// Makes an existing room match `desired`: name, topic, avatar, power
    /// levels, invites of listed users, joins of claimed users, and app
    /// users who are no longer listed removed. Anyone who is not an app
    /// user (the bot, people from elsewhere) is left alone. Returns the
    /// claimed users it could only invite (a homeserver without
    /// [`Offers::join_without_session`]): the caller joins them with
    /// [`Homeserver::join`] and their password.
    fn update_room<'a>(&'a self, room_id: &'a str, desired: &'a DesiredRoom) -> HsFuture<'a, Vec<UserId>>;

    /// Joins app user `user`, invited already, to the room now (a claim).
    /// With `own`, the user's password, the user's own session accepts the
    /// invite (logged in for it and out after); without, the homeserver
    /// joins the user ([`Offers::join_without_session`]).
    fn join<'a>(&'a self, room_id: &'a str, user: UserId, own: Option<&'a str>) -> HsFuture<'a, ()>;

    /// Starts deleting a room: everyone out and its history gone
    /// ([`Offers::purge_rooms`]); without that, everyone out, the room
    /// invite-only and left: [`Deletion::Left`], naming the members the
    /// homeserver refused to remove (the others are still removed). A room that does not exist
    /// any more is [`Deletion::Done`].
    fn start_deletion<'a>(&'a self, room_id: &'a str) -> HsFuture<'a, Deletion>;

    /// Where a deletion stands, from the token [`Homeserver::start_deletion`]
    /// gave (possibly before a restart of either side). A homeserver that no
    /// longer offers [`Offers::purge_rooms`] (its setting changed between
    /// two starts) cannot follow the token: it empties and leaves the room
    /// instead, [`Deletion::Left`].
    fn deletion_progress<'a>(&'a self, room_id: &'a str, token: &'a DeletionToken) -> HsFuture<'a, Deletion>;

    /// Logs app user `user` in with `password` on `device` (the homeserver
    /// picks one when `None`), asking for a refresh token. `client_addr`:
    /// the app's address, so the homeserver's login limits count the app.
    fn login<'a>(
        &'a self,
        user: UserId,
        password: &'a str,
        device: Option<&'a str>,
        client_addr: Option<IpAddr>,
    ) -> HsFuture<'a, Session>;
}

/// What a homeserver offers beyond the client-server API. The reconciler
/// takes the path each allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offers {
    /// Joins a user to a room without the user's session (Synapse's admin
    /// join); without it a claim needs the user's own login.
    pub join_without_session: bool,
    /// Deletes a room with its history and reports progress (Synapse's
    /// room delete); without it a deletion can only empty and leave a room.
    pub purge_rooms: bool,
    /// Sets display names and deactivates accounts without the user's
    /// session (Synapse's user admin); without it the user's own login does.
    pub accounts_without_session: bool,
    /// How this was settled (a probe's answer, or the configuration), in
    /// words for operators: `/readyz` and the log show it.
    pub why: String,
}

impl Offers {
    /// Everything offered.
    #[must_use]
    pub fn everything(why: impl Into<String>) -> Self {
        Offers { join_without_session: true, purge_rooms: true, accounts_without_session: true, why: why.into() }
    }

    /// Only the client-server API: every fallback in use.
    #[must_use]
    pub fn client_api_only(why: impl Into<String>) -> Self {
        Offers { join_without_session: false, purge_rooms: false, accounts_without_session: false, why: why.into() }
    }

    /// Whether every extra is offered (no fallback in use).
    #[must_use]
    pub fn all(&self) -> bool {
        self.join_without_session && self.purge_rooms && self.accounts_without_session
    }
}

/// The room a stored room should be on the homeserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRoom {
    /// The service's room id, kept in the homeserver room so it can be found again.
    pub marker: RoomId,
    pub name: String,
    /// Empty: no topic.
    pub topic: String,
    /// The URI [`Homeserver::upload_avatar`] gave; empty: no avatar.
    pub avatar_url: String,
    /// Every listed user with their role, ascending by user.
    pub members: Vec<(UserId, RoomRole)>,
    /// The users who claimed the room: joined, not only invited (ascending).
    pub joined: Vec<UserId>,
    /// Only moderators and admins may send events (messages, reactions,
    /// redactions): the room's `events_default` is [`READ_ONLY_EVENTS_DEFAULT`],
    /// else 0. State events keep their own levels.
    pub read_only: bool,
}

/// `events_default` of a read-only room: the moderators' power level.
pub const READ_ONLY_EVENTS_DEFAULT: i64 = 50;

impl DesiredRoom {
    /// The `events_default` power level the room should have.
    #[must_use]
    pub fn events_default(&self) -> i64 {
        if self.read_only { READ_ONLY_EVENTS_DEFAULT } else { 0 }
    }
}

impl DesiredRoom {
    /// The homeserver side of `room`, with the avatar at `avatar_url`.
    #[must_use]
    pub fn of(room: &Room, avatar_url: &str) -> Self {
        DesiredRoom {
            marker: room.id,
            name: room.name.clone(),
            topic: room.topic.clone(),
            avatar_url: avatar_url.to_string(),
            members: room.members().into_iter().filter_map(|u| room.role_of(u).map(|r| (u, r))).collect(),
            joined: room.claimed.clone(),
            read_only: room.read_only,
        }
    }
}

/// An adapter's note of a deletion under way. The reconciler keeps it in
/// the database (`matrixroomid_deleteid`) and hands it back after a
/// restart; only the adapter reads what is inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionToken(pub String);

/// Where a room deletion stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// The room is gone (or was gone already).
    Done,
    /// Everyone was removed, the room made invite-only and left by the
    /// service, which is all a homeserver without [`Offers::purge_rooms`]
    /// allows: its history stays on the homeserver.
    Left {
        /// The members the homeserver would not let the service remove
        /// (their homeserver ids; Synapse answers 403 for a kick of a user
        /// with as much power as the bot, in room versions before 12). They
        /// stay in the room with its history; asking again would not change
        /// the answer, so the deletion is not retried for them.
        stayed: Vec<String>,
    },
    /// Under way: ask again with this token.
    Running(DeletionToken),
    /// The homeserver gave up on it, or forgot it while the room still
    /// exists (the text says which): start again.
    Failed(String),
}

/// What a login granted. `Debug` hides the tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub access_token: String,
    pub device_id: String,
    pub user_id: String,
    /// `None` when the homeserver grants tokens that do not expire.
    pub expires_in_ms: Option<u64>,
    pub refresh_token: Option<String>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("access_token", &"<hidden>")
            .field("device_id", &self.device_id)
            .field("user_id", &self.user_id)
            .field("expires_in_ms", &self.expires_in_ms)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// A failed homeserver call, sorted by what the caller does about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HomeserverError {
    /// No answer: unreachable, the connection broke, or too slow. Retry later.
    #[error("{0}")]
    Unreachable(String),
    /// It answered with a failure of its own (5xx). Retry later.
    #[error("{0}")]
    Failing(String),
    /// It asks the service to slow down. Retry after the wait, when given.
    #[error("homeserver rate limit (retry after {:?} ms)", .retry_after.map(|d| d.as_millis()))]
    RateLimited { retry_after: Option<Duration> },
    /// It refuses this call as it is (or answered nonsense): not retried.
    #[error("{0}")]
    Refused(String),
    /// The login of a deactivated account.
    #[error("the account is deactivated")]
    Deactivated,
    /// The service's side is misconfigured for this homeserver (the text
    /// names the setting): not retried.
    #[error("{0}")]
    Misconfigured(String),
}

impl HomeserverError {
    /// Whether the same call may succeed later as it is.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::Failing(_) | Self::RateLimited { .. })
    }

    /// Whether the homeserver as a whole cannot take calls now (rather than
    /// this one call failing): every call waits, not just this one.
    #[must_use]
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::RateLimited { .. })
    }

    /// The wait the homeserver asked for.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}
