//! Stored data evolves: numbered steps that bring a database written by an
//! older release up to today's schema.
//!
//! Opening a database runs, in the one write transaction of the open: the
//! schema check (a newer schema is refused, naming both versions), every
//! step from the file's schema version to today's, and the rebuild of the
//! room JSON kept for GetRooms when its version ([`ROOM_VIEW_VERSION`])
//! differs. The transaction commits whole or not at all, so a crash or a
//! failing step leaves the file exactly as the older release left it.
//!
//! Schema history (the record versions are in `codec.rs`):
//! 1. The first release: every record version 1, no room JSON version.
//! 2. Rooms gain a `topic` and the origin of their roles (`automation_given`,
//!    inferred by [`settle_schema_1_room`]), with an index of the rooms that
//!    have automation on and counts of each organization's rooms over fixed
//!    ranges of room ids (deep pages of GetRooms); a default room loses a
//!    scheduled deletion (room record version 2, room JSON version 2).
//!    Rooms gain `read_only` (false) and `read_only_at` (none), indexed by
//!    time in `readonlytime_roomid` (empty after the step: no schema-1 room
//!    is read-only).

use std::time::Instant;

use redb::{ReadableTable, ReadableTableMetadata, TableHandle, WriteTransaction};

use super::tables::{
    DELETIONTIME_ROOMID, NAME_COUNTER, NAME_META, ORGID_AUTOMATEDROOMID, ORGID_ORG, ORGIDRANGE_ROOMCOUNT,
    ORGIDROOMID_JSON, ORGIDUSERID_ROLE, ROOMID_ORGIDJSON, ROOMID_ROOM, TOKENHASH_TOKEN, USERID_USER,
};
use super::{RangeCounts, StoreError, codec, role_from_byte};
use crate::model::{OrgRole, ROOM_VIEW_VERSION, Room, RoomKind, UserId};

/// The schema this release writes, and the newest it reads.
pub const SCHEMA_VERSION: u64 = 2;
/// `name_meta` key of the schema version.
pub const SCHEMA_KEY: &str = "schema_version";
/// `name_meta` key of the version of the JSON in `orgidroomid_json`; absent means 1.
pub const ROOM_VIEW_KEY: &str = "room_view_version";

/// Rooms rewritten per batch: a batch is read, then written back, since a
/// table cannot be read and written at once.
const BATCH: usize = 8192;
/// Below this many records a step logs its start and end only.
const PROGRESS_MIN: u64 = 10_000;

/// One step: rewrites what schema `from` stored into what `from + 1` stores.
struct Step {
    from: u64,
    what: &'static str,
    /// The tables it reads and writes, for the message when one is damaged.
    tables: &'static str,
    run: fn(&WriteTransaction, &mut Progress) -> Result<(), StoreError>,
}

/// Every step, in order: `STEPS[i].from == i + 1`, the last one ends at [`SCHEMA_VERSION`].
const STEPS: &[Step] = &[Step {
    from: 1,
    what: "rooms gain a topic and the origin of their roles (room record version 2)",
    tables: "roomid_room, orgiduserid_role, orgid_automatedroomid, orgidrange_roomcount, deletiontime_roomid",
    run: rooms_gain_topic_and_role_origin,
}];

/// What opening did to the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    /// The schema version found, when it was older and the file was migrated.
    pub migrated_from: Option<u64>,
    /// Rooms whose API JSON was rebuilt because its version changed.
    pub rebuilt_room_json: Option<u64>,
}

