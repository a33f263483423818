//! The Matrix side of app users: their accounts, made on first need, their
//! credentials and their logins. Used by the credentials and login requests
//! and by the reconciler, which needs the accounts of the users it lists.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use super::Domain;
use super::passwords::Wait;
use crate::error::{Error, Result};
use crate::homeserver::{Homeserver, HomeserverError, Session};
use crate::model::UserId;
use crate::store::Read;

/// Why an account could not be made sure of.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The homeserver failed.
    #[error(transparent)]
    Homeserver(#[from] HomeserverError),
    /// The service's side failed (storage, a derivation).
    #[error(transparent)]
    Service(#[from] Error),
}

impl From<crate::store::StoreError> for AccountError {
    fn from(e: crate::store::StoreError) -> Self {
        AccountError::Service(e.into())
    }
}

/// A user's Matrix login: the name and the derived password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<hidden>").finish()
    }
}

/// What a login gives the app: the homeserver's session, and the
/// homeserver URL the app should use with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub session: Session,
    pub homeserver_url: String,
}

/// Accounts and logins of app users on the homeserver (`None`: none configured).
pub struct Sessions {
    domain: Arc<Domain>,
    hs: Option<Arc<dyn Homeserver>>,
    /// Accounts known to exist, so the database is asked once per user.
    known_accounts: Mutex<HashSet<UserId>>,
    /// Accounts being made now, one turn per user: the reconciler syncs
    /// several rooms at once, often with the same new users, and a second
    /// caller waits for the first instead of deriving and registering again.
    making: Mutex<HashMap<UserId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Sessions {
    #[must_use]
    pub fn new(domain: Arc<Domain>, hs: Option<Arc<dyn Homeserver>>) -> Self {
        Sessions { domain, hs, known_accounts: Mutex::new(HashSet::new()), making: Mutex::new(HashMap::new()) }
    }

    /// The homeserver, when one is configured.
    #[must_use]
    pub fn homeserver(&self) -> Option<&Arc<dyn Homeserver>> {
        self.hs.as_ref()
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<UserId>> {
        self.known_accounts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the user's Matrix account is known to exist.
    ///
    /// # Errors
    /// Storage failures.
    pub fn has_account(&self, user: UserId) -> Result<bool> {
        if self.known().contains(&user) {
            return Ok(true);
        }
        let exists = self.domain.store.read()?.has_matrix_account(user)?;
        if exists {
            self.known().insert(user);
        }
        Ok(exists)
    }

    /// Makes the user's Matrix account when it does not exist yet, with the
    /// derived password (`password` when the caller derived it already;
    /// otherwise derived as `wait` says) and the user's display name. True
    /// when it asked the homeserver to make it. Without a homeserver there is
    /// nothing to make.
    ///
    /// # Errors
    /// Homeserver and storage failures; a derivation refused (see [`Wait`]).
    pub async fn ensure_account(
        self: &Arc<Self>,
        user: UserId,
        password: Option<&str>,
        wait: Wait,
    ) -> Result<bool, AccountError> {
        let Some(hs) = &self.hs else { return Ok(false) };
        if self.has_account(user)? {
            return Ok(false);
        }
        let turn = self.making.lock().unwrap_or_else(PoisonError::into_inner).entry(user).or_default().clone();
        let made = {
            let _mine = turn.lock().await;
            // Made by the caller that had the turn before.
            if self.has_account(user)? { Ok(false) } else { self.make_account(hs, user, password, wait).await }
        };
        let mut making = self.making.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the map's and this caller's handles left: nobody waits for this user.
        if Arc::strong_count(&turn) <= 2 {
            making.remove(&user);
        }
        made
    }

    async fn make_account(
        &self,
        hs: &Arc<dyn Homeserver>,
        user: UserId,
        password: Option<&str>,
        wait: Wait,
    ) -> Result<bool, AccountError> {
        let display = self.domain.store.read()?.user(user)?.map(|u| u.display_name).filter(|n| !n.is_empty());
        let derived;
        let password = match password {
            Some(p) => p,
            None => {
                derived = self.domain.credentials(user, wait).await?.1;
                derived.as_str()
            }
        };
        hs.ensure_account(user, password, display.as_deref()).await?;
        self.domain.store.write(|w| w.set_matrix_account(user, true))?;
        self.known().insert(user);
        Ok(true)
    }

    /// Forgets that the user's account exists (it was deactivated).
    ///
    /// # Errors
    /// Storage failures.
    pub fn forget_account(&self, user: UserId) -> Result<()> {
        self.known().remove(&user);
        // Also covers a deactivation made by the command line in another process.
        self.domain.forget_password(user);
        Ok(self.domain.store.write(|w| w.set_matrix_account(user, false))?)
    }

    /// The user's Matrix login name and password; the account is made when
    /// a homeserver is configured, since the credentials are only useful once
    /// it exists.
    ///
    /// # Errors
    /// Overloaded when too many derivations are under way; the homeserver's
    /// failures as [`Sessions::login`] sorts them.
    pub async fn credentials(self: &Arc<Self>, user: UserId) -> Result<Credentials> {
        let (username, password) = self.domain.credentials(user, Wait::Bounded).await?;
        self.ensure_account(user, Some(&password), Wait::Bounded).await.map_err(account_error)?;
        Ok(Credentials { username, password: password.to_string() })
    }

    /// Logs the user's Matrix account in (making it first when needed) on
    /// `device`, from the app at `client_addr`. The homeserver URL the app
    /// is told: the configured one, else the service itself as the app
    /// reached it (`reached_at`, `scheme://host`), for the proxy.
    ///
    /// # Errors
    /// Unavailable without a homeserver or while it cannot be reached;
    /// rate limited, forbidden (a deactivated account) or refused as the
    /// homeserver answers; malformed when the service cannot tell the app's
    /// homeserver URL.
    pub async fn login(
        self: &Arc<Self>,
        user: UserId,
        device: Option<&str>,
        client_addr: Option<IpAddr>,
        reached_at: Option<String>,
    ) -> Result<Login> {
        if let Some(d) = device
            && (d.is_empty() || d.chars().count() > 255 || d.chars().any(char::is_control))
        {
            return Err(Error::invalid("deviceID", "must be 1 to 255 printable characters"));
        }
        let Some(hs) = &self.hs else {
            return Err(Error::Unavailable(
                "no homeserver is configured (matrix.registration_shared_secret): login is unavailable".into(),
            ));
        };
        let (_, password) = self.domain.credentials(user, Wait::Bounded).await?;
        self.ensure_account(user, Some(&password), Wait::Bounded).await.map_err(account_error)?;
        let session = hs.login(user, &password, device, client_addr).await.map_err(homeserver_error)?;
        let homeserver_url = match (self.domain.config.app_homeserver_url(), reached_at) {
            (Some(url), _) => url.to_string(),
            (None, Some(here)) => here,
            (None, None) => {
                return Err(Error::Malformed("send a Host header (or the operator sets proxy.public_url)".into()));
            }
        };
        Ok(Login { session, homeserver_url })
    }
}

fn account_error(e: AccountError) -> Error {
    match e {
        AccountError::Homeserver(h) => homeserver_error(h),
        AccountError::Service(e @ Error::Overloaded { .. }) => e,
        AccountError::Service(other) => {
            Error::Unavailable(format!("the homeserver account cannot be prepared now: {other}"))
        }
    }
}

/// What the app sees of a homeserver failure on its login: never a 500.
fn homeserver_error(e: HomeserverError) -> Error {
    match e {
        HomeserverError::RateLimited { retry_after } => Error::RateLimited {
            detail: "the homeserver limits logins for now; retry later".into(),
            retry_after_secs: retry_after.map_or(60, |d| d.as_millis().div_ceil(1000).max(1).try_into().unwrap_or(60)),
        },
        HomeserverError::Deactivated => Error::Forbidden("the Matrix account of this user is deactivated".into()),
        e @ (HomeserverError::Refused(_) | HomeserverError::Failing(_)) => {
            Error::HomeserverRefused(format!("the homeserver refused the login: {e}"))
        }
        e @ (HomeserverError::Unreachable(_) | HomeserverError::Misconfigured(_)) => {
            Error::Unavailable(format!("the homeserver cannot be reached now: {e}"))
        }
    }
}
