//! Matrix passwords, derived with Argon2id on demand, at a bounded cost.
//!
//! A derivation holds `security.argon2_memory_kib` (19 MiB by default) and a
//! core for tens of milliseconds. Unbounded, a hundred concurrent
//! credentials requests took the process to gigabytes; so at most
//! `security.argon2_concurrency` derivations run at once, each in a buffer
//! handed on to the next one while more come (and freed when none do), at
//! most `security.argon2_queue` more wait for a turn, and a request beyond
//! those is answered 503 with `Retry-After` at once, before it costs anything.
//!
//! A derived password is then kept in memory ([`PasswordCache`]), so a
//! user's next login or credentials request does not derive it again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::model::UserId;

use super::Domain;

/// What a caller does when every slot and the queue are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A request: answered 503 at once, so a crowd of them cannot pile up.
    Bounded,
    /// The background sync (one task): waits for its turn whatever the
    /// queue, since refusing it only delays the same work.
    Always,
}

/// Seconds a refused request is told to wait: a derivation takes tens of
/// milliseconds, so the queue is usually empty again by then.
const RETRY_AFTER_SECS: u64 = 1;

/// The slots derivations run in, and the queue before them.
pub struct Derivations {
    /// One permit per derivation that may run.
    slots: Arc<Semaphore>,
    /// Argon2 memory of finished derivations, for the next ones while
    /// derivations keep coming (at most one per slot; none when idle).
    buffers: Arc<Mutex<Vec<Vec<argon2::Block>>>>,
    /// Derivations running or waiting for a slot.
    admitted: Arc<AtomicUsize>,
    /// Most derivations running and waiting together.
    capacity: usize,
    /// Derivations run since start (for /metrics).
    done: AtomicU64,
}

/// Takes one off [`Derivations::admitted`] when the derivation ends (or its
/// caller gives up while waiting).
struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Derivations {
    /// `at_once` slots and `waiting` places in the queue (each at least 1).
    #[must_use]
    pub fn new(at_once: usize, waiting: usize) -> Self {
        let at_once = at_once.max(1);
        Derivations {
            slots: Arc::new(Semaphore::new(at_once)),
            buffers: Arc::new(Mutex::new(Vec::with_capacity(at_once))),
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: at_once + waiting,
            done: AtomicU64::new(0),
        }
    }

    /// Runs `derive` in a slot, with a reusable Argon2 buffer, off the async workers.
    ///
    /// # Errors
    /// 503 (with Retry-After) when `wait` is [`Wait::Bounded`] and the slots
    /// and the queue are full; whatever `derive` returns.
    pub async fn run<T: Send + 'static>(
        &self,
        wait: Wait,
        derive: impl FnOnce(&mut Vec<argon2::Block>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let admitted = match wait {
            Wait::Bounded => self
                .admitted
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.capacity).then_some(n + 1))
                .is_ok(),
            Wait::Always => {
                self.admitted.fetch_add(1, Ordering::AcqRel);
                true
            }
        };
        if !admitted {
            return Err(Error::Overloaded {
                detail: format!(
                    "too many password derivations are running or waiting ({}); retry in {RETRY_AFTER_SECS} s",
                    self.capacity
                ),
                retry_after_secs: RETRY_AFTER_SECS,
            });
        }
        let admission = Admission(self.admitted.clone());
        self.done.fetch_add(1, Ordering::Relaxed);
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("the derivation slots were closed".into()))?;
        let buffers = self.buffers.clone();
        // The slot and the admission go with the work: a caller that gives up
        // does not free them before the derivation has really ended.
        let admitted = self.admitted.clone();
        tokio::task::spawn_blocking(move || {
            let mut memory = buffers.lock().unwrap_or_else(PoisonError::into_inner).pop().unwrap_or_default();
            let result = derive(&mut memory);
            let mut pool = buffers.lock().unwrap_or_else(PoisonError::into_inner);
            // Kept while others run or wait, for them; the last one out
            // frees them all, so an idle service holds no Argon2 memory.
            if admitted.load(Ordering::Acquire) > 1 {
                pool.push(memory);
            } else {
                pool.clear();
                drop(memory);
            }
            drop(pool);
            // The admission before the slot: the next derivation starts once
            // the slot is free, and must not count this one as still running,
            // or as the last one out it would keep the buffers.
            drop(admission);
            drop(slot);
            result
        })
        .await
        .map_err(|e| Error::Internal(format!("a password derivation failed: {e}")))?
    }
}

/// Derived Matrix passwords kept in memory, so that a login does not run
/// Argon2 every time (a derivation costs tens of milliseconds of a core and
/// 19 MiB, as much as the rest of the service's part of a login many times
/// over). At most `security.password_cache_size` entries, the least
/// recently used leaving first; each password is wiped (zeroized) when it
/// leaves or the process ends, and is never written to disk or logged. A
/// user's entry is wiped when the user is deactivated. A password depends
/// only on the server key, the Argon2 parameters and the account name, none
/// of which change while the process runs, so an entry never goes stale.
pub struct PasswordCache {
    capacity: usize,
    inner: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<UserId, Cached>,
    /// Bumped at every use, to tell the least recently used.
    uses: u64,
    /// Bumped at every wipe: a derivation that began before one is not kept.
    wipes: u64,
}

struct Cached {
    password: Zeroizing<String>,
    used: u64,
}

impl PasswordCache {
    /// Keeps at most `capacity` passwords (0: none).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        PasswordCache { capacity, inner: Mutex::new(Cache::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The user's password, when kept.
    fn get(&self, user: UserId) -> Option<Zeroizing<String>> {
        let mut c = self.lock();
        c.uses += 1;
        let now = c.uses;
        let entry = c.entries.get_mut(&user)?;
        entry.used = now;
        Some(entry.password.clone())
    }

