//! Chatrooms: reading, creating, changing, claiming and deleting them.
//! Every change commits the room and an outbox entry in one transaction.

use crate::error::{Error, Remedy, Result};
use crate::model::{Actor, OrgId, OrgRole, OutboxOp, Room, RoomId, RoomKind, RoomRole, UserId};
use crate::store::{Read, Writer};

use super::events::{self, Cause, Deletion};
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

/// The lists of a request in order of power, with their JSON names.
const LISTS: [(&str, RoomRole); 3] =
    [("admins", RoomRole::Admin), ("moderators", RoomRole::Moderator), ("assignedUsers", RoomRole::Assigned)];

impl UserLists {
    /// Whether no list names anyone.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.admins.is_empty() && self.moderators.is_empty() && self.assigned.is_empty()
    }

    /// How many users the lists name together (a user named twice counts twice).
    #[must_use]
    pub fn len(&self) -> usize {
        self.admins.len() + self.moderators.len() + self.assigned.len()
    }

    fn lists(&self) -> [&[i64]; 3] {
        [&self.admins, &self.moderators, &self.assigned]
    }

    /// Each named user once, with the highest role any list gives them,
    /// ascending. One sort of (user, list) pairs puts every user's entries
    /// side by side, so a repeat within one list and the highest role are
    /// found in one pass: n·log n for n ids, whatever the lists hold.
    ///
    /// # Errors
    /// 422 for an id ≤ 0 or a user named twice in one list.
    pub fn normalize(&self) -> Result<Vec<(UserId, RoomRole)>> {
        let mut all: Vec<(UserId, usize)> = Vec::with_capacity(self.len());
        for (i, list) in self.lists().into_iter().enumerate() {
            for &u in list {
                if u <= 0 {
                    return Err(Error::invalid(LISTS[i].0, format!("holds {u}: user ids are positive integers")));
                }
                all.push((u, i));
            }
        }
        all.sort_unstable();
        let mut out: Vec<(UserId, RoomRole)> = Vec::with_capacity(all.len());
        for (at, &(u, i)) in all.iter().enumerate() {
            let previous = at.checked_sub(1).map(|p| all[p]);
            if previous == Some((u, i)) {
                return Err(Error::invalid(LISTS[i].0, format!("names user {u} twice: list each user once")));
            }
            // Lists come in order of power: a user's first entry is their highest role.
            if previous.is_none_or(|(v, _)| v != u) {
                out.push((u, LISTS[i].1));
            }
        }
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
    /// Only moderators and admins may post.
    pub read_only: bool,
    /// Unix seconds at which the room becomes read-only.
    pub read_only_at: Option<i64>,
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
    pub read_only: Option<bool>,
    /// `Some(None)` cancels a scheduled switch to read-only.
    pub read_only_at: Option<Option<i64>>,
}

impl RoomPatch {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.automation.is_none()
            && self.name.is_none()
            && self.topic.is_none()
            && self.avatar.is_none()
            && self.scheduled_deletion.is_none()
            && self.read_only.is_none()
            && self.read_only_at.is_none()
    }
}

