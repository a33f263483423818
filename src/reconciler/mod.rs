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
//! Concurrency: up to `matrix.concurrency` entries are applied at once, each
//! about a different room or user (its [`Subject`]); the entries of one
//! subject go one after another, in the order they were queued. A homeserver
//! spends most of a room's creation waiting on its own database, so a few in
//! flight keep it busy where one at a time leaves it idle. User entries
//! (each may make an account: an Argon2 derivation and a registration) take
//! at most half of the slots while room entries wait, so importing many
//! users does not hold up the rooms of other organizations.
//!
//! Failures: when the homeserver cannot be reached (or the database fails)
//! nothing new starts, with a backoff doubling up to 30 s; when one room's or
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
use tokio::task::JoinSet;

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
    /// Done, and the entry crossed off in the step's own last transaction
    /// (one durable write fewer per room).
    Booked,
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
    /// Members the homeserver refused to remove from rooms deleted that
    /// way, who stay in them (for /metrics).
    members_stayed: AtomicU64,
}

impl Progress {
    #[must_use]
    pub fn new(domain: Arc<Domain>) -> Self {
        Progress {
            domain,
            finished: watch::channel(0).0,
            errors: AtomicU64::new(0),
            left_with_history: AtomicU64::new(0),
            members_stayed: AtomicU64::new(0),
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

    /// Members the homeserver refused to remove from rooms deleted by
    /// emptying and leaving them, since start: they stay in those rooms.
    #[must_use]
    pub fn members_left_in_deleted_rooms(&self) -> u64 {
        self.members_stayed.load(Ordering::Relaxed)
    }

    /// A room deleted by emptying and leaving it, `stayed` members not removed.
    fn left_one(&self, stayed: usize) {
        self.left_with_history.fetch_add(1, Ordering::Relaxed);
        self.members_stayed.fetch_add(u64::try_from(stayed).unwrap_or(u64::MAX), Ordering::Relaxed);
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

/// Outbox entries looked at each time a slot frees: enough to find the
/// entries that may go behind a long run of ones that wait (a failing
/// room's later changes, user entries beyond their share of the slots).
const WINDOW: usize = 1024;

/// An entry that was applied, and how that ended.
struct Finished {
    seq: u64,
    op: OutboxOp,
    result: Result<Step, StepError>,
    /// The entry crossed off (or sent to the back) after a step that did not
    /// fail, by the step's own task: `Err` when the database failed then.
    booked: Option<Result<(), StoreError>>,
}

/// What the run loop keeps between entries: the steps in flight and who waits.
struct Schedule {
    /// The steps running, at most `matrix.concurrency`. Dropping the set
    /// (the reconciler stopped) aborts them, as a crash would.
    tasks: JoinSet<Finished>,
    /// The subject of each running step, by task, so that a step that
    /// panics frees its subject too.
    running: HashMap<tokio::task::Id, Subject>,
    /// Rooms and users whose last step failed, and when to try them again:
    /// their entries wait while the others go on.
    waiting: HashMap<Subject, Backoff>,
    /// The homeserver as a whole (or the database) failed: nothing new
    /// starts before its `until`.
    outage: Option<Backoff>,
    prepared: bool,
}

impl Reconciler {
    /// What the homeserver offers (settled by `prepare`, which runs first).
    fn offers(&self) -> Offers {
        self.hs.offers().unwrap_or_else(|| Offers::client_api_only("not settled yet"))
    }

    /// The user's derived password when the homeserver needs the user's own
    /// session for an action (`offered` false), `None` otherwise.
    async fn own_password(
        &self,
        user: crate::model::UserId,
        offered: bool,
    ) -> Result<Option<zeroize::Zeroizing<String>>, StepError> {
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
        }
    }

    /// Runs forever: starts the entries that may go, up to
    /// `matrix.concurrency` at once, and books each one's outcome as it ends.
    pub async fn run(self) {
        let me = Arc::new(self);
        let notify = me.domain.outbox_changed.clone();
        let slots = usize::try_from(me.domain.config.matrix.concurrency).unwrap_or(1).max(1);
        let mut s = Schedule {
            tasks: JoinSet::new(),
            running: HashMap::new(),
            waiting: HashMap::new(),
            outage: None,
            prepared: false,
        };
        loop {
            let now = tokio::time::Instant::now();
            if !me.domain.store.health().writable() {
                // Every step ends in a write: none starts while the database refuses them.
                tokio::time::sleep(crate::store::slot::RETRY_EVERY).await;
                continue;
            }
            let paused = s.outage.filter(|b| b.until > now).map(|b| b.until);
            if paused.is_none() {
                if !s.prepared {
                    if let Err(e) = me.hs.prepare().await {
                        me.outage(&mut s, &e.into());
                        continue;
                    }
                    s.prepared = true;
                    s.outage = None;
                    tracing::info!(bot = %me.domain.ids.bot(), "homeserver account of the service is ready");
                    match me.hs.offers() {
                        Some(o) if o.all() => {
                            tracing::info!(admin_api = true, how = %o.why, "homeserver admin API in use");
                        }
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
                if let Err(e) = me.fill(&mut s, slots) {
                    me.outage(&mut s, &e.into());
                    continue;
                }
            }
            // Wake for a step that ends, new work, or the end of a pause.
            let retry = s.waiting.values().map(|b| b.until).filter(|t| *t > now).min();
            let wake = [paused, retry].into_iter().flatten().fold(now + IDLE_POLL, std::cmp::Ord::min);
            let ended = tokio::select! {
                Some(done) = s.tasks.join_next_with_id(), if !s.tasks.is_empty() => Some(done),
                () = notify.notified(), if paused.is_none() => None,
                () = tokio::time::sleep_until(wake) => None,
            };
            if let Some(done) = ended {
                me.finish(&mut s, done);
                while let Some(done) = s.tasks.try_join_next_with_id() {
                    me.finish(&mut s, done);
                }
            }
        }
    }

    /// Starts the entries that may go now, oldest first, while slots are
    /// free: the first entry of each subject that has none running and is
    /// not waiting out a failure. User entries take at most half of the
    /// slots while a room entry could use one.
    fn fill(self: &Arc<Self>, s: &mut Schedule, slots: usize) -> Result<(), StoreError> {
        if s.tasks.len() >= slots {
            return Ok(());
        }
        let head = self.domain.store.read()?.outbox_head(WINDOW)?;
        if head.is_empty() {
            s.waiting.clear();
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        let user_share = (slots / 2).max(1);
        let mut users = s.running.values().filter(|x| matches!(x, Subject::User(_))).count();
        // A subject seen once: its later entries wait for that one.
        let mut seen: HashSet<Subject> = s.running.values().copied().collect();
        let mut deferred = Vec::new();
        for (seq, op) in head {
            let subject = Subject::of(&op);
            if !seen.insert(subject) || s.waiting.get(&subject).is_some_and(|b| b.until > now) {
                continue;
            }
            if let Subject::User(_) = subject {
                if users >= user_share {
                    deferred.push((seq, op, subject));
                    continue;
                }
                users += 1;
            }
            self.start(s, seq, op, subject);
            if s.tasks.len() >= slots {
                return Ok(());
            }
        }
        // No room entry can go now: users may have the remaining slots.
        for (seq, op, subject) in deferred {
            if s.tasks.len() >= slots {
                break;
            }
            self.start(s, seq, op, subject);
        }
        Ok(())
    }

    fn start(self: &Arc<Self>, s: &mut Schedule, seq: u64, op: OutboxOp, subject: Subject) {
        let me = self.clone();
        let task = s.tasks.spawn(async move {
            let result = me.apply(seq, &op).await;
            // Booked here rather than on the run loop, so the run loop only
            // keeps count and starts the next entry. The subject counts as
            // running until the run loop has seen this task end, so its
            // next entry cannot start before this one is crossed off.
            let booked = result.as_ref().ok().map(|step| me.book(seq, &op, *step));
            Finished { seq, op, result, booked }
        });
        s.running.insert(task.id(), subject);
    }

    /// Crosses an entry off the outbox, or sends it to the back when more
    /// remains.
    fn book(&self, seq: u64, op: &OutboxOp, step: Step) -> Result<(), StoreError> {
        if step == Step::Booked {
            return Ok(());
        }
        self.domain.store.write(|w| {
            w.remove_outbox(seq)?;
            if step == Step::Later {
                w.push_outbox(op)?;
            }
            Ok::<_, StoreError>(())
        })
    }

    /// Books the outcome of one step: crossed off the outbox (or sent to its
    /// back when more remains), or its subject waits after a failure.
    fn finish(&self, s: &mut Schedule, done: Result<(tokio::task::Id, Finished), tokio::task::JoinError>) {
        let (subject, Finished { seq, op, result, booked }) = match done {
            Ok((id, finished)) => match s.running.remove(&id) {
                Some(subject) => (subject, finished),
                None => (Subject::of(&finished.op), finished),
            },
            Err(e) => {
                // A bug in a step: its subject waits as after a failure; the others go on.
                if let Some(subject) = s.running.remove(&e.id()) {
                    self.progress.failed();
                    tracing::error!(error = %e, ?subject, "a homeserver step panicked; its room or user waits");
                    let b = Backoff::after_failure(s.waiting.get(&subject).copied(), None);
                    s.waiting.insert(subject, b);
                }
                return;
            }
        };
        let now = tokio::time::Instant::now();
        let booked = match result {
            Ok(_) => {
                s.waiting.remove(&subject);
                // The homeserver answers: the next outage starts its backoff afresh.
                if s.outage.is_some_and(|b| b.until <= now) {
                    s.outage = None;
                }
                booked.unwrap_or(Ok(()))
            }
            Err(e) if e.is_outage() => {
                self.note_failure(&op, &e);
                self.outage(s, &e);
                return;
            }
            Err(e) if e.is_retryable() => {
                self.progress.failed();
                let b = Backoff::after_failure(s.waiting.get(&subject).copied(), e.retry_after());
                tracing::warn!(error = %e, ?op, retry_in_ms = u64::try_from(b.until.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX), "homeserver step failed; its room or user waits, the others go on");
                s.waiting.insert(subject, b);
                self.note_failure(&op, &e);
                return;
            }
            Err(e) => {
                // The homeserver refuses this step as it is: keep the
                // reason on the room and go on with the others.
                self.progress.failed();
                s.waiting.remove(&subject);
                tracing::error!(error = %e, ?op, "homeserver refused a step; it is not retried");
                self.note_failure(&op, &e);
                self.book(seq, &op, Step::Done)
            }
        };
        match booked {
            Ok(()) => self.progress.finished_one(),
            // Done but not crossed off: redone (it is idempotent) once the database answers.
            Err(e) => self.outage(s, &e.into()),
        }
    }

    /// The homeserver as a whole (or the database) fails: nothing new starts
    /// until the backoff has passed. Steps in flight that fail the same way
    /// meanwhile do not lengthen it.
    fn outage(&self, s: &mut Schedule, e: &StepError) {
        self.progress.failed();
        let now = tokio::time::Instant::now();
        if s.outage.is_some_and(|b| b.until > now) {
            return;
        }
        let b = Backoff::after_failure(s.outage, e.retry_after());
        let wait = b.until.saturating_duration_since(now);
        tracing::warn!(error = %e, retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "homeserver step failed; will retry");
        s.outage = Some(b);
    }

    /// One outbox entry's work.
    async fn apply(&self, seq: u64, op: &OutboxOp) -> Result<Step, StepError> {
        match op {
            OutboxOp::SyncRoom { room_id } => return self.sync_room(seq, *room_id).await,
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
                crate::domain::events::room_sync_failed(w, self.domain.clock.now(), &room, &message)?;
            }
            Ok::<_, StoreError>(())
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot record a sync error");
        }
    }
}
