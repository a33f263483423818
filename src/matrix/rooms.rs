//! Rooms as the bot sees them: creation with a marker, finding a room made
//! before a crash, state events, power levels, membership, and media.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::client::{Body, HomeserverClient, enc};
use super::error::{ErrCode, MatrixError};
use super::types::{
    CreateEvent, CreateRoomRequest, EventIdResponse, Ignored, JoinedRooms, KickBody, Member, MemberContent,
    MembersResponse, Membership, NewRoom, PowerLevels, ROOM_MARKER_KEY, RoomAvatar, RoomIdResponse, RoomName,
    RoomTopic, StateEventInit, UploadResponse, UserIdBody, creators_are_privileged,
};

/// Matrix events are canonical JSON, whose integers stop at 2^53 - 1.
const MAX_CANONICAL_INT: u64 = (1 << 53) - 1;

/// Who holds unlimited power in a room: its creators in room version 12
/// and later, nobody in older versions (there the bot's power is its entry
/// in `users`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomCreators {
    pub room_version: String,
    /// Empty unless the room version gives creators unlimited power.
    pub privileged: Vec<String>,
}

impl HomeserverClient {
    /// `POST /_matrix/client/v3/createRoom` as the bot: private chat, invite
    /// only, with name, topic, avatar, power levels and invites, and the marker in
    /// the creation content. The bot gets power 100 in `users` only in room
    /// versions where the creator is not already all-powerful (before v12,
    /// where listing it would be refused). Returns the Matrix room id.
    ///
    /// Not idempotent by itself: after an error whose outcome is unknown,
    /// ask [`HomeserverClient::find_room_by_marker`] before creating again.
    ///
    /// # Errors
    /// [`MatrixError::Config`] for a marker above 2^53 - 1; `M_FORBIDDEN` /
    /// `M_INVALID_PARAM` for refused content; transport errors.
    pub async fn create_room(&self, room: &NewRoom) -> Result<String, MatrixError> {
        if room.marker > MAX_CANONICAL_INT {
            return Err(MatrixError::Config(format!(
                "room marker {} is above 2^53 - 1, the largest integer Matrix events may hold",
                room.marker
            )));
        }
        let version = match &room.room_version {
            Some(v) => v.clone(),
            None => self.default_room_version().await?,
        };
        let mut users = room.users.clone();
        if creators_are_privileged(&version) {
            users.remove(self.bot_user_id());
        } else {
            users.insert(self.bot_user_id().to_string(), 100);
        }
        let mut initial_state =
            vec![StateEventInit { kind: "m.room.join_rules", state_key: "", content: json!({"join_rule": "invite"}) }];
        if let Some(url) = &room.avatar_url {
            initial_state.push(StateEventInit { kind: "m.room.avatar", state_key: "", content: json!({"url": url}) });
        }
        let request = CreateRoomRequest {
            name: &room.name,
            topic: room.topic.as_deref(),
            preset: "private_chat",
            visibility: "private",
            room_version: Some(&version),
            creation_content: json!({ ROOM_MARKER_KEY: room.marker }),
            initial_state,
            power_level_content_override: match room.events_default {
                Some(level) => json!({ "users": users, "events_default": level }),
                None => json!({ "users": users }),
            },
            invite: &room.invite,
        };
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let r: RoomIdResponse =
            self.bot_send(Method::POST, "/_matrix/client/v3/createRoom", || Body::Json(body.clone())).await?;
        Ok(r.room_id)
    }

