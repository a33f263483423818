//! The records the service keeps: what is stored and what the rules reason about.

use serde::{Deserialize, Serialize};

/// App user ids and organization ids are the app's own positive 64-bit integers.
pub type UserId = i64;
pub type OrgId = i64;
/// The service's own room number, handed out in ascending order.
pub type RoomId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomKind {
    Default,
    Custom,
    Event,
}

impl RoomKind {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Default => "default",
            RoomKind::Custom => "custom",
            RoomKind::Event => "event",
        }
    }
}

/// A room's role for one user; the order is the order of power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RoomRole {
    Assigned,
    Moderator,
    Admin,
}

impl RoomRole {
    /// Matrix power level of the role.
    #[must_use]
    pub fn power_level(self) -> i64 {
        match self {
            RoomRole::Assigned => 0,
            RoomRole::Moderator => 50,
            RoomRole::Admin => 100,
        }
    }
}

/// A chatroom as stored: the desired state the homeserver is made to match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Room {
    pub id: RoomId,
    pub kind: RoomKind,
    pub org_id: OrgId,
    /// 0 unless `kind` is `Event`.
    pub event_id: i64,
    pub name: String,
    /// Shown as the Matrix room's `m.room.topic`; empty for none. Rooms
    /// from before topics existed read as empty (`default` for old exports).
    #[serde(default)]
    pub topic: String,
    /// Empty until the Matrix room exists.
    pub matrix_room_id: String,
    /// `mxc://` URI of the uploaded avatar; empty when none or not uploaded yet.
    pub avatar_url: String,
    /// SHA-256 of the avatar waiting in `roomid_avatar`, when one is set.
    pub avatar_sha256: Option<[u8; 32]>,
    pub admins: Vec<UserId>,
    pub moderators: Vec<UserId>,
    pub assigned: Vec<UserId>,
    /// Users who claimed the room: their Matrix accounts are joined, not only invited.
    pub claimed: Vec<UserId>,
    /// Listed users whose role automation gave (ascending): theirs follows
    /// the organization role while automation is on. Every other listed
    /// user's role was given explicitly and stays until changed explicitly.
    /// Internal: not in the API JSON. Dumps from before it read as empty
    /// (`default`) and are then inferred, like a migrated schema-1 room.
    #[serde(default)]
    pub automation_given: Vec<UserId>,
    pub automation: bool,
    /// Unix seconds at which the service deletes the room by itself.
    pub scheduled_deletion: Option<i64>,
    /// Bumped by every change; the homeserver matches the room when `synced_generation` equals it.
    pub generation: u64,
    pub synced_generation: u64,
    /// The last failure while bringing the homeserver in line.
    pub sync_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Only moderators and admins may post: the Matrix room's
    /// `events_default` is 50 instead of 0. Last, with `read_only_at`:
    /// bincode is positional, and older records and dumps read as false.
    #[serde(default)]
    pub read_only: bool,
    /// Unix seconds at which the service makes the room read-only by itself
    /// (an event room once its event is over); cleared when it does.
    #[serde(default)]
    pub read_only_at: Option<i64>,
}

impl Room {
    /// The user's role in the room, if listed.
    #[must_use]
    pub fn role_of(&self, user: UserId) -> Option<RoomRole> {
        if self.admins.binary_search(&user).is_ok() {
            Some(RoomRole::Admin)
        } else if self.moderators.binary_search(&user).is_ok() {
            Some(RoomRole::Moderator)
        } else if self.assigned.binary_search(&user).is_ok() {
            Some(RoomRole::Assigned)
        } else {
            None
        }
    }

