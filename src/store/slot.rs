//! The open database, which can be closed and opened again while the
//! service runs.
//!
//! After a failed write (a full disk) redb refuses every later operation,
//! reads included, until the file is reopened. The slot hands each
//! operation the database of the moment; a reopen takes it out, waits
//! (bounded) for the operations still holding it, closes it and opens the
//! file again, in a background thread. Meanwhile operations are answered
//! [`StoreError::Reopening`] at once: nothing waits on the reopen. While the
//! disk stays full the same thread tries every [`RETRY_EVERY`] whether
//! [`PROBE_BYTES`] can be written to the data directory, and lets writes
//! through again when they can.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redb::Database;

use super::StoreError;
use super::health::Health;

/// Pause between two reopen attempts, and between two probes of a full disk.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);
/// How long a reopen waits for the operations still using the old database.
const DRAIN_WAIT: Duration = Duration::from_secs(10);
/// Bytes that must fit in the data directory before writes resume: a commit
/// may grow the file by a few megabytes at once.
pub const PROBE_BYTES: usize = 4 << 20;
/// Name of the probe file inside the data directory (removed after each probe).
const PROBE_FILE: &str = ".messenger-chat-space-probe";

/// Opens the database file (`create`s it when missing).
pub(crate) type Opener = Box<dyn Fn() -> Result<Database, StoreError> + Send + Sync>;

/// The database of the moment, and its health.
pub struct Slot {
    db: RwLock<Option<Arc<Database>>>,
    pub(crate) health: Arc<Health>,
    open: Opener,
    /// A reopen thread runs.
    recovering: AtomicBool,
    /// A failure asked for a reopen since the thread last looked.
    wanted: AtomicBool,
    /// The address of the database that failed: a failure on one already
    /// replaced asks for nothing more.
    failed: AtomicUsize,
}

impl Slot {
    pub(crate) fn new(db: Database, health: Arc<Health>, open: Opener) -> Self {
        Slot {
            db: RwLock::new(Some(Arc::new(db))),
            health,
            open,
            recovering: AtomicBool::new(false),
            wanted: AtomicBool::new(false),
            failed: AtomicUsize::new(0),
        }
    }

    /// The database now; [`StoreError::Reopening`] while it is being reopened.
    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.db.read().unwrap_or_else(PoisonError::into_inner).clone().ok_or(StoreError::Reopening)
    }

    /// The database, held alone: `None` when anything else holds it.
    pub(crate) fn take_alone(&self) -> Option<Database> {
        let taken = self.db.write().unwrap_or_else(PoisonError::into_inner).take()?;
        match Arc::try_unwrap(taken) {
            Ok(db) => Some(db),
            Err(shared) => {
                self.put(shared);
                None
            }
        }
    }

    pub(crate) fn put(&self, db: Arc<Database>) {
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = Some(db);
    }

    /// The address that names a database in [`Slot::reopen_soon`].
    pub(crate) fn id(db: &Arc<Database>) -> usize {
        Arc::as_ptr(db) as usize
    }

    /// Reopens the database `failed` (see [`Slot::id`]) in the background,
    /// once however many ask; nothing when it was replaced already.
    pub(crate) fn reopen_soon(self: &Arc<Self>, failed: usize) {
        self.failed.store(failed, Ordering::Release);
        self.wanted.store(true, Ordering::Release);
        if self.recovering.swap(true, Ordering::AcqRel) {
            return;
        }
        let slot = self.clone();
        let spawned = std::thread::Builder::new().name("db-reopen".into()).spawn(move || slot.recover());
        if let Err(e) = spawned {
            self.recovering.store(false, Ordering::Release);
            tracing::error!(error = %e, "cannot start the thread that reopens the database");
        }
    }

    /// Reopens until it works, then waits for space while the disk is full.
    fn recover(&self) {
        loop {
            while self.wanted.swap(false, Ordering::AcqRel) {
                self.reopen_until_open();
            }
            self.wait_for_space();
            if self.wanted.load(Ordering::Acquire) {
                continue;
            }
            self.recovering.store(false, Ordering::Release);
            // A failure that came after the last look, and found the flag set.
            if !self.wanted.load(Ordering::Acquire) || self.recovering.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }

    fn reopen_until_open(&self) {
        for attempt in 1u64.. {
            match self.reopen() {
                Ok(()) => {
                    tracing::info!(file = %self.health.path().display(), "reopened the database: reads go on");
                    return;
                }
                Err(e) => {
                    if attempt == 1 || attempt % 30 == 0 {
                        tracing::warn!(
                            file = %self.health.path().display(), error = %e, attempt,
                            "cannot reopen the database yet; trying again every {} s", RETRY_EVERY.as_secs()
                        );
                    }
                    std::thread::sleep(RETRY_EVERY);
                }
            }
        }
    }

    /// Closes the database (once nothing uses it) and opens the file again.
    fn reopen(&self) -> Result<(), StoreError> {
        let taken = self.db.write().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(current) = taken.as_ref().filter(|db| Self::id(db) != self.failed.load(Ordering::Acquire)) {
            // Reopened already since that failure.
            self.put(current.clone());
            return Ok(());
        }
        if let Some(mut shared) = taken {
            let deadline = Instant::now() + DRAIN_WAIT;
            let db = loop {
                match Arc::try_unwrap(shared) {
                    Ok(db) => break db,
                    Err(still) if Instant::now() < deadline => {
                        shared = still;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(still) => {
                        self.put(still);
                        return Err(StoreError::Db("operations still use the database".into()));
                    }
                }
            };
            // It failed; closing it may fail too, and the next open repairs.
            if let Err(e) = db.close() {
                tracing::debug!(error = %e, "closing the failed database");
            }
        }
        let db = (self.open)()?;
        self.put(Arc::new(db));
        Ok(())
    }

    /// While the disk is full: probes every [`RETRY_EVERY`], lets writes
    /// through once the probe fits.
    fn wait_for_space(&self) {
        while self.health.state() == super::health::State::DiskFull {
            match probe(self.health.data_dir()) {
                Ok(()) => self.health.mark_writable(),
                Err(_) => std::thread::sleep(RETRY_EVERY),
            }
            if self.wanted.load(Ordering::Acquire) {
                return;
            }
        }
    }
}

/// Writes [`PROBE_BYTES`] to a file in `dir`, durably, and removes it.
///
/// # Errors
/// The bytes do not fit (or the directory cannot be written).
pub fn probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(PROBE_FILE);
    let written = (|| {
        let mut f = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..PROBE_BYTES / chunk.len() {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    })();
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}
