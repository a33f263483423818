//! The reconciler: one background task that works through the outbox and
//! makes the homeserver match the database, through [`Homeserver`].
//!
//! Every step is idempotent, so a retry after a failure, a restart or a
//! crash redoes nothing twice: a room is looked up by the marker it was made
//! with before a second one is made, the homeserver compares before it
//! changes, and a deletion's progress token is written down and followed to
//! completion. The work on one room ([`Reconciler::apply`]) reads the room
//! and writes its outcome itself, so it stands alone.
//!
//! Failures: when the homeserver cannot be reached (or the database fails)
//! everything waits, with a backoff doubling up to 30 s; when one room's or
//! user's step fails, that room or user waits with its own backoff and the
//! others go on, so one failing organization does not hold up the rest.

mod accounts;
mod rooms;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::Domain;
use crate::domain::sessions::{AccountError, Sessions};
use crate::homeserver::{Homeserver, HomeserverError, Offers};
use crate::model::{OutboxOp, RoomId};
use crate::store::{Read, StoreError};

/// Why a step did not finish.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Homeserver(#[from] HomeserverError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

impl StepError {
    /// Whether the same step may succeed later as it is.
    fn is_retryable(&self) -> bool {
        match self {
            StepError::Homeserver(e) => e.is_retryable(),
            StepError::Store(_) | StepError::Other(_) => true,
        }
    }

    /// Whether nothing can be done now, whatever the entry: the homeserver
    /// cannot be reached or limits the service, or the database fails.
    fn is_outage(&self) -> bool {
        match self {
            StepError::Homeserver(e) => e.is_outage(),
            StepError::Store(_) => true,
            StepError::Other(_) => false,
        }
    }

    /// The wait the homeserver asked for.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            StepError::Homeserver(e) => e.retry_after(),
            _ => None,
        }
    }
}

impl From<crate::error::Error> for StepError {
    fn from(e: crate::error::Error) -> Self {
        StepError::Other(e.to_string())
    }
}

impl From<AccountError> for StepError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::Homeserver(h) => StepError::Homeserver(h),
            AccountError::Service(s) => s.into(),
        }
    }
}

/// How a step that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Done,
    /// Part of the work is done and more remains: the entry goes to the back
    /// of the outbox, so the changes queued meanwhile go first.
    Later,
}

/// What request handlers see of the reconciler: how far it got, and how
/// often the homeserver failed it.
pub struct Progress {
    domain: Arc<Domain>,
    /// Bumped whenever an outbox entry is finished; handlers wait on it.
    finished: watch::Sender<u64>,
    /// Failed homeserver steps since start (for /metrics).
    errors: AtomicU64,
    /// Rooms deleted since start by emptying and leaving them, their
    /// history left on the homeserver (for /metrics).
    left_with_history: AtomicU64,
}

impl Progress {
    #[must_use]
    pub fn new(domain: Arc<Domain>) -> Self {
        Progress {
            domain,
            finished: watch::channel(0).0,
            errors: AtomicU64::new(0),
            left_with_history: AtomicU64::new(0),
        }
    }

    /// Waits until the room's homeserver side matches `generation`, the room
    /// is gone, or `matrix.sync_wait` has passed.
    pub async fn wait_synced(&self, room: RoomId, generation: u64) {
        let deadline = tokio::time::Instant::now() + self.domain.config.matrix.sync_wait();
        let mut rx = self.finished.subscribe();
        loop {
            let done = match self.domain.store.read().and_then(|r| r.room(room)) {
                Ok(Some(r)) => r.synced_generation >= generation && !r.matrix_room_id.is_empty(),
                Ok(None) | Err(_) => true,
            };
            if done {
                return;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return;
            }
        }
    }

    /// Homeserver steps that failed since start.
    #[must_use]
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Rooms deleted since start whose history stays on the homeserver
    /// (deleted without its admin API).
    #[must_use]
    pub fn rooms_left_with_history(&self) -> u64 {
        self.left_with_history.load(Ordering::Relaxed)
    }

