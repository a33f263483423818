//! The event log: what the service did, in order, and who did it.
//!
//! Every write path calls these functions inside its own write transaction,
//! so an event exists exactly when the change it records was committed: a
//! crash loses both or neither. Ids come from a counter, so they ascend over
//! the whole log and are never reused, also after retention removed the
//! oldest. A consumer keeps the id of the last event it handled as its
//! cursor; a webhook sender is such a consumer, with a
//! stored cursor per webhook.

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::model::{Actor, Event, OrgId, OrgRole, Room, RoomRole, UserId};
use crate::store::{Read, StoreError, Writer};

use super::{ApiCaller, Domain, Principal};

/// Events one page holds at most.
pub const MAX_PAGE: usize = 1000;
/// Events pruned per write transaction, so pruning never holds the writer long.
pub const PRUNE_BATCH: usize = 1000;

impl From<Principal> for Actor {
    fn from(p: Principal) -> Self {
        match p {
            Principal::Api(ApiCaller::Token(id)) => Actor::ApiToken(hex::encode(id)),
            Principal::Api(ApiCaller::CommandLine) => Actor::CommandLine,
            Principal::User(u) => Actor::User(u),
        }
    }
}

/// Why a room's members changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A request named the users (create, add or remove users, claim).
    Request,
    /// The service followed a rule: automation, or the organization the
    /// user left.
    Automation,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::Request => "request",
            Cause::Automation => "automation",
        }
    }
}

/// Appends one event.
///
/// # Errors
/// Storage failures.
pub(crate) fn record(
    w: &mut Writer,
    time: i64,
    org: Option<OrgId>,
    actor: &Actor,
    kind: &str,
    data: &Value,
) -> Result<()> {
    w.append_event(time, org, actor.clone(), kind, data)?;
    Ok(())
}

fn role_name(role: RoomRole) -> &'static str {
    match role {
        RoomRole::Admin => "admin",
        RoomRole::Moderator => "moderator",
        RoomRole::Assigned => "assignedUser",
    }
}

/// The room as the API shows it.
fn room_json(room: &Room) -> Value {
    serde_json::from_slice(&room.to_json()).unwrap_or(Value::Null)
}

/// Records what saving `new` over `old` changed: `room.created` for a new
/// room; otherwise `room.updated` (the changed fields), `room.members_changed`
/// (added, removed, promoted, demoted, and the cause) and `room.claimed`,
/// each only when something of its kind changed.
///
/// # Errors
/// Storage failures.
pub(crate) fn room_saved(
    w: &mut Writer,
    time: i64,
    actor: &Actor,
    old: Option<&Room>,
    new: &Room,
    cause: Cause,
) -> Result<()> {
    let org = Some(new.org_id);
    let Some(old) = old else {
        return record(w, time, org, actor, "room.created", &json!({"roomID": new.id, "room": room_json(new)}));
    };
    let mut changed = serde_json::Map::new();
    if old.name != new.name {
        changed.insert("name".into(), json!(new.name));
    }
    if old.topic != new.topic {
        changed.insert("topic".into(), json!(new.topic));
    }
    if old.avatar_sha256 != new.avatar_sha256 {
        changed.insert("avatar".into(), json!(if new.avatar_sha256.is_some() { "replaced" } else { "removed" }));
    }
    if old.automation != new.automation {
        changed.insert("automationEnabled".into(), json!(new.automation));
    }
    if old.scheduled_deletion != new.scheduled_deletion {
        changed.insert("scheduledDeletion".into(), json!(new.scheduled_deletion.map(crate::model::rfc3339)));
    }
    if old.read_only != new.read_only {
        changed.insert("readOnly".into(), json!(new.read_only));
    }
    if old.read_only_at != new.read_only_at {
        changed.insert("readOnlyAt".into(), json!(new.read_only_at.map(crate::model::rfc3339)));
    }
    if !changed.is_empty() {
        record(w, time, org, actor, "room.updated", &json!({"roomID": new.id, "changed": changed}))?;
    }
    let (mut added, mut removed, mut promoted, mut demoted) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut users = old.members();
    users.extend(new.members());
    users.sort_unstable();
    users.dedup();
    for u in users {
        match (old.role_of(u), new.role_of(u)) {
            (None, Some(to)) => added.push(json!({"userID": u, "role": role_name(to)})),
            (Some(_), None) => removed.push(json!(u)),
            (Some(from), Some(to)) if to > from => {
                promoted.push(json!({"userID": u, "from": role_name(from), "to": role_name(to)}));
            }
            (Some(from), Some(to)) if to < from => {
                demoted.push(json!({"userID": u, "from": role_name(from), "to": role_name(to)}));
            }
            _ => {}
        }
    }
    if !(added.is_empty() && removed.is_empty() && promoted.is_empty() && demoted.is_empty()) {
        let data = json!({
            "roomID": new.id, "by": cause.as_str(),
            "added": added, "removed": removed, "promoted": promoted, "demoted": demoted,
        });
        record(w, time, org, actor, "room.members_changed", &data)?;
    }
    for &u in new.claimed.iter().filter(|u| old.claimed.binary_search(u).is_err()) {
        record(w, time, org, actor, "room.claimed", &json!({"roomID": new.id, "userID": u}))?;
    }
    Ok(())
}

