//! `messenger-chat check`: is the file sound, does every index agree with the
//! records, do the counters match; and `--repair`, which rebuilds indexes and
//! counters from the records in one write transaction.
//!
//! The records (rooms, organizations, memberships by organization, users,
//! tokens, the outbox, avatars, Matrix facts) are the truth. Everything else
//! is derived from them and can be rebuilt: the room indexes and the room
//! JSON, room counts (per organization and per range of room ids), the
//! reverse membership and token indexes, the id counters. One part of a
//! room record is checked against the rest of it: the users whose role
//! automation gave must be listed in the room, and repair drops those who
//! are not. A record that cannot be read cannot be
//! rebuilt: that needs a backup, and repair refuses to run around it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata};

use super::migrate::{self, ROOM_VIEW_KEY, SCHEMA_KEY, SCHEMA_VERSION};
use super::tables::*;
use super::{Opened, RangeCounts, Read, Store, StoreError, Writer, codec, guarded, log_repair, role_from_byte};
use crate::model::{DeliveryAttempt, Event, OutboxOp, ROOM_VIEW_VERSION, Room, RoomId, Token, TokenKind, Webhook};

/// Problems shown per table; the rest are counted.
const SHOWN_PER_TABLE: usize = 20;

/// What redb's own check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// Every page verified.
    Clean,
    /// redb found the file not as it left it and repaired its own structures.
    Repaired,
}

/// How a problem can be fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fix {
    /// `--repair` rebuilds it from the records.
    Rebuild,
    /// Two records claim what only one may have (a second default room of
    /// an organization, one Matrix room for two rooms): `--repair` keeps the
    /// lower room id in the index and the conflict stays for a person to decide.
    Decide,
    /// A record that cannot be read: only a backup has it.
    Restore,
}

/// One thing that is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub table: &'static str,
    pub key: String,
    pub what: String,
    pub fix: Fix,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fix = match self.fix {
            Fix::Rebuild => "--repair rebuilds it",
            Fix::Decide => "a person decides; --repair keeps the lower room id indexed",
            Fix::Restore => "restore from a backup",
        };
        write!(f, "{} [{}]: {} ({fix})", self.table, self.key, self.what)
    }
}

/// What `check` found.
#[derive(Debug, Clone)]
pub struct Report {
    pub integrity: Integrity,
    pub opened: Opened,
    pub schema_version: u64,
    pub room_view_version: u64,
    /// Entries of each record table.
    pub records: BTreeMap<&'static str, u64>,
    pub problems: Vec<Problem>,
}

impl Report {
    /// Whether nothing is wrong.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// Problems that need a backup.
    #[must_use]
    pub fn unreadable(&self) -> usize {
        self.problems.iter().filter(|p| p.fix == Fix::Restore).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "schema version {} (room JSON version {})", self.schema_version, self.room_view_version)?;
        if let Some(from) = self.opened.migrated_from {
            writeln!(f, "migrated from schema version {from} before checking")?;
        }
        match self.integrity {
            Integrity::Clean => writeln!(f, "file integrity (redb): ok")?,
            Integrity::Repaired => {
                writeln!(f, "file integrity (redb): repaired by redb, which found it not as it left it")?
            }
        }
        let records: Vec<String> = self.records.iter().map(|(t, n)| format!("{t} {n}")).collect();
        writeln!(f, "records: {}", records.join(", "))?;
        let mut shown: HashMap<&str, usize> = HashMap::new();
        for p in &self.problems {
            let n = shown.entry(p.table).or_default();
            *n += 1;
            if *n <= SHOWN_PER_TABLE {
                writeln!(f, "problem: {p}")?;
            }
        }
        for (table, n) in shown.iter().filter(|(_, n)| **n > SHOWN_PER_TABLE) {
            writeln!(f, "problem: {table}: {} more like these", n - SHOWN_PER_TABLE)?;
        }
        if self.problems.is_empty() {
            write!(f, "no problems found")
        } else {
            let rebuild = self.problems.iter().filter(|p| p.fix == Fix::Rebuild).count();
            write!(
                f,
                "{} problems: {rebuild} that `messenger-chat check --repair` rebuilds, {} to decide, {} to restore from a backup",
                self.problems.len(),
                self.problems.iter().filter(|p| p.fix == Fix::Decide).count(),
                self.unreadable()
            )
        }
    }
}