/// The image type of an avatar, recognised by content.
///
/// # Errors
/// 422 when it is empty, too large, or not PNG, JPEG, GIF or WebP.
pub fn avatar_type(bytes: &[u8], max: u64) -> Result<&'static str> {
    if bytes.is_empty() {
        return Err(Error::invalid("avatar", "is empty: send the image's bytes, or null for no avatar"));
    }
    if bytes.len() as u64 > max {
        return Err(Error::invalid(
            "avatar",
            format!("is {} bytes; the limit is {max} bytes (rooms.max_avatar_bytes)", bytes.len()),
        ));
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
        Err(Error::invalid("avatar", "is not a PNG, JPEG, GIF or WebP image"))
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

    /// GET one room as its API JSON: the JSON stored by room id with its
    /// organization at the room's every write, copied rather than encoded
    /// again (as GetRooms does), without reading or decoding the room
    /// record; encoded from the room only if that copy were missing.
    ///
    /// # Errors
    /// 404 unknown room, 403 not a member.
    pub fn get_room_json(&self, r: &impl Read, p: Principal, room: &RoomRef) -> Result<Vec<u8>> {
        let id = match room {
            RoomRef::Id(id) => Some(*id),
            RoomRef::Matrix(m) => r.room_id_by_matrix_id(m)?,
        };
        let Some(id) = id else { return Err(no_room(room)) };
        let Some((org, json)) = r.room_org_json(id)? else {
            return Ok(self.get_room(r, p, room)?.to_json());
        };
        Self::require_member(r, p, org)?;
        Ok(json)
    }

    /// GetRooms: hands `each` a page of an organization's rooms in id order,
    /// as their API JSON, and returns their total. `page` is (offset,
    /// limit); `None` returns all.
    ///
    /// # Errors
    /// 422 bad id, 404 unknown organization, 403 not a member.
    pub fn list_rooms(
        &self,
        r: &impl Read,
        p: Principal,
        org: i64,
        page: Option<(usize, usize)>,
        each: impl FnMut(&[u8]),
    ) -> Result<u64> {
        let org = positive("organization_id", org)?;
        // A user's membership implies the organization: deleting it removes
        // its members in the same write. So a member's request skips the
        // organization record, read only to tell 404 from 403 otherwise.
        let member = match p {
            Principal::User(u) => r.member_role(org, u)?.is_some(),
            Principal::Api(_) => false,
        };
        if !member {
            Self::require_org(r, org)?;
            Self::require_member(r, p, org)?;
        }
        let (offset, limit) = page.unwrap_or((0, usize::MAX));
        r.each_org_room_json(org, offset, limit, each)?;
        Ok(r.room_count(org)?)
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
            spec.name
                .as_deref()
                .ok_or_else(|| Error::invalid("name", "is required: give the room a name of 1 to 255 characters"))?,
        )?;
        let topic = spec.topic.as_deref().map(super::topic).transpose()?.unwrap_or_default();
        // Who may create and how many users, before any work on the lists.
        {
            let r = self.store.read()?;
            Self::require_org(&r, org)?;
            Self::require_org_manager(&r, p, org)?;
        }
        self.check_list_size(&spec.users)?;
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
        check_read_only_time(spec.read_only_at, now)?;
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
            room.read_only = spec.read_only;
            room.read_only_at = spec.read_only_at;
            // Named in the request or creating the room: explicit roles,
            // which automation below never lowers.
            set_roles(&mut room, &users, false);
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
            save(w, &mut room, None, now, &p.into(), Cause::Request)?;
            Ok(room)
        })?;
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
            save(w, &mut room, None, now, &p.into(), Cause::Request)?;
            Ok(room)
        })?;
        Ok(room)
    }

    /// Removes the organization's default room.
    ///
    /// # Errors
    /// 422 bad id, 404 unknown organization or no default room, 403 not an owner/admin.
    pub fn delete_default_room(&self, p: Principal, org: i64) -> Result<()> {
        let org = positive("organizationID", org)?;
        let now = self.clock.now();
        self.write(|w| {
            Self::require_org(w, org)?;
            Self::require_org_manager(w, p, org)?;
            let id = w
                .default_room_id(org)?
                .ok_or_else(|| Error::NotFound(format!("organization {org} has no default room")))?;
            let room = w.room(id)?.ok_or_else(|| no_room(&RoomRef::Id(id)))?;
            remove_room(w, &room, now, &p.into(), Deletion::Request)
        })?;
        Ok(())
    }

    /// Deletes a custom or event room: organization owners/admins and room admins.
    ///
    /// # Errors
    /// 404 unknown room, 403 not allowed, 409 for the default room.
    pub fn delete_room(&self, p: Principal, room: &RoomRef) -> Result<()> {
        let now = self.clock.now();
        self.write(|w| {
            let room = Self::resolve_room(w, room)?;
            require_room_admin(w, p, &room)?;
            if room.kind == RoomKind::Default {
                return Err(Error::Conflict(format!(
                    "room {} is the default room of organization {}",
                    room.id, room.org_id
                ))
                .with_remedy(Remedy::RemoveDefaultRoom(room.org_id)));
            }
            remove_room(w, &room, now, &p.into(), Deletion::Request)
        })?;
        Ok(())
    }

    /// Changes a room's automation, name, topic, avatar, scheduled deletion,
    /// read-only flag or the time it becomes read-only.
    ///
    /// The default room belongs to the organization: only its owners/admins
    /// change anything on it (a room admin of it may still manage its users),
    /// and it never gets a scheduled deletion, whoever asks (409: it is
    /// removed with `DELETE /v1/chatrooms/default/{organizationID}`).
    /// Turning automation off leaves every role where it is, and where each
    /// came from: turned on again, the roles automation gave follow the
    /// organization roles of that moment.
    ///
    /// # Errors
    /// 422 invalid fields, 404 unknown room, 403 not allowed, 409 a deletion for the default room.
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
        if let Some(at) = patch.read_only_at {
            check_read_only_time(at, now)?;
        }
        let room = self.write(|w| {
            let old = Self::resolve_room(w, room)?;
            if old.kind == RoomKind::Default {
                require_default_room_manager(w, p, &old)?;
                if let Some(Some(_)) = patch.scheduled_deletion {
                    return Err(Error::Conflict(format!(
                        "room {} is the default room of organization {} and cannot be given a scheduledDeletion",
                        old.id, old.org_id
                    ))
                    .with_remedy(Remedy::RemoveDefaultRoom(old.org_id)));
                }
            } else {
                require_room_admin(w, p, &old)?;
            }
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
            if let Some(on) = patch.read_only {
                room.read_only = on;
            }
            if let Some(at) = patch.read_only_at {
                room.read_only_at = at;
            }
            if let Some(on) = patch.automation {
                room.automation = on;
                if on {
                    apply_automation(w, &mut room)?;
                }
            }
            // Only automation changes members here.
            save(w, &mut room, Some(&old), now, &p.into(), Cause::Automation)?;
            Ok(room)
        })?;
        Ok(room)
    }

    /// The user joins the room's Matrix room; they become listed if they were not.
    /// `user` is the caller's own id, or the one an API token acts for: the
    /// user's own rights apply either way.
    ///
    /// # Errors
    /// 404 unknown room, 403 not a member or not entitled to the room.
    pub fn claim(&self, user: UserId, room: &RoomRef) -> Result<Room> {
        self.claim_as(Principal::User(user), user, room)
    }

    /// [`Domain::claim`] for `user`, as `p` asked it (the user's own PAT, or
    /// an API token acting for them): the event log names `p`.
    ///
    /// # Errors
    /// As [`Domain::claim`].
    pub fn claim_as(&self, p: Principal, user: UserId, room: &RoomRef) -> Result<Room> {
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
            save(w, &mut room, Some(&old), now, &p.into(), Cause::Request)?;
            Ok(room)
        })?;
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

    /// Whether the caller may change the room's users at all: organization
    /// owners/admins, room admins and room moderators. Cheap, so a request
    /// can be refused before its lists are even read.
    ///
    /// # Errors
    /// 404 unknown room, 403 not allowed.
    pub fn may_change_users(&self, r: &impl Read, p: Principal, room: &RoomRef) -> Result<()> {
        let room = Self::resolve_room(r, room)?;
        match Self::room_power(r, p, &room)? {
            Some(RoomRole::Admin | RoomRole::Moderator) => Ok(()),
            _ => Err(may_not_change_users(&room)),
        }
    }

    fn change_users(&self, p: Principal, room: &RoomRef, lists: &UserLists, add: bool) -> Result<Room> {
        if lists.is_empty() {
            return Err(Error::Malformed("name at least one user in admins, moderators or assignedUsers".into()));
        }
        self.may_change_users(&self.store.read()?, p, room)?;
        self.check_list_size(lists)?;
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
                _ => return Err(may_not_change_users(&old)),
            }
            let mut room = old.clone();
            // Named in a request: the role is explicit from now on.
            if add {
                set_roles(&mut room, &users, false);
            } else {
                let gone: Vec<UserId> = users.iter().map(|(u, _)| *u).collect();
                remove_users(&mut room, &gone);
            }
            if room == old {
                return Ok(room);
            }
            let only_origin = Room { automation_given: old.automation_given.clone(), ..room.clone() } == old;
            if only_origin {
                // Only where roles came from changed: the homeserver has nothing to do.
                room.updated_at = now;
                w.put_room(&room, Some(&old))?;
                return Ok(room);
            }
            save(w, &mut room, Some(&old), now, &p.into(), Cause::Request)?;
            Ok(room)
        })?;
        Ok(room)
    }

    /// At most `rooms.max_users_per_request` users in one request's lists together.
    ///
    /// # Errors
    /// 422 naming the key.
    fn check_list_size(&self, lists: &UserLists) -> Result<()> {
        let max = self.config.rooms.max_users_per_request as usize;
        let n = lists.len();
        if n > max {
            return Err(Error::invalid(
                "admins, moderators and assignedUsers",
                format!(
                    "name {n} users together; at most {max} are accepted in one request \
                     (rooms.max_users_per_request): send the rest in further requests"
                ),
            ));
        }
        Ok(())
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
            let mut deleted = 0;
            for id in &due {
                let Some(room) = w.room(*id)? else { continue };
                if room.kind == RoomKind::Default {
                    // No request gives a default room a deletion time; one
                    // that has one came from outside (a hand-made dump). The
                    // organization's room stays: only the time goes.
                    tracing::warn!(
                        room = room.id,
                        organization = room.org_id,
                        "dropped the scheduled deletion of a default room instead of deleting it; \
                         an owner/admin of the organization removes it with DELETE /v1/chatrooms/default/{{organizationID}}"
                    );
                    let mut kept = room.clone();
                    kept.scheduled_deletion = None;
                    w.put_room(&kept, Some(&room))?;
                    continue;
                }
                tracing::info!(room = room.id, organization = room.org_id, "scheduled deletion");
                remove_room(w, &room, now, &Actor::System, Deletion::Schedule)?;
                deleted += 1;
            }
            Ok(deleted)
        })?;
        Ok(n)
    }

    /// Makes read-only the rooms whose `read_only_at` has come, also those
    /// whose time passed while the service was down, by the system: the
    /// room's power levels follow through the outbox like any change, and
    /// the event log records a `room.updated` with `readOnly` and the
    /// cleared `readOnlyAt`. Returns how many.
    ///
    /// # Errors
    /// Storage failures.
    pub fn make_due_rooms_read_only(&self) -> Result<usize> {
        let now = self.clock.now();
        if self.store.read()?.rooms_read_only_due(now, 1)?.is_empty() {
            return Ok(0);
        }
        self.write(|w| {
            let due = w.rooms_read_only_due(now, 256)?;
            for id in &due {
                let Some(old) = w.room(*id)? else { continue };
                let mut room = old.clone();
                room.read_only = true;
                room.read_only_at = None;
                tracing::info!(room = room.id, organization = room.org_id, "scheduled read-only");
                save(w, &mut room, Some(&old), now, &Actor::System, Cause::Automation)?;
            }
            Ok(due.len())
        })
    }

    fn check_deletion_time(&self, at: Option<i64>, now: i64) -> Result<()> {
        check_future_time("scheduledDeletion", at, now)
    }
}

