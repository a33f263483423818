//! Matrix accounts of app users: kept in step with the users' records.

use crate::domain::passwords::Wait;
use crate::model::UserId;
use crate::store::Read;

use super::{Reconciler, StepError};

impl Reconciler {
    /// Keeps the display name in step (making the account when needed).
    pub(super) async fn sync_user(&self, user: UserId) -> Result<(), StepError> {
        let Some(record) = self.domain.store.read()?.user(user)? else { return Ok(()) };
        if record.deactivated {
            return Ok(());
        }
        // The background sync waits for a derivation slot rather than being refused.
        self.sessions.ensure_account(user, None, Wait::Always).await?;
        if !record.display_name.is_empty() {
            let own = self.own_password(user, self.offers().accounts_without_session).await?;
            self.hs.set_display_name(user, &record.display_name, own.as_deref().map(String::as_str)).await?;
        }
        Ok(())
    }

    /// Deactivates the Matrix account of a deactivated user.
    pub(super) async fn deactivate_user(&self, user: UserId) -> Result<(), StepError> {
        let still = self.domain.store.read()?.user(user)?.is_some_and(|u| u.deactivated);
        if !still {
            return Ok(());
        }
        // Without an account there is nothing to deactivate (nor to log in to).
        if self.sessions.has_account(user)? {
            let own = self.own_password(user, self.offers().accounts_without_session).await?;
            self.hs.deactivate(user, own.as_deref().map(String::as_str)).await?;
        }
        self.sessions.forget_account(user)?;
        Ok(())
    }
}
