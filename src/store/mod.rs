//! The redb store: bytes on disk, one write transaction per change.
//!
//! Reads are point lookups or one bounded range scan. A [`Reader`] is a
//! snapshot; a [`Writer`] is one write transaction that commits only when
//! the closure given to [`Store::write`] succeeds, so a rejected request
//! never leaves a partial change behind.

pub mod check;
pub mod codec;
pub mod dump;
pub mod health;
pub mod key_fingerprint;
pub mod migrate;
mod overlay;
pub mod slot;
pub mod tables;
pub mod webhooks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Notify, watch};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};

use crate::model::{
    Actor, Event, OrgId, OrgRole, Organization, OutboxOp, Room, RoomId, Token, TokenKind, User, UserId,
};
pub use migrate::{Opened, SCHEMA_VERSION};
use tables::*;

/// `name_counter` key of the last event id.
const EVENT_COUNTER: &str = "event";

/// What to do about a database that cannot be read as it is.
const RESTORE: &str = "restore the data directory from a backup (`messenger-chat import` of an export), \
     or run `messenger-chat check` with the service stopped to see what is wrong";

/// Storage failures. Never shown to clients in detail; the service and the
/// command line prefix them with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(String),
    #[error(
        "another process has the database open (is the service running? stop it first, or use the HTTP API with an API token)"
    )]
    InUse,
    #[error("a record in table {table}{} cannot be read: {why}; {RESTORE}", key_suffix(.key))]
    Corrupt { table: &'static str, key: String, why: String },
    #[error("not a messenger-chat database ({0}); check storage.data_dir, or restore the file from a backup")]
    NotADatabase(String),
    #[error("the file is empty, not a database; restore it from a backup, or remove it to start with no data")]
    Empty,
    #[error("the file is damaged ({0}); {remedy}", remedy = health::DAMAGE_REMEDY)]
    Damaged(String),
    #[error(
        "written by a newer release of messenger-chat (schema version {found}); this release reads schema \
         versions up to {known}: run the newer release, or restore a backup made with this one"
    )]
    Newer { found: u64, known: u64 },
    #[error("schema version {found} is unknown to this release, which reads schema versions 1 to {known}; {RESTORE}")]
    UnknownSchema { found: u64, known: u64 },
    #[error(
        "cannot migrate it from schema version {from} to {to}, so nothing was changed and it still holds what \
         the older release wrote: {source}"
    )]
    Migration { from: u64, to: u64, source: Box<StoreError> },
    /// A write refused because the file was found damaged while serving.
    #[error(
        "the database file {} is damaged ({why}), so nothing more is written to it; {}",
        .path.display(),
        health::DAMAGE_REMEDY
    )]
    WritesRefused { path: PathBuf, why: String },
    /// A write refused (or failed) because the disk is full.
    #[error(
        "the disk holding the data directory {} is full, so nothing can be written now; retry later (the \
         operator frees space or grows the disk, and writes resume by themselves)",
        .dir.display()
    )]
    NoSpace { dir: PathBuf },
    /// The database is being reopened after a storage failure.
    #[error("the database is being reopened after a storage failure; retry in a few seconds")]
    Reopening,
}

/// The failure of redb's storage layer inside any of its errors: a page
/// it cannot read is [`StoreError::Damaged`], whichever call met it, and
/// every storage failure is noted for [`health`].
trait Storage {
    fn storage(&self) -> Option<&redb::StorageError>;
}
macro_rules! storage_inside {
    ($($t:ident),*) => {$(
        impl Storage for redb::$t {
            fn storage(&self) -> Option<&redb::StorageError> {
                match self {
                    redb::$t::Storage(e) => Some(e),
                    _ => None,
                }
            }
        }
    )*};
}
storage_inside!(TransactionError, TableError, CommitError);

/// The [`StoreError`] of a storage failure, noted for [`health`].
fn from_storage(e: &redb::StorageError) -> Option<StoreError> {
    health::seen(e);
    match e {
        redb::StorageError::Corrupted(why) => Some(StoreError::Damaged(why.clone())),
        redb::StorageError::PreviousIo | redb::StorageError::DatabaseClosed => Some(StoreError::Reopening),
        _ => None,
    }
}

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                e.storage().and_then(from_storage).unwrap_or_else(|| StoreError::Db(e.to_string()))
            }
        }
    )*};
}
db_error!(redb::TransactionError, redb::TableError, redb::CommitError);

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        let storage = match e {
            redb::Error::Corrupted(why) => redb::StorageError::Corrupted(why),
            redb::Error::Io(io) => redb::StorageError::Io(io),
            redb::Error::PreviousIo => redb::StorageError::PreviousIo,
            redb::Error::DatabaseClosed => redb::StorageError::DatabaseClosed,
            other => return StoreError::Db(other.to_string()),
        };
        storage.into()
    }
}

impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> Self {
        from_storage(&e).unwrap_or_else(|| StoreError::Db(e.to_string()))
    }
}

impl From<redb::DatabaseError> for StoreError {
    fn from(e: redb::DatabaseError) -> Self {
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse,
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() == std::io::ErrorKind::InvalidData =>
            {
                StoreError::NotADatabase(io.to_string())
            }
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                StoreError::Damaged(format!("shorter than a database header: {io}"))
            }
            redb::DatabaseError::Storage(storage) => storage.into(),
            other => StoreError::Db(other.to_string()),
        }
    }
}

/// The database, shared without a lock: redb serialises writers itself.
#[derive(Clone)]
pub struct Store {
    /// The database of the moment (reopened after a failed write) and its health.
    db: Arc<slot::Slot>,
    /// Moved on after every commit that wrote a token record: see [`Read::token_generation`].
    token_generation: Arc<AtomicU64>,
    /// Woken by every commit that queued outbox entries: the reconciler
    /// waits on it, so no writer has to remember to wake it.
    outbox_changed: Arc<Notify>,
    /// The id of the last event committed to the event log: long polls
    /// wait on it.
    events: Arc<watch::Sender<u64>>,
}

