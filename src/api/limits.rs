//! Rate limits on the calls that cost the homeserver, run Argon2 or mint
//! secrets (login, credentials, token issue): a token bucket per key, in memory.
//!
//! A limit is checked only once the caller is known to be allowed the call,
//! and its bucket belongs to the caller and the user acted for together: a
//! user's own calls (or someone's refused ones) never use up the allowance
//! the API token has for that user, nor the other way round.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::Principal;
use crate::error::Error;
use crate::model::UserId;

/// Whose bucket a call takes from: who calls, and for which user.
pub type Key = (Principal, UserId);

/// A token bucket per key: `burst` calls at once, then one per `refill`.
pub struct RateLimiter {
    what: &'static str,
    burst: f64,
    refill: Duration,
    buckets: Mutex<HashMap<Key, (f64, Instant)>>,
}

/// Above this many keys, full buckets (keys idle long enough) are dropped.
const PRUNE_AT: usize = 10_000;

impl RateLimiter {
    #[must_use]
    pub fn new(what: &'static str, burst: u32, refill: Duration) -> Self {
        RateLimiter { what, burst: f64::from(burst.max(1)), refill, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one call for `key`.
    ///
    /// # Errors
    /// 429 with the seconds until the next call is allowed.
    pub fn check(&self, key: Key, now: Instant) -> Result<(), Error> {
        let per_sec = 1.0 / self.refill.as_secs_f64().max(1e-3);
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > PRUNE_AT {
            let burst = self.burst;
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst);
        }
        let (tokens, at) = buckets.entry(key).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - *tokens) / per_sec).ceil().max(1.0);
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a small positive number of seconds"
        )]
        let retry_after_secs = wait as u64;
        Err(Error::RateLimited {
            detail: format!("too many {} calls for this user; retry in {retry_after_secs} s", self.what),
            retry_after_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANN: Key = (Principal::User(1), 1);

    #[test]
    fn burst_then_refill() {
        let l = RateLimiter::new("login", 2, Duration::from_secs(10));
        let t0 = Instant::now();
        l.check(ANN, t0).unwrap();
        l.check(ANN, t0).unwrap();
        let Err(Error::RateLimited { retry_after_secs, .. }) = l.check(ANN, t0) else { panic!("third call passed") };
        assert_eq!(retry_after_secs, 10);
        l.check((Principal::User(2), 2), t0).unwrap();
        l.check(ANN, t0 + Duration::from_secs(10)).unwrap();
        assert!(l.check(ANN, t0 + Duration::from_secs(11)).is_err());
    }

    #[test]
    fn a_user_and_the_api_token_have_separate_buckets_for_that_user() {
        let l = RateLimiter::new("credentials", 3, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..3 {
            l.check(ANN, t0).unwrap();
        }
        assert!(l.check(ANN, t0).is_err(), "Ann used up her own bucket");
        // The API token acting for Ann, and another user, are untouched.
        for _ in 0..3 {
            l.check((Principal::COMMAND_LINE, 1), t0).unwrap();
            l.check((Principal::User(2), 2), t0).unwrap();
        }
        assert!(l.check((Principal::COMMAND_LINE, 1), t0).is_err(), "the API token's bucket for Ann is used up");
        // … which leaves its bucket for another user, and Ann's own, as they were.
        l.check((Principal::COMMAND_LINE, 2), t0).unwrap();
        assert!(l.check(ANN, t0).is_err());
        l.check(ANN, t0 + Duration::from_secs(60)).unwrap();
    }
}
