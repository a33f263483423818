//! Whether the database may be written now, and what a storage failure
//! did to that.
//!
//! Two failures stop writes without stopping the service:
//! - **damage**: redb met a page it cannot read (a corruption error, or a
//!   panic inside redb). Nothing is written into the file again by this
//!   process: the operator repairs or restores it with the service stopped.
//! - **a full disk**: a write failed with no space left. redb then refuses
//!   every operation until the file is reopened, so [`super::slot`] reopens
//!   it at once (reads resume) and lets writes through again once space can
//!   be written to the data directory.
//!
//! The errors redb raises are converted to [`StoreError`] far from the store
//! (in the read methods, inside write closures), so the conversions report
//! what they saw here: to the writing thread (see [`watch_io`]) and, for
//! damage, to the store the service serves (see [`watch`]).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::StoreError;

/// What to do about a damaged file: said at start and at run time alike.
pub const DAMAGE_REMEDY: &str = "stop the service and run `messenger-chat check --repair`; if it cannot repair \
     the file, restore the data directory from a backup (`messenger-chat import` of an export)";

/// Seconds a client is told to wait before writing to a full disk again.
pub const DISK_FULL_RETRY_SECS: u64 = 10;

/// What the store lets through now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Ok,
    /// A page cannot be read (why): writes refused until a restart.
    Damaged(String),
    /// The disk of the data directory is full: writes refused until space
    /// can be written again.
    DiskFull,
}

const OK: u8 = 0;
const DAMAGED: u8 = 1;
const DISK_FULL: u8 = 2;

/// The state of one database file, shared by every clone of its store.
#[derive(Debug)]
pub struct Health {
    /// The database file, for messages.
    path: PathBuf,
    /// [`OK`], [`DAMAGED`] or [`DISK_FULL`]: read by every write.
    code: AtomicU8,
    /// Why it is damaged (set once, with `code`).
    why: Mutex<String>,
    damage_events: AtomicU64,
    disk_full_events: AtomicU64,
}