impl Store {
    /// Opens an existing file for `check`: redb verifies every page first
    /// (and repairs its own structures where it can), then the file is
    /// brought up to today's schema like at start-up.
    ///
    /// With `in_memory`, none of that reaches the file: redb writes into
    /// an overlay kept in memory ([`super::overlay`]), so a check without
    /// `--repair` leaves every byte of the file as it was.
    ///
    /// # Errors
    /// A missing, foreign or damaged file; the errors of [`Store::open`].
    pub fn open_checked(
        path: &Path,
        cache_bytes: usize,
        in_memory: bool,
    ) -> Result<(Self, Opened, Integrity), StoreError> {
        if !path.exists() {
            return Err(StoreError::Db("no database here (storage.data_dir names the directory)".into()));
        }
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            return Err(StoreError::Empty);
        }
        let (db, integrity) = guarded(|| {
            let mut builder = Database::builder();
            builder.set_cache_size(cache_bytes).set_repair_callback(log_repair);
            let mut db = if in_memory {
                builder.create_with_backend(super::overlay::Overlay::open(path)?)?
            } else {
                builder.open(path)?
            };
            let clean = db.check_integrity()?;
            Ok((db, if clean { Integrity::Clean } else { Integrity::Repaired }))
        })?;
        let (store, opened) = Self::from_database(db, path, cache_bytes)?;
        Ok((store, opened, integrity))
    }

    /// Checks every record and index of one snapshot.
    ///
    /// # Errors
    /// Storage failures (a record that cannot be read is a problem, not an error).
    pub fn check(&self, integrity: Integrity, opened: Opened) -> Result<Report, StoreError> {
        let r = self.read()?;
        check(&r, integrity, opened)
    }

    /// Rebuilds every index and counter from the records, drops outbox
    /// entries that would do nothing and avatars of no room, in one write
    /// transaction; returns the check of the result. Refused while a record
    /// cannot be read: rebuilding around it would lose track of it.
    ///
    /// # Errors
    /// Unreadable records ([`StoreError::Damaged`] naming how many); storage failures.
    pub fn repair(&self, integrity: Integrity, opened: Opened) -> Result<Report, StoreError> {
        // The service is stopped and the file held exclusively: nothing
        // writes between this check, the rebuild and the check after it.
        let before = self.check(integrity, opened.clone())?;
        if before.unreadable() > 0 {
            return Err(StoreError::Damaged(format!(
                "{} records cannot be read, and rebuilding the indexes around them would lose track of them; \
                 nothing was changed",
                before.unreadable()
            )));
        }
        self.write(rebuild)?;
        self.check(integrity, opened)
    }
}

fn problem(problems: &mut Vec<Problem>, table: &'static str, key: impl fmt::Display, what: String, fix: Fix) {
    problems.push(Problem { table, key: key.to_string(), what, fix });
}

/// A room looked up from an index entry.
enum Found {
    Room(Box<Room>),
    Missing,
    /// The record exists but cannot be read: the forward pass reports it,
    /// and what its index entries say cannot be judged.
    Unreadable,
}

fn room_of(r: &impl Read, id: RoomId) -> Result<Found, StoreError> {
    match r.room(id) {
        Ok(Some(room)) => Ok(Found::Room(Box::new(room))),
        Ok(None) => Ok(Found::Missing),
        Err(StoreError::Corrupt { .. }) => Ok(Found::Unreadable),
        Err(e) => Err(e),
    }
}

/// Whether an index entry pointing at room `id` is wrong: the room is
/// missing, or readable and `fits` says no.
fn points_wrong(r: &impl Read, id: RoomId, fits: impl FnOnce(&Room) -> bool) -> Result<bool, StoreError> {
    Ok(match room_of(r, id)? {
        Found::Room(room) => !fits(&room),
        Found::Missing => true,
        Found::Unreadable => false,
    })
}

/// Checks one snapshot; a page redb cannot read names the tables being read.
fn check(r: &impl Read, integrity: Integrity, opened: Opened) -> Result<Report, StoreError> {
    let mut part = "";
    check_tables(r, integrity, opened, &mut part).map_err(|e| match e {
        StoreError::Damaged(why) => StoreError::Damaged(format!("{why}, in {part}")),
        other => other,
    })
}