impl Store {
    /// Opens (or creates) the database file and every table in it, and
    /// brings it up to today's schema (see [`migrate`]).
    ///
    /// The file is held exclusively: a second process (an administration
    /// subcommand while the service runs) gets [`StoreError::InUse`]. Sharing
    /// the file would cost every read transaction file-lock system calls.
    ///
    /// # Errors
    /// The file cannot be opened or is not a database, it was written by a
    /// newer release, or it cannot be migrated.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        Self::open_verified(path, cache_bytes, false)
    }

    /// [`Store::open`], verifying every page of the file first when `verify`
    /// says so (see [`health::open_database`]).
    ///
    /// # Errors
    /// As [`Store::open`]; [`StoreError::Damaged`] for a file that fails the check.
    pub fn open_verified(path: &Path, cache_bytes: usize, verify: bool) -> Result<Self, StoreError> {
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            return Err(StoreError::Empty);
        }
        let db = health::open_database(path, cache_bytes, verify)?;
        Self::from_database(db, path, cache_bytes).map(|(store, _)| store)
    }

    /// Brings an open database up to today's schema.
    fn from_database(db: Database, path: &Path, cache_bytes: usize) -> Result<(Self, Opened), StoreError> {
        let started = std::time::Instant::now();
        let reopen_path = path.to_path_buf();
        let open: slot::Opener = Box::new(move || health::open_database(&reopen_path, cache_bytes, false));
        let store = Store {
            db: Arc::new(slot::Slot::new(db, Arc::new(health::Health::new(path)), open)),
            token_generation: Arc::default(),
            outbox_changed: Arc::new(Notify::new()),
            events: Arc::new(watch::Sender::new(0)),
        };
        let opened = guarded(|| {
            store.write(|w| {
                // A newer file is refused before anything is created in it.
                let opened = migrate::bring_up_to_date(&w.txn)?;
                // Opening creates: afterwards every read finds every table.
                let t = &w.txn;
                t.open_table(ROOMID_ROOM)?;
                t.open_table(ORGIDROOMID_JSON)?;
                t.open_table(ROOMID_ORGIDJSON)?;
                t.open_table(ORGIDROOMID)?;
                t.open_table(ORGID_AUTOMATEDROOMID)?;
                t.open_table(ORGID_DEFAULTROOMID)?;
                t.open_table(ORGIDEVENTID_ROOMID)?;
                t.open_table(MATRIXROOMID_ROOMID)?;
                t.open_table(USERIDROOMID)?;
                t.open_table(ROOMID_AVATAR)?;
                t.open_table(ORGID_ORG)?;
                t.open_table(ORGID_ROOMCOUNT)?;
                t.open_table(ORGIDRANGE_ROOMCOUNT)?;
                t.open_table(ORGIDUSERID_ROLE)?;
                t.open_table(USERIDORGID_ROLE)?;
                t.open_table(USERID_USER)?;
                t.open_table(TOKENHASH_TOKEN)?;
                t.open_table(USERIDTOKENID_TOKENHASH)?;
                t.open_table(SEQ_OUTBOX)?;
                t.open_table(NAME_COUNTER)?;
                t.open_table(NAME_META)?;
                t.open_table(DELETIONTIME_ROOMID)?;
                t.open_table(READONLYTIME_ROOMID)?;
                t.open_table(USERID_MATRIXACCOUNT)?;
                t.open_table(MATRIXROOMID_DELETEID)?;
                t.open_table(EVENTID_EVENT)?;
                t.open_table(ORGIDEVENTID)?;
                t.open_table(WEBHOOKID_WEBHOOK)?;
                t.open_table(WEBHOOKIDSEQ_DELIVERY)?;
                Ok(opened)
            })
        })?;
        let ms = |since: std::time::Instant| u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
        store.events.send_replace(store.read()?.last_event_id()?);
        let Some(from) = opened.migrated_from else { return Ok((store, opened)) };
        tracing::info!(from, to = SCHEMA_VERSION, elapsed_ms = ms(started), "migrated the database (committed)");
        // A migration rewrites every room: copy-on-write leaves the old pages
        // free inside the file, which would stay twice its size until reused.
        let compacting = std::time::Instant::now();
        tracing::info!("compacting the migrated database (its old pages are free now)");
        // Nothing else holds the database while it opens.
        if let Some(mut db) = store.db.take_alone() {
            match guarded(|| db.compact().map_err(|e| StoreError::Db(e.to_string()))) {
                Ok(_) => tracing::info!(elapsed_ms = ms(compacting), "compacted the migrated database"),
                // The migrated file is whole; a larger file is no reason to stop.
                Err(e) => tracing::warn!(error = %e, "could not compact the migrated database"),
            }
            store.db.put(Arc::new(db));
        }
        Ok((store, opened))
    }

    /// Whether the database may be written now, and the failures met since start.
    #[must_use]
    pub fn health(&self) -> &Arc<health::Health> {
        &self.db.health
    }

    /// A consistent snapshot for reading.
    ///
    /// # Errors
    /// The database cannot start a transaction.
    pub fn read(&self) -> Result<Reader, StoreError> {
        // Taken before the snapshot begins: a commit this snapshot misses
        // moves the generation on after this load, never before it.
        let token_generation = self.token_generation.load(Ordering::Acquire);
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(StoreError::from);
        if matches!(txn, Err(StoreError::Reopening)) {
            // A failed operation left redb refusing everything until a reopen.
            self.db.reopen_soon(slot::Slot::id(&db));
        }
        Ok(Reader { txn: txn?, token_generation })
    }

    /// What wakes when a commit queued outbox entries.
    #[must_use]
    pub fn outbox_changed(&self) -> &Arc<Notify> {
        &self.outbox_changed
    }

    /// The id of the last committed event, watched by long polls.
    #[must_use]
    pub fn events_watch(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }

    /// Runs `f` in one write transaction, committed (durably) only when `f`
    /// succeeds. A commit that queued outbox entries wakes
    /// [`Store::outbox_changed`]; one that appended events, the long polls.
    ///
    /// Refused while the file is damaged or its disk full ([`health`]);
    /// a panic inside redb is [`StoreError::Damaged`], and a write that
    /// finds the disk full [`StoreError::NoSpace`] (the database is then
    /// reopened in the background, see [`slot`]).
    ///
    /// # Errors
    /// `f`'s error, or a storage failure.
    pub fn write<T, E: From<StoreError>>(&self, f: impl FnOnce(&mut Writer) -> Result<T, E>) -> Result<T, E> {
        if let Some(refused) = self.db.health.refusal() {
            return Err(refused.into());
        }
        let db = self.db.get()?;
        let id = slot::Slot::id(&db);
        health::watch_io();
        let outcome = catch_unwind(AssertUnwindSafe(|| self.write_in(&db, f)));
        drop(db);
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.after_failed_write(id).map_or(e, E::from)),
            Err(panic) => {
                let why = health::panic_text(panic.as_ref());
                self.db.health.mark_damaged(&why);
                Err(StoreError::Damaged(why).into())
            }
        }
    }

    /// What a failed write did to the store: damage marks it; a full disk
    /// (or redb refusing after a failure) reopens the database, and the
    /// write is answered as a full disk while writes wait for space.
    fn after_failed_write(&self, db: usize) -> Option<StoreError> {
        let health = &self.db.health;
        match health::take_io()? {
            health::IoSeen::Corrupted => {
                health.mark_damaged("a page cannot be read");
                None
            }
            health::IoSeen::NoSpace => {
                health.mark_disk_full();
                self.db.reopen_soon(db);
                health.refusal()
            }
            health::IoSeen::PreviousIo | health::IoSeen::Other => {
                self.db.reopen_soon(db);
                health.refusal()
            }
        }
    }

    fn write_in<T, E: From<StoreError>>(
        &self,
        db: &Database,
        f: impl FnOnce(&mut Writer) -> Result<T, E>,
    ) -> Result<T, E> {
        let txn = db.begin_write().map_err(StoreError::from)?;
        let mut writer = Writer { txn, wrote_token: false, queued: false, appended: None };
        match f(&mut writer) {
            Ok(value) => {
                writer.txn.commit().map_err(StoreError::from)?;
                if writer.wrote_token {
                    // After the commit: whoever sees the new generation also
                    // sees the new token records in the snapshot it opens next.
                    self.token_generation.fetch_add(1, Ordering::Release);
                }
                if writer.queued {
                    self.outbox_changed.notify_one();
                }
                if let Some(id) = writer.appended {
                    self.events.send_replace(id);
                }
                Ok(value)
            }
            Err(e) => {
                // Dropping would abort too; aborting explicitly surfaces its error in logs.
                if let Err(abort) = writer.txn.abort() {
                    tracing::warn!(error = %abort, "aborting a write transaction failed");
                }
                Err(e)
            }
        }
    }
}