/// Why a room was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// A delete request.
    Request,
    /// Its `scheduledDeletion` came.
    Schedule,
    /// Its organization was deleted.
    Organization,
}

/// Records a room's deletion.
///
/// # Errors
/// Storage failures.
pub(crate) fn room_deleted(w: &mut Writer, time: i64, actor: &Actor, room: &Room, why: Deletion) -> Result<()> {
    let reason = match why {
        Deletion::Request => "request",
        Deletion::Schedule => "schedule",
        Deletion::Organization => "organizationDeleted",
    };
    let data = json!({
        "roomID": room.id, "type": room.kind.as_str(), "eventID": room.event_id,
        "matrixRoomID": room.matrix_room_id, "reason": reason,
    });
    record(w, time, Some(room.org_id), actor, "room.deleted", &data)
}

/// Records that the homeserver's room exists and matches the stored room.
///
/// # Errors
/// Storage failures.
pub(crate) fn room_ready(w: &mut Writer, time: i64, room: &Room) -> Result<(), StoreError> {
    let data = json!({"roomID": room.id, "matrixRoomID": room.matrix_room_id, "generation": room.generation});
    w.append_event(time, Some(room.org_id), Actor::System, "room.ready", &data).map(drop)
}

/// Records a failed sync of a room, with the homeserver's error.
///
/// # Errors
/// Storage failures.
pub(crate) fn room_sync_failed(w: &mut Writer, time: i64, room: &Room, error: &str) -> Result<(), StoreError> {
    let data = json!({"roomID": room.id, "matrixRoomID": room.matrix_room_id, "error": error});
    w.append_event(time, Some(room.org_id), Actor::System, "room.sync_failed", &data).map(drop)
}

/// Records a member's new role (`from` `None`: they joined).
///
/// # Errors
/// Storage failures.
pub(crate) fn member_set(
    w: &mut Writer,
    time: i64,
    actor: &Actor,
    org: OrgId,
    user: UserId,
    from: Option<OrgRole>,
    to: OrgRole,
) -> Result<()> {
    match from {
        None => record(w, time, Some(org), actor, "member.added", &json!({"userID": user, "role": to.as_str()})),
        Some(from) if from != to => {
            let data = json!({"userID": user, "from": from.as_str(), "to": to.as_str()});
            record(w, time, Some(org), actor, "member.role_changed", &data)
        }
        Some(_) => Ok(()),
    }
}

/// One page of the event log.
#[derive(Debug)]
pub struct Page {
    pub events: Vec<Event>,
    /// The cursor for the next page: the last event's id, or the cursor
    /// given when the page is empty.
    pub next: u64,
}

impl Domain {
    /// Events after the cursor `after`, at most `limit`: an organization's
    /// (`Some`), or the whole log (`None`, API tokens only, with the events
    /// of no organization). API tokens read every organization; a PAT only
    /// an organization it is owner or admin of.
    ///
    /// # Errors
    /// 400 a cursor beyond the last event, or a PAT without an organization;
    /// 422 a bad organization id; 403 a PAT of a plain member or outsider, or
    /// a cursor at another organization's event; 404 an unknown organization.
    pub fn events(&self, r: &impl Read, p: Principal, org: Option<i64>, after: u64, limit: usize) -> Result<Page> {
        let org = org.map(|o| super::positive("organization_id", o)).transpose()?;
        match (p, org) {
            (Principal::Api(_), _) => {}
            (Principal::User(_), None) => {
                return Err(Error::Malformed(
                    "organization_id is required with a personal access token: add ?organization_id=<id>".into(),
                ));
            }
            (Principal::User(_), Some(o)) => Self::require_org_manager(r, p, o)?,
        }
        if let Some(o) = org {
            r.org(o)?.ok_or_else(|| super::org_not_found(o))?;
        }
        let last = r.last_event_id()?;
        if after > last {
            return Err(Error::Malformed(format!(
                "after is {after}, beyond the last event ({last}): give the id of an event you received, or 0"
            )));
        }
        if let (Some(o), Some(at)) = (org, r.event(after)?)
            && at.org_id != Some(o)
        {
            return Err(Error::Forbidden(format!(
                "after names event {after}, which is not an event of organization {o}: continue from the last \
                 event of this organization you received, or from 0"
            )));
        }
        let events = r.events_after(org, after, limit.min(MAX_PAGE))?;
        let next = events.last().map_or(after, |e| e.id);
        Ok(Page { events, next })
    }

    /// Removes one batch of events older than `events.retention_days`;
    /// returns how many (fewer than [`PRUNE_BATCH`]: nothing more is due).
    ///
    /// # Errors
    /// Storage failures.
    pub fn prune_events(&self) -> Result<usize> {
        let cutoff = self.clock.now().saturating_sub(i64::from(self.config.events.retention_days) * 86_400);
        self.write(|w| Ok(w.prune_events(cutoff, PRUNE_BATCH)?))
    }
}