/// Reads the schema version and brings the file up to today's: creates a
/// new database's versions, migrates an older one, refuses a newer one.
///
/// # Errors
/// [`StoreError::Newer`] and [`StoreError::UnknownSchema`]; a step that
/// cannot read a record ([`StoreError::Migration`]); storage failures.
pub(super) fn bring_up_to_date(txn: &WriteTransaction) -> Result<Opened, StoreError> {
    let found = meta_u64(txn, SCHEMA_KEY)?;
    let mut opened = Opened::default();
    match found {
        None if holds_records(txn)? => {
            return Err(StoreError::Corrupt {
                table: "name_meta",
                key: SCHEMA_KEY.into(),
                why: "missing in a database that holds records".into(),
            });
        }
        None => {
            set_meta_u64(txn, SCHEMA_KEY, SCHEMA_VERSION)?;
            set_meta_u64(txn, ROOM_VIEW_KEY, ROOM_VIEW_VERSION)?;
            return Ok(opened);
        }
        Some(v) if v == SCHEMA_VERSION => {}
        Some(v) if v > SCHEMA_VERSION => return Err(StoreError::Newer { found: v, known: SCHEMA_VERSION }),
        Some(v) if !STEPS.iter().any(|s| s.from == v) => {
            return Err(StoreError::UnknownSchema { found: v, known: SCHEMA_VERSION });
        }
        Some(v) => {
            migrate(txn, v)?;
            opened.migrated_from = Some(v);
        }
    }
    let view = meta_u64(txn, ROOM_VIEW_KEY)?.unwrap_or(1);
    if view != ROOM_VIEW_VERSION {
        let started = Instant::now();
        let n = rebuild_room_json(txn)
            .map_err(|e| in_tables(e, "roomid_room, orgidroomid_json, roomid_orgidjson"))
            .map_err(|e| StoreError::Migration {
                from: found.unwrap_or(SCHEMA_VERSION),
                to: SCHEMA_VERSION,
                source: Box::new(e),
            })?;
        set_meta_u64(txn, ROOM_VIEW_KEY, ROOM_VIEW_VERSION)?;
        tracing::info!(
            rooms = n,
            from = view,
            to = ROOM_VIEW_VERSION,
            elapsed_ms = ms(started),
            "rebuilt the room JSON kept for GetRooms"
        );
        opened.rebuilt_room_json = Some(n);
    }
    Ok(opened)
}

/// Runs every step from schema `from` on, then records today's version.
fn migrate(txn: &WriteTransaction, from: u64) -> Result<(), StoreError> {
    let started = Instant::now();
    let rooms = txn.open_table(ROOMID_ROOM)?.len()?;
    tracing::info!(
        from,
        to = SCHEMA_VERSION,
        rooms,
        "migrating the database (one transaction: a stop or crash now leaves it as it was)"
    );
    for step in STEPS.iter().filter(|s| s.from >= from) {
        let mut progress = Progress::new(step.what, rooms);
        (step.run)(txn, &mut progress).map_err(|e| in_tables(e, step.tables)).map_err(|e| StoreError::Migration {
            from,
            to: SCHEMA_VERSION,
            source: Box::new(e),
        })?;
        tracing::info!(step = step.from, what = step.what, elapsed_ms = ms(started), "migration step done");
    }
    set_meta_u64(txn, SCHEMA_KEY, SCHEMA_VERSION)?;
    Ok(())
}

/// Step 1 → 2: every room record is rewritten with an empty topic and the
/// origin of its roles ([`settle_schema_1_room`]); the rooms with automation
/// on are indexed, and each organization's rooms counted per range of ids.
fn rooms_gain_topic_and_role_origin(txn: &WriteTransaction, progress: &mut Progress) -> Result<(), StoreError> {
    let mut table = txn.open_table(ROOMID_ROOM)?;
    let roles = txn.open_table(ORGIDUSERID_ROLE)?;
    let mut automated = txn.open_table(ORGID_AUTOMATEDROOMID)?;
    let mut deletions = txn.open_table(DELETIONTIME_ROOMID)?;
    // Written at the end: a few entries per 1,024 rooms, held in memory meanwhile.
    let mut ranges = RangeCounts::default();
    let mut next = Some(0u64);
    while let Some(start) = next {
        let mut batch: Vec<Room> = Vec::with_capacity(BATCH);
        for entry in table.range(start..)?.take(BATCH) {
            let (k, v) = entry?;
            let old: v1::Room = codec::decode_as(1, v.value()).map_err(|why| StoreError::Corrupt {
                table: ROOMID_ROOM.name(),
                key: k.value().to_string(),
                why,
            })?;
            batch.push(old.into());
        }
        next = match batch.last() {
            Some(last) if batch.len() == BATCH => last.id.checked_add(1),
            _ => None,
        };
        for room in &mut batch {
            let org = room.org_id;
            let role = |u: UserId| -> Result<Option<OrgRole>, StoreError> {
                match roles.get((org, u))? {
                    Some(b) => role_from_byte(b.value()).map(Some),
                    None => Ok(None),
                }
            };
            if let Some(at) = settle_schema_1_room(room, role)? {
                deletions.remove((at, room.id))?;
            }
            if room.automation {
                automated.insert((room.org_id, room.id), ())?;
            }
            ranges.add(room.org_id, room.id);
            table.insert(room.id, codec::encode(&*room).as_slice())?;
        }
        progress.add(batch.len() as u64);
    }
    txn.delete_table(ORGIDRANGE_ROOMCOUNT)?;
    ranges.write(txn)
}