#[expect(clippy::too_many_lines, reason = "one pass per table, in the order of tables.rs")]
fn check_tables(
    r: &impl Read,
    integrity: Integrity,
    opened: Opened,
    part: &mut &'static str,
) -> Result<Report, StoreError> {
    let mut p = Vec::new();
    let mut records = BTreeMap::new();

    // --- rooms and their indexes, record → index ---------------------------
    *part = "roomid_room and the room indexes";
    let rooms = r.table(ROOMID_ROOM)?;
    let by_org = r.table(ORGIDROOMID)?;
    let automated = r.table(ORGID_AUTOMATEDROOMID)?;
    let json = r.table(ORGIDROOMID_JSON)?;
    let json_by_id = r.table(ROOMID_ORGIDJSON)?;
    let defaults = r.table(ORGID_DEFAULTROOMID)?;
    let events = r.table(ORGIDEVENTID_ROOMID)?;
    let matrix = r.table(MATRIXROOMID_ROOMID)?;
    let deletions = r.table(DELETIONTIME_ROOMID)?;
    let read_only_times = r.table(READONLYTIME_ROOMID)?;
    let user_rooms = r.table(USERIDROOMID)?;
    let mut counts: HashMap<i64, u64> = HashMap::new();
    let mut ranges = RangeCounts::default();
    let mut max_room = 0;
    let mut readable_rooms = std::collections::HashSet::new();
    let mut unreadable_rooms = 0;
    for entry in rooms.iter()? {
        let (k, v) = entry?;
        let id = k.value();
        max_room = max_room.max(id);
        let room: Room = match codec::decode(v.value()) {
            Ok(room) => room,
            Err(why) => {
                problem(&mut p, "roomid_room", id, why, Fix::Restore);
                unreadable_rooms += 1;
                continue;
            }
        };
        if room.id != id {
            problem(&mut p, "roomid_room", id, format!("the record says it is room {}", room.id), Fix::Decide);
            continue;
        }
        readable_rooms.insert(id);
        *counts.entry(room.org_id).or_default() += 1;
        ranges.add(room.org_id, id);
        let key = (room.org_id, id);
        if by_org.get(key)?.is_none() {
            problem(
                &mut p,
                "orgidroomid",
                format!("{},{id}", room.org_id),
                format!("missing for room {id}"),
                Fix::Rebuild,
            );
        }
        if room.automation && automated.get(key)?.is_none() {
            problem(
                &mut p,
                "orgid_automatedroomid",
                format!("{},{id}", room.org_id),
                format!("missing for room {id}, which has automation on (membership changes would skip it)"),
                Fix::Rebuild,
            );
        }
        if automation_given_as_listed(&room) != room.automation_given {
            problem(
                &mut p,
                "roomid_room",
                id,
                format!(
                    "automation_given {:?} is not an ascending list of users the room lists",
                    room.automation_given
                ),
                Fix::Rebuild,
            );
        }
        match json.get(key)? {
            None => problem(
                &mut p,
                "orgidroomid_json",
                format!("{},{id}", room.org_id),
                format!("missing for room {id}"),
                Fix::Rebuild,
            ),
            Some(j) if j.value() != room.to_json().as_slice() => problem(
                &mut p,
                "orgidroomid_json",
                format!("{},{id}", room.org_id),
                format!("differs from room {id} (GetRooms would show stale data)"),
                Fix::Rebuild,
            ),
            Some(_) => {}
        }
        match json_by_id.get(id)? {
            None => problem(&mut p, "roomid_orgidjson", id, format!("missing for room {id}"), Fix::Rebuild),
            Some(j) if j.value() != super::org_json(room.org_id, &room.to_json()).as_slice() => problem(
                &mut p,
                "roomid_orgidjson",
                id,
                format!("differs from room {id} (GET of the room would show stale data or ask the wrong organization)"),
                Fix::Rebuild,
            ),
            Some(_) => {}
        }
        let unique = |found: Option<u64>, same: &dyn Fn(&Room) -> bool| -> Result<Option<(String, Fix)>, StoreError> {
            Ok(match found {
                Some(x) if x == id => None,
                None => Some((format!("missing for room {id}"), Fix::Rebuild)),
                Some(x) => match room_of(r, x)? {
                    Found::Room(other) if same(&other) => {
                        Some((format!("rooms {x} and {id} both claim it; the index names {x}"), Fix::Decide))
                    }
                    _ => Some((format!("names room {x} instead of room {id}"), Fix::Rebuild)),
                },
            })
        };
        match room.kind {
            crate::model::RoomKind::Default => {
                let found = defaults.get(room.org_id)?.map(|v| v.value());
                let same = |o: &Room| o.kind == room.kind && o.org_id == room.org_id;
                if let Some((what, fix)) = unique(found, &same)? {
                    problem(&mut p, "orgid_defaultroomid", room.org_id, what, fix);
                }
            }
            crate::model::RoomKind::Event => {
                let found = events.get((room.org_id, room.event_id))?.map(|v| v.value());
                let same = |o: &Room| o.kind == room.kind && o.org_id == room.org_id && o.event_id == room.event_id;
                if let Some((what, fix)) = unique(found, &same)? {
                    problem(&mut p, "orgideventid_roomid", format!("{},{}", room.org_id, room.event_id), what, fix);
                }
            }
            crate::model::RoomKind::Custom => {}
        }
        if !room.matrix_room_id.is_empty() {
            let found = matrix.get(room.matrix_room_id.as_str())?.map(|v| v.value());
            let same = |o: &Room| o.matrix_room_id == room.matrix_room_id;
            if let Some((what, fix)) = unique(found, &same)? {
                problem(&mut p, "matrixroomid_roomid", &room.matrix_room_id, what, fix);
            }
        }
        // The timer indexes: a scheduled time of the room has its entry.
        for (table, time, index) in [
            ("deletiontime_roomid", room.scheduled_deletion, &deletions),
            ("readonlytime_roomid", room.read_only_at, &read_only_times),
        ] {
            if let Some(at) = time
                && index.get((at, id))?.is_none()
            {
                problem(&mut p, table, format!("{at},{id}"), format!("missing for room {id}"), Fix::Rebuild);
            }
        }
        for u in room.members() {
            if user_rooms.get((u, id))?.is_none() {
                problem(
                    &mut p,
                    "useridroomid",
                    format!("{u},{id}"),
                    format!("missing: room {id} lists user {u}"),
                    Fix::Rebuild,
                );
            }
        }
    }
    records.insert("roomid_room", rooms.len()?);

    // --- room indexes, index → record ---------------------------------------
    *part = "the room indexes and roomid_room";
    for entry in by_org.iter()? {
        let (org, id) = entry?.0.value();
        if points_wrong(r, id, |room| room.org_id == org)? {
            problem(
                &mut p,
                "orgidroomid",
                format!("{org},{id}"),
                "names no room of this organization".into(),
                Fix::Rebuild,
            );
        }
    }
    for entry in automated.iter()? {
        let (org, id) = entry?.0.value();
        if points_wrong(r, id, |room| room.org_id == org && room.automation)? {
            let what = "names no room of this organization with automation on".into();
            problem(&mut p, "orgid_automatedroomid", format!("{org},{id}"), what, Fix::Rebuild);
        }
    }
    for entry in json.iter()? {
        let (org, id) = entry?.0.value();
        if points_wrong(r, id, |room| room.org_id == org)? {
            let what = "names no room of this organization (GetRooms would list it)".into();
            problem(&mut p, "orgidroomid_json", format!("{org},{id}"), what, Fix::Rebuild);
        }
    }
    for entry in json_by_id.iter()? {
        let (k, v) = entry?;
        let id = k.value();
        let Some((org, _)) = super::split_org_json(v.value()) else {
            let what = "shorter than an organization id".into();
            problem(&mut p, "roomid_orgidjson", id, what, Fix::Rebuild);
            continue;
        };
        if points_wrong(r, id, |room| room.org_id == org)? {
            let what = format!("names no room {id} of organization {org} (GET of it would answer)");
            problem(&mut p, "roomid_orgidjson", id, what, Fix::Rebuild);
        }
    }
    for entry in defaults.iter()? {
        let (k, v) = entry?;
        let (org, id) = (k.value(), v.value());
        if points_wrong(r, id, |room| room.org_id == org && room.kind == crate::model::RoomKind::Default)? {
            problem(
                &mut p,
                "orgid_defaultroomid",
                org,
                format!("names room {id}, not a default room of it"),
                Fix::Rebuild,
            );
        }
    }
    for entry in events.iter()? {
        let (k, v) = entry?;
        let ((org, event), id) = (k.value(), v.value());
        let fits =
            |room: &Room| room.org_id == org && room.kind == crate::model::RoomKind::Event && room.event_id == event;
        if points_wrong(r, id, fits)? {
            problem(
                &mut p,
                "orgideventid_roomid",
                format!("{org},{event}"),
                format!("names room {id}, not this event's"),
                Fix::Rebuild,
            );
        }
    }
    for entry in matrix.iter()? {
        let (k, v) = entry?;
        let id = v.value();
        if points_wrong(r, id, |room| room.matrix_room_id == k.value())? {
            problem(
                &mut p,
                "matrixroomid_roomid",
                k.value(),
                format!("names room {id}, which has another Matrix room"),
                Fix::Rebuild,
            );
        }
    }
    for entry in deletions.iter()? {
        let (at, id) = entry?.0.value();
        if points_wrong(r, id, |room| room.scheduled_deletion == Some(at))? {
            problem(
                &mut p,
                "deletiontime_roomid",
                format!("{at},{id}"),
                format!("room {id} is not due then"),
                Fix::Rebuild,
            );
        }
    }
    for entry in read_only_times.iter()? {
        let (at, id) = entry?.0.value();
        if points_wrong(r, id, |room| room.read_only_at == Some(at))? {
            problem(
                &mut p,
                "readonlytime_roomid",
                format!("{at},{id}"),
                format!("room {id} does not become read-only then"),
                Fix::Rebuild,
            );
        }
    }
    for entry in user_rooms.iter()? {
        let (u, id) = entry?.0.value();
        if points_wrong(r, id, |room| room.role_of(u).is_some())? {
            problem(
                &mut p,
                "useridroomid",
                format!("{u},{id}"),
                format!("room {id} does not list user {u}"),
                Fix::Rebuild,
            );
        }
    }
    let room_counts = r.table(ORGID_ROOMCOUNT)?;
    // With a room unreadable, its organization is unknown: counts cannot be judged.
    for entry in room_counts.iter()?.filter(|_| unreadable_rooms == 0) {
        let (k, v) = entry?;
        let (org, n) = (k.value(), v.value());
        let actual = counts.get(&org).copied().unwrap_or(0);
        if n != actual {
            problem(
                &mut p,
                "orgid_roomcount",
                org,
                format!("says {n} rooms, the organization has {actual}"),
                Fix::Rebuild,
            );
        }
    }
    for (org, n) in counts.iter().filter(|_| unreadable_rooms == 0) {
        if room_counts.get(*org)?.is_none() {
            problem(&mut p, "orgid_roomcount", org, format!("missing; the organization has {n} rooms"), Fix::Rebuild);
        }
    }
    let range_counts = r.table(ORGIDRANGE_ROOMCOUNT)?;
    let range_key = |(org, level, range): (i64, u8, u64)| format!("{org},{level},{range}");
    for entry in range_counts.iter()?.filter(|_| unreadable_rooms == 0) {
        let (k, v) = entry?;
        let (key, n) = (k.value(), v.value());
        let actual = ranges.get(key);
        if n != actual {
            let what = format!("says {n} rooms, the range holds {actual} (deep pages of GetRooms would be off)");
            problem(&mut p, "orgidrange_roomcount", range_key(key), what, Fix::Rebuild);
        }
    }
    for (key, n) in ranges.iter().filter(|_| unreadable_rooms == 0) {
        if range_counts.get(key)?.is_none() {
            let what = format!("missing; the range holds {n} rooms (deep pages of GetRooms would be off)");
            problem(&mut p, "orgidrange_roomcount", range_key(key), what, Fix::Rebuild);
        }
    }
    let avatars = r.table(ROOMID_AVATAR)?;
    for entry in avatars.iter()? {
        let id = entry?.0.value();
        if !readable_rooms.contains(&id) && r.table(ROOMID_ROOM)?.get(id)?.is_none() {
            problem(&mut p, "roomid_avatar", id, format!("an image for room {id}, which does not exist"), Fix::Rebuild);
        }
    }
    records.insert("roomid_avatar", avatars.len()?);

    // --- organizations, members, users --------------------------------------
    *part = "orgid_org, orgiduserid_role, useridorgid_role, userid_user";
    let orgs = r.table(ORGID_ORG)?;
    for entry in orgs.iter()? {
        let (k, v) = entry?;
        match codec::decode::<crate::model::Organization>(v.value()) {
            Ok(o) if o.id == k.value() => {}
            Ok(o) => problem(
                &mut p,
                "orgid_org",
                k.value(),
                format!("the record says it is organization {}", o.id),
                Fix::Decide,
            ),
            Err(why) => problem(&mut p, "orgid_org", k.value(), why, Fix::Restore),
        }
    }
    records.insert("orgid_org", orgs.len()?);
    let roles = r.table(ORGIDUSERID_ROLE)?;
    let reverse = r.table(USERIDORGID_ROLE)?;
    for entry in roles.iter()? {
        let (k, v) = entry?;
        let (org, user) = k.value();
        if role_from_byte(v.value()).is_err() {
            problem(
                &mut p,
                "orgiduserid_role",
                format!("{org},{user}"),
                format!("unknown role byte {}", v.value()),
                Fix::Restore,
            );
        } else if reverse.get((user, org))?.map(|b| b.value()) != Some(v.value()) {
            let what = format!("user {user}'s role in organization {org} is missing or different");
            problem(&mut p, "useridorgid_role", format!("{user},{org}"), what, Fix::Rebuild);
        }
    }
    for entry in reverse.iter()? {
        let (k, v) = entry?;
        let (user, org) = k.value();
        if roles.get((org, user))?.map(|b| b.value()) != Some(v.value()) {
            let what = format!("names a role of user {user} in organization {org} that orgiduserid_role does not hold");
            problem(&mut p, "useridorgid_role", format!("{user},{org}"), what, Fix::Rebuild);
        }
    }
    records.insert("orgiduserid_role", roles.len()?);
    let users = r.table(USERID_USER)?;
    for entry in users.iter()? {
        let (k, v) = entry?;
        match codec::decode::<crate::model::User>(v.value()) {
            Ok(u) if u.id == k.value() => {}
            Ok(u) => {
                problem(&mut p, "userid_user", k.value(), format!("the record says it is user {}", u.id), Fix::Decide)
            }
            Err(why) => problem(&mut p, "userid_user", k.value(), why, Fix::Restore),
        }
    }
    records.insert("userid_user", users.len()?);

    // --- tokens ---------------------------------------------------------------
    *part = "tokenhash_token and useridtokenid_tokenhash";
    let tokens = r.table(TOKENHASH_TOKEN)?;
    let token_index = r.table(USERIDTOKENID_TOKENHASH)?;
    let mut max_token = 0;
    for entry in tokens.iter()? {
        let (k, v) = entry?;
        let key = hex::encode(k.value());
        let token: Token = match codec::decode(v.value()) {
            Ok(t) => t,
            Err(why) => {
                problem(&mut p, "tokenhash_token", key, why, Fix::Restore);
                continue;
            }
        };
        max_token = max_token.max(token.id);
        if token.hash.as_slice() != k.value() {
            problem(&mut p, "tokenhash_token", key, "the record holds another hash".into(), Fix::Decide);
            continue;
        }
        let owner = token_owner(&token);
        if token_index.get((owner, token.id))?.is_none_or(|h| h.value() != k.value()) {
            let what = format!("token {} of user {owner} is missing or names another hash", token.id);
            problem(&mut p, "useridtokenid_tokenhash", format!("{owner},{}", token.id), what, Fix::Rebuild);
        }
    }
    for entry in token_index.iter()? {
        let (k, v) = entry?;
        let (owner, id) = k.value();
        let ok = match tokens.get(v.value())? {
            Some(t) => codec::decode::<Token>(t.value()).is_ok_and(|t| t.id == id && token_owner(&t) == owner),
            None => false,
        };
        if !ok {
            let what = format!("names a token {id} of user {owner} that tokenhash_token does not hold");
            problem(&mut p, "useridtokenid_tokenhash", format!("{owner},{id}"), what, Fix::Rebuild);
        }
    }
    records.insert("tokenhash_token", tokens.len()?);

    // --- outbox ---------------------------------------------------------------
    *part = "seq_outbox";
    let outbox = r.table(SEQ_OUTBOX)?;
    let mut ops = Vec::new();
    let mut max_seq = 0;
    for entry in outbox.iter()? {
        let (k, v) = entry?;
        max_seq = max_seq.max(k.value());
        match codec::decode::<OutboxOp>(v.value()) {
            Ok(op) => ops.push((k.value(), op)),
            Err(why) => problem(&mut p, "seq_outbox", k.value(), why, Fix::Restore),
        }
    }
    for (seq, what) in noop_outbox(r, &ops)? {
        problem(&mut p, "seq_outbox", seq, what, Fix::Rebuild);
    }
    records.insert("seq_outbox", outbox.len()?);

    // --- event log -------------------------------------------------------------
    *part = "eventid_event and orgideventid";
    let log = r.table(EVENTID_EVENT)?;
    let log_index = r.table(ORGIDEVENTID)?;
    let mut max_event = 0;
    for entry in log.iter()? {
        let (k, v) = entry?;
        let id = k.value();
        max_event = max_event.max(id);
        match codec::decode::<Event>(v.value()) {
            Ok(e) if e.id != id => {
                problem(&mut p, "eventid_event", id, format!("the record says it is event {}", e.id), Fix::Decide);
            }
            Ok(e) => {
                let org = e.org_id.unwrap_or(0);
                if log_index.get((org, id))?.is_none() {
                    let what = format!("missing for event {id} (organization {org})");
                    problem(&mut p, "orgideventid", format!("{org},{id}"), what, Fix::Rebuild);
                }
            }
            Err(why) => problem(&mut p, "eventid_event", id, why, Fix::Restore),
        }
    }
    for entry in log_index.iter()? {
        let (org, id) = entry?.0.value();
        let ok = match log.get(id)? {
            Some(v) => codec::decode::<Event>(v.value()).is_ok_and(|e| e.org_id.unwrap_or(0) == org),
            None => false,
        };
        if !ok {
            let what = format!("names an event {id} of organization {org} that eventid_event does not hold");
            problem(&mut p, "orgideventid", format!("{org},{id}"), what, Fix::Rebuild);
        }
    }
    records.insert("eventid_event", log.len()?);

    // --- webhooks ----------------------------------------------------------------
    *part = "webhookid_webhook and webhookidseq_delivery";
    let hooks = r.table(WEBHOOKID_WEBHOOK)?;
    for entry in hooks.iter()? {
        let (k, v) = entry?;
        match codec::decode::<Webhook>(v.value()) {
            Ok(h) if h.id != k.value() => {
                let what = format!("the record says it is webhook {:?}", h.id);
                problem(&mut p, "webhookid_webhook", k.value(), what, Fix::Decide);
            }
            Ok(_) => {}
            Err(why) => problem(&mut p, "webhookid_webhook", k.value(), why, Fix::Restore),
        }
    }
    let deliveries = r.table(WEBHOOKIDSEQ_DELIVERY)?;
    let mut max_delivery = 0;
    for entry in deliveries.iter()? {
        let (k, v) = entry?;
        let (hook, seq) = k.value();
        max_delivery = max_delivery.max(seq);
        if let Err(why) = codec::decode::<DeliveryAttempt>(v.value()) {
            problem(&mut p, "webhookidseq_delivery", format!("{hook},{seq}"), why, Fix::Restore);
        } else if hooks.get(hook)?.is_none() {
            let what = "the delivery log of a webhook that does not exist".to_string();
            problem(&mut p, "webhookidseq_delivery", format!("{hook},{seq}"), what, Fix::Rebuild);
        }
    }
    records.insert("webhookid_webhook", hooks.len()?);

    // --- counters and versions ------------------------------------------------
    *part = "name_counter and name_meta";
    let counters = r.table(NAME_COUNTER)?;
    for (name, max) in [
        ("room", max_room),
        ("token", max_token),
        ("outbox_seq", max_seq),
        ("event", max_event),
        ("delivery", max_delivery),
    ] {
        let value = counters.get(name)?.map_or(0, |v| v.value());
        if value < max {
            let what = format!("is {value}, below the highest id in use ({max}): it would hand out a used id");
            problem(&mut p, "name_counter", name, what, Fix::Rebuild);
        }
    }
    let meta = r.table(NAME_META)?;
    let version = |key: &str| -> Result<u64, StoreError> {
        Ok(meta.get(key)?.and_then(|v| codec::decode::<u64>(v.value()).ok()).unwrap_or(0))
    };
    let (schema_version, room_view_version) = (version(SCHEMA_KEY)?, version(ROOM_VIEW_KEY)?);
    if schema_version != SCHEMA_VERSION || room_view_version != ROOM_VIEW_VERSION {
        let what = format!(
            "schema {schema_version} / room JSON {room_view_version}, expected {SCHEMA_VERSION} / {ROOM_VIEW_VERSION}"
        );
        problem(&mut p, "name_meta", SCHEMA_KEY, what, Fix::Restore);
    }
    Ok(Report { integrity, opened, schema_version, room_view_version, records, problems: p })
}