    /// Every listed user, ascending.
    #[must_use]
    pub fn members(&self) -> Vec<UserId> {
        let mut all: Vec<UserId> = self.admins.iter().chain(&self.moderators).chain(&self.assigned).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Whether the user is listed with a role that automation gave.
    #[must_use]
    pub fn is_automation_given(&self, user: UserId) -> bool {
        self.automation_given.binary_search(&user).is_ok()
    }

    /// Gives `user` the role `role` explicitly (see [`Room::set_role_by`]).
    pub fn set_role(&mut self, user: UserId, role: RoomRole) {
        self.set_role_by(user, role, false);
    }

    /// Puts `user` in exactly one list, the one of `role`, given by
    /// automation or explicitly; a claim stays.
    pub fn set_role_by(&mut self, user: UserId, role: RoomRole, automation: bool) {
        match (self.automation_given.binary_search(&user), automation) {
            (Ok(at), false) => {
                self.automation_given.remove(at);
            }
            (Err(at), true) => self.automation_given.insert(at, user),
            _ => {}
        }
        for list in [&mut self.admins, &mut self.moderators, &mut self.assigned] {
            if let Ok(at) = list.binary_search(&user) {
                list.remove(at);
            }
        }
        let list = match role {
            RoomRole::Admin => &mut self.admins,
            RoomRole::Moderator => &mut self.moderators,
            RoomRole::Assigned => &mut self.assigned,
        };
        if let Err(at) = list.binary_search(&user) {
            list.insert(at, user);
        }
    }

    /// Takes `user` out of every list; true when the user was listed.
    pub fn remove_user(&mut self, user: UserId) -> bool {
        let mut found = false;
        if let Ok(at) = self.automation_given.binary_search(&user) {
            self.automation_given.remove(at);
        }
        for list in [&mut self.admins, &mut self.moderators, &mut self.assigned, &mut self.claimed] {
            if let Ok(at) = list.binary_search(&user) {
                list.remove(at);
                found = true;
            }
        }
        found
    }

    /// The room as the API answers it: the original's JSON field names, plus
    /// `roomID`, `syncState` and `syncError`. Kept beside the room in the
    /// store too, so a page of rooms is copied out rather than re-encoded.
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&RoomView::from(self)).unwrap_or_default()
    }

    /// Whether the homeserver matches this stored room.
    #[must_use]
    pub fn is_synced(&self) -> bool {
        !self.matrix_room_id.is_empty() && self.synced_generation == self.generation
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    pub id: OrgId,
    pub name: String,
    pub created_at: i64,
}

/// A user's role in an organization; the order is the order of power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OrgRole {
    Member,
    Admin,
    Owner,
}

impl OrgRole {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            OrgRole::Member => "member",
            OrgRole::Admin => "admin",
            OrgRole::Owner => "owner",
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "member" => Some(OrgRole::Member),
            "admin" => Some(OrgRole::Admin),
            "owner" => Some(OrgRole::Owner),
            _ => None,
        }
    }

    /// Owners and admins manage the organization's rooms.
    #[must_use]
    pub fn manages(self) -> bool {
        self >= OrgRole::Admin
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub display_name: String,
    pub deactivated: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenKind {
    /// Created on first start when the config names no API token.
    Api,
    /// A personal access token of one user.
    Personal,
}

/// A token as stored: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    pub id: u64,
    pub kind: TokenKind,
    /// 0 for API tokens.
    pub user_id: UserId,
    pub name: String,
    pub hash: [u8; 32],
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked: bool,
}

/// What must change on the homeserver; the reconciler works through these in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OutboxOp {
    /// Make the Matrix room match the stored room (create, rename, avatar, powers, members).
    SyncRoom { room_id: RoomId },
    /// The stored room is gone: remove everyone from the Matrix room and purge it.
    DeleteRoom { room_id: RoomId, matrix_room_id: String },
    /// Keep the user's Matrix display name in step.
    SyncUser { user_id: UserId },
    /// The user was deactivated: deactivate the Matrix account.
    DeactivateUser { user_id: UserId },
}

/// Who made a change, as the event log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// An API token, by its id (12 hex digits of its SHA-256).
    ApiToken(String),
    /// The user of a personal access token.
    User(UserId),
    /// The service itself: a scheduled deletion, the reconciler, retention.
    System,
    /// The operator, through the command line on the database.
    CommandLine,
}

/// One entry of the event log: what changed, when, where and by whom.
/// Written in the write transaction of the change it records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Ascending over the whole log, never reused (a counter, not the table's end).
    pub id: u64,
    /// Unix seconds, from the service's clock.
    pub time: i64,
    /// `None` for events of no one organization (users, tokens).
    pub org_id: Option<OrgId>,
    pub actor: Actor,
    /// `room.created`, `member.removed`, …
    pub kind: String,
    /// The event's data as a JSON object (bincode cannot hold a free-form
    /// JSON value, so it is kept as its text).
    pub data: String,
}