impl Health {
    #[must_use]
    pub fn new(path: &Path) -> Self {
        Health {
            path: path.to_path_buf(),
            code: AtomicU8::new(OK),
            why: Mutex::default(),
            damage_events: AtomicU64::new(0),
            disk_full_events: AtomicU64::new(0),
        }
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The data directory: the file's directory.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    #[must_use]
    pub fn state(&self) -> State {
        match self.code.load(Ordering::Acquire) {
            OK => State::Ok,
            DAMAGED => State::Damaged(self.why.lock().unwrap_or_else(PoisonError::into_inner).clone()),
            _ => State::DiskFull,
        }
    }

    /// Whether writes go through now (background writers wait while not).
    #[must_use]
    pub fn writable(&self) -> bool {
        self.code.load(Ordering::Acquire) == OK
    }

    /// Times damage was met since start (every corruption error or panic in redb).
    #[must_use]
    pub fn damage_events(&self) -> u64 {
        self.damage_events.load(Ordering::Relaxed)
    }

    /// Times a write found the disk full (each time writes were working before).
    #[must_use]
    pub fn disk_full_events(&self) -> u64 {
        self.disk_full_events.load(Ordering::Relaxed)
    }

    /// Why a write is refused now, or `None` when it may go.
    #[must_use]
    pub fn refusal(&self) -> Option<StoreError> {
        match self.state() {
            State::Ok => None,
            State::Damaged(why) => Some(StoreError::WritesRefused { path: self.path.clone(), why }),
            State::DiskFull => Some(StoreError::NoSpace { dir: self.data_dir().to_path_buf() }),
        }
    }

    /// Records damage: from now on every write is refused. Damage is
    /// final; a full disk found earlier is no longer what matters.
    pub fn mark_damaged(&self, why: &str) {
        self.damage_events.fetch_add(1, Ordering::Relaxed);
        if self.code.load(Ordering::Acquire) == DAMAGED {
            return;
        }
        *self.why.lock().unwrap_or_else(PoisonError::into_inner) = why.to_string();
        if self.code.swap(DAMAGED, Ordering::AcqRel) != DAMAGED {
            tracing::error!(
                file = %self.path.display(),
                why,
                "the database file is damaged: every write is refused from now on (reads that reach the damage \
                 fail); {DAMAGE_REMEDY}"
            );
        }
    }

    /// Records a write that found the disk full; `true` when writes were
    /// going through until now.
    pub fn mark_disk_full(&self) -> bool {
        let was_ok = self.code.compare_exchange(OK, DISK_FULL, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if was_ok {
            self.disk_full_events.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                data_dir = %self.data_dir().display(),
                "the disk holding the data directory is full: writes answer 507 and reads go on; the database \
                 is reopened and writes resume by themselves once there is space (free some, or grow the disk)"
            );
        }
        was_ok
    }

    /// Lets writes through again after a full disk (damage stays).
    pub fn mark_writable(&self) {
        if self.code.compare_exchange(DISK_FULL, OK, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            tracing::info!(data_dir = %self.data_dir().display(), "there is space on the disk again: writes resume");
        }
    }
}

/// Opens (or creates) the database file. With `verify`, redb checks the
/// checksum of every page of the committed trees first (it reads the whole
/// file) and a file that fails is [`StoreError::Damaged`]. Without, the
/// file is trusted as redb left it, unless it was not closed cleanly: then
/// redb's repair walks and verifies every page the same way before anything
/// is served.
///
/// # Errors
/// The file cannot be opened, or it is damaged.
pub(crate) fn open_database(path: &Path, cache_bytes: usize, verify: bool) -> Result<redb::Database, StoreError> {
    let started = std::time::Instant::now();
    let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = repaired.clone();
    let db = super::guarded(|| {
        let mut builder = redb::Database::builder();
        builder.set_cache_size(cache_bytes).set_check_integrity_on_open(verify);
        if verify {
            builder.set_repair_callback(log_verify);
        } else {
            builder.set_repair_callback(move |session| {
                seen.store(true, Ordering::Relaxed);
                super::log_repair(session);
            });
        }
        Ok(builder.create(path)?)
    })
    .inspect_err(|e| {
        if let StoreError::Damaged(why) = e {
            tracing::error!(file = %path.display(), why, "the database file is damaged; {DAMAGE_REMEDY}");
        }
    })?;
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if verify {
        tracing::info!(elapsed_ms, "verified every page of the database (storage.verify_on_start)");
    } else if repaired.load(Ordering::Relaxed) {
        tracing::info!(elapsed_ms, "verified and repaired the database after an unclean shutdown");
    }
    Ok(db)
}

/// Logs the check of `storage.verify_on_start`, a tenth of the way at a time.
fn log_verify(session: &mut redb::RepairSession) {
    static LAST: AtomicU8 = AtomicU8::new(u8::MAX);
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "0.0..=1.0 times 10")]
    let tenth = (session.progress().clamp(0.0, 1.0) * 10.0) as u8;
    if LAST.swap(tenth, Ordering::Relaxed) != tenth {
        tracing::info!(
            progress_pct = u32::from(tenth) * 10,
            "verifying every page of the database (storage.verify_on_start)"
        );
    }
}

/// What a storage failure was, as the conversion to [`StoreError`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoSeen {
    /// No space left (or the quota reached).
    NoSpace,
    /// redb refuses because an earlier operation failed (it wants a reopen).
    PreviousIo,
    /// Another I/O failure (redb refuses everything after it, too).
    Other,
    /// A page that cannot be read.
    Corrupted,
}

thread_local! {
    /// The worst storage failure converted on this thread since [`watch_io`].
    static SEEN: Cell<Option<IoSeen>> = const { Cell::new(None) };
}

/// Starts noting the storage failures of this thread (a write transaction runs on one).
pub(crate) fn watch_io() {
    SEEN.with(|s| s.set(None));
}

/// The storage failures noted on this thread since [`watch_io`], forgotten.
pub(crate) fn take_io() -> Option<IoSeen> {
    SEEN.with(Cell::take)
}

/// The store the service serves, told about damage wherever it is met.
static WATCHED: OnceLock<Arc<Health>> = OnceLock::new();

/// Notes a failure of redb's storage layer as it becomes a [`StoreError`].
pub(crate) fn seen(e: &redb::StorageError) {
    let kind = match e {
        redb::StorageError::Corrupted(why) => {
            if let Some(h) = WATCHED.get() {
                h.mark_damaged(why);
            }
            IoSeen::Corrupted
        }
        redb::StorageError::Io(io) if is_no_space(io) => IoSeen::NoSpace,
        redb::StorageError::Io(_) => IoSeen::Other,
        redb::StorageError::PreviousIo => IoSeen::PreviousIo,
        // A value too large, a closed database: nothing to reopen for.
        _ => return,
    };
    // No space outranks what followed it (redb answers PreviousIo after it).
    SEEN.with(|s| {
        if s.get() != Some(IoSeen::NoSpace) {
            s.set(Some(kind));
        }
    });
}

/// Whether an I/O error says the disk (or the quota) is full.
#[must_use]
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