/// What a room of schema 1 needs beyond its fields, decided from the
/// organization roles of the moment (`org_role` of a user in the room's
/// organization), since the old file does not record it. Used by the
/// migration and by the import of a dump that does not carry it.
///
/// - Who gave each role: in a room with automation on, a room admin who is
///   an owner/admin of the organization, and an assigned user who is a
///   member of it, hold what automation gives them now, so their roles count
///   as automation's and follow the organization from here on. Every other
///   role counts as given explicitly: moderators, admins who are members,
///   users outside the organization, and every role in a room with
///   automation off. (An owner/admin who created an automated room, or was
///   named admin in it explicitly, cannot be told apart and counts as
///   automation's; naming them again with add-users makes it explicit.)
/// - A default room loses its scheduled deletion: the first release let its
///   room admins set one, which is how a demoted admin could delete it; today
///   no one can. The time dropped is returned (and logged).
///
/// # Errors
/// What `org_role` returns.
pub(crate) fn settle_schema_1_room(
    room: &mut Room,
    mut org_role: impl FnMut(UserId) -> Result<Option<OrgRole>, StoreError>,
) -> Result<Option<i64>, StoreError> {
    let mut given = Vec::new();
    if room.automation {
        for &u in &room.admins {
            if org_role(u)?.is_some_and(OrgRole::manages) {
                given.push(u);
            }
        }
        for &u in &room.assigned {
            if org_role(u)? == Some(OrgRole::Member) {
                given.push(u);
            }
        }
        given.sort_unstable();
    }
    room.automation_given = given;
    let dropped = if room.kind == RoomKind::Default { room.scheduled_deletion.take() } else { None };
    if let Some(at) = dropped {
        tracing::warn!(
            room = room.id,
            organization = room.org_id,
            scheduled_deletion = %crate::model::rfc3339(at),
            "dropped the scheduled deletion of a default room, which no one may give it any more; \
             an owner/admin of the organization removes it with DELETE /v1/chatrooms/default/{{organizationID}}"
        );
    }
    Ok(dropped)
}

/// Replaces every entry of `orgidroomid_json` and `roomid_orgidjson` with
/// the JSON of today's view of the stored room; returns the number of rooms.
///
/// # Errors
/// A room record that cannot be read; storage failures.
pub(super) fn rebuild_room_json(txn: &WriteTransaction) -> Result<u64, StoreError> {
    txn.delete_table(ORGIDROOMID_JSON)?;
    txn.delete_table(ROOMID_ORGIDJSON)?;
    let rooms = txn.open_table(ROOMID_ROOM)?;
    let mut json = txn.open_table(ORGIDROOMID_JSON)?;
    let mut by_id = txn.open_table(ROOMID_ORGIDJSON)?;
    let mut progress = Progress::new("room JSON rebuilt", rooms.len()?);
    let mut n = 0;
    for entry in rooms.iter()? {
        let (k, v) = entry?;
        let room: Room = codec::decode(v.value()).map_err(|why| StoreError::Corrupt {
            table: ROOMID_ROOM.name(),
            key: k.value().to_string(),
            why,
        })?;
        let view = room.to_json();
        json.insert((room.org_id, room.id), view.as_slice())?;
        by_id.insert(room.id, super::org_json(room.org_id, &view).as_slice())?;
        n += 1;
        progress.add(1);
    }
    Ok(n)
}

/// Names the tables being read when redb meets a page it cannot read.
fn in_tables(e: StoreError, tables: &str) -> StoreError {
    match e {
        StoreError::Damaged(why) => StoreError::Damaged(format!("{why}, in table {tables}")),
        other => other,
    }
}

/// Whether any record table holds an entry (every write of a record also
/// counts an id or writes one of these).
fn holds_records(txn: &WriteTransaction) -> Result<bool, StoreError> {
    Ok(txn.open_table(ROOMID_ROOM)?.len()? > 0
        || txn.open_table(ORGID_ORG)?.len()? > 0
        || txn.open_table(USERID_USER)?.len()? > 0
        || txn.open_table(TOKENHASH_TOKEN)?.len()? > 0
        || txn.open_table(NAME_COUNTER)?.len()? > 0)
}