/// Runs `f`, turning a panic inside redb (which it may raise on a page it
/// cannot read) into [`StoreError::Damaged`]: a damaged file is a message
/// about the file, not a crash of the service.
fn guarded<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| Err(StoreError::Damaged(health::panic_text(&*panic))))
}

/// Logs redb's repair of a file that was not closed cleanly (a crash or
/// kill), a tenth of the way at a time, so a long one is visible.
fn log_repair(session: &mut redb::RepairSession) {
    static LAST: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);
    // A tenth of the way: a whole number from 0 to 10 fits.
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "0.0..=1.0 times 10")]
    let tenth = (session.progress().clamp(0.0, 1.0) * 10.0) as u8;
    if LAST.swap(tenth, std::sync::atomic::Ordering::Relaxed) != tenth {
        tracing::warn!(
            progress_pct = u32::from(tenth) * 10,
            "the database was not closed cleanly (a crash or kill): redb is checking and repairing it"
        );
    }
}

/// Width of a level of `orgidrange_roomcount` in bits of the room id: a
/// range of level `l` holds the ids sharing `id >> (RANGE_BITS × l)`.
const RANGE_BITS: u32 = 10;
/// Levels of `orgidrange_roomcount`, 1 (finest) to this (coarsest). Finding
/// an offset reads at most one level-2 count per 1,048,576 room ids, then
/// at most 512 level-1 counts and 512 keys (walked from the nearer end).
const RANGE_LEVELS: u8 = 2;

/// The `orgidrange_roomcount` keys that count room `id` of `org`, one per level.
pub(crate) fn room_ranges(org: OrgId, id: RoomId) -> impl Iterator<Item = (OrgId, u8, u64)> {
    (1..=RANGE_LEVELS).map(move |level| (org, level, id >> (RANGE_BITS * u32::from(level))))
}

/// The counts of `orgidrange_roomcount` gathered from the rooms themselves,
/// for building the table (migration, `--repair`) and checking it.
#[derive(Debug, Default)]
pub(crate) struct RangeCounts(std::collections::BTreeMap<(OrgId, u8, u64), u64>);

impl RangeCounts {
    pub(crate) fn add(&mut self, org: OrgId, id: RoomId) {
        for key in room_ranges(org, id) {
            *self.0.entry(key).or_default() += 1;
        }
    }

    pub(crate) fn get(&self, key: (OrgId, u8, u64)) -> u64 {
        self.0.get(&key).copied().unwrap_or(0)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = ((OrgId, u8, u64), u64)> + '_ {
        self.0.iter().map(|(k, n)| (*k, *n))
    }

    /// Writes every count into the (emptied) table.
    pub(crate) fn write(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let mut t = txn.open_table(ORGIDRANGE_ROOMCOUNT)?;
        for (key, n) in self.iter() {
            t.insert(key, n)?;
        }
        Ok(())
    }
}

/// A value of `roomid_orgidjson`: the organization id, then the room's JSON.
#[must_use]
pub fn org_json(org: OrgId, json: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + json.len());
    v.extend_from_slice(&org.to_le_bytes());
    v.extend_from_slice(json);
    v
}

/// A value of `roomid_orgidjson` split into the organization id and the
/// JSON; `None` when too short to hold the id.
#[must_use]
pub fn split_org_json(v: &[u8]) -> Option<(OrgId, &[u8])> {
    let (org, json) = v.split_first_chunk::<8>()?;
    Some((OrgId::from_le_bytes(*org), json))
}

fn key_suffix(key: &str) -> String {
    if key.is_empty() { String::new() } else { format!(" (key {key})") }
}

/// Decodes a record of `table` whose key is not at hand.
fn decode<T: codec::Versioned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    decode_at(table, "", bytes)
}

/// Decodes the record stored under `key` in `table`; an error names both.
fn decode_at<T: codec::Versioned>(table: &'static str, key: impl ToString, bytes: &[u8]) -> Result<T, StoreError> {
    codec::decode(bytes).map_err(|why| StoreError::Corrupt { table, key: key.to_string(), why })
}

fn role_from_byte(b: u8) -> Result<OrgRole, StoreError> {
    match b {
        0 => Ok(OrgRole::Member),
        1 => Ok(OrgRole::Admin),
        2 => Ok(OrgRole::Owner),
        other => Err(StoreError::Corrupt {
            table: "orgiduserid_role",
            key: String::new(),
            why: format!("unknown role {other}"),
        }),
    }
}

fn role_to_byte(r: OrgRole) -> u8 {
    match r {
        OrgRole::Member => 0,
        OrgRole::Admin => 1,
        OrgRole::Owner => 2,
    }
}

