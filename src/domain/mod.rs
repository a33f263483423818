//! The rules: who may do what, and what a change implies. Handlers parse and
//! answer; this layer decides and writes through the store.

pub mod admin;
pub mod api_tokens;
pub mod auth;
pub mod auth_cache;
pub mod events;
mod gates;
pub mod passwords;
pub mod rooms;
pub mod sessions;
#[cfg(test)]
mod tests;
pub mod webhooks;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Config;
use crate::error::{Error, Remedy, Result};
use crate::matrix::MatrixIds;
use crate::model::{OrgId, UserId};
use crate::secrets::ServerKey;
use crate::store::Store;

/// The time source, passed in so tests can pin it.
pub trait Clock: Send + Sync {
    /// Unix seconds now.
    fn now(&self) -> i64;
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }
}

/// A clock that stands still until told otherwise: tests pin it, and move
/// it to reach a scheduled deletion or a token's expiry without sleeping.
#[derive(Debug)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    /// A clock reading `now` (Unix seconds).
    #[must_use]
    pub fn new(now: i64) -> Self {
        ManualClock(std::sync::atomic::AtomicI64::new(now))
    }

    /// Sets the time.
    pub fn set(&self, now: i64) {
        self.0.store(now, std::sync::atomic::Ordering::SeqCst);
    }

    /// Moves the time on by `secs`.
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Principal {
    /// An API token, or the operator's command line: may do everything.
    /// Which one is kept for the event log's actor.
    Api(ApiCaller),
    /// A personal access token of this user.
    User(UserId),
}

/// Who holds the powers of an API token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiCaller {
    /// The API token whose SHA-256 starts with these bytes (its id, as
    /// `token list-api` shows it: [`api_tokens::api_token_id`]).
    Token([u8; 6]),
    /// The operator, through the `messenger-chat` command line on the database.
    CommandLine,
}

impl Principal {
    /// The command line's administration subcommands.
    pub const COMMAND_LINE: Principal = Principal::Api(ApiCaller::CommandLine);

    /// An API token caller, from its SHA-256.
    #[must_use]
    pub fn api_token(hash: &[u8; 32]) -> Principal {
        let mut id = [0; 6];
        id.copy_from_slice(&hash[..6]);
        Principal::Api(ApiCaller::Token(id))
    }
}

/// Everything the rules need, shared by all requests.
pub struct Domain {
    pub store: Store,
    pub config: Arc<Config>,
    pub key: ServerKey,
    pub clock: Arc<dyn Clock>,
    /// The Matrix ids of the service's accounts.
    pub ids: MatrixIds,
    /// SHA-256 and shown name of the API tokens named in the config, in its order.
    api_hashes: Vec<([u8; 32], String)>,
    /// Woken after every commit that added outbox entries (by the store).
    pub outbox_changed: Arc<Notify>,
    /// Where Matrix passwords are derived, a bounded number at a time.
    derivations: passwords::Derivations,
    /// Who holds a token, remembered between requests (see `auth_cache`).
    tokens: auth_cache::TokenCache,
    /// Derived passwords kept in memory (`security.password_cache_size`).
    passwords: passwords::PasswordCache,
    /// Woken after a webhook was created, changed or deleted: the sender
    /// starts, restarts or ends its worker.
    pub webhooks_changed: Notify,
    /// Webhook deliveries since start, for `/metrics`.
    pub webhook_stats: crate::webhooks::Stats,
}

impl Domain {
    /// # Errors
    /// A configured API token hash is not hex (checked by config validation first).
    pub fn new(store: Store, config: Arc<Config>, key: ServerKey, clock: Arc<dyn Clock>) -> Result<Self> {
        let api_hashes = config
            .auth
            .api_token_hashes
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let bytes = hex::decode(&h.hash).map_err(|e| Error::Internal(format!("auth.api_token_hashes: {e}")))?;
                let hash = <[u8; 32]>::try_from(bytes.as_slice())
                    .map_err(|_| Error::Internal("auth.api_token_hashes: not 32 bytes".into()))?;
                Ok((hash, h.shown_name(i)))
            })
            .collect::<Result<Vec<_>>>()?;
        let derivations =
            passwords::Derivations::new(config.security.derivations_at_once(), config.security.derivations_waiting());
        let ids = MatrixIds::new(&config.matrix);
        let outbox_changed = store.outbox_changed().clone();
        let tokens = auth_cache::TokenCache::new(config.auth.token_cache_entries);
        let passwords = passwords::PasswordCache::new(config.security.password_cache_size as usize);
        Ok(Domain {
            store,
            config,
            key,
            clock,
            ids,
            api_hashes,
            outbox_changed,
            derivations,
            tokens,
            passwords,
            webhooks_changed: Notify::new(),
            webhook_stats: crate::webhooks::Stats::default(),
        })
    }

    /// One write transaction with the domain's error type.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut crate::store::Writer) -> Result<T>) -> Result<T> {
        self.store.write(f)
    }
}

/// Checks that an id from a request is positive.
///
/// # Errors
/// 422 naming the field.
pub fn positive(field: &str, id: i64) -> Result<i64> {
    if id <= 0 {
        return Err(Error::invalid(field, format!("must be a positive integer, got {id}")));
    }
    Ok(id)
}

/// Checks and trims a display name or room name: 1 to 255 characters.
///
/// # Errors
/// 422 naming the field.
pub fn name(field: &str, raw: &str) -> Result<String> {
    let trimmed = raw.trim();
    let n = trimmed.chars().count();
    if n == 0 {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if n > 255 {
        return Err(Error::invalid(field, format!("must be at most 255 characters, got {n}")));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(trimmed.to_string())
}

/// Longest room topic, in characters.
pub const MAX_TOPIC_CHARS: usize = 1000;

/// Checks and trims a room topic: up to 1,000 characters, line breaks and
/// tabs allowed; empty means no topic.
///
/// # Errors
/// 422 naming the field.
pub fn topic(raw: &str) -> Result<String> {
    let trimmed = raw.trim();
    let n = trimmed.chars().count();
    if n > MAX_TOPIC_CHARS {
        return Err(Error::invalid("topic", format!("must be at most {MAX_TOPIC_CHARS} characters, got {n}")));
    }
    if trimmed.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(Error::invalid("topic", "must not contain control characters other than line breaks and tabs"));
    }
    Ok(trimmed.to_string())
}

fn org_not_found(org: OrgId) -> Error {
    Error::NotFound(format!("no organization {org}")).with_remedy(Remedy::CreateOrganization(org))
}
