//! Matrix accounts of app users: made on first need, kept in step.

use crate::domain::passwords::Wait;
use crate::matrix::ErrCode;
use crate::model::UserId;
use crate::store::{Read, StoreError};

use super::{Homeserver, Reconciler, StepError};

impl Homeserver {
    /// Matrix user id of an app user.
    #[must_use]
    pub fn matrix_id(&self, user: UserId) -> String {
        self.domain.ids.user(user)
    }

    /// Whether a Matrix user id is one of the service's app accounts.
    #[must_use]
    pub fn is_app_user(&self, mxid: &str) -> bool {
        self.domain.ids.is_app_user(mxid)
    }

    /// The user's Matrix password, for the background sync: it waits for a
    /// derivation slot rather than being refused.
    ///
    /// # Errors
    /// Argon2 parameters out of range.
    pub async fn password(&self, user: UserId) -> Result<String, StepError> {
        Ok(self.domain.credentials(user, Wait::Always).await?.1)
    }

    /// Whether the user's Matrix account is known to exist.
    ///
    /// # Errors
    /// Storage failures.
    pub fn has_account(&self, user: UserId) -> Result<bool, StepError> {
        if self.known_accounts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&user) {
            return Ok(true);
        }
        let exists = self.domain.store.read()?.has_matrix_account(user)?;
        if exists {
            self.known_accounts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(user);
        }
        Ok(exists)
    }

    /// Makes the user's Matrix account when it does not exist yet, with the
    /// derived password (`password` when the caller derived it already) and
    /// the user's display name. True when it made the account.
    ///
    /// # Errors
    /// Homeserver and storage failures.
    pub async fn ensure_account(&self, user: UserId, password: Option<&str>) -> Result<bool, StepError> {
        if self.has_account(user)? {
            return Ok(false);
        }
        let display = self.domain.store.read()?.user(user)?.map(|u| u.display_name).filter(|n| !n.is_empty());
        let derived;
        let password = match password {
            Some(p) => p,
            None => {
                derived = self.password(user).await?;
                derived.as_str()
            }
        };
        let localpart = self.domain.ids.localpart(user);
        self.client.register(&localpart, password, false, display.as_deref()).await?;
        self.domain.store.write(|w| w.set_matrix_account(user, true))?;
        self.known_accounts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(user);
        Ok(true)
    }

    fn forget_account(&self, user: UserId) -> Result<(), StoreError> {
        self.known_accounts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&user);
        self.domain.store.write(|w| w.set_matrix_account(user, false))
    }
}

impl Reconciler {
    /// Keeps the display name in step (making the account when needed).
    pub(super) async fn sync_user(&mut self, user: UserId) -> Result<(), StepError> {
        let Some(record) = self.hs.domain.store.read()?.user(user)? else { return Ok(()) };
        if record.deactivated {
            return Ok(());
        }
        self.hs.ensure_account(user, None).await?;
        if !record.display_name.is_empty() {
            self.hs.client.set_display_name(&self.hs.matrix_id(user), &record.display_name).await?;
        }
        Ok(())
    }

    /// Deactivates the Matrix account of a deactivated user.
    pub(super) async fn deactivate_user(&mut self, user: UserId) -> Result<(), StepError> {
        let still = self.hs.domain.store.read()?.user(user)?.is_some_and(|u| u.deactivated);
        if !still {
            return Ok(());
        }
        match self.hs.client.deactivate(&self.hs.matrix_id(user)).await {
            Ok(()) => {}
            Err(e) if e.is(&ErrCode::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        self.hs.forget_account(user)?;
        Ok(())
    }
}
