//! Who holds a token, remembered between requests, so that the common
//! request authenticates without reading the database.
//!
//! An entry maps a token's SHA-256 to its principal and expiry, and records
//! the generation of the token records it was read from
//! ([`Read::token_generation`](crate::store::Read::token_generation)). Every
//! committed write of a token record (a revocation through the API or the
//! command line, a deactivation, which revokes the user's tokens, an API
//! token revoked) moves the generation on after the commit, so an entry read
//! before it is never used again: it cannot outlive any of them. The
//! generation is taken before the snapshot an entry is read in, so an entry
//! read from a snapshot older than a revocation carries a generation older
//! than the one that revocation set. Expiry is checked against the clock on
//! every hit. A principal carries the user id only: roles are read in the
//! request's own snapshot (one point lookup), so a role change applies to
//! the very next request with nothing to invalidate.
//!
//! The cache is per process: the command line writes with the service
//! stopped, and the next start begins with it empty. API tokens listed in
//! the config change only with a restart, which empties it too.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Principal;

/// A bounded map of token hash → principal.
pub struct TokenCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    entries: HashMap<[u8; 32], Entry>,
    /// The generation whose older entries were last swept out.
    swept: u64,
}

#[derive(Clone, Copy)]
struct Entry {
    principal: Principal,
    /// Unix seconds from which the token is refused (`None`: never).
    expires_at: Option<i64>,
    /// The generation of the token records it was read from.
    generation: u64,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens; 0 turns it off.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        TokenCache { capacity, inner: Mutex::new(Inner { entries: HashMap::new(), swept: 0 }) }
    }

    /// The principal behind `hash`, when it was read at `generation` (the
    /// current one) and has not expired by `now`.
    pub fn get(&self, hash: &[u8; 32], generation: u64, now: i64) -> Option<Principal> {
        if self.capacity == 0 {
            return None;
        }
        // The key is a hash of the token, like the key of the table it
        // stands in for: comparing it reveals nothing about a token.
        let inner = self.lock();
        let e = inner.entries.get(hash)?;
        (e.generation == generation && e.expires_at.is_none_or(|at| now < at)).then_some(e.principal)
    }

    /// Remembers a principal read from the token records of `generation`.
    pub fn insert(&self, hash: [u8; 32], principal: Principal, expires_at: Option<i64>, generation: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        if inner.entries.get(&hash).is_some_and(|e| e.generation > generation) {
            // A slower request read an older snapshot: keep the newer entry.
            return;
        }
        if inner.entries.len() >= self.capacity && !inner.entries.contains_key(&hash) {
            // Entries of older generations go first: they can never be used again.
            if inner.swept != generation {
                inner.entries.retain(|_, e| e.generation == generation);
                inner.swept = generation;
            }
            if inner.entries.len() >= self.capacity
                && let Some(victim) = inner.entries.keys().next().copied()
            {
                // Keys are hashes: the first one is as good as a random one.
                inner.entries.remove(&victim);
            }
        }
        inner.entries.insert(hash, Entry { principal, expires_at, generation });
    }

    /// Number of tokens remembered (those of older generations included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no token is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map stays consistent whatever panicked while it was held.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u32) -> [u8; 32] {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&n.to_le_bytes());
        h
    }

    #[test]
    fn an_entry_serves_its_generation_until_it_expires() {
        let cache = TokenCache::new(10);
        cache.insert(hash(1), Principal::User(7), Some(100), 3);
        cache.insert(hash(2), Principal::COMMAND_LINE, None, 3);
        assert_eq!(cache.get(&hash(1), 3, 99), Some(Principal::User(7)));
        assert_eq!(cache.get(&hash(1), 3, 100), None, "expired at its second");
        assert_eq!(cache.get(&hash(1), 4, 50), None, "a token record changed since");
        assert_eq!(cache.get(&hash(2), 3, i64::MAX), Some(Principal::COMMAND_LINE), "no expiry");
        assert_eq!(cache.get(&hash(3), 3, 0), None);
    }

    #[test]
    fn an_older_read_never_replaces_a_newer_one() {
        let cache = TokenCache::new(10);
        cache.insert(hash(1), Principal::User(7), None, 5);
        cache.insert(hash(1), Principal::User(7), None, 4);
        assert_eq!(cache.get(&hash(1), 5, 0), Some(Principal::User(7)));
    }

    #[test]
    fn it_holds_at_most_its_capacity_and_drops_stale_entries_first() {
        let cache = TokenCache::new(4);
        for n in 0..4 {
            cache.insert(hash(n), Principal::User(i64::from(n)), None, 1);
        }
        // A new generation: the four old entries go, not the new one.
        cache.insert(hash(10), Principal::User(10), None, 2);
        assert_eq!(cache.len(), 1);
        for n in 11..100 {
            cache.insert(hash(n), Principal::User(i64::from(n)), None, 2);
            assert!(cache.len() <= 4);
        }
        assert_eq!(cache.get(&hash(99), 2, 0), Some(Principal::User(99)), "the newest is kept");
    }

    #[test]
    fn capacity_zero_remembers_nothing() {
        let cache = TokenCache::new(0);
        cache.insert(hash(1), Principal::COMMAND_LINE, None, 0);
        assert!(cache.is_empty());
        assert_eq!(cache.get(&hash(1), 0, 0), None);
    }
}