/// A number kept in `name_meta`.
///
/// # Errors
/// A value that does not decode; storage failures.
pub(super) fn meta_u64(txn: &WriteTransaction, key: &str) -> Result<Option<u64>, StoreError> {
    let meta = txn.open_table(NAME_META)?;
    let value = meta.get(key)?;
    value.map(|v| codec::decode::<u64>(v.value())).transpose().map_err(|why| StoreError::Corrupt {
        table: NAME_META.name(),
        key: key.into(),
        why,
    })
}

fn set_meta_u64(txn: &WriteTransaction, key: &str, value: u64) -> Result<(), StoreError> {
    txn.open_table(NAME_META)?.insert(key, codec::encode(&value).as_slice())?;
    Ok(())
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Logs a long step every tenth of the way.
struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    next: u64,
}

impl Progress {
    fn new(what: &'static str, total: u64) -> Self {
        let next = if total >= PROGRESS_MIN { total / 10 } else { u64::MAX };
        Progress { what, total, done: 0, next }
    }

    fn add(&mut self, n: u64) {
        self.done += n;
        while self.done >= self.next {
            tracing::info!(what = self.what, done = self.done, total = self.total, "migration progress");
            self.next = self.next.saturating_add((self.total / 10).max(1));
        }
    }
}

/// The records of schema 1, frozen as the first release wrote them: read by
/// step 1 → 2, and written by tests and benchmarks that need a database of
/// that release. Never change these types; add a new module for a new version.
pub mod v1 {
    use serde::{Deserialize, Serialize};