/// 9999-12-31T23:59:59Z in Unix seconds: the last time RFC 3339 can write.
const LAST_DELETION_TIME: i64 = 253_402_300_799;

/// A time at which the service acts by itself (`scheduledDeletion`,
/// `readOnlyAt`): `None`, or in the future and writable in RFC 3339.
fn check_future_time(field: &str, at: Option<i64>, now: i64) -> Result<()> {
    match at {
        Some(t) if t <= now => Err(Error::invalid(field, "lies in the past: give a future time, or null for none")),
        // Rooms are answered with the time in RFC 3339, whose years have four digits.
        Some(t) if t > LAST_DELETION_TIME => {
            Err(Error::invalid(field, "lies after 9999-12-31T23:59:59Z: give an earlier time, or null for none"))
        }
        _ => Ok(()),
    }
}

/// `readOnlyAt` follows the rules of a deletion time. Any room may have
/// one, the default room too: it only freezes the room, which its
/// owners/admins may do at once anyway.
fn check_read_only_time(at: Option<i64>, now: i64) -> Result<()> {
    check_future_time("readOnlyAt", at, now)
}

fn no_room(room: &RoomRef) -> Error {
    Error::NotFound(format!("no chatroom {room}"))
}

fn may_not_change_users(room: &Room) -> Error {
    Error::Forbidden(format!(
        "only owners and admins of organization {} and admins of room {} may change its users",
        room.org_id, room.id
    ))
}

