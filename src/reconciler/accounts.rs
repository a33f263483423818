//! Matrix accounts of app users: made on first need, kept in step.

use crate::matrix::ErrCode;
use crate::model::UserId;
use crate::store::{Read, StoreError};

use super::{Homeserver, Reconciler, StepError};

impl Homeserver {
    /// Matrix user id of an app user.
    #[must_use]
    pub fn matrix_id(&self, user: UserId) -> String {
        self.domain.matrix_user_id(user)
    }

    /// Whether a Matrix user id is one of the service's app accounts.
    #[must_use]
    pub fn is_app_user(&self, mxid: &str) -> bool {
        let m = &self.domain.config.matrix;
        mxid.strip_prefix('@')
            .and_then(|s| s.strip_prefix(m.user_prefix.as_str()))
            .and_then(|s| s.strip_suffix(m.server_name.as_str()))
            .and_then(|s| s.strip_suffix(':'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }

    /// The user's Matrix password (Argon2id; off the async workers).
    ///
    /// # Errors
    /// Argon2 parameters out of range.
    pub async fn password(&self, user: UserId) -> Result<String, StepError> {
        let domain = self.domain.clone();
        tokio::task::spawn_blocking(move || domain.credentials(user).map(|(_, p)| p))
            .await
            .map_err(|e| StepError::Other(e.to_string()))?
            .map_err(StepError::from)
    }

    /// Makes the user's Matrix account when it does not exist yet, with the
    /// derived password and the user's display name.
    ///
    /// # Errors
    /// Homeserver and storage failures.
    pub async fn ensure_account(&self, user: UserId) -> Result<(), StepError> {
        if self.known_accounts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&user) {
            return Ok(());
        }
        let (exists, display) = {
            let r = self.domain.store.read()?;
            (r.has_matrix_account(user)?, r.user(user)?.map(|u| u.display_name).filter(|n| !n.is_empty()))
        };
        if !exists {
            let password = self.password(user).await?;
            let localpart = format!("{}{}", self.domain.config.matrix.user_prefix, user);
            self.client.register(&localpart, &password, false, display.as_deref()).await?;
            self.domain.store.write(|w| w.set_matrix_account(user, true))?;
        }
        self.known_accounts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(user);
        Ok(())
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
        self.hs.ensure_account(user).await?;
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
