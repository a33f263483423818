//! Making one Matrix room match one stored room, and removing Matrix rooms.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;

use crate::domain::rooms::avatar_type;
use crate::matrix::types::{Membership, RoomAvatar, RoomName, RoomTopic};
use crate::matrix::{DeleteStatus, ErrCode, NewRoom};
use crate::model::{OutboxOp, Room, RoomId};
use crate::store::{Read, StoreError};

use super::{Reconciler, Step, StepError};

/// Reason shown to users removed from a room.
const KICK_REASON: &str = "removed from this chatroom";

impl Reconciler {
    /// Creates or updates the Matrix room of a stored room. A room whose
    /// users need more than `matrix.accounts_per_step` new Matrix accounts
    /// gets that many per step and waits behind the rest of the outbox
    /// between steps ([`Step::Later`]): making thousands of accounts one after
    /// another would hold up every other organization's changes.
    pub(super) async fn sync_room(&mut self, room_id: RoomId) -> Result<Step, StepError> {
        let Some(room) = self.hs.domain.store.read()?.room(room_id)? else {
            // Deleted meanwhile; its DeleteRoom entry takes care of the Matrix side.
            return Ok(Step::Done);
        };
        if room.is_synced() {
            return Ok(Step::Done);
        }
        let hs = self.hs.clone();
        let client = &hs.client;
        let allowed = self.hs.domain.config.matrix.accounts_per_step;
        let mut created = 0;
        for user in room.members() {
            if self.hs.has_account(user)? {
                continue;
            }
            if created == allowed {
                tracing::debug!(room = room.id, created, "more Matrix accounts to make; the room waits its turn");
                return Ok(Step::Later);
            }
            self.hs.ensure_account(user, None).await?;
            created += 1;
        }
        let avatar_url = self.ensure_avatar(&room).await?;
        let levels: BTreeMap<String, i64> = room
            .admins
            .iter()
            .map(|u| (self.hs.matrix_id(*u), 100))
            .chain(room.moderators.iter().map(|u| (self.hs.matrix_id(*u), 50)))
            .collect();
        let listed: HashSet<String> = room.members().into_iter().map(|u| self.hs.matrix_id(u)).collect();

        let (matrix_id, fresh) = if room.matrix_room_id.is_empty() {
            let found = match self.made_before(room.id).await? {
                Some(m) => Some(m),
                None if self.suspects.contains(&room.id) => client.find_room_by_marker(room.id).await?,
                None => None,
            };
            let (m, fresh) = match found {
                Some(m) => (m, false),
                None => {
                    self.suspects.insert(room.id);
                    let mut invite: Vec<String> = listed.iter().cloned().collect();
                    invite.sort();
                    let made = client
                        .create_room(&NewRoom {
                            marker: room.id,
                            name: room.name.clone(),
                            topic: (!room.topic.is_empty()).then(|| room.topic.clone()),
                            avatar_url: (!avatar_url.is_empty()).then(|| avatar_url.clone()),
                            users: levels.clone(),
                            invite,
                            room_version: None,
                        })
                        .await?;
                    tracing::info!(room = room.id, matrix_room = %made, "created the Matrix room");
                    (made, true)
                }
            };
            self.record_matrix_id(room.id, &m)?;
            self.suspects.remove(&room.id);
            (m, fresh)
        } else {
            (room.matrix_room_id.clone(), false)
        };

        if !fresh {
            let name: Option<RoomName> = client.get_state(&matrix_id, "m.room.name", "").await?;
            if name.as_ref().map(|n| n.name.as_str()) != Some(room.name.as_str()) {
                client.set_room_name(&matrix_id, &room.name).await?;
            }
            let topic: Option<RoomTopic> = client.get_state(&matrix_id, "m.room.topic", "").await?;
            if topic.map(|t| t.topic).unwrap_or_default() != room.topic {
                client.set_room_topic(&matrix_id, &room.topic).await?;
            }
            let avatar: Option<RoomAvatar> = client.get_state(&matrix_id, "m.room.avatar", "").await?;
            let current = avatar.map(|a| a.url).unwrap_or_default();
            if current != avatar_url {
                if avatar_url.is_empty() {
                    client.put_state(&matrix_id, "m.room.avatar", "", &serde_json::json!({})).await?;
                } else {
                    client.set_room_avatar(&matrix_id, &avatar_url).await?;
                }
            }
        }
        if fresh {
            // Made just now with these powers and invites: only claims remain.
            for user in &room.claimed {
                client.admin_join(&matrix_id, &self.hs.matrix_id(*user)).await?;
            }
        } else {
            self.converge_members(&room, &matrix_id, &levels, &listed).await?;
        }

        let generation = room.generation;
        self.hs.domain.store.write(|w| {
            if let Some(old) = w.room(room.id)?
                && old.generation == generation
                && (old.synced_generation != generation || old.sync_error.is_some())
            {
                let mut done = old.clone();
                done.synced_generation = generation;
                done.sync_error = None;
                w.put_room(&done, Some(&old))?;
            }
            Ok::<_, StoreError>(())
        })?;
        Ok(Step::Done)
    }