    /// The rooms the bot is joined to that carry a marker, with their marker.
    /// One request per joined room: meant for recovery, not for every request.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn marked_rooms(&self) -> Result<Vec<(String, u64)>, MatrixError> {
        let mut found = Vec::new();
        for room_id in self.joined_rooms().await? {
            if let Some(marker) = self.room_create(&room_id).await?.1.marker {
                found.push((room_id, marker));
            }
        }
        Ok(found)
    }

    /// The Matrix room the bot made for the service's room `marker`, if any:
    /// scans the bot's joined rooms' `m.room.create` content.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn find_room_by_marker(&self, marker: u64) -> Result<Option<String>, MatrixError> {
        for room_id in self.joined_rooms().await? {
            if self.room_create(&room_id).await?.1.marker == Some(marker) {
                return Ok(Some(room_id));
            }
        }
        Ok(None)
    }

    /// `GET /_matrix/client/v3/joined_rooms` of the bot.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn joined_rooms(&self) -> Result<Vec<String>, MatrixError> {
        let r: JoinedRooms = self.bot_send(Method::GET, "/_matrix/client/v3/joined_rooms", || Body::Empty).await?;
        Ok(r.joined_rooms)
    }

    /// The sender and content of the room's `m.room.create` event.
    async fn room_create(&self, room_id: &str) -> Result<(String, super::types::CreateContent), MatrixError> {
        // The state endpoint gives only the content; the sender (a creator in
        // v12) needs the event itself.
        let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.create/?format=event", enc(room_id));
        let ev: CreateEvent = self.bot_send(Method::GET, &path, || Body::Empty).await?;
        Ok((ev.sender, ev.content))
    }

    /// The room's version and, from v12 on, its all-powerful creators (the
    /// sender of `m.room.create` and its `additional_creators`).
    ///
    /// # Errors
    /// `M_FORBIDDEN` when the bot is not in the room; transport errors.
    pub async fn room_creators(&self, room_id: &str) -> Result<RoomCreators, MatrixError> {
        let (sender, content) = self.room_create(room_id).await?;
        let room_version = content.version().to_string();
        let privileged = if creators_are_privileged(&room_version) {
            let mut all = vec![sender];
            all.extend(content.additional_creators);
            all
        } else {
            Vec::new()
        };
        Ok(RoomCreators { room_version, privileged })
    }

    /// `GET /rooms/{room}/state/{type}/{state_key}`: the content, or `None`
    /// when the room has no such state.
    ///
    /// # Errors
    /// `M_FORBIDDEN` when the bot is not in the room; transport errors.
    pub async fn get_state<T: DeserializeOwned>(
        &self,
        room_id: &str,
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<T>, MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/state/{}/{}", enc(room_id), enc(event_type), enc(state_key));
        match self.bot_send(Method::GET, &path, || Body::Empty).await {
            Ok(content) => Ok(Some(content)),
            Err(e) if e.is(&ErrCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PUT /rooms/{room}/state/{type}/{state_key}`; returns the event id.
    ///
    /// # Errors
    /// `M_FORBIDDEN` when the bot lacks the power; transport errors.
    pub async fn put_state<T: Serialize>(
        &self,
        room_id: &str,
        event_type: &str,
        state_key: &str,
        content: &T,
    ) -> Result<String, MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/state/{}/{}", enc(room_id), enc(event_type), enc(state_key));
        let body = serde_json::to_vec(content).unwrap_or_default();
        let r: EventIdResponse = self.bot_send(Method::PUT, &path, || Body::Json(body.clone())).await?;
        Ok(r.event_id)
    }

    /// Sets `m.room.name`.
    ///
    /// # Errors
    /// As [`HomeserverClient::put_state`].
    pub async fn set_room_name(&self, room_id: &str, name: &str) -> Result<String, MatrixError> {
        self.put_state(room_id, "m.room.name", "", &RoomName { name: name.to_string() }).await
    }

    /// Sets `m.room.topic`; an empty topic removes it.
    ///
    /// # Errors
    /// As [`HomeserverClient::put_state`].
    pub async fn set_room_topic(&self, room_id: &str, topic: &str) -> Result<String, MatrixError> {
        self.put_state(room_id, "m.room.topic", "", &RoomTopic { topic: topic.to_string() }).await
    }

    /// Sets `m.room.avatar` to an `mxc://` URI.
    ///
    /// # Errors
    /// As [`HomeserverClient::put_state`].
    pub async fn set_room_avatar(&self, room_id: &str, mxc_url: &str) -> Result<String, MatrixError> {
        self.put_state(room_id, "m.room.avatar", "", &RoomAvatar { url: mxc_url.to_string() }).await
    }

    /// The room's `m.room.power_levels` content.
    ///
    /// # Errors
    /// As [`HomeserverClient::get_state`]; a room without the event reads as empty.
    pub async fn power_levels(&self, room_id: &str) -> Result<PowerLevels, MatrixError> {
        Ok(self.get_state(room_id, "m.room.power_levels", "").await?.unwrap_or_default())
    }

    /// Read-modify-write of `m.room.power_levels`: `change` edits the current
    /// content, every key it does not touch is kept, and the room's
    /// privileged creators (v12 on) are taken out of `users` again, since the
    /// homeserver refuses power levels that list them. Sends one state event,
    /// and none when nothing changed. Returns whether it sent one.
    ///
    /// Not atomic against other writers of the same room; the service is
    /// the only one that changes power levels in its rooms.
    ///
    /// # Errors
    /// As [`HomeserverClient::put_state`].
    pub async fn modify_power_levels(
        &self,
        room_id: &str,
        change: impl FnOnce(&mut PowerLevels),
    ) -> Result<bool, MatrixError> {
        let creators = self.room_creators(room_id).await?;
        let before = self.power_levels(room_id).await?;
        let mut after = before.clone();
        change(&mut after);
        for creator in &creators.privileged {
            after.users.remove(creator);
        }
        if after == before {
            return Ok(false);
        }
        self.put_state(room_id, "m.room.power_levels", "", &after).await?;
        Ok(true)
    }

    /// Sets the power of several users at once: `Some(level)` sets it,
    /// `None` drops the entry (back to `users_default`). Creators of a v12
    /// room are skipped. Returns whether a state event was sent.
    ///
    /// # Errors
    /// As [`HomeserverClient::modify_power_levels`].
    pub async fn set_user_levels(
        &self,
        room_id: &str,
        levels: &BTreeMap<String, Option<i64>>,
    ) -> Result<bool, MatrixError> {
        self.modify_power_levels(room_id, |pl| {
            for (user, level) in levels {
                match level {
                    Some(l) => {
                        pl.users.insert(user.clone(), *l);
                    }
                    None => {
                        pl.users.remove(user);
                    }
                }
            }
        })
        .await
    }

    /// `POST /rooms/{room}/invite`.
    ///
    /// # Errors
    /// `M_FORBIDDEN` when the user is already joined or banned, or the bot
    /// may not invite; transport errors.
    pub async fn invite(&self, room_id: &str, user_id: &str) -> Result<(), MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/invite", enc(room_id));
        let _: Ignored = self.bot_send(Method::POST, &path, || Body::json(&UserIdBody { user_id })).await?;
        Ok(())
    }

    /// `POST /rooms/{room}/kick` with an optional reason. Also withdraws an
    /// invite.
    ///
    /// # Errors
    /// `M_FORBIDDEN` when the user is not in the room (neither joined nor
    /// invited) or the bot lacks the power; transport errors.
    pub async fn kick(&self, room_id: &str, user_id: &str, reason: Option<&str>) -> Result<(), MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/kick", enc(room_id));
        let _: Ignored = self.bot_send(Method::POST, &path, || Body::json(&KickBody { user_id, reason })).await?;
        Ok(())
    }

    /// `GET /rooms/{room}/members`: every user with a membership event and
    /// that membership (joined, invited, left, banned).
    ///
    /// # Errors
    /// `M_FORBIDDEN` when the bot is not in the room; transport errors.
    pub async fn members(&self, room_id: &str) -> Result<Vec<Member>, MatrixError> {
        let path = format!("/_matrix/client/v3/rooms/{}/members", enc(room_id));
        let r: MembersResponse = self.bot_send(Method::GET, &path, || Body::Empty).await?;
        Ok(r.chunk.into_iter().map(|e| Member { user_id: e.state_key, membership: e.content.membership }).collect())
    }

    /// The membership of `user_id` in the room (`None`: never a member).
    ///
    /// # Errors
    /// `M_FORBIDDEN` when the bot is not in the room; transport errors.
    pub async fn membership(&self, room_id: &str, user_id: &str) -> Result<Option<Membership>, MatrixError> {
        Ok(self.get_state::<MemberContent>(room_id, "m.room.member", user_id).await?.map(|c| c.membership))
    }

    /// Invites `user_id` unless they are joined or invited already; a retry
    /// of the same change therefore succeeds. Returns whether it invited.
    ///
    /// # Errors
    /// As [`HomeserverClient::invite`].
    pub async fn ensure_invited(&self, room_id: &str, user_id: &str) -> Result<bool, MatrixError> {
        match self.membership(room_id, user_id).await? {
            Some(Membership::Join | Membership::Invite) => Ok(false),
            _ => self.invite(room_id, user_id).await.map(|()| true),
        }
    }

    /// Kicks `user_id` (or withdraws their invite) unless they are out
    /// already; a retry of the same change therefore succeeds. Returns
    /// whether it kicked.
    ///
    /// # Errors
    /// As [`HomeserverClient::kick`].
    pub async fn remove_member(&self, room_id: &str, user_id: &str, reason: Option<&str>) -> Result<bool, MatrixError> {
        match self.membership(room_id, user_id).await? {
            Some(Membership::Join | Membership::Invite | Membership::Knock) => {
                self.kick(room_id, user_id, reason).await.map(|()| true)
            }
            _ => Ok(false),
        }
    }

    /// `POST /rooms/{room}/leave` then `POST /rooms/{room}/forget` as the
    /// bot: it is out of the room, and a homeserver that removes rooms every
    /// local user has forgotten may remove this one. Leaving a room the bot
    /// is out of already is not an error.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn leave_and_forget(&self, room_id: &str) -> Result<(), MatrixError> {
        let empty = || Body::json(&json!({}));
        let leave = format!("/_matrix/client/v3/rooms/{}/leave", enc(room_id));
        match self.bot_send::<Ignored>(Method::POST, &leave, empty).await {
            Ok(_) => {}
            // Out already (left, kicked, or never in): nothing to leave.
            Err(e) if e.is(&ErrCode::Forbidden) || e.is(&ErrCode::NotFound) => {}
            Err(e) => return Err(e),
        }
        let forget = format!("/_matrix/client/v3/rooms/{}/forget", enc(room_id));
        match self.bot_send::<Ignored>(Method::POST, &forget, empty).await {
            Ok(_) => Ok(()),
            // Forgetting is a courtesy to the homeserver's clean-up; a room it
            // does not let the bot forget is still left.
            Err(e) if !e.is_retryable() => {
                tracing::debug!(room = room_id, error = %e, "the homeserver did not let the bot forget a room it left");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /_synapse/admin/v1/rooms/{room}`: whether Synapse still knows the
    /// room. Follows a room delete whose status Synapse has forgotten (it
    /// keeps none across its own restart).
    ///
    /// # Errors
    /// Transport errors.
    pub async fn room_exists(&self, room_id: &str) -> Result<bool, MatrixError> {
        let path = format!("/_synapse/admin/v1/rooms/{}", enc(room_id));
        match self.bot_send::<Ignored>(Method::GET, &path, || Body::Empty).await {
            Ok(_) => Ok(true),
            Err(e) if e.is(&ErrCode::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `POST /_matrix/media/v3/upload` as the bot; returns the `mxc://` URI.
    ///
    /// # Errors
    /// 413 `M_TOO_LARGE` above the homeserver's limit; transport errors.
    pub async fn upload_media(
        &self,
        content_type: &str,
        filename: Option<&str>,
        bytes: Bytes,
    ) -> Result<String, MatrixError> {
        let path = match filename {
            Some(name) => format!("/_matrix/media/v3/upload?filename={}", enc(name)),
            None => "/_matrix/media/v3/upload".to_string(),
        };
        let r: UploadResponse = self
            .bot_send(Method::POST, &path, || Body::Raw {
                content_type: content_type.to_string(),
                bytes: bytes.clone(),
            })
            .await?;
        Ok(r.content_uri)
    }
}
