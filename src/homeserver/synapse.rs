//! The Synapse adapter: [`Homeserver`] mapped onto Synapse's endpoints, over
//! the client in `crate::matrix`. Accounts through shared-secret
//! registration, claims through the admin join, deletions through the v2
//! room delete (its `delete_id` is the deletion token), everything else
//! through the client-server API as the bot, a server admin.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use bytes::Bytes;

use super::{Deletion, DeletionToken, DesiredRoom, Homeserver, HomeserverError, HsFuture, Offers, Session};
use crate::config::MatrixConfig;
use crate::matrix::types::{Membership, RoomAvatar, RoomName, RoomTopic};
use crate::matrix::{DeleteStatus, ErrCode, HomeserverClient, MatrixError, MatrixIds, NewRoom, Registration};
use crate::model::{RoomId, RoomRole, UserId};

/// Reason shown to users removed from a room.
const KICK_REASON: &str = "removed from this chatroom";

/// Synapse, reached through one client acting as the bot.
pub struct Synapse {
    client: HomeserverClient,
}

impl Synapse {
    /// The adapter for the homeserver of `config`, the bot logging in with
    /// `bot_password`.
    ///
    /// # Errors
    /// The client cannot be configured (bad URL, unreadable secret file).
    pub fn new(config: &MatrixConfig, bot_password: String) -> Result<Self, MatrixError> {
        Ok(Synapse { client: HomeserverClient::new(config, bot_password)? })
    }

    /// The HTTP client underneath.
    #[must_use]
    pub fn client(&self) -> &HomeserverClient {
        &self.client
    }

    fn ids(&self) -> &MatrixIds {
        self.client.ids()
    }

    /// Power levels and memberships of an existing room, compared and changed.
    async fn converge_members(&self, room_id: &str, desired: &DesiredRoom) -> Result<(), MatrixError> {
        let client = &self.client;
        let ids = self.ids();
        let bot = client.bot_user_id().to_string();
        let levels: BTreeMap<String, i64> = desired
            .members
            .iter()
            .filter(|(_, role)| *role > RoomRole::Assigned)
            .map(|(u, role)| (ids.user(*u), role.power_level()))
            .collect();
        let listed: HashSet<String> = desired.members.iter().map(|(u, _)| ids.user(*u)).collect();
        client
            .modify_power_levels(room_id, |pl| {
                pl.users.retain(|u, _| *u == bot || levels.contains_key(u) || !ids.is_app_user(u));
                for (u, l) in &levels {
                    pl.users.insert(u.clone(), *l);
                }
            })
            .await?;

        let members: HashMap<String, Membership> =
            client.members(room_id).await?.into_iter().map(|m| (m.user_id, m.membership)).collect();
        for (user, _) in &desired.members {
            let mx = ids.user(*user);
            let now = members.get(&mx);
            if desired.joined.binary_search(user).is_ok() {
                if now != Some(&Membership::Join) {
                    client.admin_join(room_id, &mx).await?;
                }
            } else if !matches!(now, Some(Membership::Join | Membership::Invite)) {
                client.invite(room_id, &mx).await?;
            }
        }
        for (mx, membership) in &members {
            let present = matches!(membership, Membership::Join | Membership::Invite | Membership::Knock);
            if present && *mx != bot && !listed.contains(mx) && ids.is_app_user(mx) {
                client.kick(room_id, mx, Some(KICK_REASON)).await?;
            }
        }
        Ok(())
    }

    /// Name, topic and avatar of an existing room, compared and changed.
    async fn converge_state(&self, room_id: &str, desired: &DesiredRoom) -> Result<(), MatrixError> {
        let client = &self.client;
        let name: Option<RoomName> = client.get_state(room_id, "m.room.name", "").await?;
        if name.as_ref().map(|n| n.name.as_str()) != Some(desired.name.as_str()) {
            client.set_room_name(room_id, &desired.name).await?;
        }
        let topic: Option<RoomTopic> = client.get_state(room_id, "m.room.topic", "").await?;
        if topic.map(|t| t.topic).unwrap_or_default() != desired.topic {
            client.set_room_topic(room_id, &desired.topic).await?;
        }
        let avatar: Option<RoomAvatar> = client.get_state(room_id, "m.room.avatar", "").await?;
        if avatar.map(|a| a.url).unwrap_or_default() != desired.avatar_url {
            if desired.avatar_url.is_empty() {
                client.put_state(room_id, "m.room.avatar", "", &serde_json::json!({})).await?;
            } else {
                client.set_room_avatar(room_id, &desired.avatar_url).await?;
            }
        }
        Ok(())
    }
}

/// Synapse's failures in the service's terms.
impl From<MatrixError> for HomeserverError {
    fn from(e: MatrixError) -> Self {
        match e {
            MatrixError::Unreachable(_) | MatrixError::Transport(_) | MatrixError::Timeout(_) => {
                HomeserverError::Unreachable(e.to_string())
            }
            MatrixError::Server { .. } => HomeserverError::Failing(e.to_string()),
            MatrixError::RateLimited { .. } => HomeserverError::RateLimited { retry_after: e.retry_after() },
            MatrixError::Api { errcode: ErrCode::UserDeactivated, .. } => HomeserverError::Deactivated,
            MatrixError::Api { .. } | MatrixError::Decode { .. } => HomeserverError::Refused(e.to_string()),
            MatrixError::Config(_) => HomeserverError::Misconfigured(e.to_string()),
        }
    }
}