/// The default room is the organization's: changed by its owners/admins only.
pub(super) fn require_default_room_manager(r: &impl Read, p: Principal, room: &Room) -> Result<()> {
    match Domain::caller_role(r, p, room.org_id)? {
        Some(role) if role.manages() => Ok(()),
        Some(_) => Err(Error::Forbidden(format!(
            "room {} is the default room of organization {}: only owners and admins of the organization may change it",
            room.id, room.org_id
        ))),
        None => Domain::require_member(r, p, room.org_id).map(|_| ()),
    }
}

pub(super) fn require_room_admin(r: &impl Read, p: Principal, room: &Room) -> Result<()> {
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
        automation_given: Vec::new(),
        automation: false,
        scheduled_deletion: None,
        generation: 0,
        synced_generation: 0,
        sync_error: None,
        created_at: now,
        updated_at: now,
        read_only: false,
        read_only_at: None,
    }
}

/// Writes a changed room with a new generation, queues its sync and records
/// what changed in the event log, by `actor`; members changed for `cause`.
pub(crate) fn save(
    w: &mut Writer,
    room: &mut Room,
    old: Option<&Room>,
    now: i64,
    actor: &Actor,
    cause: Cause,
) -> Result<()> {
    room.generation += 1;
    room.updated_at = now;
    w.put_room(room, old)?;
    w.push_outbox(&OutboxOp::SyncRoom { room_id: room.id })?;
    events::room_saved(w, now, actor, old, room, cause)
}