/// The read operations, shared by snapshots and write transactions.
pub trait Read {
    /// Opens a table of this transaction for reading.
    ///
    /// # Errors
    /// The table cannot be opened.
    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: redb::TableDefinition<'static, K, V>,
    ) -> Result<impl ReadableTable<K, V>, StoreError>;

    /// The generation of the token records this snapshot reads, for
    /// remembering what a token authenticates as: it changes after every
    /// commit that wrote a token record, and is taken before the snapshot
    /// begins, so a snapshot older than a token's revocation never carries
    /// the generation that revocation set. `None` inside a write transaction,
    /// whose reads are not to be remembered.
    fn token_generation(&self) -> Option<u64> {
        None
    }

    /// One room by id.
    fn room(&self, id: RoomId) -> Result<Option<Room>, StoreError> {
        let t = self.table(ROOMID_ROOM)?;
        t.get(id)?.map(|v| decode_at("roomid_room", id, v.value())).transpose()
    }

    /// The room whose Matrix room id is `matrix_id`.
    fn room_id_by_matrix_id(&self, matrix_id: &str) -> Result<Option<RoomId>, StoreError> {
        let t = self.table(MATRIXROOMID_ROOMID)?;
        Ok(t.get(matrix_id)?.map(|v| v.value()))
    }

    /// The organization's default room id.
    fn default_room_id(&self, org: OrgId) -> Result<Option<RoomId>, StoreError> {
        let t = self.table(ORGID_DEFAULTROOMID)?;
        Ok(t.get(org)?.map(|v| v.value()))
    }

    /// The room of an event in an organization.
    fn event_room_id(&self, org: OrgId, event: i64) -> Result<Option<RoomId>, StoreError> {
        let t = self.table(ORGIDEVENTID_ROOMID)?;
        Ok(t.get((org, event))?.map(|v| v.value()))
    }

    /// Room ids of an organization in id order: `offset` skipped, at most `limit`.
    fn org_room_ids(&self, org: OrgId, offset: usize, limit: usize) -> Result<Vec<RoomId>, StoreError> {
        let t = self.table(ORGIDROOMID)?;
        let mut ids = Vec::with_capacity(limit.min(64));
        for entry in t.range((org, 0u64)..=(org, u64::MAX))?.skip(offset).take(limit) {
            ids.push(entry?.0.value().1);
        }
        Ok(ids)
    }

    /// Ids of an organization's rooms with automation on, in id order.
    fn automated_room_ids(&self, org: OrgId) -> Result<Vec<RoomId>, StoreError> {
        let t = self.table(ORGID_AUTOMATEDROOMID)?;
        let mut ids = Vec::new();
        for entry in t.range((org, 0u64)..=(org, u64::MAX))? {
            ids.push(entry?.0.value().1);
        }
        Ok(ids)
    }

    /// The id of the organization's room at `offset` (0-based) in id order.
    ///
    /// The range counts are summed coarse to fine, each level only inside
    /// the range the level above found, and the keys are walked inside one
    /// level-1 range: the time does not grow with the offset. Below the top
    /// level the count of the range being searched is known, so each walk
    /// starts from the nearer end of it: at most half of a range's counts
    /// and keys are read (the last page of an organization, the deep page
    /// clients ask for, sits near an end).
    fn org_room_at(&self, org: OrgId, offset: usize) -> Result<Option<RoomId>, StoreError> {
        let counts = self.table(ORGIDRANGE_ROOMCOUNT)?;
        let mut left = u64::try_from(offset).unwrap_or(u64::MAX);
        let (mut lo, mut hi) = (0u64, u64::MAX);
        // The number of rooms in [lo, hi]; unknown at the top level.
        let mut within: Option<u64> = None;
        for level in (1..=RANGE_LEVELS).rev() {
            let shift = RANGE_BITS * u32::from(level);
            let ranges = counts.range((org, level, lo >> shift)..=(org, level, hi >> shift))?;
            let found = match within {
                Some(n) if left >= n => return Ok(None),
                Some(n) if left >= n / 2 => {
                    // Counted from the end: the room is `n - 1 - left` rooms before the last.
                    let mut right = n - 1 - left;
                    let mut found = None;
                    for entry in ranges.rev() {
                        let (k, v) = entry?;
                        let v = v.value();
                        if right < v {
                            left = v - 1 - right;
                            found = Some((k.value().2, v));
                            break;
                        }
                        right -= v;
                    }
                    found
                }
                _ => {
                    let mut found = None;
                    for entry in ranges {
                        let (k, v) = entry?;
                        let v = v.value();
                        if left < v {
                            found = Some((k.value().2, v));
                            break;
                        }
                        left -= v;
                    }
                    found
                }
            };
            let Some((range, count)) = found else { return Ok(None) };
            within = Some(count);
            lo = range << shift;
            hi = lo | ((1u64 << shift) - 1);
        }
        let keys = self.table(ORGIDROOMID)?;
        let in_range = keys.range((org, lo)..=(org, hi))?;
        let found = match within {
            Some(n) if left >= n / 2 => {
                let back = usize::try_from(n.saturating_sub(1).saturating_sub(left)).unwrap_or(usize::MAX);
                in_range.rev().nth(back)
            }
            _ => in_range.into_iter().nth(usize::try_from(left).unwrap_or(usize::MAX)),
        };
        Ok(found.transpose()?.map(|(k, _)| k.value().1))
    }

    /// The API JSON of an organization's rooms in id order: `offset` skipped, at most `limit`.
    fn org_rooms_json(&self, org: OrgId, offset: usize, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(64));
        self.each_org_room_json(org, offset, limit, |json| out.push(json.to_vec()))?;
        Ok(out)
    }

    /// Hands `each` the API JSON of an organization's rooms in id order,
    /// `offset` skipped, at most `limit`, borrowed from the snapshot: a page
    /// is copied once, into its answer, rather than into a vector per room.
    fn each_org_room_json(
        &self,
        org: OrgId,
        offset: usize,
        limit: usize,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), StoreError> {
        let first = if offset == 0 { Some(0) } else { self.org_room_at(org, offset)? };
        let Some(first) = first else { return Ok(()) };
        let t = self.table(ORGIDROOMID_JSON)?;
        for entry in t.range((org, first)..=(org, u64::MAX))?.take(limit) {
            each(entry?.1.value());
        }
        Ok(())
    }

    /// One room's organization and its stored API JSON (what GET one room
    /// answers), by the room id alone.
    fn room_org_json(&self, id: RoomId) -> Result<Option<(OrgId, Vec<u8>)>, StoreError> {
        let t = self.table(ROOMID_ORGIDJSON)?;
        let Some(v) = t.get(id)? else { return Ok(None) };
        let (org, json) = split_org_json(v.value()).ok_or_else(|| StoreError::Corrupt {
            table: "roomid_orgidjson",
            key: id.to_string(),
            why: "shorter than an organization id".into(),
        })?;
        Ok(Some((org, json.to_vec())))
    }

    /// Number of rooms of an organization.
    fn room_count(&self, org: OrgId) -> Result<u64, StoreError> {
        let t = self.table(ORGID_ROOMCOUNT)?;
        Ok(t.get(org)?.map_or(0, |v| v.value()))
    }

    /// Ids of the rooms that list `user`.
    fn user_room_ids(&self, user: UserId) -> Result<Vec<RoomId>, StoreError> {
        let t = self.table(USERIDROOMID)?;
        let mut ids = Vec::new();
        for entry in t.range((user, 0u64)..=(user, u64::MAX))? {
            ids.push(entry?.0.value().1);
        }
        Ok(ids)
    }

    /// The avatar image waiting for upload.
    fn avatar(&self, room: RoomId) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.table(ROOMID_AVATAR)?;
        Ok(t.get(room)?.map(|v| v.value().to_vec()))
    }

    /// One organization.
    fn org(&self, id: OrgId) -> Result<Option<Organization>, StoreError> {
        let t = self.table(ORGID_ORG)?;
        t.get(id)?.map(|v| decode_at("orgid_org", id, v.value())).transpose()
    }

    /// A user's role in an organization.
    fn member_role(&self, org: OrgId, user: UserId) -> Result<Option<OrgRole>, StoreError> {
        let t = self.table(ORGIDUSERID_ROLE)?;
        t.get((org, user))?.map(|v| role_from_byte(v.value())).transpose()
    }

    /// An organization's members in user id order.
    fn members(&self, org: OrgId) -> Result<Vec<(UserId, OrgRole)>, StoreError> {
        let t = self.table(ORGIDUSERID_ROLE)?;
        let mut out = Vec::new();
        for entry in t.range((org, i64::MIN)..=(org, i64::MAX))? {
            let (k, v) = entry?;
            out.push((k.value().1, role_from_byte(v.value())?));
        }
        Ok(out)
    }

    /// The organizations a user belongs to.
    fn orgs_of(&self, user: UserId) -> Result<Vec<(OrgId, OrgRole)>, StoreError> {
        let t = self.table(USERIDORGID_ROLE)?;
        let mut out = Vec::new();
        for entry in t.range((user, i64::MIN)..=(user, i64::MAX))? {
            let (k, v) = entry?;
            out.push((k.value().1, role_from_byte(v.value())?));
        }
        Ok(out)
    }

    /// One user.
    fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let t = self.table(USERID_USER)?;
        t.get(id)?.map(|v| decode_at("userid_user", id, v.value())).transpose()
    }

    /// The token with this SHA-256.
    fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<Token>, StoreError> {
        let t = self.table(TOKENHASH_TOKEN)?;
        t.get(hash.as_slice())?.map(|v| decode_at("tokenhash_token", hex::encode(hash), v.value())).transpose()
    }

    /// A user's personal access tokens in id order.
    fn tokens_of(&self, user: UserId) -> Result<Vec<Token>, StoreError> {
        let index = self.table(USERIDTOKENID_TOKENHASH)?;
        let tokens = self.table(TOKENHASH_TOKEN)?;
        let mut out = Vec::new();
        for entry in index.range((user, 0u64)..=(user, u64::MAX))? {
            let (_, hash) = entry?;
            if let Some(v) = tokens.get(hash.value())? {
                out.push(decode_at("tokenhash_token", hex::encode(hash.value()), v.value())?);
            }
        }
        Ok(out)
    }

    /// Rooms whose scheduled deletion is at or before `now`, soonest first.
    fn rooms_due(&self, now: i64, limit: usize) -> Result<Vec<RoomId>, StoreError> {
        let t = self.table(DELETIONTIME_ROOMID)?;
        let mut ids = Vec::new();
        for entry in t.range((i64::MIN, 0u64)..=(now, u64::MAX))?.take(limit) {
            ids.push(entry?.0.value().1);
        }
        Ok(ids)
    }

    /// Rooms whose `read_only_at` is at or before `now`, soonest first.
    fn rooms_read_only_due(&self, now: i64, limit: usize) -> Result<Vec<RoomId>, StoreError> {
        let t = self.table(READONLYTIME_ROOMID)?;
        let mut ids = Vec::new();
        for entry in t.range((i64::MIN, 0u64)..=(now, u64::MAX))?.take(limit) {
            ids.push(entry?.0.value().1);
        }
        Ok(ids)
    }

    /// Whether the user's Matrix account is known to exist.
    fn has_matrix_account(&self, user: UserId) -> Result<bool, StoreError> {
        Ok(self.table(USERID_MATRIXACCOUNT)?.get(user)?.is_some())
    }

    /// The delete id of a room delete being followed on the homeserver.
    fn delete_id(&self, matrix_room_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.table(MATRIXROOMID_DELETEID)?.get(matrix_room_id)?.map(|v| v.value().to_string()))
    }

    /// Numbers of stored rooms and users.
    fn totals(&self) -> Result<(u64, u64), StoreError> {
        Ok((self.table(ROOMID_ROOM)?.len()?, self.table(USERID_USER)?.len()?))
    }

    /// The id of the last event ever appended (0 for none); pruning does not lower it.
    fn last_event_id(&self) -> Result<u64, StoreError> {
        Ok(self.table(NAME_COUNTER)?.get(EVENT_COUNTER)?.map_or(0, |v| v.value()))
    }

    /// One event of the log, while it is kept.
    fn event(&self, id: u64) -> Result<Option<Event>, StoreError> {
        let t = self.table(EVENTID_EVENT)?;
        t.get(id)?.map(|v| decode_at("eventid_event", id, v.value())).transpose()
    }

    /// At most `limit` events with ids above `after`, oldest first: all of
    /// them (`org` `None`), or one organization's (`Some(0)`: those of none).
    fn events_after(&self, org: Option<OrgId>, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let Some(start) = after.checked_add(1) else { return Ok(Vec::new()) };
        let events = self.table(EVENTID_EVENT)?;
        let mut out = Vec::new();
        match org {
            None => {
                for entry in events.range(start..)?.take(limit) {
                    let (k, v) = entry?;
                    out.push(decode_at("eventid_event", k.value(), v.value())?);
                }
            }
            Some(org) => {
                let index = self.table(ORGIDEVENTID)?;
                for entry in index.range((org, start)..=(org, u64::MAX))?.take(limit) {
                    let id = entry?.0.value().1;
                    let v = events.get(id)?.ok_or_else(|| StoreError::Corrupt {
                        table: "orgideventid",
                        key: format!("({org}, {id})"),
                        why: "names an event that eventid_event does not hold".into(),
                    })?;
                    out.push(decode_at("eventid_event", id, v.value())?);
                }
            }
        }
        Ok(out)
    }

    /// Number of entries waiting in the outbox.
    fn outbox_depth(&self) -> Result<u64, StoreError> {
        let t = self.table(SEQ_OUTBOX)?;
        Ok(t.len()?)
    }

    /// The oldest outbox entries, at most `n`.
    fn outbox_head(&self, n: usize) -> Result<Vec<(u64, OutboxOp)>, StoreError> {
        let t = self.table(SEQ_OUTBOX)?;
        let mut out = Vec::new();
        for entry in t.iter()?.take(n) {
            let (k, v) = entry?;
            out.push((k.value(), decode_at("seq_outbox", k.value(), v.value())?));
        }
        Ok(out)
    }
}