    /// `RoomKind` of schema 1.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum RoomKind {
        Default,
        Custom,
        Event,
    }

    /// The room record of schema 1 (record version 1), field for field.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Room {
        pub id: u64,
        pub kind: RoomKind,
        pub org_id: i64,
        pub event_id: i64,
        pub name: String,
        pub matrix_room_id: String,
        pub avatar_url: String,
        pub avatar_sha256: Option<[u8; 32]>,
        pub admins: Vec<i64>,
        pub moderators: Vec<i64>,
        pub assigned: Vec<i64>,
        pub claimed: Vec<i64>,
        pub automation: bool,
        pub scheduled_deletion: Option<i64>,
        pub generation: u64,
        pub synced_generation: u64,
        pub sync_error: Option<String>,
        pub created_at: i64,
        pub updated_at: i64,
    }

    impl From<Room> for crate::model::Room {
        fn from(r: Room) -> Self {
            crate::model::Room {
                id: r.id,
                kind: match r.kind {
                    RoomKind::Default => crate::model::RoomKind::Default,
                    RoomKind::Custom => crate::model::RoomKind::Custom,
                    RoomKind::Event => crate::model::RoomKind::Event,
                },
                org_id: r.org_id,
                event_id: r.event_id,
                name: r.name,
                topic: String::new(),
                matrix_room_id: r.matrix_room_id,
                avatar_url: r.avatar_url,
                avatar_sha256: r.avatar_sha256,
                admins: r.admins,
                moderators: r.moderators,
                assigned: r.assigned,
                claimed: r.claimed,
                // Inferred afterwards, from the organization roles: `settle_schema_1_room`.
                automation_given: Vec::new(),
                automation: r.automation,
                scheduled_deletion: r.scheduled_deletion,
                generation: r.generation,
                synced_generation: r.synced_generation,
                sync_error: r.sync_error,
                created_at: r.created_at,
                updated_at: r.updated_at,
                // Schema 1 had no read-only rooms.
                read_only: false,
                read_only_at: None,
            }
        }
    }

    /// The schema-1 record of a room (its topic and the origin of its roles
    /// are dropped): for writing a
    /// database as the first release did.
    impl From<&crate::model::Room> for Room {
        fn from(r: &crate::model::Room) -> Self {
            Room {
                id: r.id,
                kind: match r.kind {
                    crate::model::RoomKind::Default => RoomKind::Default,
                    crate::model::RoomKind::Custom => RoomKind::Custom,
                    crate::model::RoomKind::Event => RoomKind::Event,
                },
                org_id: r.org_id,
                event_id: r.event_id,
                name: r.name.clone(),
                matrix_room_id: r.matrix_room_id.clone(),
                avatar_url: r.avatar_url.clone(),
                avatar_sha256: r.avatar_sha256,
                admins: r.admins.clone(),
                moderators: r.moderators.clone(),
                assigned: r.assigned.clone(),
                claimed: r.claimed.clone(),
                automation: r.automation,
                scheduled_deletion: r.scheduled_deletion,
                generation: r.generation,
                synced_generation: r.synced_generation,
                sync_error: r.sync_error.clone(),
                created_at: r.created_at,
                updated_at: r.updated_at,
            }
        }
    }

    /// The room JSON of schema 1, byte for byte as the first release kept it
    /// for GetRooms (no `topic`).
    #[must_use]
    pub fn room_json(r: &crate::model::Room) -> Vec<u8> {
        serde_json::to_vec(&View {
            room_id: r.id,
            kind: r.kind.as_str(),
            organization_id: r.org_id,
            event_id: r.event_id,
            name: &r.name,
            matrix_room_id: &r.matrix_room_id,
            avatar_url: &r.avatar_url,
            admins: &r.admins,
            moderators: &r.moderators,
            assigned_users: &r.assigned,
            automation_enabled: r.automation,
            scheduled_deletion: r.scheduled_deletion.map(crate::model::rfc3339),
            sync_state: if r.is_synced() { "ready" } else { "pending" },
            sync_error: r.sync_error.as_deref(),
        })
        .unwrap_or_default()
    }

    /// The room JSON of schema 1 (room view version 1).
    #[derive(Serialize)]
    struct View<'a> {
        #[serde(rename = "roomID")]
        room_id: u64,
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(rename = "organizationID")]
        organization_id: i64,
        #[serde(rename = "eventID")]
        event_id: i64,
        name: &'a str,
        #[serde(rename = "matrixRoomID")]
        matrix_room_id: &'a str,
        #[serde(rename = "avatarURL")]
        avatar_url: &'a str,
        admins: &'a [i64],
        moderators: &'a [i64],
        #[serde(rename = "assignedUsers")]
        assigned_users: &'a [i64],
        #[serde(rename = "automationEnabled")]
        automation_enabled: bool,
        #[serde(rename = "scheduledDeletion")]
        scheduled_deletion: Option<String>,
        #[serde(rename = "syncState")]
        sync_state: &'static str,
        #[serde(rename = "syncError")]
        sync_error: Option<&'a str>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_numbered_without_gaps_up_to_today() {
        for (i, step) in STEPS.iter().enumerate() {
            assert_eq!(step.from, i as u64 + 1, "step {i} starts at {}", step.from);
        }
        assert_eq!(STEPS.last().map_or(1, |s| s.from + 1), SCHEMA_VERSION);
    }

    #[test]
    fn a_schema_1_room_reads_as_today_with_an_empty_topic() {
        let mut room = crate::domain::rooms::blank_room(9, 3, 100);
        room.name = "Board".into();
        room.topic = "dropped by the old format".into();
        room.admins = vec![1];
        room.scheduled_deletion = Some(5000);
        let old = codec::encode_as(1, &v1::Room::from(&room));
        let back: Room = codec::decode_as::<v1::Room>(1, &old).unwrap().into();
        room.topic.clear();
        assert_eq!(back, room);
        // Today's decoder does not guess: an old record is an error until migrated.
        assert!(codec::decode::<Room>(&old).is_err());
    }

    #[test]
    fn a_schema_1_room_gets_the_origin_of_its_roles_from_the_organization() {
        // 1 owner, 2 admin, 3 and 4 members, 5 outside the organization.
        let role = |u: UserId| -> Result<Option<OrgRole>, StoreError> {
            Ok(match u {
                1 => Some(OrgRole::Owner),
                2 => Some(OrgRole::Admin),
                3 | 4 => Some(OrgRole::Member),
                _ => None,
            })
        };
        let mut room = crate::domain::rooms::blank_room(9, 3, 100);
        room.admins = vec![1, 3];
        room.moderators = vec![2];
        room.assigned = vec![4, 5];
        room.automation = true;
        room.scheduled_deletion = Some(5000);
        // Automation on: the owner as admin and the member as assigned hold
        // what automation gives; the member admin, the admin moderator and
        // the outsider hold explicit roles.
        assert_eq!(settle_schema_1_room(&mut room, role).unwrap(), None, "a custom room keeps its deletion");
        assert_eq!(room.automation_given, vec![1, 4]);
        assert_eq!(room.scheduled_deletion, Some(5000));

        room.automation = false;
        settle_schema_1_room(&mut room, role).unwrap();
        assert!(room.automation_given.is_empty(), "automation off: every role explicit");

        room.kind = crate::model::RoomKind::Default;
        room.automation = true;
        assert_eq!(settle_schema_1_room(&mut room, role).unwrap(), Some(5000), "a default room's deletion goes");
        assert_eq!((room.scheduled_deletion, room.automation_given.clone()), (None, vec![1, 4]));
    }
}