/// Deletes a stored room, queues the removal of its Matrix room and records it.
pub(crate) fn remove_room(w: &mut Writer, room: &Room, now: i64, actor: &Actor, why: Deletion) -> Result<()> {
    events::room_deleted(w, now, actor, room, why)?;
    w.delete_room(room)?;
    w.push_outbox(&OutboxOp::DeleteRoom { room_id: room.id, matrix_room_id: room.matrix_room_id.clone() })?;
    Ok(())
}

/// The role automation gives an organization member in a room with
/// automation on, when it differs from the one they hold: owners/admins are
/// room admins; members join as assignedUsers, and a member whose role
/// automation gave drops to assignedUsers (the admin role they had as an
/// owner/admin). A role given explicitly stays, except that an owner/admin
/// listed below admin rises to admin, a role automation then gave.
fn automation_change(room: &Room, user: UserId, role: OrgRole) -> Option<RoomRole> {
    let now = room.role_of(user);
    let to = if role.manages() {
        RoomRole::Admin
    } else if now.is_none() || room.is_automation_given(user) {
        RoomRole::Assigned
    } else {
        return None;
    };
    (now != Some(to)).then_some(to)
}

/// While automation is on, every organization member is in the room and
/// owners/admins are room admins (see [`automation_change`]).
pub(crate) fn apply_automation(r: &impl Read, room: &mut Room) -> Result<()> {
    // Members come in ascending order, as `set_roles` wants them.
    let changes: Vec<(UserId, RoomRole)> = r
        .members(room.org_id)?
        .into_iter()
        .filter_map(|(u, role)| automation_change(room, u, role).map(|to| (u, to)))
        .collect();
    set_roles(room, &changes, true);
    Ok(())
}

