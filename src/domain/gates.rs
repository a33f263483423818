//! Checks that need nothing of a request's body: a caller they refuse is
//! refused before a body of up to megabytes is read. Each is a necessary
//! condition of the rule the full request meets later, never a different rule.

use crate::error::{Error, Result};
use crate::model::RoomKind;
use crate::store::Read;

use super::rooms::{RoomRef, require_default_room_manager, require_room_admin};
use super::{Domain, Principal};

impl Domain {
    /// Whether the caller may create rooms in any organization at all: an
    /// API token, or a user who owns or administers at least one.
    ///
    /// # Errors
    /// 403 for a user who manages no organization.
    pub fn may_create_rooms(&self, r: &impl Read, p: Principal) -> Result<()> {
        let Principal::User(u) = p else { return Ok(()) };
        if r.orgs_of(u)?.iter().any(|(_, role)| role.manages()) {
            return Ok(());
        }
        Err(Error::Forbidden(format!(
            "user {u} is an owner or admin of no organization: only owners and admins of an organization may create its rooms"
        )))
    }

    /// Whether the caller may change the room at all: its organization's
    /// owners and admins, and the room's admins (the default room: the
    /// organization's owners and admins only).
    ///
    /// # Errors
    /// 404 unknown room, 403 not allowed.
    pub fn may_update_room(&self, r: &impl Read, p: Principal, room: &RoomRef) -> Result<()> {
        let room = Self::resolve_room(r, room)?;
        if room.kind == RoomKind::Default {
            require_default_room_manager(r, p, &room)
        } else {
            require_room_admin(r, p, &room)
        }
    }
}