    fn left_one(&self) {
        self.left_with_history.fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn finished_one(&self) {
        self.finished.send_modify(|n| *n += 1);
    }
}

/// The background task.
pub struct Reconciler {
    domain: Arc<Domain>,
    hs: Arc<dyn Homeserver>,
    sessions: Arc<Sessions>,
    progress: Arc<Progress>,
    /// Rooms whose creation was attempted in this process without the id
    /// coming back: look for their marker before making another.
    suspects: std::sync::Mutex<HashSet<RoomId>>,
    /// Marker → homeserver room, of the rooms made before this process
    /// first needed to know (built once, lazily).
    found_at_start: tokio::sync::Mutex<Option<HashMap<RoomId, String>>>,
    prepared: bool,
    /// Rooms and users whose last step failed, and when to try them again:
    /// their entries wait while the others go on.
    waiting: HashMap<Subject, Backoff>,
}

/// Longest pause between retries while the homeserver fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// First pause after a failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// How often the outbox is looked at without a wake-up (administration
/// subcommands write from another process).
const IDLE_POLL: Duration = Duration::from_secs(2);

/// What an outbox entry changes: entries of one subject are applied in
/// order, so when one fails the later ones of the same subject wait too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Subject {
    Room(RoomId),
    User(crate::model::UserId),
}

impl Subject {
    fn of(op: &OutboxOp) -> Self {
        match op {
            OutboxOp::SyncRoom { room_id } | OutboxOp::DeleteRoom { room_id, .. } => Subject::Room(*room_id),
            OutboxOp::SyncUser { user_id } | OutboxOp::DeactivateUser { user_id } => Subject::User(*user_id),
        }
    }
}

/// A pause that doubles with every failure, up to [`MAX_BACKOFF`].
#[derive(Debug, Clone, Copy)]
struct Backoff {
    next: Duration,
    /// When the subject is tried again.
    until: tokio::time::Instant,
}

impl Backoff {
    /// The pause after one more failure, `asked` when the homeserver named one.
    fn after_failure(previous: Option<Backoff>, asked: Option<Duration>) -> Backoff {
        let pause = previous.map_or(FIRST_BACKOFF, |b| b.next);
        let wait = asked.unwrap_or(pause);
        Backoff { next: (pause * 2).min(MAX_BACKOFF), until: tokio::time::Instant::now() + wait }
    }
}

/// How a pass over the outbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Some entry was finished (or went to the back).
    Worked,
    /// Nothing to do.
    Idle,
    /// Every entry waits after a failure, the first until then.
    Waiting(tokio::time::Instant),
}

impl Reconciler {
    /// What the homeserver offers (settled by `prepare`, which runs first).
    fn offers(&self) -> Offers {
        self.hs.offers().unwrap_or_else(|| Offers::client_api_only("not settled yet"))
    }

    /// The user's derived password when the homeserver needs the user's own
    /// session for an action (`offered` false), `None` otherwise.
    async fn own_password(&self, user: crate::model::UserId, offered: bool) -> Result<Option<String>, StepError> {
        if offered {
            return Ok(None);
        }
        let (_, password) = self.domain.credentials(user, crate::domain::passwords::Wait::Always).await?;
        Ok(Some(password))
    }

    #[must_use]
    pub fn new(domain: Arc<Domain>, hs: Arc<dyn Homeserver>, sessions: Arc<Sessions>, progress: Arc<Progress>) -> Self {
        Reconciler {
            domain,
            hs,
            sessions,
            progress,
            suspects: std::sync::Mutex::new(HashSet::new()),
            found_at_start: tokio::sync::Mutex::new(None),
            prepared: false,
            waiting: HashMap::new(),
        }
    }

    /// Runs forever.
    pub async fn run(mut self) {
        let notify = self.domain.outbox_changed.clone();
        let mut outage: Option<Backoff> = None;
        loop {
            match self.pass().await {
                Ok(Pass::Worked) => outage = None,
                Ok(Pass::Idle) => {
                    outage = None;
                    let _ = tokio::time::timeout(IDLE_POLL, notify.notified()).await;
                }
                Ok(Pass::Waiting(until)) => {
                    outage = None;
                    let until = until.min(tokio::time::Instant::now() + IDLE_POLL);
                    let _ = tokio::time::timeout_at(until, notify.notified()).await;
                }
                Err(e) => {
                    // The homeserver as a whole (or the database) fails: everything waits.
                    self.progress.failed();
                    let b = Backoff::after_failure(outage, e.retry_after());
                    let wait = b.until.saturating_duration_since(tokio::time::Instant::now());
                    tracing::warn!(error = %e, retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "homeserver step failed; will retry");
                    tokio::time::sleep_until(b.until).await;
                    outage = Some(b);
                }
            }
        }
    }

