//! Request and response bodies of exactly the endpoints the service uses.
//!
//! Hand-written rather than taken from ruma: ruma covers the whole spec and
//! costs minutes of compile time on a small machine for a dozen shapes.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The creation-content key under which the service records its own room id,
/// so that a retry after a crash finds the Matrix room it already made.
pub const ROOM_MARKER_KEY: &str = "org.messengerchat.room_id";

/// `GET /_matrix/client/versions`.
#[derive(Debug, Clone, Deserialize)]
pub struct Versions {
    pub versions: Vec<String>,
}

/// `GET /_synapse/admin/v1/register`.
#[derive(Debug, Deserialize)]
pub(crate) struct Nonce {
    pub nonce: String,
}

/// `POST /_synapse/admin/v1/register`.
#[derive(Debug, Serialize)]
pub(crate) struct SharedSecretRegister<'a> {
    pub nonce: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    pub admin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub displayname: Option<&'a str>,
    pub mac: String,
}

/// The answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// The account was made now; its full user id.
    Created { user_id: String },
    /// The account existed already (`M_USER_IN_USE`).
    AlreadyExists,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RegisterResponse {
    pub user_id: String,
}

/// `POST /_matrix/client/v3/login` with `m.login.password`.
#[derive(Debug, Serialize)]
pub(crate) struct PasswordLogin<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub identifier: UserIdentifier<'a>,
    pub password: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_device_display_name: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub refresh_token: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct UserIdentifier<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub user: &'a str,
}

/// What a password login granted. `expires_in_ms` and `refresh_token` are
/// absent when the homeserver issues no refresh tokens. `Debug` hides the tokens.
#[derive(Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub access_token: String,
    pub device_id: String,
    pub user_id: String,
    #[serde(default)]
    pub expires_in_ms: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// `POST /_matrix/client/v3/refresh`.
#[derive(Debug, Serialize)]
pub(crate) struct RefreshRequest<'a> {
    pub refresh_token: &'a str,
}

/// What a refresh granted. The old refresh token is spent once the new
/// access token is used; keep the new one when given. `Debug` hides the tokens.
#[derive(Clone, Serialize, Deserialize)]
pub struct RefreshResponse {
    pub access_token: String,
    #[serde(default)]
    pub expires_in_ms: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
}

impl fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginResponse")
            .field("access_token", &"<hidden>")
            .field("device_id", &self.device_id)
            .field("user_id", &self.user_id)
            .field("expires_in_ms", &self.expires_in_ms)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl fmt::Debug for RefreshResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshResponse")
            .field("access_token", &"<hidden>")
            .field("expires_in_ms", &self.expires_in_ms)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// `GET /_matrix/client/v3/account/whoami`.
#[derive(Debug, Clone, Deserialize)]
pub struct WhoAmI {
    pub user_id: String,
    #[serde(default)]
    pub device_id: Option<String>,
}

/// `POST /_matrix/client/v3/createRoom`, as the service makes every room.
#[derive(Debug, Clone)]
pub struct NewRoom {
    /// The service's own room id, written into the creation content as
    /// [`ROOM_MARKER_KEY`].
    pub marker: u64,
    pub name: String,
    /// `m.room.topic`; `None` sets none.
    pub topic: Option<String>,
    /// `mxc://` URI of an uploaded avatar.
    pub avatar_url: Option<String>,
    /// Power levels of the room's users (the bot is added as the creator needs).
    pub users: BTreeMap<String, i64>,
    /// `events_default` when it is not the homeserver's default (a read-only room).
    pub events_default: Option<i64>,
    /// Users to invite.
    pub invite: Vec<String>,
    /// Room version; `None` takes the homeserver's default (12 on current
    /// Synapse). Prefer v12 or later: in older versions the bot, at 100,
    /// cannot demote another user at 100 (the auth rules forbid changing a
    /// level equal to the sender's), so an admin could never be demoted.
    pub room_version: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct CreateRoomRequest<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<&'a str>,
    pub preset: &'static str,
    pub visibility: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_version: Option<&'a str>,
    pub creation_content: Value,
    pub initial_state: Vec<StateEventInit>,
    pub power_level_content_override: Value,
    pub invite: &'a [String],
}