/// A read-only snapshot.
pub struct Reader {
    txn: ReadTransaction,
    token_generation: u64,
}

impl Read for Reader {
    fn token_generation(&self) -> Option<u64> {
        Some(self.token_generation)
    }

    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: redb::TableDefinition<'static, K, V>,
    ) -> Result<impl ReadableTable<K, V>, StoreError> {
        Ok(self.txn.open_table(def)?)
    }
}

/// One write transaction.
pub struct Writer {
    txn: WriteTransaction,
    /// A token record was written: the token generation moves on at commit.
    wrote_token: bool,
    /// Whether it queued outbox entries.
    queued: bool,
    /// The id of the last event it appended.
    appended: Option<u64>,
}

impl Read for Writer {
    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: redb::TableDefinition<'static, K, V>,
    ) -> Result<impl ReadableTable<K, V>, StoreError> {
        Ok(self.txn.open_table(def)?)
    }
}

impl Writer {
    /// The next value of a named counter, starting at 1.
    pub fn next_id(&mut self, name: &str) -> Result<u64, StoreError> {
        let mut t = self.txn.open_table(NAME_COUNTER)?;
        let next = t.get(name)?.map_or(0, |v| v.value()) + 1;
        t.insert(name, next)?;
        Ok(next)
    }

    /// Writes a room and every index of it. `previous` is the stored room it
    /// replaces (`None` for a new room).
    pub fn put_room(&mut self, room: &Room, previous: Option<&Room>) -> Result<(), StoreError> {
        self.txn.open_table(ROOMID_ROOM)?.insert(room.id, codec::encode(room).as_slice())?;
        let json = room.to_json();
        self.txn.open_table(ORGIDROOMID_JSON)?.insert((room.org_id, room.id), json.as_slice())?;
        self.txn.open_table(ROOMID_ORGIDJSON)?.insert(room.id, org_json(room.org_id, &json).as_slice())?;
        if previous.is_none() {
            self.txn.open_table(ORGIDROOMID)?.insert((room.org_id, room.id), ())?;
            let mut counts = self.txn.open_table(ORGID_ROOMCOUNT)?;
            let n = counts.get(room.org_id)?.map_or(0, |v| v.value());
            counts.insert(room.org_id, n + 1)?;
            drop(counts);
            let mut ranges = self.txn.open_table(ORGIDRANGE_ROOMCOUNT)?;
            for key in room_ranges(room.org_id, room.id) {
                let n = ranges.get(key)?.map_or(0, |v| v.value());
                ranges.insert(key, n + 1)?;
            }
            drop(ranges);
            match room.kind {
                crate::model::RoomKind::Default => {
                    self.txn.open_table(ORGID_DEFAULTROOMID)?.insert(room.org_id, room.id)?;
                }
                crate::model::RoomKind::Event => {
                    self.txn.open_table(ORGIDEVENTID_ROOMID)?.insert((room.org_id, room.event_id), room.id)?;
                }
                crate::model::RoomKind::Custom => {}
            }
        }
        if previous.map_or(room.automation, |p| p.automation != room.automation) {
            let mut t = self.txn.open_table(ORGID_AUTOMATEDROOMID)?;
            if room.automation {
                t.insert((room.org_id, room.id), ())?;
            } else {
                t.remove((room.org_id, room.id))?;
            }
        }
        let old_matrix = previous.map_or("", |p| p.matrix_room_id.as_str());
        if old_matrix != room.matrix_room_id {
            let mut t = self.txn.open_table(MATRIXROOMID_ROOMID)?;
            if !old_matrix.is_empty() {
                t.remove(old_matrix)?;
            }
            if !room.matrix_room_id.is_empty() {
                t.insert(room.matrix_room_id.as_str(), room.id)?;
            }
        }
        let old_deletion = previous.and_then(|p| p.scheduled_deletion);
        if old_deletion != room.scheduled_deletion {
            let mut t = self.txn.open_table(DELETIONTIME_ROOMID)?;
            if let Some(at) = old_deletion {
                t.remove((at, room.id))?;
            }
            if let Some(at) = room.scheduled_deletion {
                t.insert((at, room.id), ())?;
            }
        }
        let old_read_only_at = previous.and_then(|p| p.read_only_at);
        if old_read_only_at != room.read_only_at {
            let mut t = self.txn.open_table(READONLYTIME_ROOMID)?;
            if let Some(at) = old_read_only_at {
                t.remove((at, room.id))?;
            }
            if let Some(at) = room.read_only_at {
                t.insert((at, room.id), ())?;
            }
        }
        let old_members = previous.map(Room::members).unwrap_or_default();
        let new_members = room.members();
        if old_members != new_members {
            let mut t = self.txn.open_table(USERIDROOMID)?;
            for u in old_members.iter().filter(|u| new_members.binary_search(u).is_err()) {
                t.remove((*u, room.id))?;
            }
            for u in new_members.iter().filter(|u| old_members.binary_search(u).is_err()) {
                t.insert((*u, room.id), ())?;
            }
        }
        Ok(())
    }