/// Serves `health`: damage met anywhere in the process (a corruption error
/// converted far from the store, a panic inside redb on any thread) marks
/// it. Installs a panic hook that keeps the previous one.
pub fn watch(health: Arc<Health>) {
    if WATCHED.set(health).is_err() {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let (Some(place), Some(h)) = (info.location(), WATCHED.get())
            && is_redb_source(place.file())
        {
            let msg = panic_text(info.payload());
            h.mark_damaged(&format!("redb stopped at {}:{}: {msg}", place.file(), place.line()));
        }
        previous(info);
    }));
}

/// Whether a source path is inside the redb crate.
fn is_redb_source(file: &str) -> bool {
    file.split(['/', '\\']).any(|part| part == "redb" || part.starts_with("redb-"))
}

/// The message of a panic.
#[must_use]
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "redb stopped on a page it cannot read".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_refuses_writes_until_space_returns_and_counts_once_per_outage() {
        let h = Health::new(Path::new("/srv/data/messenger-chat.redb"));
        assert!(h.writable() && h.refusal().is_none());
        assert!(h.mark_disk_full());
        assert!(!h.mark_disk_full(), "a second failing write is the same outage");
        assert_eq!(h.disk_full_events(), 1);
        let refusal = h.refusal().unwrap().to_string();
        assert!(refusal.contains("/srv/data") && refusal.contains("full"), "{refusal}");
        assert!(!h.writable());
        h.mark_writable();
        assert_eq!(h.state(), State::Ok);
        assert!(h.mark_disk_full());
        assert_eq!(h.disk_full_events(), 2);
    }

    #[test]
    fn damage_is_final_and_outranks_a_full_disk() {
        let h = Health::new(Path::new("/srv/data/messenger-chat.redb"));
        h.mark_disk_full();
        h.mark_damaged("page checksum mismatch");
        h.mark_writable();
        assert!(!h.mark_disk_full());
        assert_eq!(h.state(), State::Damaged("page checksum mismatch".into()));
        h.mark_damaged("another");
        assert_eq!(h.state(), State::Damaged("page checksum mismatch".into()), "the first reason stays");
        assert_eq!(h.damage_events(), 2);
        let refusal = h.refusal().unwrap().to_string();
        for part in ["/srv/data/messenger-chat.redb", "damaged", "check --repair", "backup"] {
            assert!(refusal.contains(part), "{part} in {refusal}");
        }
    }

    #[test]
    fn no_space_outranks_the_refusals_that_follow_it() {
        watch_io();
        seen(&redb::StorageError::Io(std::io::Error::from(std::io::ErrorKind::StorageFull)));
        seen(&redb::StorageError::PreviousIo);
        assert_eq!(take_io(), Some(IoSeen::NoSpace));
        assert_eq!(take_io(), None);
        seen(&redb::StorageError::PreviousIo);
        assert_eq!(take_io(), Some(IoSeen::PreviousIo));
        assert!(is_no_space(&std::io::Error::from_raw_os_error(28)), "ENOSPC");
    }

    #[test]
    fn redb_sources_are_told_apart() {
        assert!(is_redb_source("/root/.cargo/registry/src/index.crates.io-1/redb-4.6.0/src/tree_store/btree.rs"));
        assert!(!is_redb_source("src/store/mod.rs"));
        assert!(!is_redb_source("/x/redbox/src/lib.rs"));
    }
}

#[cfg(test)]
mod store_tests {
    use super::super::{Read as _, Store, StoreError};
    use crate::model::Organization;

    #[test]
    fn a_panic_in_a_write_marks_the_store_damaged_and_no_later_write_reaches_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let store = Store::open(&path, 1 << 20).unwrap();
        let org = |id| Organization { id, name: format!("org {id}"), created_at: 0 };
        store.write(|w| w.put_org(&org(1))).unwrap();

        let hit: Result<(), StoreError> = store.write(|_| panic!("a page it cannot read"));
        assert!(matches!(hit, Err(StoreError::Damaged(ref why)) if why.contains("cannot read")), "{hit:?}");
        assert!(!store.health().writable());
        let before = std::fs::read(&path).unwrap();
        let refused = store.write(|w| w.put_org(&org(2)));
        let Err(refused @ StoreError::WritesRefused { .. }) = refused else { panic!("{refused:?}") };
        assert!(refused.to_string().contains(&path.display().to_string()), "{refused}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "a refused write reached the file");
        assert!(store.read().unwrap().org(1).unwrap().is_some(), "reads go on");
        assert_eq!(store.health().damage_events(), 1);
    }
}
