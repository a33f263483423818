//! Chatrooms: reading, creating, changing, claiming and deleting them.
//! Every change commits the room and an outbox entry in one transaction.

use crate::error::{Error, Result};
use crate::model::{OrgId, OutboxOp, Room, RoomId, RoomKind, RoomRole, UserId};
use crate::store::{Read, Writer};

use super::{Domain, Principal, org_not_found, positive};

/// A room as named in a path: the service's number or the Matrix room id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomRef {
    Id(RoomId),
    Matrix(String),
}

impl std::fmt::Display for RoomRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoomRef::Id(id) => write!(f, "{id}"),
            RoomRef::Matrix(m) => f.write_str(m),
        }
    }
}

/// The three user lists of a request, as sent.
#[derive(Debug, Clone, Default)]
pub struct UserLists {
    pub admins: Vec<i64>,
    pub moderators: Vec<i64>,
    pub assigned: Vec<i64>,
}

impl UserLists {
    fn is_empty(&self) -> bool {
        self.admins.is_empty() && self.moderators.is_empty() && self.assigned.is_empty()
    }

    /// Each named user once, with the highest role any list gives them.
    ///
    /// # Errors
    /// 422 for an id ≤ 0 or a user named twice in one list.
    pub fn normalize(&self) -> Result<Vec<(UserId, RoomRole)>> {
        let mut out: Vec<(UserId, RoomRole)> = Vec::new();
        for (field, list, role) in [
            ("admins", &self.admins, RoomRole::Admin),
            ("moderators", &self.moderators, RoomRole::Moderator),
            ("assignedUsers", &self.assigned, RoomRole::Assigned),
        ] {
            let mut seen = std::collections::HashSet::new();
            for &u in list {
                if u <= 0 {
                    return Err(Error::Invalid(format!("{field} holds {u}: user ids are positive integers")));
                }
                if !seen.insert(u) {
                    return Err(Error::Invalid(format!("{field} names user {u} twice: list each user once")));
                }
                match out.iter_mut().find(|(v, _)| *v == u) {
                    Some(entry) => entry.1 = entry.1.max(role),
                    None => out.push((u, role)),
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

/// A room to create.
#[derive(Debug, Clone, Default)]
pub struct NewRoom {
    pub org_id: i64,
    /// Set for an event's room.
    pub event_id: Option<i64>,
    pub name: Option<String>,
    /// Empty or absent: no topic.
    pub topic: Option<String>,
    pub users: UserLists,
    pub automation: bool,
    pub avatar: Option<Vec<u8>>,
    /// Unix seconds.
    pub scheduled_deletion: Option<i64>,
}

/// A change to a room; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct RoomPatch {
    pub automation: Option<bool>,
    pub name: Option<String>,
    /// `Some(None)` (or an empty topic) removes the topic.
    pub topic: Option<Option<String>>,
    /// `Some(None)` removes the avatar.
    pub avatar: Option<Option<Vec<u8>>>,
    /// `Some(None)` cancels a scheduled deletion.
    pub scheduled_deletion: Option<Option<i64>>,
}

impl RoomPatch {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.automation.is_none()
            && self.name.is_none()
            && self.topic.is_none()
            && self.avatar.is_none()
            && self.scheduled_deletion.is_none()
    }
}

/// The image type of an avatar, recognised by content.
///
/// # Errors
/// 422 when it is empty, too large, or not PNG, JPEG, GIF or WebP.
pub fn avatar_type(bytes: &[u8], max: u64) -> Result<&'static str> {
    if bytes.is_empty() {
        return Err(Error::Invalid("avatar is empty: send the image's bytes, or null for no avatar".into()));
    }
    if bytes.len() as u64 > max {
        return Err(Error::Invalid(format!(
            "avatar is {} bytes; the limit is {max} bytes (rooms.max_avatar_bytes)",
            bytes.len()
        )));
    }
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Ok("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Ok("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Ok("image/gif")
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Ok("image/webp")
    } else {
        Err(Error::Invalid("avatar is not a PNG, JPEG, GIF or WebP image".into()))
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

impl Domain {
    /// Finds a room by number or Matrix id.
    pub(crate) fn resolve_room(r: &impl Read, room: &RoomRef) -> Result<Room> {
        let id = match room {
            RoomRef::Id(id) => Some(*id),
            RoomRef::Matrix(m) => r.room_id_by_matrix_id(m)?,
        };
        match id {
            Some(id) => r.room(id)?.ok_or_else(|| no_room(room)),
            None => Err(no_room(room)),
        }
    }

    fn require_org(r: &impl Read, org: OrgId) -> Result<crate::model::Organization> {
        r.org(org)?.ok_or_else(|| org_not_found(org))
    }

    /// GET one room: any member of its organization.
    ///
    /// # Errors
    /// 404 unknown room, 403 not a member.
    pub fn get_room(&self, r: &impl Read, p: Principal, room: &RoomRef) -> Result<Room> {
        let room = Self::resolve_room(r, room)?;
        Self::require_member(r, p, room.org_id)?;
        Ok(room)
    }

    /// GetRooms: a page of an organization's rooms in id order, as their API
    /// JSON, and their total. `page` is (offset, limit); `None` returns all.
    ///
    /// # Errors
    /// 422 bad id, 404 unknown organization, 403 not a member.
    pub fn list_rooms(
        &self,
        r: &impl Read,
        p: Principal,
        org: i64,
        page: Option<(usize, usize)>,
    ) -> Result<(Vec<Vec<u8>>, u64)> {
        let org = positive("organization_id", org)?;
        Self::require_org(r, org)?;
        Self::require_member(r, p, org)?;
        let (offset, limit) = page.unwrap_or((0, usize::MAX));
        Ok((r.org_rooms_json(org, offset, limit)?, r.room_count(org)?))
    }

    /// The room of one event.
    ///
    /// # Errors
    /// 422 bad ids, 404 unknown organization or no room for the event, 403 not a member.
    pub fn event_room(&self, r: &impl Read, p: Principal, org: i64, event: i64) -> Result<Room> {
        let org = positive("organization_id", org)?;
        let event = positive("event_id", event)?;
        Self::require_org(r, org)?;
        Self::require_member(r, p, org)?;
        let id = r
            .event_room_id(org, event)?
            .ok_or_else(|| Error::NotFound(format!("organization {org} has no room for event {event}")))?;
        r.room(id)?.ok_or_else(|| no_room(&RoomRef::Id(id)))
    }

    /// Creates a custom room, or an event's room when `event_id` is set.
    /// A PAT caller becomes a room admin.
    ///
    /// # Errors
    /// 422 invalid fields, 404 unknown organization, 403 not an owner/admin, 409 event room exists.
    pub fn create_room(&self, p: Principal, spec: NewRoom) -> Result<Room> {
        let org = positive("organizationID", spec.org_id)?;
        let event_id = spec.event_id.map(|e| positive("eventID", e)).transpose()?;
        let name = super::name(
            "name",
            spec.name.as_deref().ok_or_else(|| {
                Error::Invalid("name is required: give the room a name of 1 to 255 characters".into())
            })?,
        )?;
        let topic = spec.topic.as_deref().map(super::topic).transpose()?.unwrap_or_default();
        let users = spec.users.normalize()?;
        let now = self.clock.now();
        let avatar = match &spec.avatar {
            Some(bytes) => {
                avatar_type(bytes, self.config.rooms.max_avatar_bytes)?;
                Some(bytes.as_slice())
            }
            None => None,
        };
        self.check_deletion_time(spec.scheduled_deletion, now)?;
        let room = self.write(|w| {
            Self::require_org(w, org)?;
            Self::require_org_manager(w, p, org)?;
            if let Some(event) = event_id
                && w.event_room_id(org, event)?.is_some()
            {
                return Err(Error::Conflict(format!("organization {org} already has a room for event {event}")));
            }
            let mut room = blank_room(w.next_id("room")?, org, now);
            room.kind = if event_id.is_some() { RoomKind::Event } else { RoomKind::Custom };
            room.event_id = event_id.unwrap_or(0);
            room.name = name;
            room.topic = topic;
            room.automation = spec.automation;
            room.scheduled_deletion = spec.scheduled_deletion;
            for (u, role) in users {
                room.set_role(u, role);
            }
            if let Principal::User(u) = p {
                room.set_role(u, RoomRole::Admin);
            }
            if let Some(bytes) = avatar {
                room.avatar_sha256 = Some(sha256(bytes));
                w.set_avatar(room.id, Some(bytes))?;
            }
            if room.automation {
                apply_automation(w, &mut room)?;
            }
            save(w, &mut room, None, now)?;
            Ok(room)
        })?;
        self.outbox_changed.notify_one();
        Ok(room)
    }

    /// Creates the organization's default room, named after the organization.
    ///
    /// # Errors
    /// 422 bad id or topic, 404 unknown organization, 403 not an owner/admin, 409 one exists.
    pub fn create_default_room(&self, p: Principal, org: i64, automation: bool, topic: Option<&str>) -> Result<Room> {
        let org = positive("organizationID", org)?;
        let topic = topic.map(super::topic).transpose()?.unwrap_or_default();
        let now = self.clock.now();
        let room = self.write(|w| {
            let organization = Self::require_org(w, org)?;
            Self::require_org_manager(w, p, org)?;
            if let Some(existing) = w.default_room_id(org)? {
                return Err(Error::Conflict(format!(
                    "organization {org} already has a default room (room {existing})"
                )));
            }
            let mut room = blank_room(w.next_id("room")?, org, now);
            room.kind = RoomKind::Default;
            room.name = if organization.name.trim().is_empty() {
                self.config.rooms.default_name.clone()
            } else {
                organization.name
            };
            room.topic = topic;
            room.automation = automation;
            if automation {
                apply_automation(w, &mut room)?;
            }
            save(w, &mut room, None, now)?;
            Ok(room)
        })?;
        self.outbox_changed.notify_one();
        Ok(room)
    }

    /// Removes the organization's default room.
    ///
    /// # Errors
    /// 422 bad id, 404 unknown organization or no default room, 403 not an owner/admin.
    pub fn delete_default_room(&self, p: Principal, org: i64) -> Result<()> {
        let org = positive("organizationID", org)?;
        self.write(|w| {
            Self::require_org(w, org)?;
            Self::require_org_manager(w, p, org)?;
            let id = w
                .default_room_id(org)?
                .ok_or_else(|| Error::NotFound(format!("organization {org} has no default room")))?;
            let room = w.room(id)?.ok_or_else(|| no_room(&RoomRef::Id(id)))?;
            remove_room(w, &room)
        })?;
        self.outbox_changed.notify_one();
        Ok(())
    }

    /// Deletes a custom or event room: organization owners/admins and room admins.
    ///
    /// # Errors
    /// 404 unknown room, 403 not allowed, 409 for the default room.
    pub fn delete_room(&self, p: Principal, room: &RoomRef) -> Result<()> {
        self.write(|w| {
            let room = Self::resolve_room(w, room)?;
            require_room_admin(w, p, &room)?;
            if room.kind == RoomKind::Default {
                return Err(Error::Conflict(format!(
                    "room {} is the default room of organization {}: remove it with DELETE /v1/chatrooms/default/{}",
                    room.id, room.org_id, room.org_id
                )));
            }
            remove_room(w, &room)
        })?;
        self.outbox_changed.notify_one();
        Ok(())
    }

    /// Changes a room's automation, name, topic, avatar or scheduled deletion.
    ///
    /// # Errors
    /// 422 invalid fields, 404 unknown room, 403 not allowed.
    pub fn update_room(&self, p: Principal, room: &RoomRef, patch: RoomPatch) -> Result<Room> {
        let name = patch.name.as_deref().map(|n| super::name("name", n)).transpose()?;
        let topic = patch.topic.as_ref().map(|t| t.as_deref().map(super::topic).transpose()).transpose()?;
        if let Some(Some(bytes)) = &patch.avatar {
            avatar_type(bytes, self.config.rooms.max_avatar_bytes)?;
        }
        let now = self.clock.now();
        if let Some(at) = patch.scheduled_deletion {
            self.check_deletion_time(at, now)?;
        }
        let room = self.write(|w| {
            let old = Self::resolve_room(w, room)?;
            require_room_admin(w, p, &old)?;
            let mut room = old.clone();
            if let Some(name) = name {
                room.name = name;
            }
            if let Some(topic) = topic {
                room.topic = topic.unwrap_or_default();
            }
            if let Some(avatar) = &patch.avatar {
                room.avatar_sha256 = avatar.as_deref().map(sha256);
                room.avatar_url.clear();
                w.set_avatar(room.id, avatar.as_deref())?;
            }
            if let Some(at) = patch.scheduled_deletion {
                room.scheduled_deletion = at;
            }
            if let Some(on) = patch.automation {
                room.automation = on;
                if on {
                    apply_automation(w, &mut room)?;
                }
            }
            save(w, &mut room, Some(&old), now)?;
            Ok(room)
        })?;
        self.outbox_changed.notify_one();
        Ok(room)
    }

    /// The user joins the room's Matrix room; they become listed if they were not.
    /// `user` is the caller's own id, or the one an API token acts for: the
    /// user's own rights apply either way.
    ///
    /// # Errors
    /// 404 unknown room, 403 not a member or not entitled to the room.
    pub fn claim(&self, user: UserId, room: &RoomRef) -> Result<Room> {
        let user = positive("user_id", user)?;
        let now = self.clock.now();
        let room = self.write(|w| {
            let old = Self::resolve_room(w, room)?;
            if w.member_role(old.org_id, user)?.is_none() {
                return Err(Error::Forbidden(format!("user {user} is not a member of organization {}", old.org_id)));
            }
            let open = old.kind == RoomKind::Default || old.automation;
            if old.role_of(user).is_none() && !open {
                return Err(Error::Forbidden(format!(
                    "user {user} is not listed in room {}; a room admin can add them",
                    old.id
                )));
            }
            let mut room = old.clone();
            if room.role_of(user).is_none() {
                room.set_role(user, RoomRole::Assigned);
            }
            if let Err(at) = room.claimed.binary_search(&user) {
                room.claimed.insert(at, user);
            }
            if room == old {
                return Ok(room);
            }
            save(w, &mut room, Some(&old), now)?;
            Ok(room)
        })?;
        self.outbox_changed.notify_one();
        Ok(room)
    }

    /// Adds users, or changes their role, as listed.
    ///
    /// # Errors
    /// 400 no user named, 422 bad ids, 404 unknown room, 403 not allowed.
    pub fn add_users(&self, p: Principal, room: &RoomRef, lists: &UserLists) -> Result<Room> {
        self.change_users(p, room, lists, true)
    }

    /// Removes the listed users (whatever list names them).
    ///
    /// # Errors
    /// As [`Domain::add_users`].
    pub fn remove_users(&self, p: Principal, room: &RoomRef, lists: &UserLists) -> Result<Room> {
        self.change_users(p, room, lists, false)
    }

    fn change_users(&self, p: Principal, room: &RoomRef, lists: &UserLists, add: bool) -> Result<Room> {
        if lists.is_empty() {
            return Err(Error::BadRequest("name at least one user in admins, moderators or assignedUsers".into()));
        }
        let users = lists.normalize()?;
        let now = self.clock.now();
        let room = self.write(|w| {
            let old = Self::resolve_room(w, room)?;
            match Self::room_power(w, p, &old)? {
                Some(RoomRole::Admin) => {}
                Some(RoomRole::Moderator) => {
                    if !lists.admins.is_empty() || !lists.moderators.is_empty() {
                        return Err(Error::Forbidden("room moderators may change assignedUsers only".into()));
                    }
                    if let Some((u, _)) = users.iter().find(|(u, _)| old.role_of(*u) > Some(RoomRole::Assigned)) {
                        return Err(Error::Forbidden(format!(
                            "user {u} is a room admin or moderator; room moderators may change assignedUsers only"
                        )));
                    }
                }
                _ => {
                    return Err(Error::Forbidden(format!(
                        "only owners and admins of organization {} and admins of room {} may change its users",
                        old.org_id, old.id
                    )));
                }
            }
            let mut room = old.clone();
            for (u, role) in users {
                if add {
                    room.set_role(u, role);
                } else {
                    room.remove_user(u);
                }
            }
            if room == old {
                return Ok(room);
            }
            save(w, &mut room, Some(&old), now)?;
            Ok(room)
        })?;
        self.outbox_changed.notify_one();
        Ok(room)
    }

    /// Deletes the rooms whose scheduled deletion has come, also those whose
    /// time passed while the service was down. Returns how many.
    ///
    /// # Errors
    /// Storage failures.
    pub fn delete_due_rooms(&self) -> Result<usize> {
        let now = self.clock.now();
        if self.store.read()?.rooms_due(now, 1)?.is_empty() {
            return Ok(0);
        }
        let n = self.write(|w| {
            let due = w.rooms_due(now, 256)?;
            for id in &due {
                if let Some(room) = w.room(*id)? {
                    tracing::info!(room = room.id, organization = room.org_id, "scheduled deletion");
                    remove_room(w, &room)?;
                }
            }
            Ok(due.len())
        })?;
        self.outbox_changed.notify_one();
        Ok(n)
    }

    fn check_deletion_time(&self, at: Option<i64>, now: i64) -> Result<()> {
        match at {
            Some(t) if t <= now => {
                Err(Error::Invalid("scheduledDeletion lies in the past: give a future time, or null for none".into()))
            }
            _ => Ok(()),
        }
    }
}

fn no_room(room: &RoomRef) -> Error {
    Error::NotFound(format!("no chatroom {room}"))
}

fn require_room_admin(r: &impl Read, p: Principal, room: &Room) -> Result<()> {
    match Domain::room_power(r, p, room)? {
        Some(RoomRole::Admin) => Ok(()),
        _ => Err(Error::Forbidden(format!(
            "only owners and admins of organization {} and admins of room {} may do this",
            room.org_id, room.id
        ))),
    }
}

pub(crate) fn blank_room(id: RoomId, org: OrgId, now: i64) -> Room {
    Room {
        id,
        kind: RoomKind::Custom,
        org_id: org,
        event_id: 0,
        name: String::new(),
        topic: String::new(),
        matrix_room_id: String::new(),
        avatar_url: String::new(),
        avatar_sha256: None,
        admins: Vec::new(),
        moderators: Vec::new(),
        assigned: Vec::new(),
        claimed: Vec::new(),
        automation: false,
        scheduled_deletion: None,
        generation: 0,
        synced_generation: 0,
        sync_error: None,
        created_at: now,
        updated_at: now,
    }
}

/// Writes a changed room with a new generation and queues its sync.
pub(crate) fn save(w: &mut Writer, room: &mut Room, old: Option<&Room>, now: i64) -> Result<()> {
    room.generation += 1;
    room.updated_at = now;
    w.put_room(room, old)?;
    w.push_outbox(&OutboxOp::SyncRoom { room_id: room.id })?;
    Ok(())
}

/// Deletes a stored room and queues the removal of its Matrix room.
pub(crate) fn remove_room(w: &mut Writer, room: &Room) -> Result<()> {
    w.delete_room(room)?;
    w.push_outbox(&OutboxOp::DeleteRoom { room_id: room.id, matrix_room_id: room.matrix_room_id.clone() })?;
    Ok(())
}

/// While automation is on, every organization member is in the room and
/// owners/admins are room admins.
pub(crate) fn apply_automation(r: &impl Read, room: &mut Room) -> Result<()> {
    for (u, role) in r.members(room.org_id)? {
        if role.manages() {
            room.set_role(u, RoomRole::Admin);
        } else if room.role_of(u).is_none() {
            room.set_role(u, RoomRole::Assigned);
        }
    }
    Ok(())
}

/// Applies automation for one member across an organization's automated rooms.
pub(crate) fn automate_member(w: &mut Writer, org: OrgId, user: UserId, now: i64) -> Result<bool> {
    let mut changed = false;
    let Some(role) = w.member_role(org, user)? else { return Ok(false) };
    for id in w.org_room_ids(org, 0, usize::MAX)? {
        let Some(old) = w.room(id)? else { continue };
        if !old.automation {
            continue;
        }
        let mut room = old.clone();
        if role.manages() {
            room.set_role(user, RoomRole::Admin);
        } else if room.role_of(user).is_none() {
            room.set_role(user, RoomRole::Assigned);
        }
        if room != old {
            save(w, &mut room, Some(&old), now)?;
            changed = true;
        }
    }
    Ok(changed)
}

/// Takes a user out of rooms: those of one organization, or all.
pub(crate) fn remove_from_rooms(w: &mut Writer, user: UserId, org: Option<OrgId>, now: i64) -> Result<bool> {
    let mut changed = false;
    for id in w.user_room_ids(user)? {
        let Some(old) = w.room(id)? else { continue };
        if org.is_some_and(|o| o != old.org_id) {
            continue;
        }
        let mut room = old.clone();
        if room.remove_user(user) {
            save(w, &mut room, Some(&old), now)?;
            changed = true;
        }
    }
    Ok(changed)
}