    /// Removes a room, its avatar and every index of it.
    pub fn delete_room(&mut self, room: &Room) -> Result<(), StoreError> {
        self.txn.open_table(ROOMID_ROOM)?.remove(room.id)?;
        self.txn.open_table(ORGIDROOMID_JSON)?.remove((room.org_id, room.id))?;
        self.txn.open_table(ROOMID_ORGIDJSON)?.remove(room.id)?;
        self.txn.open_table(ORGIDROOMID)?.remove((room.org_id, room.id))?;
        self.txn.open_table(ORGID_AUTOMATEDROOMID)?.remove((room.org_id, room.id))?;
        self.txn.open_table(ROOMID_AVATAR)?.remove(room.id)?;
        let mut counts = self.txn.open_table(ORGID_ROOMCOUNT)?;
        let n = counts.get(room.org_id)?.map_or(0, |v| v.value());
        if n <= 1 {
            counts.remove(room.org_id)?;
        } else {
            counts.insert(room.org_id, n - 1)?;
        }
        drop(counts);
        let mut ranges = self.txn.open_table(ORGIDRANGE_ROOMCOUNT)?;
        for key in room_ranges(room.org_id, room.id) {
            let n = ranges.get(key)?.map_or(0, |v| v.value());
            if n <= 1 {
                ranges.remove(key)?;
            } else {
                ranges.insert(key, n - 1)?;
            }
        }
        drop(ranges);
        match room.kind {
            crate::model::RoomKind::Default => {
                self.txn.open_table(ORGID_DEFAULTROOMID)?.remove(room.org_id)?;
            }
            crate::model::RoomKind::Event => {
                self.txn.open_table(ORGIDEVENTID_ROOMID)?.remove((room.org_id, room.event_id))?;
            }
            crate::model::RoomKind::Custom => {}
        }
        if !room.matrix_room_id.is_empty() {
            self.txn.open_table(MATRIXROOMID_ROOMID)?.remove(room.matrix_room_id.as_str())?;
        }
        if let Some(at) = room.scheduled_deletion {
            self.txn.open_table(DELETIONTIME_ROOMID)?.remove((at, room.id))?;
        }
        if let Some(at) = room.read_only_at {
            self.txn.open_table(READONLYTIME_ROOMID)?.remove((at, room.id))?;
        }
        let mut t = self.txn.open_table(USERIDROOMID)?;
        for u in room.members() {
            t.remove((u, room.id))?;
        }
        Ok(())
    }

    /// Keeps an avatar image until the homeserver has it; `None` removes it.
    pub fn set_avatar(&mut self, room: RoomId, bytes: Option<&[u8]>) -> Result<(), StoreError> {
        let mut t = self.txn.open_table(ROOMID_AVATAR)?;
        match bytes {
            Some(b) => t.insert(room, b)?,
            None => t.remove(room)?,
        };
        Ok(())
    }

    pub fn put_org(&mut self, org: &Organization) -> Result<(), StoreError> {
        self.txn.open_table(ORGID_ORG)?.insert(org.id, codec::encode(org).as_slice())?;
        Ok(())
    }

    /// Removes the organization record (its rooms and members are removed by the caller).
    pub fn delete_org(&mut self, id: OrgId) -> Result<(), StoreError> {
        self.txn.open_table(ORGID_ORG)?.remove(id)?;
        Ok(())
    }