/// Puts each user of `changes` (ascending, each once) in exactly the list of
/// their role, keeping any claim; `automation` says who gave the roles. One
/// merge per list: linear in the room and the change together, where a
/// `Room::set_role` per user would shift the room's lists once per user
/// (quadratic as a room grows into the thousands).
pub(crate) fn set_roles(room: &mut Room, changes: &[(UserId, RoomRole)], automation: bool) {
    if changes.is_empty() {
        return;
    }
    debug_assert!(changes.windows(2).all(|w| w[0].0 < w[1].0), "changes ascending, each user once");
    let users: Vec<UserId> = changes.iter().map(|(u, _)| *u).collect();
    for (list, role) in [
        (&mut room.admins, RoomRole::Admin),
        (&mut room.moderators, RoomRole::Moderator),
        (&mut room.assigned, RoomRole::Assigned),
    ] {
        let kept = without(list, &users);
        let added = changes.iter().filter(|(_, r)| *r == role).map(|(u, _)| *u);
        *list = merged(&kept, added);
    }
    let kept = without(&room.automation_given, &users);
    room.automation_given = if automation { merged(&kept, users.iter().copied()) } else { kept };
}

/// Takes the users of `users` (ascending) out of every list and out of the
/// claims; true when any of them was listed. Linear, like [`set_roles`].
pub(crate) fn remove_users(room: &mut Room, users: &[UserId]) -> bool {
    let before = room.admins.len() + room.moderators.len() + room.assigned.len();
    for list in
        [&mut room.admins, &mut room.moderators, &mut room.assigned, &mut room.claimed, &mut room.automation_given]
    {
        *list = without(list, users);
    }
    room.admins.len() + room.moderators.len() + room.assigned.len() != before
}

/// `list` without the ids in `drop`, both ascending: one pass over each.
fn without(list: &[UserId], drop: &[UserId]) -> Vec<UserId> {
    let mut out = Vec::with_capacity(list.len());
    let mut drop = drop.iter().copied().peekable();
    for &u in list {
        while drop.next_if(|&d| d < u).is_some() {}
        if drop.peek() != Some(&u) {
            out.push(u);
        }
    }
    out
}

/// Two ascending lists without common ids as one ascending list.
fn merged(a: &[UserId], b: impl Iterator<Item = UserId>) -> Vec<UserId> {
    let mut out = Vec::with_capacity(a.len());
    let mut a = a.iter().copied().peekable();
    for u in b {
        while let Some(v) = a.next_if(|&v| v < u) {
            out.push(v);
        }
        out.push(u);
    }
    out.extend(a);
    out
}

/// Applies automation for one member across an organization's automated
/// rooms: joins them, raises an owner/admin to room admin, drops a demoted
/// one to assignedUsers where automation gave the admin role. Reads only the
/// automated rooms (their own index), not every room of the organization.
pub(crate) fn automate_member(w: &mut Writer, org: OrgId, user: UserId, now: i64, actor: &Actor) -> Result<bool> {
    let mut changed = false;
    let Some(role) = w.member_role(org, user)? else { return Ok(false) };
    for id in w.automated_room_ids(org)? {
        let Some(old) = w.room(id)? else { continue };
        let Some(to) = automation_change(&old, user, role).filter(|_| old.automation) else { continue };
        let mut room = old.clone();
        room.set_role_by(user, to, true);
        save(w, &mut room, Some(&old), now, actor, Cause::Automation)?;
        changed = true;
    }
    Ok(changed)
}