impl Homeserver for Synapse {
    fn offers(&self) -> Offers {
        Offers { join_without_session: true, purge_rooms: true }
    }

    fn check(&self) -> HsFuture<'_, ()> {
        Box::pin(async move { Ok(self.client.versions().await.map(|_| ())?) })
    }

    fn prepare(&self) -> HsFuture<'_, ()> {
        Box::pin(async move { Ok(self.client.ensure_bot().await.map(|_| ())?) })
    }

    fn ensure_account<'a>(
        &'a self,
        user: UserId,
        password: &'a str,
        display_name: Option<&'a str>,
    ) -> HsFuture<'a, bool> {
        Box::pin(async move {
            let made = self.client.register(&self.ids().localpart(user), password, false, display_name).await?;
            Ok(matches!(made, Registration::Created { .. }))
        })
    }

    fn set_display_name<'a>(&'a self, user: UserId, name: &'a str) -> HsFuture<'a, ()> {
        Box::pin(async move { Ok(self.client.set_display_name(&self.ids().user(user), name).await?) })
    }

    fn deactivate(&self, user: UserId) -> HsFuture<'_, ()> {
        Box::pin(async move {
            match self.client.deactivate(&self.ids().user(user)).await {
                Err(e) if e.is(&ErrCode::NotFound) => Ok(()),
                other => Ok(other?),
            }
        })
    }

    fn upload_avatar<'a>(&'a self, content_type: &'a str, bytes: Bytes) -> HsFuture<'a, String> {
        Box::pin(async move { Ok(self.client.upload_media(content_type, None, bytes).await?) })
    }

    fn find_room(&self, marker: RoomId) -> HsFuture<'_, Option<String>> {
        Box::pin(async move { Ok(self.client.find_room_by_marker(marker).await?) })
    }

    fn made_rooms(&self) -> HsFuture<'_, Vec<(String, RoomId)>> {
        Box::pin(async move { Ok(self.client.marked_rooms().await?) })
    }

    fn create_room<'a>(&'a self, desired: &'a DesiredRoom) -> HsFuture<'a, String> {
        Box::pin(async move {
            let ids = self.ids();
            let mut invite: Vec<String> = desired.members.iter().map(|(u, _)| ids.user(*u)).collect();
            invite.sort();
            let users = desired
                .members
                .iter()
                .filter(|(_, role)| *role > RoomRole::Assigned)
                .map(|(u, role)| (ids.user(*u), role.power_level()))
                .collect();
            let room = NewRoom {
                marker: desired.marker,
                name: desired.name.clone(),
                topic: (!desired.topic.is_empty()).then(|| desired.topic.clone()),
                avatar_url: (!desired.avatar_url.is_empty()).then(|| desired.avatar_url.clone()),
                users,
                invite,
                room_version: None,
            };
            Ok(self.client.create_room(&room).await?)
        })
    }

    fn update_room<'a>(&'a self, room_id: &'a str, desired: &'a DesiredRoom) -> HsFuture<'a, ()> {
        Box::pin(async move {
            self.converge_state(room_id, desired).await?;
            self.converge_members(room_id, desired).await?;
            Ok(())
        })
    }

    fn join<'a>(&'a self, room_id: &'a str, user: UserId) -> HsFuture<'a, ()> {
        Box::pin(async move { Ok(self.client.admin_join(room_id, &self.ids().user(user)).await.map(|_| ())?) })
    }

    fn start_deletion<'a>(&'a self, room_id: &'a str) -> HsFuture<'a, Deletion> {
        Box::pin(async move {
            match self.client.delete_room(room_id).await {
                Ok(id) => Ok(Deletion::Running(DeletionToken(id))),
                Err(e) if e.is(&ErrCode::NotFound) => Ok(Deletion::Done),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn deletion_progress<'a>(&'a self, room_id: &'a str, token: &'a DeletionToken) -> HsFuture<'a, Deletion> {
        Box::pin(async move {
            match self.client.delete_status(&token.0).await {
                Ok(DeleteStatus::Complete) => Ok(Deletion::Done),
                Ok(DeleteStatus::Failed(why)) => Ok(Deletion::Failed(format!(
                    "the homeserver failed to delete {room_id}: {}",
                    why.unwrap_or_default()
                ))),
                Ok(_) => Ok(Deletion::Running(token.clone())),
                // Synapse forgot the delete (its restart): the room tells.
                Err(e) if e.is(&ErrCode::NotFound) => {
                    if self.client.room_exists(room_id).await? {
                        Ok(Deletion::Failed(format!("the delete of {room_id} was lost; starting it again")))
                    } else {
                        Ok(Deletion::Done)
                    }
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn login<'a>(
        &'a self,
        user: UserId,
        password: &'a str,
        device: Option<&'a str>,
        client_addr: Option<IpAddr>,
    ) -> HsFuture<'a, Session> {
        Box::pin(async move {
            let granted = self.client.login_user(&self.ids().user(user), password, device, client_addr).await?;
            Ok(Session {
                access_token: granted.access_token,
                device_id: granted.device_id,
                user_id: granted.user_id,
                expires_in_ms: granted.expires_in_ms,
                refresh_token: granted.refresh_token,
            })
        })
    }
}
