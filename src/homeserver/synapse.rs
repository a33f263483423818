//! The Synapse adapter: [`Homeserver`] mapped onto Synapse's endpoints, over
//! the client in `crate::matrix`. Accounts through shared-secret
//! registration, claims through the admin join, deletions through the v2
//! room delete (its `delete_id` is the deletion token), everything else
//! through the client-server API as the bot, a server admin.
//!
//! Without the admin API (`matrix.admin_api`: `"off"`, or `"auto"` when the
//! probe at start finds it refused), only shared-secret registration is
//! used beyond the client-server API: a claim is an invite that the user's
//! own session accepts, display names and deactivation go through the
//! user's own session, and a deleted room is emptied, made invite-only and
//! left ([`Deletion::Left`]; its history stays on the homeserver).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{PoisonError, RwLock};

use bytes::Bytes;

use super::{Deletion, DeletionToken, DesiredRoom, Homeserver, HomeserverError, HsFuture, Offers, Session};
use crate::config::{AdminApi, MatrixConfig};
use crate::matrix::types::{Membership, RoomAvatar, RoomName, RoomTopic};
use crate::matrix::{
    AdminProbe, DeleteStatus, ErrCode, HomeserverClient, MatrixError, MatrixIds, NewRoom, Registration,
};
use crate::model::{RoomId, RoomRole, UserId};

/// Reason shown to users removed from a room.
const KICK_REASON: &str = "removed from this chatroom";
/// Reason shown to users removed from a room deleted without the admin API.
const DELETED_REASON: &str = "this chatroom was deleted";

/// Synapse, reached through one client acting as the bot.
pub struct Synapse {
    client: HomeserverClient,
    /// `matrix.admin_api`.
    setting: AdminApi,
    /// What [`Homeserver::prepare`] settled.
    offers: RwLock<Option<Offers>>,
    /// Why the service cannot go on (`"on"` and the admin API refused), for
    /// [`Homeserver::check`] and so `/readyz`.
    refused: RwLock<Option<String>>,
}

impl Synapse {
    /// The adapter for the homeserver of `config`, the bot logging in with
    /// `bot_password`.
    ///
    /// # Errors
    /// The client cannot be configured (bad URL, unreadable secret file).
    pub fn new(config: &MatrixConfig, bot_password: String) -> Result<Self, MatrixError> {
        Ok(Synapse {
            client: HomeserverClient::new(config, bot_password)?,
            setting: config.admin_api,
            offers: RwLock::new(None),
            refused: RwLock::new(None),
        })
    }

    /// Whether the admin API is in use (settled by `prepare`).
    fn admin(&self) -> bool {
        self.offers.read().unwrap_or_else(PoisonError::into_inner).as_ref().is_some_and(Offers::all)
    }

    /// Registers the bot (a server admin unless `matrix.admin_api` is
    /// `"off"`) and settles whether the admin API is used: `"auto"` asks it,
    /// `"on"` insists on it.
    async fn settle_offers(&self) -> Result<Offers, HomeserverError> {
        let key = "matrix.admin_api";
        if self.setting == AdminApi::Off {
            self.client.ensure_bot_with(false).await?;
            return Ok(Offers::client_api_only(format!("{key} = \"off\": not probed, not used")));
        }
        self.client.ensure_bot().await?;
        let probe = self.client.probe_admin_api().await?;
        match (probe, self.setting) {
            (AdminProbe::Answers, setting) => {
                Ok(Offers::everything(format!("{key} = \"{}\": the probe at start was answered", setting.as_str())))
            }
            (AdminProbe::Missing(why), AdminApi::On) => {
                let message = format!(
                    "{key} = \"on\" but the admin API cannot be used: {why}; nothing is changed on the homeserver \
                     until it can (or set {key} to \"auto\" or \"off\" to go on without it)"
                );
                *self.refused.write().unwrap_or_else(PoisonError::into_inner) = Some(message.clone());
                Err(HomeserverError::Misconfigured(message))
            }
            (AdminProbe::Missing(why), _) => Ok(Offers::client_api_only(format!(
                "{key} = \"auto\" and the probe at start was refused ({why}): not used"
            ))),
        }
    }