/// A receiver of the event log's events (`PUT /v1/webhooks/{id}`), with its
/// delivery cursor. New in schema 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Chosen by the caller: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    pub id: String,
    /// Where events are POSTed: http(s), checked against the SSRF rules.
    pub url: String,
    /// Event types wanted, each exact (`room.created`) or a family (`room.*`), or `*`.
    pub event_types: Vec<String>,
    /// Only this organization's events, when set.
    pub org_id: Option<OrgId>,
    /// The signing secret sealed with a key derived from the server key
    /// (ChaCha20-Poly1305, its 12-byte nonce first): HMAC needs the secret
    /// itself, so it cannot be kept as a hash.
    pub sealed_secret: Vec<u8>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Moved on by every PUT and secret rotation: the sender drops work
    /// begun for an older one, and never writes over a newer one.
    pub generation: u64,
    /// The id of the last event handled (delivered, or not wanted); the next
    /// delivery is of the first wanted event after it.
    pub cursor: u64,
    /// Unix seconds of the first failed attempt at the event now being
    /// delivered; `None` while deliveries succeed.
    pub failing_since: Option<i64>,
    /// Deliveries gave up after `webhooks.max_retry_hours`: nothing is sent
    /// until the webhook is PUT again.
    pub failing: bool,
}

/// One delivery attempt, kept in a webhook's bounded delivery log. New in schema 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    pub event_id: u64,
    /// Unix seconds when the attempt began.
    pub time: i64,
    /// The receiver's status code, when it answered.
    pub status: Option<u16>,
    /// Why the attempt failed without a status (refused address, timeout, TLS…).
    pub error: Option<String>,
    pub latency_ms: u64,
}

/// Version of the room JSON ([`Room::to_json`]) kept in `orgidroomid_json`
/// and `roomid_orgidjson`: bumped whenever that JSON or where it is kept
/// changes, so that opening a database rebuilds the kept copies. 2:
/// `topic`, `readOnly`, `readOnlyAt`. 3: kept by room id too
/// (`roomid_orgidjson`, for GET one room).
pub const ROOM_VIEW_VERSION: u64 = 3;

/// A room as answered.
#[derive(Debug, Serialize)]
struct RoomView<'a> {
    #[serde(rename = "roomID")]
    room_id: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "organizationID")]
    organization_id: i64,
    #[serde(rename = "eventID")]
    event_id: i64,
    name: &'a str,
    topic: &'a str,
    #[serde(rename = "matrixRoomID")]
    matrix_room_id: &'a str,
    #[serde(rename = "avatarURL")]
    avatar_url: &'a str,
    admins: &'a [i64],
    moderators: &'a [i64],
    #[serde(rename = "assignedUsers")]
    assigned_users: &'a [i64],
    #[serde(rename = "automationEnabled")]
    automation_enabled: bool,
    #[serde(rename = "scheduledDeletion")]
    scheduled_deletion: Option<String>,
    #[serde(rename = "readOnly")]
    read_only: bool,
    #[serde(rename = "readOnlyAt")]
    read_only_at: Option<String>,
    #[serde(rename = "syncState")]
    sync_state: &'static str,
    #[serde(rename = "syncError")]
    sync_error: Option<&'a str>,
}

impl<'a> From<&'a Room> for RoomView<'a> {
    fn from(r: &'a Room) -> Self {
        RoomView {
            room_id: r.id,
            kind: r.kind.as_str(),
            organization_id: r.org_id,
            event_id: r.event_id,
            name: &r.name,
            topic: &r.topic,
            matrix_room_id: &r.matrix_room_id,
            avatar_url: &r.avatar_url,
            admins: &r.admins,
            moderators: &r.moderators,
            assigned_users: &r.assigned,
            automation_enabled: r.automation,
            scheduled_deletion: r.scheduled_deletion.map(rfc3339),
            read_only: r.read_only,
            read_only_at: r.read_only_at.map(rfc3339),
            sync_state: if r.is_synced() { "ready" } else { "pending" },
            sync_error: r.sync_error.as_deref(),
        }
    }
}

/// Unix seconds as RFC 3339 UTC.
#[must_use]
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}