/// The room's `automation_given` as it must be: ascending, each user once,
/// only users the room lists.
fn automation_given_as_listed(room: &Room) -> Vec<crate::model::UserId> {
    let mut given: Vec<_> = room.automation_given.iter().copied().filter(|u| room.role_of(*u).is_some()).collect();
    given.sort_unstable();
    given.dedup();
    given
}

/// Whose token list a token is in: API tokens under user 0.
fn token_owner(t: &Token) -> i64 {
    if t.kind == TokenKind::Api { 0 } else { t.user_id }
}

/// Outbox entries that name what no longer exists and that the reconciler
/// would therefore finish without doing anything: a room sync of a room that
/// is gone with no delete queued after it, a user step of an unknown user.
fn noop_outbox(r: &impl Read, ops: &[(u64, OutboxOp)]) -> Result<Vec<(u64, String)>, StoreError> {
    let mut out = Vec::new();
    for (i, (seq, op)) in ops.iter().enumerate() {
        match op {
            OutboxOp::SyncRoom { room_id } => {
                let deleted_later = ops[i + 1..]
                    .iter()
                    .any(|(_, later)| matches!(later, OutboxOp::DeleteRoom { room_id: d, .. } if d == room_id));
                if !deleted_later && r.table(ROOMID_ROOM)?.get(*room_id)?.is_none() {
                    out.push((*seq, format!("syncs room {room_id}, which does not exist and is not being deleted")));
                }
            }
            OutboxOp::SyncUser { user_id } | OutboxOp::DeactivateUser { user_id } => {
                if r.table(USERID_USER)?.get(*user_id)?.is_none() {
                    out.push((*seq, format!("names user {user_id}, who does not exist")));
                }
            }
            OutboxOp::DeleteRoom { .. } => {}
        }
    }
    Ok(out)
}