    /// Logs app user `user` in with `password` for one action of the
    /// service's (no refresh token, a device of its own); log out after.
    async fn own_session(&self, user: UserId, password: &str) -> Result<String, MatrixError> {
        let granted = self.client.password_login(&self.ids().user(user), password, None, false, None).await?;
        Ok(granted.access_token)
    }

    /// Ends a session [`Synapse::own_session`] began. A failure is only
    /// logged: the action it was for is done, and a device left behind
    /// does no harm.
    async fn end_session(&self, access_token: &str) {
        if let Err(e) = self.client.logout(access_token).await {
            tracing::debug!(error = %e, "could not log out a session the service began for a user");
        }
    }

    /// A deletion without the admin API: the room invite-only (nobody
    /// removed can come back without an invite), everyone else removed,
    /// then the bot leaves and forgets it. Its history stays on the
    /// homeserver. Repeating it is harmless: a bot already out of the room
    /// has nothing left to do. A member Synapse refuses to kick (403) is
    /// skipped and named in [`Deletion::Left`]; the others are still removed.
    async fn empty_and_leave(&self, room_id: &str) -> Result<Deletion, MatrixError> {
        let client = &self.client;
        let bot = client.bot_user_id().to_string();
        let members = match client.members(room_id).await {
            Ok(m) => m,
            // The bot is out (a repeat after it left) or the room is unknown.
            Err(e) if e.is(&ErrCode::Forbidden) || e.is(&ErrCode::NotFound) => {
                return Ok(Deletion::Left { stayed: Vec::new() });
            }
            Err(e) => return Err(e),
        };
        client.put_state(room_id, "m.room.join_rules", "", &serde_json::json!({"join_rule": "invite"})).await?;
        let mut stayed = Vec::new();
        for m in members {
            let present = matches!(m.membership, Membership::Join | Membership::Invite | Membership::Knock);
            if present && m.user_id != bot {
                match client.kick(room_id, &m.user_id, Some(DELETED_REASON)).await {
                    Ok(()) => {}
                    // In a room version before 12 the bot, at 100, cannot
                    // kick another 100: leaving matters more than stopping
                    // here, and asking again would get the same answer. The
                    // reconciler logs and counts who stayed.
                    Err(e) if e.is(&ErrCode::Forbidden) => {
                        tracing::debug!(room = room_id, user = %m.user_id, error = %e, "Synapse refused the kick");
                        stayed.push(m.user_id);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        client.leave_and_forget(room_id).await?;
        Ok(Deletion::Left { stayed })
    }

    /// The HTTP client underneath.
    #[must_use]
    pub fn client(&self) -> &HomeserverClient {
        &self.client
    }

    fn ids(&self) -> &MatrixIds {
        self.client.ids()
    }

    /// Power levels and memberships of an existing room, compared and
    /// changed; returns the claimed users who could only be invited (no
    /// admin join).
    async fn converge_members(&self, room_id: &str, desired: &DesiredRoom) -> Result<Vec<UserId>, MatrixError> {
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
        let events_default = desired.events_default();
        client
            .modify_power_levels(room_id, |pl| {
                pl.users.retain(|u, _| *u == bot || levels.contains_key(u) || !ids.is_app_user(u));
                for (u, l) in &levels {
                    pl.users.insert(u.clone(), *l);
                }
                // Absent means 0: a room that was never read-only gets no
                // key, so turning the feature on sends no event to old rooms.
                let now = pl.other.get("events_default").and_then(serde_json::Value::as_i64).unwrap_or(0);
                if now != events_default {
                    pl.other.insert("events_default".into(), events_default.into());
                }
            })
            .await?;

        let members: HashMap<String, Membership> =
            client.members(room_id).await?.into_iter().map(|m| (m.user_id, m.membership)).collect();
        let admin = self.admin();
        let mut to_join = Vec::new();
        for (user, _) in &desired.members {
            let mx = ids.user(*user);
            let now = members.get(&mx);
            if desired.joined.binary_search(user).is_ok() {
                match now {
                    Some(Membership::Join) => {}
                    _ if admin => {
                        client.admin_join(room_id, &mx).await?;
                    }
                    // Without the admin join: invited, and the user's own
                    // session accepts (the caller's part).
                    Some(Membership::Invite) => to_join.push(*user),
                    _ => {
                        client.invite(room_id, &mx).await?;
                        to_join.push(*user);
                    }
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
        Ok(to_join)
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
    fn offers(&self) -> Option<Offers> {
        self.offers.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn check(&self) -> HsFuture<'_, ()> {
        Box::pin(async move {
            self.client.versions().await?;
            match self.refused.read().unwrap_or_else(PoisonError::into_inner).clone() {
                Some(why) => Err(HomeserverError::Misconfigured(why)),
                None => Ok(()),
            }
        })
    }

    fn prepare(&self) -> HsFuture<'_, ()> {
        Box::pin(async move {
            let offers = self.settle_offers().await?;
            *self.refused.write().unwrap_or_else(PoisonError::into_inner) = None;
            *self.offers.write().unwrap_or_else(PoisonError::into_inner) = Some(offers);
            Ok(())
        })
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

    fn set_display_name<'a>(&'a self, user: UserId, name: &'a str, own: Option<&'a str>) -> HsFuture<'a, ()> {
        Box::pin(async move {
            let mx = self.ids().user(user);
            let Some(password) = own else { return Ok(self.client.set_display_name(&mx, name).await?) };
            let token = self.own_session(user, password).await?;
            let set = self.client.set_own_display_name(&token, &mx, name).await;
            self.end_session(&token).await;
            Ok(set?)
        })
    }

    fn deactivate<'a>(&'a self, user: UserId, own: Option<&'a str>) -> HsFuture<'a, ()> {
        Box::pin(async move {
            let mx = self.ids().user(user);
            let Some(password) = own else {
                return match self.client.deactivate(&mx).await {
                    Err(e) if e.is(&ErrCode::NotFound) => Ok(()),
                    other => Ok(other?),
                };
            };
            let token = match self.own_session(user, password).await {
                Ok(t) => t,
                Err(e) if e.is(&ErrCode::UserDeactivated) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            // Deactivation ends every session of the account, this one too.
            Ok(self.client.deactivate_own(&token, &mx, password).await?)
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
                events_default: desired.read_only.then(|| desired.events_default()),
                invite,
                room_version: None,
            };
            Ok(self.client.create_room(&room).await?)
        })
    }

    fn update_room<'a>(&'a self, room_id: &'a str, desired: &'a DesiredRoom) -> HsFuture<'a, Vec<UserId>> {
        Box::pin(async move {
            self.converge_state(room_id, desired).await?;
            Ok(self.converge_members(room_id, desired).await?)
        })
    }

    fn join<'a>(&'a self, room_id: &'a str, user: UserId, own: Option<&'a str>) -> HsFuture<'a, ()> {
        Box::pin(async move {
            let Some(password) = own else {
                return Ok(self.client.admin_join(room_id, &self.ids().user(user)).await.map(|_| ())?);
            };
            let token = self.own_session(user, password).await?;
            let joined = self.client.join_as(&token, room_id).await;
            self.end_session(&token).await;
            Ok(joined?)
        })
    }

    fn start_deletion<'a>(&'a self, room_id: &'a str) -> HsFuture<'a, Deletion> {
        Box::pin(async move {
            if !self.admin() {
                return Ok(self.empty_and_leave(room_id).await?);
            }
            match self.client.delete_room(room_id).await {
                Ok(id) => Ok(Deletion::Running(DeletionToken(id))),
                Err(e) if e.is(&ErrCode::NotFound) => Ok(Deletion::Done),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn deletion_progress<'a>(&'a self, room_id: &'a str, token: &'a DeletionToken) -> HsFuture<'a, Deletion> {
        Box::pin(async move {
            if !self.admin() {
                // Begun with the admin API before a start without it.
                return Ok(self.empty_and_leave(room_id).await?);
            }
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