    /// Power levels and memberships of an existing Matrix room, compared and changed.
    async fn converge_members(
        &self,
        room: &Room,
        matrix_id: &str,
        levels: &BTreeMap<String, i64>,
        listed: &HashSet<String>,
    ) -> Result<(), StepError> {
        let client = &self.hs.client;
        let bot = client.bot_user_id().to_string();
        client
            .modify_power_levels(matrix_id, |pl| {
                pl.users.retain(|u, _| *u == bot || levels.contains_key(u) || !self.hs.is_app_user(u));
                for (u, l) in levels {
                    pl.users.insert(u.clone(), *l);
                }
            })
            .await?;

        let members: HashMap<String, Membership> =
            client.members(matrix_id).await?.into_iter().map(|m| (m.user_id, m.membership)).collect();
        for user in room.members() {
            let mx = self.hs.matrix_id(user);
            let now = members.get(&mx);
            if room.claimed.binary_search(&user).is_ok() {
                if now != Some(&Membership::Join) {
                    client.admin_join(matrix_id, &mx).await?;
                }
            } else if !matches!(now, Some(Membership::Join | Membership::Invite)) {
                client.invite(matrix_id, &mx).await?;
            }
        }
        for (mx, membership) in &members {
            let present = matches!(membership, Membership::Join | Membership::Invite | Membership::Knock);
            if present && *mx != bot && !listed.contains(mx) && self.hs.is_app_user(mx) {
                client.kick(matrix_id, mx, Some(KICK_REASON)).await?;
            }
        }
        Ok(())
    }

    /// Uploads a waiting avatar; the `mxc://` URI of the room's avatar, or "" for none.
    async fn ensure_avatar(&self, room: &Room) -> Result<String, StepError> {
        if room.avatar_sha256.is_none() || !room.avatar_url.is_empty() {
            return Ok(room.avatar_url.clone());
        }
        let Some(bytes) = self.hs.domain.store.read()?.avatar(room.id)? else {
            return Ok(String::new());
        };
        let content_type = avatar_type(&bytes, u64::MAX)?;
        let mxc = self.hs.client.upload_media(content_type, None, Bytes::from(bytes)).await?;
        let sha = room.avatar_sha256;
        self.hs.domain.store.write(|w| {
            if let Some(old) = w.room(room.id)?
                && old.avatar_sha256 == sha
                && old.avatar_url.is_empty()
            {
                let mut r = old.clone();
                r.avatar_url.clone_from(&mxc);
                w.put_room(&r, Some(&old))?;
                w.set_avatar(room.id, None)?;
            }
            Ok::<_, StoreError>(())
        })?;
        Ok(mxc)
    }

    fn record_matrix_id(&self, room_id: RoomId, matrix_id: &str) -> Result<(), StoreError> {
        self.hs.domain.store.write(|w| {
            if let Some(old) = w.room(room_id)?
                && old.matrix_room_id.is_empty()
            {
                let mut r = old.clone();
                r.matrix_room_id = matrix_id.to_string();
                w.put_room(&r, Some(&old))?;
            }
            Ok(())
        })
    }