/// Rebuilds every derived table from the records.
fn rebuild(w: &mut Writer) -> Result<(), StoreError> {
    let t = &w.txn;
    t.delete_table(ORGIDROOMID)?;
    t.delete_table(ORGID_AUTOMATEDROOMID)?;
    t.delete_table(ORGID_DEFAULTROOMID)?;
    t.delete_table(ORGIDEVENTID_ROOMID)?;
    t.delete_table(MATRIXROOMID_ROOMID)?;
    t.delete_table(USERIDROOMID)?;
    t.delete_table(DELETIONTIME_ROOMID)?;
    t.delete_table(READONLYTIME_ROOMID)?;
    t.delete_table(ORGID_ROOMCOUNT)?;
    t.delete_table(ORGIDRANGE_ROOMCOUNT)?;
    t.delete_table(USERIDORGID_ROLE)?;
    t.delete_table(USERIDTOKENID_TOKENHASH)?;
    t.delete_table(ORGIDEVENTID)?;
    migrate::rebuild_room_json(&w.txn)?;
    let t = &w.txn;
    let mut rooms = t.open_table(ROOMID_ROOM)?;
    let mut by_org = t.open_table(ORGIDROOMID)?;
    let mut automated = t.open_table(ORGID_AUTOMATEDROOMID)?;
    let mut defaults = t.open_table(ORGID_DEFAULTROOMID)?;
    let mut events = t.open_table(ORGIDEVENTID_ROOMID)?;
    let mut matrix = t.open_table(MATRIXROOMID_ROOMID)?;
    let mut user_rooms = t.open_table(USERIDROOMID)?;
    let mut deletions = t.open_table(DELETIONTIME_ROOMID)?;
    let mut read_only_times = t.open_table(READONLYTIME_ROOMID)?;
    let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
    let mut ranges = RangeCounts::default();
    let mut max_room = 0;
    let mut marks_fixed = Vec::new();
    for entry in rooms.iter()? {
        let (k, v) = entry?;
        let room: Room = codec::decode(v.value()).map_err(|why| StoreError::Corrupt {
            table: "roomid_room",
            key: k.value().to_string(),
            why,
        })?;
        max_room = max_room.max(room.id);
        *counts.entry(room.org_id).or_default() += 1;
        ranges.add(room.org_id, room.id);
        by_org.insert((room.org_id, room.id), ())?;
        if room.automation {
            automated.insert((room.org_id, room.id), ())?;
        }
        let given = automation_given_as_listed(&room);
        if given != room.automation_given {
            marks_fixed.push(Room { automation_given: given, ..room.clone() });
        }
        // Rooms come in id order: where two claim one entry, the lower id keeps it.
        match room.kind {
            crate::model::RoomKind::Default if defaults.get(room.org_id)?.is_none() => {
                defaults.insert(room.org_id, room.id)?;
            }
            crate::model::RoomKind::Event if events.get((room.org_id, room.event_id))?.is_none() => {
                events.insert((room.org_id, room.event_id), room.id)?;
            }
            _ => {}
        }
        if !room.matrix_room_id.is_empty() && matrix.get(room.matrix_room_id.as_str())?.is_none() {
            matrix.insert(room.matrix_room_id.as_str(), room.id)?;
        }
        if let Some(at) = room.scheduled_deletion {
            deletions.insert((at, room.id), ())?;
        }
        if let Some(at) = room.read_only_at {
            read_only_times.insert((at, room.id), ())?;
        }
        for u in room.members() {
            user_rooms.insert((u, room.id), ())?;
        }
    }
    let mut room_counts = t.open_table(ORGID_ROOMCOUNT)?;
    for (org, n) in counts {
        room_counts.insert(org, n)?;
    }
    ranges.write(t)?;
    let roles = t.open_table(ORGIDUSERID_ROLE)?;
    let mut reverse = t.open_table(USERIDORGID_ROLE)?;
    for entry in roles.iter()? {
        let (k, v) = entry?;
        let (org, user) = k.value();
        reverse.insert((user, org), v.value())?;
    }
    let tokens = t.open_table(TOKENHASH_TOKEN)?;
    let mut token_index = t.open_table(USERIDTOKENID_TOKENHASH)?;
    let mut max_token = 0;
    for entry in tokens.iter()? {
        let (k, v) = entry?;
        let token: Token = codec::decode(v.value()).map_err(|why| StoreError::Corrupt {
            table: "tokenhash_token",
            key: hex::encode(k.value()),
            why,
        })?;
        max_token = max_token.max(token.id);
        token_index.insert((token_owner(&token), token.id), token.hash.as_slice())?;
    }
    let mut avatars = t.open_table(ROOMID_AVATAR)?;
    let mut orphans = Vec::new();
    for entry in avatars.iter()? {
        let id = entry?.0.value();
        if rooms.get(id)?.is_none() {
            orphans.push(id);
        }
    }
    for id in orphans {
        avatars.remove(id)?;
    }
    let log = t.open_table(EVENTID_EVENT)?;
    let mut log_index = t.open_table(ORGIDEVENTID)?;
    let mut max_event = 0;
    for entry in log.iter()? {
        let (k, v) = entry?;
        let event: Event = codec::decode(v.value()).map_err(|why| StoreError::Corrupt {
            table: "eventid_event",
            key: k.value().to_string(),
            why,
        })?;
        max_event = max_event.max(k.value());
        log_index.insert((event.org_id.unwrap_or(0), k.value()), ())?;
    }
    for room in &marks_fixed {
        rooms.insert(room.id, codec::encode(room).as_slice())?;
    }
    drop((
        rooms,
        by_org,
        automated,
        defaults,
        events,
        matrix,
        user_rooms,
        deletions,
        read_only_times,
        room_counts,
        roles,
        reverse,
        tokens,
        token_index,
        avatars,
        log,
        log_index,
    ));

    // The delivery log of a webhook that is gone goes with it.
    let hooks = w.txn.open_table(WEBHOOKID_WEBHOOK)?;
    let mut deliveries = w.txn.open_table(WEBHOOKIDSEQ_DELIVERY)?;
    let mut max_delivery = 0;
    let mut stray = Vec::new();
    for entry in deliveries.iter()? {
        let key = entry?.0;
        let (hook, seq) = key.value();
        max_delivery = max_delivery.max(seq);
        if hooks.get(hook)?.is_none() {
            stray.push((hook.to_string(), seq));
        }
    }
    for (hook, seq) in stray {
        deliveries.remove((hook.as_str(), seq))?;
    }
    drop((hooks, deliveries));

    let outbox = w.outbox_head(usize::MAX)?;
    for (seq, _) in noop_outbox(w, &outbox)? {
        w.remove_outbox(seq)?;
    }
    let max_seq = outbox.last().map_or(0, |(seq, _)| *seq);
    let mut counters = w.txn.open_table(NAME_COUNTER)?;
    for (name, max) in [
        ("room", max_room),
        ("token", max_token),
        ("outbox_seq", max_seq),
        ("event", max_event),
        ("delivery", max_delivery),
    ] {
        if counters.get(name)?.map_or(0, |v| v.value()) < max {
            counters.insert(name, max)?;
        }
    }
    Ok(())
}