    pub fn set_member(&mut self, org: OrgId, user: UserId, role: OrgRole) -> Result<(), StoreError> {
        let b = role_to_byte(role);
        self.txn.open_table(ORGIDUSERID_ROLE)?.insert((org, user), b)?;
        self.txn.open_table(USERIDORGID_ROLE)?.insert((user, org), b)?;
        Ok(())
    }

    pub fn remove_member(&mut self, org: OrgId, user: UserId) -> Result<(), StoreError> {
        self.txn.open_table(ORGIDUSERID_ROLE)?.remove((org, user))?;
        self.txn.open_table(USERIDORGID_ROLE)?.remove((user, org))?;
        Ok(())
    }

    pub fn put_user(&mut self, user: &User) -> Result<(), StoreError> {
        self.txn.open_table(USERID_USER)?.insert(user.id, codec::encode(user).as_slice())?;
        Ok(())
    }

    /// Writes a token record and its per-user index (API tokens under user 0).
    pub fn put_token(&mut self, token: &Token) -> Result<(), StoreError> {
        self.wrote_token = true;
        self.txn.open_table(TOKENHASH_TOKEN)?.insert(token.hash.as_slice(), codec::encode(token).as_slice())?;
        let owner = if token.kind == TokenKind::Api { 0 } else { token.user_id };
        self.txn.open_table(USERIDTOKENID_TOKENHASH)?.insert((owner, token.id), token.hash.as_slice())?;
        Ok(())
    }

    /// Appends an entry to the outbox.
    pub fn push_outbox(&mut self, op: &OutboxOp) -> Result<u64, StoreError> {
        let seq = self.next_id("outbox_seq")?;
        self.txn.open_table(SEQ_OUTBOX)?.insert(seq, codec::encode(op).as_slice())?;
        self.queued = true;
        Ok(seq)
    }

    /// Records whether a user's Matrix account exists.
    pub fn set_matrix_account(&mut self, user: UserId, exists: bool) -> Result<(), StoreError> {
        let mut t = self.txn.open_table(USERID_MATRIXACCOUNT)?;
        if exists {
            t.insert(user, ())?;
        } else {
            t.remove(user)?;
        }
        Ok(())
    }

    /// Records (or, with `None`, forgets) the delete id of a homeserver room delete.
    pub fn set_delete_id(&mut self, matrix_room_id: &str, delete_id: Option<&str>) -> Result<(), StoreError> {
        let mut t = self.txn.open_table(MATRIXROOMID_DELETEID)?;
        match delete_id {
            Some(id) => t.insert(matrix_room_id, id)?,
            None => t.remove(matrix_room_id)?,
        };
        Ok(())
    }

    /// Appends an event to the log, in this transaction; returns its id.
    pub fn append_event(
        &mut self,
        time: i64,
        org_id: Option<OrgId>,
        actor: Actor,
        kind: &str,
        data: &serde_json::Value,
    ) -> Result<u64, StoreError> {
        let id = self.next_id(EVENT_COUNTER)?;
        let event = Event { id, time, org_id, actor, kind: kind.to_string(), data: data.to_string() };
        self.txn.open_table(EVENTID_EVENT)?.insert(id, codec::encode(&event).as_slice())?;
        self.txn.open_table(ORGIDEVENTID)?.insert((org_id.unwrap_or(0), id), ())?;
        self.appended = Some(id);
        Ok(id)
    }

    /// Writes an event as it was (an import), with its index; the `event`
    /// counter is restored by its own record.
    pub fn put_event(&mut self, event: &Event) -> Result<(), StoreError> {
        self.txn.open_table(EVENTID_EVENT)?.insert(event.id, codec::encode(event).as_slice())?;
        self.txn.open_table(ORGIDEVENTID)?.insert((event.org_id.unwrap_or(0), event.id), ())?;
        Ok(())
    }

    /// Removes at most `max` of the oldest events whose time is before
    /// `cutoff`; returns how many. Ids are handed out in time order, so the
    /// oldest are the first ones.
    pub fn prune_events(&mut self, cutoff: i64, max: usize) -> Result<usize, StoreError> {
        let mut doomed = Vec::new();
        {
            let t = self.txn.open_table(EVENTID_EVENT)?;
            for entry in t.iter()?.take(max) {
                let (k, v) = entry?;
                let event: Event = decode_at("eventid_event", k.value(), v.value())?;
                if event.time >= cutoff {
                    break;
                }
                doomed.push((event.id, event.org_id.unwrap_or(0)));
            }
        }
        let mut events = self.txn.open_table(EVENTID_EVENT)?;
        let mut index = self.txn.open_table(ORGIDEVENTID)?;
        for &(id, org) in &doomed {
            events.remove(id)?;
            index.remove((org, id))?;
        }
        Ok(doomed.len())
    }

