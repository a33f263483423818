//! Making one homeserver room match one stored room, and removing rooms.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use crate::domain::passwords::Wait;
use crate::domain::rooms::avatar_type;
use crate::homeserver::{Deletion, DeletionToken, DesiredRoom};
use crate::model::{OutboxOp, Room, RoomId};
use crate::store::{Read, StoreError};

use super::{Reconciler, Step, StepError};

/// Pause between two looks at a deletion under way.
const DELETION_POLL: Duration = Duration::from_millis(250);
/// Looks at a deletion under way within one step; then it waits behind the
/// rest of the outbox, so a long deletion holds up nothing.
const DELETION_POLLS: u32 = 8;

impl Reconciler {
    fn suspects(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<RoomId>> {
        self.suspects.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates or updates the homeserver room of a stored room. A room whose
    /// users need more than `matrix.accounts_per_step` new Matrix accounts
    /// gets that many per step and waits behind the rest of the outbox
    /// between steps ([`Step::Later`]): making thousands of accounts one after
    /// another would hold up every other organization's changes.
    ///
    /// Its outcome (the room synced, outbox entry `seq` crossed off) is
    /// written in one transaction ([`Step::Booked`]); a room made now with
    /// nobody to join gets its Matrix id in that same transaction, as
    /// nothing else happens on the homeserver in between. A crash before it
    /// leaves the room made but unrecorded, which the marker finds again.
    pub(super) async fn sync_room(&self, seq: u64, room_id: RoomId) -> Result<Step, StepError> {
        let Some(room) = self.domain.store.read()?.room(room_id)? else {
            // Deleted meanwhile; its DeleteRoom entry takes care of the homeserver side.
            return Ok(Step::Done);
        };
        if room.is_synced() {
            return Ok(Step::Done);
        }
        let allowed = self.domain.config.matrix.accounts_per_step;
        let mut created = 0;
        for user in room.members() {
            if self.sessions.has_account(user)? {
                continue;
            }
            if created == allowed {
                tracing::debug!(room = room.id, created, "more Matrix accounts to make; the room waits its turn");
                return Ok(Step::Later);
            }
            self.sessions.ensure_account(user, None, Wait::Always).await?;
            created += 1;
        }
        let avatar_url = self.ensure_avatar(&room).await?;
        let desired = DesiredRoom::of(&room, &avatar_url);

        // A room made now whose id is recorded with the outcome below.
        let mut made_now = None;
        if room.matrix_room_id.is_empty() {
            let suspect = self.suspects().contains(&room.id);
            let found = match self.made_before(room.id).await? {
                Some(m) => Some(m),
                None if suspect => self.hs.find_room(room.id).await?,
                None => None,
            };
            match found {
                Some(m) => {
                    self.record_matrix_id(room.id, &m)?;
                    self.suspects().remove(&room.id);
                    let to_join = self.hs.update_room(&m, &desired).await?;
                    self.join_claimed(&m, &to_join).await?;
                }
                None => {
                    self.suspects().insert(room.id);
                    let made = self.hs.create_room(&desired).await?;
                    tracing::info!(room = room.id, matrix_room = %made, "created the Matrix room");
                    if room.claimed.is_empty() {
                        made_now = Some(made);
                    } else {
                        // Recorded before the joins, so a retry joins in this room.
                        self.record_matrix_id(room.id, &made)?;
                        self.suspects().remove(&room.id);
                        // Made just now with these powers and invites: only claims remain.
                        self.join_claimed(&made, &room.claimed).await?;
                    }
                }
            }
        } else {
            let to_join = self.hs.update_room(&room.matrix_room_id, &desired).await?;
            self.join_claimed(&room.matrix_room_id, &to_join).await?;
        }

        let generation = room.generation;
        self.domain.store.write(|w| {
            if let Some(old) = w.room(room.id)? {
                let mut done = old.clone();
                // Whatever changed meanwhile, the room made now is this one's.
                if let Some(made) = &made_now
                    && done.matrix_room_id.is_empty()
                {
                    done.matrix_room_id.clone_from(made);
                }
                let ready =
                    old.generation == generation && (old.synced_generation != generation || old.sync_error.is_some());
                if ready {
                    done.synced_generation = generation;
                    done.sync_error = None;
                }
                if done != old {
                    w.put_room(&done, Some(&old))?;
                }
                if ready {
                    crate::domain::events::room_ready(w, self.domain.clock.now(), &done)?;
                }
            }
            w.remove_outbox(seq)?;
            Ok::<_, StoreError>(())
        })?;
        if made_now.is_some() {
            self.suspects().remove(&room.id);
        }
        Ok(Step::Booked)
    }

    /// Joins claimed users, invited already: by the homeserver when it can,
    /// else each through their own session (the service derives the password).
    async fn join_claimed(&self, matrix_id: &str, users: &[crate::model::UserId]) -> Result<(), StepError> {
        let offered = self.offers().join_without_session;
        for user in users {
            let own = self.own_password(*user, offered).await?;
            self.hs.join(matrix_id, *user, own.as_deref().map(String::as_str)).await?;
        }
        Ok(())
    }

    /// Uploads a waiting avatar; the URI of the room's avatar, or "" for none.
    async fn ensure_avatar(&self, room: &Room) -> Result<String, StepError> {
        if room.avatar_sha256.is_none() || !room.avatar_url.is_empty() {
            return Ok(room.avatar_url.clone());
        }
        let Some(bytes) = self.domain.store.read()?.avatar(room.id)? else {
            return Ok(String::new());
        };
        let content_type = avatar_type(&bytes, u64::MAX)?;
        let uri = self.hs.upload_avatar(content_type, Bytes::from(bytes)).await?;
        let sha = room.avatar_sha256;
        self.domain.store.write(|w| {
            if let Some(old) = w.room(room.id)?
                && old.avatar_sha256 == sha
                && old.avatar_url.is_empty()
            {
                let mut r = old.clone();
                r.avatar_url.clone_from(&uri);
                w.put_room(&r, Some(&old))?;
                w.set_avatar(room.id, None)?;
            }
            Ok::<_, StoreError>(())
        })?;
        Ok(uri)
    }

    fn record_matrix_id(&self, room_id: RoomId, matrix_id: &str) -> Result<(), StoreError> {
        self.domain.store.write(|w| {
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

    /// The homeserver room made for `room_id` before this process started, if any.
    /// The first call lists the rooms made there once; rooms that no stored
    /// room names (left by a crash) are queued for deletion then.
    async fn made_before(&self, room_id: RoomId) -> Result<Option<String>, StepError> {
        let mut found = self.found_at_start.lock().await;
        if found.is_none() {
            let marked = self.hs.made_rooms().await?;
            let mut map = HashMap::new();
            let orphans = self.domain.store.write(|w| {
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
            *found = Some(map);
        }
        Ok(found.as_mut().and_then(|m| m.remove(&room_id)))
    }

    /// Removes everyone from a homeserver room and deletes it, following the
    /// homeserver's deletion to its end (across restarts: its progress token
    /// is kept in the database). A homeserver that cannot purge rooms
    /// leaves the room emptied and closed, with its history: logged, and
    /// counted for `/metrics`.
    pub(super) async fn delete_room(&self, room_id: RoomId, matrix_id: &str) -> Result<Step, StepError> {
        let matrix_id = if matrix_id.is_empty() {
            match self.made_before(room_id).await? {
                Some(m) => m,
                None => match self.hs.find_room(room_id).await? {
                    Some(m) => m,
                    None => return Ok(Step::Done),
                },
            }
        } else {
            matrix_id.to_string()
        };
        let mut stored = self.domain.store.read()?.delete_id(&matrix_id)?.map(DeletionToken);
        let mut state = match &stored {
            Some(token) => self.hs.deletion_progress(&matrix_id, token).await?,
            None => self.hs.start_deletion(&matrix_id).await?,
        };
        for _ in 0..DELETION_POLLS {
            match state {
                Deletion::Done => {
                    if stored.is_some() {
                        self.domain.store.write(|w| w.set_delete_id(&matrix_id, None))?;
                    }
                    tracing::info!(room = room_id, matrix_room = %matrix_id, "deleted the Matrix room");
                    return Ok(Step::Done);
                }
                Deletion::Left { stayed } => {
                    if stored.is_some() {
                        self.domain.store.write(|w| w.set_delete_id(&matrix_id, None))?;
                    }
                    self.progress.left_one(stayed.len());
                    tracing::warn!(
                        room = room_id,
                        matrix_room = %matrix_id,
                        "emptied the Matrix room, made it invite-only and left it; without the homeserver's admin \
                         API (matrix.admin_api) its history stays on the homeserver"
                    );
                    if !stayed.is_empty() {
                        // Not retried: the homeserver would refuse again (in
                        // Synapse, a peer of the bot's power in a room version
                        // before 12), and the service can no longer act in the
                        // room it left. An operator removes them by hand.
                        tracing::warn!(
                            room = room_id,
                            matrix_room = %matrix_id,
                            stayed = %stayed.join(", "),
                            "the homeserver refused to remove these members from the deleted room: they stay in it, \
                             with its history"
                        );
                    }
                    return Ok(Step::Done);
                }
                Deletion::Failed(why) => {
                    self.domain.store.write(|w| w.set_delete_id(&matrix_id, None))?;
                    return Err(StepError::Other(why));
                }
                Deletion::Running(token) => {
                    // Written down before anything else: a restart follows the same deletion.
                    if stored.as_ref() != Some(&token) {
                        self.domain.store.write(|w| w.set_delete_id(&matrix_id, Some(&token.0)))?;
                        stored = Some(token.clone());
                    }
                    tokio::time::sleep(DELETION_POLL).await;
                    state = self.hs.deletion_progress(&matrix_id, &token).await?;
                }
            }
        }
        tracing::debug!(room = room_id, matrix_room = %matrix_id, "the deletion goes on; the others go first");
        Ok(Step::Later)
    }
}