    /// Works through the outbox head once. An entry whose step fails waits
    /// (with its own backoff) while the entries of other rooms and users go
    /// on; an outage of the homeserver or the database ends the pass.
    async fn pass(&mut self) -> Result<Pass, StepError> {
        if !self.prepared {
            self.hs.prepare().await?;
            self.prepared = true;
            tracing::info!(bot = %self.domain.ids.bot(), "homeserver account of the service is ready");
            match self.hs.offers() {
                Some(o) if o.all() => tracing::info!(admin_api = true, how = %o.why, "homeserver admin API in use"),
                Some(o) => tracing::warn!(
                    admin_api = false,
                    how = %o.why,
                    join_without_session = o.join_without_session,
                    purge_rooms = o.purge_rooms,
                    accounts_without_session = o.accounts_without_session,
                    "homeserver admin API not used: claims, display names and deactivations go through the \
                     users' own sessions, and a deleted room is emptied and left with its history on the homeserver"
                ),
                None => {}
            }
        }
        let head = self.domain.store.read()?.outbox_head(64)?;
        if head.is_empty() {
            self.waiting.clear();
            return Ok(Pass::Idle);
        }
        let now = tokio::time::Instant::now();
        let mut held: HashSet<Subject> = HashSet::new();
        let mut worked = false;
        for (seq, op) in head {
            let subject = Subject::of(&op);
            if held.contains(&subject) || self.waiting.get(&subject).is_some_and(|b| b.until > now) {
                held.insert(subject);
                continue;
            }
            let step = match self.apply(&op).await {
                Ok(step) => {
                    self.waiting.remove(&subject);
                    step
                }
                Err(e) if e.is_outage() => {
                    self.note_failure(&op, &e);
                    return Err(e);
                }
                Err(e) if e.is_retryable() => {
                    self.progress.failed();
                    let b = Backoff::after_failure(self.waiting.get(&subject).copied(), e.retry_after());
                    tracing::warn!(error = %e, ?op, retry_in_ms = u64::try_from(b.until.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX), "homeserver step failed; its room or user waits, the others go on");
                    self.waiting.insert(subject, b);
                    held.insert(subject);
                    self.note_failure(&op, &e);
                    continue;
                }
                Err(e) => {
                    // The homeserver refuses this step as it is: keep the
                    // reason on the room and go on with the others.
                    self.progress.failed();
                    self.waiting.remove(&subject);
                    tracing::error!(error = %e, ?op, "homeserver refused a step; it is not retried");
                    self.note_failure(&op, &e);
                    Step::Done
                }
            };
            self.domain.store.write(|w| {
                w.remove_outbox(seq)?;
                if step == Step::Later {
                    w.push_outbox(&op)?;
                }
                Ok::<_, StoreError>(())
            })?;
            worked = true;
            self.progress.finished_one();
        }
        if worked {
            return Ok(Pass::Worked);
        }
        let first = self.waiting.values().map(|b| b.until).min().unwrap_or(now + FIRST_BACKOFF);
        Ok(Pass::Waiting(first))
    }

    /// One outbox entry's work.
    async fn apply(&self, op: &OutboxOp) -> Result<Step, StepError> {
        match op {
            OutboxOp::SyncRoom { room_id } => return self.sync_room(*room_id).await,
            OutboxOp::DeleteRoom { room_id, matrix_room_id } => {
                return self.delete_room(*room_id, matrix_room_id).await;
            }
            OutboxOp::SyncUser { user_id } => self.sync_user(*user_id).await?,
            OutboxOp::DeactivateUser { user_id } => self.deactivate_user(*user_id).await?,
        }
        Ok(Step::Done)
    }

    /// Keeps the last failure on the room so `syncError` shows it.
    fn note_failure(&self, op: &OutboxOp, e: &StepError) {
        let OutboxOp::SyncRoom { room_id } = op else { return };
        let message = e.to_string();
        let result = self.domain.store.write(|w| {
            if let Some(old) = w.room(*room_id)?
                && old.sync_error.as_deref() != Some(message.as_str())
            {
                let mut room = old.clone();
                room.sync_error = Some(message.clone());
                w.put_room(&room, Some(&old))?;
            }
            Ok::<_, StoreError>(())
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot record a sync error");
        }
    }
}