    /// What to hand to [`PasswordCache::put`]: taken before deriving.
    fn mark(&self) -> u64 {
        self.lock().wipes
    }

    /// Keeps a password derived since `mark`, unless a wipe came meanwhile
    /// (the user may be the one deactivated).
    fn put(&self, user: UserId, password: &Zeroizing<String>, mark: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut c = self.lock();
        if c.wipes != mark {
            return;
        }
        if c.entries.len() >= self.capacity && !c.entries.contains_key(&user) {
            // A scan for the least recently used: it runs only after a
            // derivation, which costs a thousand times more.
            if let Some(oldest) = c.entries.iter().min_by_key(|(_, e)| e.used).map(|(u, _)| *u) {
                c.entries.remove(&oldest);
            }
        }
        c.uses += 1;
        let used = c.uses;
        c.entries.insert(user, Cached { password: password.clone(), used });
    }

    /// Wipes the user's password.
    fn forget(&self, user: UserId) {
        let mut c = self.lock();
        c.wipes += 1;
        c.entries.remove(&user);
    }

    /// Wipes every password (the process stops).
    fn forget_all(&self) {
        let mut c = self.lock();
        c.wipes += 1;
        c.entries.clear();
    }

    /// Whether the user's password is kept.
    #[must_use]
    pub fn holds(&self, user: UserId) -> bool {
        self.lock().entries.contains_key(&user)
    }

    /// Passwords kept now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether none is kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Domain {
    /// The Matrix login name and password of a user: kept from an earlier
    /// call, else derived in a [`Derivations`] slot and kept.
    ///
    /// # Errors
    /// 503 when too many derivations are under way (see [`Wait`]); Argon2
    /// parameters out of range.
    pub async fn credentials(self: &Arc<Self>, user: UserId, wait: Wait) -> Result<(String, Zeroizing<String>)> {
        let account = self.ids.user(user);
        if let Some(password) = self.passwords.get(user) {
            return Ok((account, password));
        }
        let mark = self.passwords.mark();
        let domain = self.clone();
        let name = account.clone();
        let password = self
            .derivations
            .run(wait, move |memory| {
                domain.key.matrix_password_in(&domain.config.security, &name, memory).map_err(Error::Internal)
            })
            .await?;
        let password = Zeroizing::new(password);
        self.passwords.put(user, &password, mark);
        Ok((account, password))
    }

    /// Wipes the user's password from memory (the user was deactivated).
    pub fn forget_password(&self, user: UserId) {
        self.passwords.forget(user);
    }

    /// Wipes every password kept in memory: the process is stopping, and
    /// tasks still holding the domain would keep them past the exit's
    /// point of no return otherwise.
    pub fn forget_all_passwords(&self) {
        self.passwords.forget_all();
    }

    /// The passwords kept in memory.
    #[must_use]
    pub fn password_cache(&self) -> &PasswordCache {
        &self.passwords
    }

    /// Password derivations run since start.
    #[must_use]
    pub fn derivations_done(&self) -> u64 {
        self.derivations.done.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use super::*;

    /// A derivation that holds its slot until `release` is set.
    fn held(release: &Arc<AtomicBool>) -> impl FnOnce(&mut Vec<argon2::Block>) -> Result<usize> + Send + 'static {
        let release = release.clone();
        move |memory| {
            memory.resize(4, argon2::Block::default());
            while !release.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(memory.len())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn beyond_the_slots_and_the_queue_a_request_is_refused() {
        let d = Arc::new(Derivations::new(1, 1));
        let release = Arc::new(AtomicBool::new(false));
        let running = tokio::spawn({
            let d = d.clone();
            let f = held(&release);
            async move { d.run(Wait::Bounded, f).await }
        });
        let queued = tokio::spawn({
            let d = d.clone();
            let f = held(&release);
            async move { d.run(Wait::Bounded, f).await }
        });
        while d.admitted.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        let refused = d.run(Wait::Bounded, |_| Ok(0)).await.unwrap_err();
        assert!(matches!(refused, Error::Overloaded { retry_after_secs: 1, .. }), "{refused:?}");
        // The background sync waits instead.
        let background = tokio::spawn({
            let d = d.clone();
            async move { d.run(Wait::Always, |m| Ok(m.len())).await }
        });
        release.store(true, Ordering::Release);
        assert_eq!(running.await.unwrap().unwrap(), 4);
        assert_eq!(queued.await.unwrap().unwrap(), 4);
        // It got the buffer one of the others left: reused, not allocated anew.
        assert_eq!(background.await.unwrap().unwrap(), 4);
        assert_eq!(d.admitted.load(Ordering::Acquire), 0, "every admission was given back");
        assert!(d.buffers.lock().unwrap().is_empty(), "the last one out freed the buffers");
        assert_eq!(d.run(Wait::Bounded, |_| Ok(7)).await.unwrap(), 7, "free again once they ended");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_gives_up_keeps_its_slot_until_the_work_ends() {
        let d = Arc::new(Derivations::new(1, 0));
        let release = Arc::new(AtomicBool::new(false));
        let f = held(&release);
        let gave_up = tokio::time::timeout(Duration::from_millis(50), d.run(Wait::Bounded, f)).await;
        assert!(gave_up.is_err(), "the derivation was still held");
        // Still running on its blocking thread: the slot is not free.
        assert!(matches!(d.run(Wait::Bounded, |_| Ok(0)).await, Err(Error::Overloaded { .. })));
        release.store(true, Ordering::Release);
        while d.admitted.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(d.run(Wait::Bounded, |_| Ok(1)).await.unwrap(), 1);
    }
}