#[derive(Debug, Serialize)]
pub(crate) struct StateEventInit {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub state_key: &'static str,
    pub content: Value,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RoomIdResponse {
    pub room_id: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EventIdResponse {
    pub event_id: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct JoinedRooms {
    pub joined_rooms: Vec<String>,
}

/// `GET /_matrix/client/v3/capabilities`, the part that names the default room version.
#[derive(Debug, Deserialize)]
pub(crate) struct Capabilities {
    pub capabilities: CapabilitySet,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CapabilitySet {
    #[serde(rename = "m.room_versions")]
    pub room_versions: Option<RoomVersionsCapability>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RoomVersionsCapability {
    pub default: String,
}

/// Content of `m.room.create`, the parts the service reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateContent {
    /// Absent means room version 1.
    #[serde(default)]
    pub room_version: Option<String>,
    /// Room version 12 and later: further creators besides the sender.
    #[serde(default)]
    pub additional_creators: Vec<String>,
    #[serde(rename = "org.messengerchat.room_id", default)]
    pub marker: Option<u64>,
}

impl CreateContent {
    /// The room version, `"1"` when the content names none.
    #[must_use]
    pub fn version(&self) -> &str {
        self.room_version.as_deref().unwrap_or("1")
    }
}

/// Whether rooms of this version give their creators unlimited power that
/// `m.room.power_levels` must not list (MSC4289, room version 12 on).
#[must_use]
pub fn creators_are_privileged(room_version: &str) -> bool {
    match room_version {
        "org.matrix.hydra.11" => true,
        v => v.parse::<u32>().is_ok_and(|n| n >= 12),
    }
}

/// A full `m.room.create` event (the sender is a creator in v12).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CreateEvent {
    pub sender: String,
    pub content: CreateContent,
}

/// `m.room.power_levels` content. Only `users` is typed; every other key is
/// kept as it came so a read-modify-write never drops what it did not touch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PowerLevels {
    #[serde(default)]
    pub users: BTreeMap<String, i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_default: Option<i64>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl PowerLevels {
    /// The level of `user` as the room sees it (ignoring creator privilege).
    #[must_use]
    pub fn level_of(&self, user: &str) -> i64 {
        self.users.get(user).copied().unwrap_or(self.users_default.unwrap_or(0))
    }
}

/// `m.room.name` content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomName {
    pub name: String,
}

/// `m.room.topic` content; an empty topic is no topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomTopic {
    pub topic: String,
}

/// `m.room.avatar` content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomAvatar {
    pub url: String,
}

/// `POST /_matrix/media/v3/upload`.
#[derive(Debug, Deserialize)]
pub(crate) struct UploadResponse {
    pub content_uri: String,
}

/// `POST /rooms/{id}/invite` and `/_synapse/admin/v1/join/{room}`.
#[derive(Debug, Serialize)]
pub(crate) struct UserIdBody<'a> {
    pub user_id: &'a str,
}

/// `POST /rooms/{id}/kick`.
#[derive(Debug, Serialize)]
pub(crate) struct KickBody<'a> {
    pub user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

/// Membership states of `m.room.member`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    Join,
    Invite,
    Leave,
    Ban,
    Knock,
    Other(String),
}

impl<'de> Deserialize<'de> for Membership {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "join" => Self::Join,
            "invite" => Self::Invite,
            "leave" => Self::Leave,
            "ban" => Self::Ban,
            "knock" => Self::Knock,
            other => Self::Other(other.to_string()),
        })
    }
}

