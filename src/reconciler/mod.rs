//! The reconciler: one background task that works through the outbox and
//! makes the homeserver match the database.
//!
//! Every step is idempotent, so a retry after a failure, a restart or a
//! crash redoes nothing twice: a room is looked up by the marker in its
//! creation content before a second one is made, memberships and power
//! levels are compared before they are changed, a room delete's id is
//! written down and followed to completion.

mod accounts;
mod rooms;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::Domain;
use crate::matrix::{HomeserverClient, MatrixError};
use crate::model::{OutboxOp, RoomId};
use crate::store::{Read, StoreError};

/// Why a step did not finish.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Matrix(#[from] MatrixError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

impl StepError {
    /// Whether the same step may succeed later as it is.
    fn is_retryable(&self) -> bool {
        match self {
            StepError::Matrix(e) => e.is_retryable(),
            StepError::Store(_) => true,
            StepError::Other(_) => true,
        }
    }
}

impl From<crate::error::Error> for StepError {
    fn from(e: crate::error::Error) -> Self {
        StepError::Other(e.to_string())
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

/// The homeserver side, shared by the reconciler and the request handlers.
pub struct Homeserver {
    pub client: HomeserverClient,
    pub domain: Arc<Domain>,
    /// Bumped whenever an outbox entry is finished; handlers wait on it.
    progress: watch::Sender<u64>,
    /// Failed homeserver steps since start (for /metrics).
    pub errors: AtomicU64,
    /// Accounts known to exist, so the database is asked once per user.
    known_accounts: std::sync::Mutex<HashSet<i64>>,
}

impl Homeserver {
    /// The homeserver side of `domain`, when the config names a registration secret.
    ///
    /// # Errors
    /// The client cannot be configured (bad URL, unreadable secret file).
    pub fn new(domain: Arc<Domain>) -> Result<Option<Arc<Self>>, String> {
        let m = &domain.config.matrix;
        if m.registration_shared_secret.is_empty() && m.registration_shared_secret_file.is_empty() {
            return Ok(None);
        }
        let bot = domain.ids.bot();
        let bot_password = domain.key.matrix_password(&domain.config.security, &bot)?;
        let client = HomeserverClient::new(m, bot_password).map_err(|e| e.to_string())?;
        Ok(Some(Arc::new(Homeserver {
            client,
            domain,
            progress: watch::channel(0).0,
            errors: AtomicU64::new(0),
            known_accounts: std::sync::Mutex::new(HashSet::new()),
        })))
    }

    /// Waits until the room's homeserver side matches `generation`, the room
    /// is gone, or `matrix.sync_wait` has passed.
    pub async fn wait_synced(&self, room: RoomId, generation: u64) {
        let deadline = tokio::time::Instant::now() + self.domain.config.matrix.sync_wait();
        let mut rx = self.progress.subscribe();
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

    fn finished_one(&self) {
        self.progress.send_modify(|n| *n += 1);
    }
}

/// The background task.
pub struct Reconciler {
    hs: Arc<Homeserver>,
    /// Rooms whose creation was attempted in this process without the id
    /// coming back: look for their marker before making another.
    suspects: HashSet<RoomId>,
    /// Marker → Matrix room, of the rooms the bot had when this process
    /// first needed to know (built once, lazily).
    found_at_start: Option<HashMap<RoomId, String>>,
    bot_ready: bool,
}

/// Longest pause between retries while the homeserver fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the outbox is looked at without a wake-up (administration
/// subcommands write from another process).
const IDLE_POLL: Duration = Duration::from_secs(2);

impl Reconciler {
    #[must_use]
    pub fn new(hs: Arc<Homeserver>) -> Self {
        Reconciler { hs, suspects: HashSet::new(), found_at_start: None, bot_ready: false }
    }

    /// Runs forever.
    pub async fn run(mut self) {
        let notify = self.hs.domain.outbox_changed.clone();
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.pass().await {
                Ok(true) => backoff = Duration::from_millis(250),
                Ok(false) => {
                    backoff = Duration::from_millis(250);
                    let _ = tokio::time::timeout(IDLE_POLL, notify.notified()).await;
                }
                Err(e) => {
                    self.hs.errors.fetch_add(1, Ordering::Relaxed);
                    let wait = match &e {
                        StepError::Matrix(m) => m.retry_after().unwrap_or(backoff),
                        _ => backoff,
                    };
                    tracing::warn!(error = %e, retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "homeserver step failed; will retry");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Works through the outbox head. Ok(false) when it was empty.
    async fn pass(&mut self) -> Result<bool, StepError> {
        if !self.bot_ready {
            self.hs.client.ensure_bot().await?;
            self.bot_ready = true;
            tracing::info!(bot = self.hs.client.bot_user_id(), "homeserver account of the service is ready");
        }
        let head = self.hs.domain.store.read()?.outbox_head(64)?;
        if head.is_empty() {
            return Ok(false);
        }
        for (seq, op) in head {
            let step = match self.apply(&op).await {
                Ok(step) => step,
                Err(e) if e.is_retryable() => {
                    self.note_failure(&op, &e);
                    return Err(e);
                }
                Err(e) => {
                    // The homeserver refuses this step as it is: keep the
                    // reason on the room and go on with the others.
                    self.hs.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, ?op, "homeserver refused a step; it is not retried");
                    self.note_failure(&op, &e);
                    Step::Done
                }
            };
            self.hs.domain.store.write(|w| {
                w.remove_outbox(seq)?;
                if step == Step::Later {
                    w.push_outbox(&op)?;
                }
                Ok::<_, StoreError>(())
            })?;
            self.hs.finished_one();
        }
        Ok(true)
    }

    async fn apply(&mut self, op: &OutboxOp) -> Result<Step, StepError> {
        match op {
            OutboxOp::SyncRoom { room_id } => return self.sync_room(*room_id).await,
            OutboxOp::DeleteRoom { room_id, matrix_room_id } => self.delete_room(*room_id, matrix_room_id).await?,
            OutboxOp::SyncUser { user_id } => self.sync_user(*user_id).await?,
            OutboxOp::DeactivateUser { user_id } => self.deactivate_user(*user_id).await?,
        }
        Ok(Step::Done)
    }

    /// Keeps the last failure on the room so `syncError` shows it.
    fn note_failure(&self, op: &OutboxOp, e: &StepError) {
        let OutboxOp::SyncRoom { room_id } = op else { return };
        let message = e.to_string();
        let result = self.hs.domain.store.write(|w| {
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