    /// The Matrix room made for `room_id` before this process started, if any.
    /// The first call lists the bot's rooms once; Matrix rooms that no stored
    /// room names (left by a crash) are queued for deletion then.
    async fn made_before(&mut self, room_id: RoomId) -> Result<Option<String>, StepError> {
        if self.found_at_start.is_none() {
            let marked = self.hs.client.marked_rooms().await?;
            let mut map = HashMap::new();
            let orphans = self.hs.domain.store.write(|w| {
                let mut orphans = Vec::new();
                for (matrix_id, marker) in marked {
                    let stored = w.room(marker)?;
                    let keep = match &stored {
                        Some(r) => r.matrix_room_id.is_empty() || r.matrix_room_id == matrix_id,
                        None => false,
                    };
                    let claimed_elsewhere = w.room_id_by_matrix_id(&matrix_id)?.is_some_and(|id| id != marker);
                    if keep && !claimed_elsewhere && !map.contains_key(&marker) {
                        map.insert(marker, matrix_id);
                    } else if w.delete_id(&matrix_id)?.is_none() {
                        w.push_outbox(&OutboxOp::DeleteRoom { room_id: marker, matrix_room_id: matrix_id.clone() })?;
                        orphans.push(matrix_id);
                    }
                }
                Ok::<_, StoreError>(orphans)
            })?;
            if !orphans.is_empty() {
                tracing::warn!(count = orphans.len(), "queued Matrix rooms that no stored room names for deletion");
            }
            self.found_at_start = Some(map);
        }
        Ok(self.found_at_start.as_mut().and_then(|m| m.remove(&room_id)))
    }

    /// Removes everyone from a Matrix room and purges it, following the
    /// homeserver's asynchronous delete to its end (across restarts).
    pub(super) async fn delete_room(&mut self, room_id: RoomId, matrix_id: &str) -> Result<(), StepError> {
        let matrix_id = if matrix_id.is_empty() {
            match self.made_before(room_id).await? {
                Some(m) => m,
                None => match self.hs.client.find_room_by_marker(room_id).await? {
                    Some(m) => m,
                    None => return Ok(()),
                },
            }
        } else {
            matrix_id.to_string()
        };
        let hs = self.hs.clone();
        let client = &hs.client;
        let known = self.hs.domain.store.read()?.delete_id(&matrix_id)?;
        let delete_id = match known {
            Some(id) => id,
            None => {
                let id = match client.delete_room(&matrix_id).await {
                    Ok(id) => id,
                    Err(e) if e.is(&ErrCode::NotFound) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                self.hs.domain.store.write(|w| w.set_delete_id(&matrix_id, Some(&id)))?;
                id
            }
        };
        for _ in 0..120 {
            let status = match client.delete_status(&delete_id).await {
                Ok(s) => s,
                // Synapse forgot the delete (its restart): the room tells.
                Err(e) if e.is(&ErrCode::NotFound) => {
                    if client.room_exists(&matrix_id).await? {
                        self.hs.domain.store.write(|w| w.set_delete_id(&matrix_id, None))?;
                        return Err(StepError::Other(format!("the delete of {matrix_id} was lost; starting it again")));
                    }
                    DeleteStatus::Complete
                }
                Err(e) => return Err(e.into()),
            };
            match status {
                DeleteStatus::Complete => {
                    self.hs.domain.store.write(|w| w.set_delete_id(&matrix_id, None))?;
                    tracing::info!(room = room_id, matrix_room = %matrix_id, "deleted the Matrix room");
                    return Ok(());
                }
                DeleteStatus::Failed(why) => {
                    self.hs.domain.store.write(|w| w.set_delete_id(&matrix_id, None))?;
                    return Err(StepError::Other(format!(
                        "the homeserver failed to delete {matrix_id}: {}",
                        why.unwrap_or_default()
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        Err(StepError::Other(format!("the delete of {matrix_id} is still running")))
    }
}