/// One member of a room as `GET /rooms/{id}/members` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user_id: String,
    pub membership: Membership,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MembersResponse {
    pub chunk: Vec<MemberEvent>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MemberEvent {
    pub state_key: String,
    pub content: MemberContent,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MemberContent {
    pub membership: Membership,
}

/// `DELETE /_synapse/admin/v2/rooms/{room}`.
#[derive(Debug, Serialize)]
pub(crate) struct DeleteRoomRequest {
    pub purge: bool,
    pub block: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeleteRoomResponse {
    pub delete_id: String,
}

/// Progress of a v2 room delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteStatus {
    Scheduled,
    Active,
    Complete,
    /// Synapse gave up; the text says why.
    Failed(Option<String>),
    Other(String),
}

impl DeleteStatus {
    /// Whether following this delete is over (done or given up).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Complete | Self::Failed(_))
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeleteStatusResponse {
    pub status: String,
    #[serde(default)]
    pub error: Option<String>,
}

impl From<DeleteStatusResponse> for DeleteStatus {
    fn from(r: DeleteStatusResponse) -> Self {
        match r.status.as_str() {
            "scheduled" | "purging_scheduled" => Self::Scheduled,
            "active" | "shutting_down" | "purging" => Self::Active,
            "complete" => Self::Complete,
            "failed" => Self::Failed(r.error),
            _ => Self::Other(r.status),
        }
    }
}

/// `PUT /_synapse/admin/v2/users/{user}` and `PUT /profile/{user}/displayname`.
#[derive(Debug, Serialize)]
pub(crate) struct DisplayNameBody<'a> {
    pub displayname: &'a str,
}

/// `POST /_synapse/admin/v1/deactivate/{user}`.
#[derive(Debug, Serialize)]
pub(crate) struct DeactivateBody {
    pub erase: bool,
}

/// `GET /_synapse/admin/v1/users/{user}/admin`.
#[derive(Debug, Deserialize)]
pub(crate) struct AdminFlag {
    #[serde(default)]
    pub admin: bool,
}

/// `POST /_matrix/client/v3/account/deactivate` with the password as its
/// user-interactive authentication, in one request.
#[derive(Debug, Serialize)]
pub(crate) struct OwnDeactivateBody<'a> {
    pub auth: PasswordAuth<'a>,
    pub erase: bool,
}

/// `m.login.password` user-interactive authentication.
#[derive(Debug, Serialize)]
pub(crate) struct PasswordAuth<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub identifier: UserIdentifier<'a>,
    pub password: &'a str,
}

/// `GET /profile/{user}/displayname`.
#[derive(Debug, Deserialize)]
pub(crate) struct DisplayNameResponse {
    #[serde(default)]
    pub displayname: Option<String>,
}

/// An `m.room.message` of type `m.text`.
#[derive(Debug, Serialize)]
pub(crate) struct TextMessage<'a> {
    pub msgtype: &'static str,
    pub body: &'a str,
}

/// A body to ignore: the endpoint answers `{}` or something the service does not read.
#[derive(Debug, Deserialize)]
pub(crate) struct Ignored {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_levels_keep_unknown_keys() {
        let raw = serde_json::json!({
            "users": {"@a:x": 100},
            "events": {"m.room.name": 50},
            "ban": 50,
            "notifications": {"room": 50}
        });
        let mut pl: PowerLevels = serde_json::from_value(raw.clone()).unwrap();
        pl.users.insert("@b:x".into(), 50);
        let back = serde_json::to_value(&pl).unwrap();
        assert_eq!(back["events"], raw["events"]);
        assert_eq!(back["ban"], 50);
        assert_eq!(back["users"]["@b:x"], 50);
        assert!(back.get("users_default").is_none());
    }

    #[test]
    fn debug_hides_tokens() {
        let login = LoginResponse {
            access_token: "syt_secret".into(),
            device_id: "D".into(),
            user_id: "@u:x".into(),
            expires_in_ms: Some(1),
            refresh_token: Some("syr_secret".into()),
        };
        assert!(!format!("{login:?}").contains("secret"));
    }

    #[test]
    fn privileged_creators_by_version() {
        assert!(!creators_are_privileged("1"));
        assert!(!creators_are_privileged("10"));
        assert!(!creators_are_privileged("11"));
        assert!(creators_are_privileged("12"));
        assert!(creators_are_privileged("org.matrix.hydra.11"));
        assert!(!creators_are_privileged("org.example.custom"));
    }
}