/// Takes a user out of rooms: those of one organization, or all. The rule
/// does it, not a request naming the room: the cause is automation.
pub(crate) fn remove_from_rooms(
    w: &mut Writer,
    user: UserId,
    org: Option<OrgId>,
    now: i64,
    actor: &Actor,
) -> Result<bool> {
    let mut changed = false;
    for id in w.user_room_ids(user)? {
        let Some(old) = w.room(id)? else { continue };
        if org.is_some_and(|o| o != old.org_id) {
            continue;
        }
        let mut room = old.clone();
        if room.remove_user(user) {
            save(w, &mut room, Some(&old), now, actor, Cause::Automation)?;
            changed = true;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic shuffle of 1..=n (multiplication by a unit modulo a prime above n).
    fn shuffled(n: i64) -> Vec<i64> {
        const P: i64 = 200_003;
        assert!(n < P);
        (1..P).map(|i| i * 7919 % P).filter(|&v| v <= n).collect()
    }

    #[test]
    fn normalize_gives_each_user_once_with_the_highest_role() {
        let n = 200_000;
        // Everyone assigned, every third a moderator, every fifth an admin, each list shuffled.
        let lists = UserLists {
            admins: shuffled(n).into_iter().filter(|u| u % 5 == 0).collect(),
            moderators: shuffled(n).into_iter().rev().filter(|u| u % 3 == 0).collect(),
            assigned: shuffled(n),
        };
        assert_eq!(lists.len(), 200_000 + 66_666 + 40_000);
        let out = lists.normalize().unwrap();
        assert_eq!(out.len(), 200_000);
        for (at, (u, role)) in out.iter().enumerate() {
            assert_eq!(*u, i64::try_from(at).unwrap() + 1, "ascending, each user once");
            let want = if u % 5 == 0 {
                RoomRole::Admin
            } else if u % 3 == 0 {
                RoomRole::Moderator
            } else {
                RoomRole::Assigned
            };
            assert_eq!(*role, want, "user {u}");
        }
    }

    #[test]
    fn normalize_refuses_repeats_within_a_list_and_bad_ids() {
        let mut assigned = shuffled(200_000);
        assigned.push(123_456);
        let lists = UserLists { admins: vec![123_456], assigned, ..UserLists::default() };
        let e = lists.normalize().unwrap_err();
        assert!(matches!(&e, Error::Invalid { field, .. } if field == "assignedUsers"), "{e:?}");
        assert!(e.to_string().contains("assignedUsers names user 123456 twice"), "{e}");

        let e = UserLists { moderators: vec![4, 0], ..UserLists::default() }.normalize().unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }) && e.to_string().contains("moderators holds 0"), "{e}");
        let e = UserLists { admins: vec![-3], ..UserLists::default() }.normalize().unwrap_err();
        assert!(e.to_string().contains("admins holds -3"), "{e}");
        // The same user in different lists is not a repeat.
        let out = UserLists { admins: vec![2], moderators: vec![2, 1], assigned: vec![1, 2] }.normalize().unwrap();
        assert_eq!(out, vec![(1, RoomRole::Moderator), (2, RoomRole::Admin)]);
        assert!(UserLists::default().normalize().unwrap().is_empty());
    }

    fn room_of(admins: &[i64], moderators: &[i64], assigned: &[i64], claimed: &[i64]) -> Room {
        let mut room = blank_room(1, 1, 0);
        room.admins = admins.to_vec();
        room.moderators = moderators.to_vec();
        room.assigned = assigned.to_vec();
        room.claimed = claimed.to_vec();
        room
    }

    #[test]
    fn set_roles_and_remove_users_match_one_user_at_a_time() {
        // Pseudo-random rooms and changes, checked against the per-user methods.
        let mut seed = 0x2545_f491_u64;
        let mut next = move |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        let role = |k: u64| [RoomRole::Admin, RoomRole::Moderator, RoomRole::Assigned][usize::try_from(k).unwrap()];
        for _ in 0..300 {
            let mut room = blank_room(1, 1, 0);
            for u in 1..=60 {
                match next(4) {
                    3 => {}
                    k => room.set_role_by(u, role(k), next(2) == 0),
                }
            }
            room.claimed = room.members().into_iter().filter(|_| next(2) == 0).collect();
            let mut changes: Vec<(UserId, RoomRole)> = Vec::new();
            for u in 1..=80 {
                if next(3) == 0 {
                    changes.push((u, role(next(3))));
                }
            }

            let automation = next(2) == 0;
            let mut one_by_one = room.clone();
            for (u, r) in &changes {
                one_by_one.set_role_by(*u, *r, automation);
            }
            let mut bulk = room.clone();
            set_roles(&mut bulk, &changes, automation);
            assert_eq!(bulk, one_by_one);
            assert!(bulk.automation_given.windows(2).all(|w| w[0] < w[1]), "ascending: {:?}", bulk.automation_given);
            assert!(bulk.automation_given.iter().all(|u| bulk.role_of(*u).is_some()), "only listed users");

            let gone: Vec<UserId> = changes.iter().map(|(u, _)| *u).collect();
            let mut one_by_one = room.clone();
            let mut any = false;
            for u in &gone {
                any |= one_by_one.remove_user(*u);
            }
            let mut bulk = room.clone();
            assert_eq!(remove_users(&mut bulk, &gone), any);
            assert_eq!(bulk, one_by_one);
        }
    }

    /// What automation gives each organization role, from each starting point.
    #[test]
    fn automation_moves_only_the_roles_it_gave() {
        use RoomRole::{Admin, Assigned, Moderator};
        // (listed as, given by automation, organization role) → the change.
        let cases = [
            (None, false, OrgRole::Owner, Some(Admin)),
            (None, false, OrgRole::Member, Some(Assigned)),
            // An owner/admin is a room admin, however listed; a member is left as listed.
            (Some(Moderator), false, OrgRole::Admin, Some(Admin)),
            (Some(Assigned), true, OrgRole::Admin, Some(Admin)),
            (Some(Admin), false, OrgRole::Admin, None),
            (Some(Admin), true, OrgRole::Owner, None),
            (Some(Moderator), false, OrgRole::Member, None),
            (Some(Admin), false, OrgRole::Member, None),
            (Some(Assigned), true, OrgRole::Member, None),
            // The demoted owner/admin: automation's admin role drops.
            (Some(Admin), true, OrgRole::Member, Some(Assigned)),
        ];
        for (listed, given, org_role, expected) in cases {
            let mut room = blank_room(1, 1, 0);
            if let Some(r) = listed {
                room.set_role_by(7, r, given);
            }
            assert_eq!(automation_change(&room, 7, org_role), expected, "{listed:?} given {given} as {org_role:?}");
        }
    }

    #[test]
    fn an_explicit_change_makes_a_role_explicit() {
        let mut room = blank_room(1, 1, 0);
        set_roles(&mut room, &[(1, RoomRole::Admin), (2, RoomRole::Assigned), (3, RoomRole::Assigned)], true);
        assert_eq!(room.automation_given, vec![1, 2, 3]);
        // Named again with the same role: the lists stay, the role is the request's now.
        set_roles(&mut room, &[(2, RoomRole::Assigned)], false);
        assert_eq!((room.assigned.clone(), room.automation_given.clone()), (vec![2, 3], vec![1, 3]));
        room.set_role(1, RoomRole::Moderator);
        assert_eq!(room.automation_given, vec![3]);
        assert!(remove_users(&mut room, &[3]));
        assert!(room.automation_given.is_empty());
    }

    #[test]
    fn a_new_role_keeps_the_claim() {
        let mut room = room_of(&[1], &[], &[2, 3], &[2, 3]);
        set_roles(&mut room, &[(2, RoomRole::Admin), (4, RoomRole::Moderator)], false);
        assert_eq!(room, room_of(&[1, 2], &[4], &[3], &[2, 3]));
        room.set_role(3, RoomRole::Moderator);
        assert_eq!(room, room_of(&[1, 2], &[3, 4], &[], &[2, 3]));
        assert!(remove_users(&mut room, &[2, 9]));
        assert_eq!(room, room_of(&[1], &[3, 4], &[], &[3]));
        assert!(!remove_users(&mut room, &[9]));
    }

    #[test]
    fn adding_to_a_large_room_is_one_merge() {
        // 200,000 listed and 200,000 more added in one change, interleaved:
        // every user lands in one sorted list (one by one, this shifted the
        // list once per user).
        let mut room = room_of(&[], &[], &(1..=200_000).map(|u| u * 2).collect::<Vec<_>>(), &[]);
        let changes: Vec<(UserId, RoomRole)> = (1..=200_000).map(|u| (u * 2 - 1, RoomRole::Assigned)).collect();
        set_roles(&mut room, &changes, false);
        assert_eq!(room.assigned, (1..=400_000).collect::<Vec<_>>());
        let gone: Vec<UserId> = (1..=200_000).map(|u| u * 2).collect();
        assert!(remove_users(&mut room, &gone));
        assert_eq!(room.assigned, (1..=200_000).map(|u| u * 2 - 1).collect::<Vec<_>>());
    }
}
