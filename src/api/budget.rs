//! The memory request bodies may take: one budget of bytes buffered at once
//! across all requests (`server.body_budget_bytes`), and a share of it per
//! caller. A body reserves its bytes before it is buffered (all of its
//! `Content-Length` at once, or piece by piece as it arrives) and gives them
//! back when its buffer is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::domain::Principal;

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The whole budget is in use.
    Server,
    /// This caller holds its share already.
    Caller,
}

/// The budget, shared by every request.
#[derive(Debug)]
pub struct BodyBudget {
    total: u64,
    share: u64,
    held: Mutex<Held>,
    refused_server: AtomicU64,
    refused_caller: AtomicU64,
}

#[derive(Debug, Default)]
struct Held {
    all: u64,
    /// Callers holding anything; a caller at zero is removed, so this holds
    /// at most one entry per request in flight.
    by_caller: HashMap<Principal, u64>,
}

impl BodyBudget {
    /// A budget of `total` bytes; one caller may hold a quarter of it, and
    /// at least `largest_body` (one body of the largest size accepted).
    #[must_use]
    pub fn new(total: u64, largest_body: u64) -> Arc<Self> {
        Arc::new(BodyBudget {
            total,
            share: (total / 4).max(largest_body).min(total),
            held: Mutex::default(),
            refused_server: AtomicU64::new(0),
            refused_caller: AtomicU64::new(0),
        })
    }

    /// The whole budget.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total
    }

    /// What one caller may hold at once.
    #[must_use]
    pub fn share(&self) -> u64 {
        self.share
    }

    /// Reserves `n` bytes for `who`.
    ///
    /// # Errors
    /// The budget or the caller's share would be exceeded; nothing is reserved.
    pub fn reserve(self: &Arc<Self>, who: Principal, n: u64) -> Result<Reservation, Refusal> {
        let mut r = Reservation { budget: self.clone(), who, held: 0 };
        r.grow(n)?;
        Ok(r)
    }

    fn take(&self, who: Principal, n: u64) -> Result<(), Refusal> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = held.by_caller.get(&who).copied().unwrap_or(0);
        if held.all.saturating_add(n) > self.total {
            self.refused_server.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Server);
        }
        if mine.saturating_add(n) > self.share {
            self.refused_caller.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Caller);
        }
        held.all += n;
        held.by_caller.insert(who, mine + n);
        Ok(())
    }

    fn give_back(&self, who: Principal, n: u64) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.all = held.all.saturating_sub(n);
        if let Some(mine) = held.by_caller.get_mut(&who) {
            *mine = mine.saturating_sub(n);
            if *mine == 0 {
                held.by_caller.remove(&who);
            }
        }
    }

    /// Bytes reserved now.
    #[must_use]
    pub fn in_use(&self) -> u64 {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).all
    }

    /// Requests refused since start: (budget full, caller's share full).
    #[must_use]
    pub fn refused(&self) -> (u64, u64) {
        (self.refused_server.load(Ordering::Relaxed), self.refused_caller.load(Ordering::Relaxed))
    }
}

/// Bytes held for one body, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BodyBudget>,
    who: Principal,
    held: u64,
}

impl Reservation {
    /// Bytes held.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Holds `n` bytes more.
    ///
    /// # Errors
    /// As [`BodyBudget::reserve`]; what was held stays held.
    pub fn grow(&mut self, n: u64) -> Result<(), Refusal> {
        if n == 0 {
            return Ok(());
        }
        self.budget.take(self.who, n)?;
        self.held += n;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held > 0 {
            self.budget.give_back(self.who, self.held);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UserId;

    fn user(id: UserId) -> Principal {
        Principal::User(id)
    }

    #[test]
    fn a_caller_gets_a_quarter_and_the_budget_holds_the_rest() {
        let b = BodyBudget::new(400, 50);
        assert_eq!(b.share(), 100);
        let first = b.reserve(user(1), 60).unwrap();
        assert_eq!(b.reserve(user(1), 41).unwrap_err(), Refusal::Caller);
        let second = b.reserve(user(1), 40).unwrap();
        let others: Vec<_> = (2..=4).map(|u| b.reserve(user(u), 100).unwrap()).collect();
        assert_eq!(b.in_use(), 400);
        assert_eq!(b.reserve(user(5), 1).unwrap_err(), Refusal::Server);
        assert_eq!(b.refused(), (1, 1));
        drop(first);
        drop(others);
        assert_eq!(b.in_use(), 40);
        drop(second);
        assert_eq!(b.in_use(), 0);
        assert!(b.held.lock().unwrap().by_caller.is_empty(), "no entry is kept for a caller holding nothing");
    }

    #[test]
    fn the_share_fits_one_body_of_the_largest_size() {
        let b = BodyBudget::new(100, 60);
        assert_eq!(b.share(), 60);
        let mut r = b.reserve(user(1), 0).unwrap();
        r.grow(30).unwrap();
        r.grow(30).unwrap();
        assert_eq!(r.grow(1).unwrap_err(), Refusal::Caller);
        assert_eq!(r.held(), 60);
        drop(r);
        assert_eq!(b.in_use(), 0);
    }
}