    /// Removes a finished outbox entry.
    pub fn remove_outbox(&mut self, seq: u64) -> Result<(), StoreError> {
        self.txn.open_table(SEQ_OUTBOX)?.remove(seq)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RoomKind;

    fn room(id: RoomId, org: OrgId) -> Room {
        Room {
            id,
            kind: RoomKind::Custom,
            org_id: org,
            event_id: 0,
            name: format!("r{id}"),
            topic: String::new(),
            matrix_room_id: String::new(),
            avatar_url: String::new(),
            avatar_sha256: None,
            admins: vec![1],
            moderators: vec![],
            assigned: vec![2, 3],
            claimed: vec![],
            automation_given: vec![],
            automation: false,
            scheduled_deletion: None,
            generation: 1,
            synced_generation: 0,
            sync_error: None,
            created_at: 0,
            updated_at: 0,
            read_only: false,
            read_only_at: None,
        }
    }

    #[test]
    fn indexes_follow_rooms() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.redb"), 1 << 20).unwrap();
        store
            .write(|w| {
                for id in 1..=5 {
                    w.put_room(&room(id, if id % 2 == 0 { 20 } else { 10 }), None)?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let r = store.read().unwrap();
        assert_eq!(r.org_room_ids(10, 0, 50).unwrap(), vec![1, 3, 5]);
        assert_eq!(r.org_room_ids(10, 1, 1).unwrap(), vec![3]);
        let page: Vec<u64> = r
            .org_rooms_json(10, 1, 5)
            .unwrap()
            .iter()
            .map(|j| serde_json::from_slice::<serde_json::Value>(j).unwrap()["roomID"].as_u64().unwrap())
            .collect();
        assert_eq!(page, vec![3, 5]);
        assert!(r.org_rooms_json(10, 3, 5).unwrap().is_empty());
        assert_eq!(r.room_count(10).unwrap(), 3);
        assert_eq!(r.user_room_ids(2).unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(r.room_org_json(4).unwrap(), Some((20, room(4, 20).to_json())));
        assert_eq!(r.room_org_json(6).unwrap(), None);
        drop(r);

        let old = store.read().unwrap().room(3).unwrap().unwrap();
        let mut new = old.clone();
        new.remove_user(2);
        new.matrix_room_id = "!x:hs".into();
        store.write(|w| w.put_room(&new, Some(&old))).unwrap();
        let r = store.read().unwrap();
        assert_eq!(r.user_room_ids(2).unwrap(), vec![1, 2, 4, 5]);
        assert_eq!(r.room_id_by_matrix_id("!x:hs").unwrap(), Some(3));
        assert_eq!(r.room_org_json(3).unwrap(), Some((10, new.to_json())));
        drop(r);

        store.write(|w| w.delete_room(&new)).unwrap();
        let r = store.read().unwrap();
        assert_eq!(r.org_room_ids(10, 0, 50).unwrap(), vec![1, 5]);
        assert_eq!(r.room_count(10).unwrap(), 2);
        assert_eq!(r.room_id_by_matrix_id("!x:hs").unwrap(), None);
        assert_eq!(r.user_room_ids(3).unwrap(), vec![1, 2, 4, 5]);
        assert_eq!(r.room_org_json(3).unwrap(), None);
    }

    #[test]
    fn the_automated_rooms_index_follows_automation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.redb"), 1 << 20).unwrap();
        let automated = |id, org| Room { automation: true, ..room(id, org) };
        store
            .write(|w| {
                w.put_room(&automated(1, 10), None)?;
                w.put_room(&room(2, 10), None)?;
                w.put_room(&automated(3, 10), None)?;
                w.put_room(&automated(4, 20), None)
            })
            .unwrap();
        let ids = |org| store.read().unwrap().automated_room_ids(org).unwrap();
        assert_eq!((ids(10), ids(20), ids(30)), (vec![1, 3], vec![4], vec![]));

        // Off, on, and a change that leaves automation alone.
        store.write(|w| w.put_room(&room(1, 10), Some(&automated(1, 10)))).unwrap();
        store.write(|w| w.put_room(&automated(2, 10), Some(&room(2, 10)))).unwrap();
        let renamed = Room { name: "renamed".into(), ..automated(3, 10) };
        store.write(|w| w.put_room(&renamed, Some(&automated(3, 10)))).unwrap();
        assert_eq!(ids(10), vec![2, 3]);

        store.write(|w| w.delete_room(&renamed)).unwrap();
        store.write(|w| w.delete_room(&automated(4, 20))).unwrap();
        assert_eq!((ids(10), ids(20)), (vec![2], vec![]));
    }

    /// Every page of every organization, at every offset, against a full
    /// scan of the room JSON, through a shuffled run of creations and
    /// deletions in several organizations whose ids interleave. The ids are
    /// spread over small ones, both sides of a level-2 boundary and the top
    /// of the id space, so every level of the range counts splits and empties.
    #[test]
    fn every_offset_pages_as_a_full_scan_does() {
        use rand::seq::SliceRandom;
        use rand::{Rng, SeedableRng};

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.redb"), 4 << 20).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(20_261_129);
        let orgs = [3i64, 5, 8];
        let mut ids: Vec<u64> = (1..=1500).collect();
        ids.extend((1 << 20) - 700..(1 << 20) + 700);
        ids.extend((0..300).map(|_| rng.random_range(1 << 21..1 << 40)));
        ids.extend(u64::MAX - 40..=u64::MAX);
        ids.sort_unstable();
        ids.dedup();
        let mut rooms: Vec<Room> = ids.iter().map(|&id| room(id, orgs[rng.random_range(0..orgs.len())])).collect();
        rooms.shuffle(&mut rng);

        let agree = |stage: &str| {
            let r = store.read().unwrap();
            for org in orgs {
                let all = r.org_rooms_json(org, 0, usize::MAX).unwrap();
                assert_eq!(r.room_count(org).unwrap(), all.len() as u64, "{stage}: total of {org}");
                let keys = r.org_room_ids(org, 0, usize::MAX).unwrap();
                for offset in 0..=all.len() + 1 {
                    assert_eq!(
                        r.org_room_at(org, offset).unwrap(),
                        keys.get(offset).copied(),
                        "{stage}: room at offset {offset} of organization {org}"
                    );
                    let limit = if offset % 7 == 0 { 50 } else { 3 };
                    let want = &all[offset.min(all.len())..(offset + limit).min(all.len())];
                    assert_eq!(
                        r.org_rooms_json(org, offset, limit).unwrap(),
                        want,
                        "{stage}: page at offset {offset}, limit {limit} of organization {org}"
                    );
                }
            }
        };

        // Created in shuffled order, in transactions of shuffled sizes.
        let mut created = Vec::new();
        while !rooms.is_empty() {
            let n = rng.random_range(1..200).min(rooms.len());
            let batch: Vec<Room> = rooms.drain(..n).collect();
            store
                .write(|w| {
                    for room in &batch {
                        w.put_room(room, None)?;
                    }
                    Ok::<_, StoreError>(())
                })
                .unwrap();
            created.extend(batch);
        }
        agree("after the creations");

        // Deletions in shuffled order, with a few rooms created again in between.
        created.shuffle(&mut rng);
        let (gone, kept) = created.split_at(created.len() * 2 / 3);
        for (i, chunk) in gone.chunks(97).enumerate() {
            store
                .write(|w| {
                    for room in chunk {
                        w.delete_room(room)?;
                    }
                    if i % 3 == 0 {
                        w.put_room(&chunk[0], None)?;
                    }
                    Ok::<_, StoreError>(())
                })
                .unwrap();
            if i == 5 {
                agree("halfway through the deletions");
            }
        }
        agree("after the deletions");
        assert!(kept.len() > 1000, "rooms are left to page through");
        // The ids were not handed out by the counter; `check` wants it above them.
        store
            .write(|w| Ok::<_, StoreError>(w.txn.open_table(NAME_COUNTER)?.insert("room", u64::MAX).map(drop)?))
            .unwrap();
        let report = store.check(check::Integrity::Clean, Opened::default()).unwrap();
        assert!(report.is_clean(), "{report}");

        // Emptied: every count goes with the last room.
        let left: Vec<Room> = {
            let r = store.read().unwrap();
            orgs.iter()
                .flat_map(|&org| r.org_room_ids(org, 0, usize::MAX).unwrap())
                .map(|id| r.room(id).unwrap().unwrap())
                .collect()
        };
        store.write(|w| left.iter().try_for_each(|room| w.delete_room(room))).unwrap();
        agree("emptied");
        assert_eq!(store.read().unwrap().table(ORGIDRANGE_ROOMCOUNT).unwrap().len().unwrap(), 0);
    }

    #[test]
    fn failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.redb"), 1 << 20).unwrap();
        let res: Result<(), StoreError> = store.write(|w| {
            w.put_room(&room(1, 1), None)?;
            Err(StoreError::Db("refused".into()))
        });
        assert!(res.is_err());
        assert_eq!(store.read().unwrap().room(1).unwrap(), None);
        assert_eq!(store.read().unwrap().room_count(1).unwrap(), 0);
    }
}
