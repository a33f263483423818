//! Places for long polls of `/v1/events`: `events.max_waiters` in all, at
//! most `events.caller_share_percent` of them for one user (with all of its
//! personal access tokens), and `events.api_token_reserve_percent` of them
//! kept for API tokens, so one user's polls can never leave the backend's
//! own poll without a place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::EventsConfig;
use crate::domain::Principal;
use crate::error::Error;
use crate::model::UserId;

/// How long a refused poll is told to wait before it tries again.
const RETRY_AFTER_SECS: u64 = 1;

/// The places and who holds them.
pub struct Waiters {
    max: usize,
    /// Places one user may hold.
    per_caller: usize,
    /// Places personal access tokens may hold together: `max` less the reserve.
    for_users: usize,
    share_percent: u32,
    reserve_percent: u32,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_users: usize,
    /// Only users holding a place: at most `max` entries.
    by_user: HashMap<UserId, usize>,
}

/// One waiting long poll's place; given back when dropped.
pub struct Place {
    waiters: Arc<Waiters>,
    user: Option<UserId>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut held = self.waiters.lock();
        held.total -= 1;
        if let Some(user) = self.user {
            held.by_users -= 1;
            if let Some(n) = held.by_user.get_mut(&user) {
                *n -= 1;
                if *n == 0 {
                    held.by_user.remove(&user);
                }
            }
        }
    }
}

impl Waiters {
    #[must_use]
    pub fn new(c: &EventsConfig) -> Self {
        let max = c.max_waiters as usize;
        let share = |percent: u32| max * percent as usize / 100;
        let reserve = share(c.api_token_reserve_percent).min(max.saturating_sub(1));
        Waiters {
            max,
            per_caller: share(c.caller_share_percent).max(1),
            for_users: max - reserve,
            share_percent: c.caller_share_percent,
            reserve_percent: c.api_token_reserve_percent,
            held: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Long polls waiting now.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.lock().total
    }

    /// A place for a long poll of `p`.
    ///
    /// # Errors
    /// 503 when every place open to `p` is taken; 429 when `p`, a user, holds
    /// its share already.
    pub fn take(self: &Arc<Self>, p: Principal) -> Result<Place, Error> {
        let mut held = self.lock();
        let user = match p {
            Principal::Api(_) => None,
            Principal::User(u) => Some(u),
        };
        if held.total >= self.max {
            return Err(Error::Overloaded {
                detail: format!(
                    "{} long polls are waiting already (events.max_waiters): retry, or poll without wait",
                    self.max
                ),
                retry_after_secs: RETRY_AFTER_SECS,
            });
        }
        if let Some(u) = user {
            let mine = held.by_user.get(&u).copied().unwrap_or(0);
            if mine >= self.per_caller {
                return Err(Error::RateLimited {
                    detail: format!(
                        "this user has {mine} long polls waiting already, its share (events.caller_share_percent = \
                         {} % of events.max_waiters = {}): wait for one to end before the next, or poll without wait",
                        self.share_percent, self.max
                    ),
                    retry_after_secs: RETRY_AFTER_SECS,
                });
            }
            if held.by_users >= self.for_users {
                return Err(Error::Overloaded {
                    detail: format!(
                        "the {} places for long polls of personal access tokens are taken (events.max_waiters = {}, \
                         of which events.api_token_reserve_percent = {} % is kept for API tokens): retry, or poll \
                         without wait",
                        self.for_users, self.max, self.reserve_percent
                    ),
                    retry_after_secs: RETRY_AFTER_SECS,
                });
            }
            held.by_users += 1;
            *held.by_user.entry(u).or_insert(0) += 1;
        }
        held.total += 1;
        Ok(Place { waiters: self.clone(), user })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ApiCaller;

    fn waiters(max_waiters: u32, caller_share_percent: u32, api_token_reserve_percent: u32) -> Arc<Waiters> {
        let c =
            EventsConfig { max_waiters, caller_share_percent, api_token_reserve_percent, ..EventsConfig::default() };
        Arc::new(Waiters::new(&c))
    }

    const API: Principal = Principal::Api(ApiCaller::Token([1; 6]));

    fn user(n: UserId) -> Principal {
        Principal::User(n)
    }

    #[test]
    fn one_user_holds_its_share_and_the_api_token_its_reserve() {
        // 10 places: 2 per user, 3 kept for API tokens.
        let w = waiters(10, 20, 30);
        let mut held = Vec::new();
        for n in 0..3 {
            held.push(w.take(user(n)).unwrap());
            held.push(w.take(user(n)).unwrap());
        }
        let e = w.take(user(0)).err().unwrap().to_string();
        assert!(e.contains("events.caller_share_percent"), "{e}");
        held.push(w.take(user(3)).unwrap());
        let e = w.take(user(4)).err().unwrap().to_string();
        assert!(e.contains("events.api_token_reserve_percent"), "{e}");
        for _ in 0..3 {
            held.push(w.take(API).unwrap());
        }
        assert!(w.take(API).err().unwrap().to_string().contains("events.max_waiters"));
        assert_eq!(w.waiting(), 10);
        held.clear();
        assert_eq!(w.waiting(), 0);
        assert!(w.lock().by_user.is_empty());
    }

    #[test]
    fn a_single_place_is_open_to_everyone() {
        let w = waiters(1, 10, 25);
        let place = w.take(user(1)).unwrap();
        assert!(w.take(API).is_err());
        drop(place);
        let _api = w.take(API).unwrap();
    }
}
