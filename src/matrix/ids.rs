//! The Matrix ids of the service's accounts: the one place their rule lives.
//!
//! App user N has the account `@<user_prefix>N:<server_name>`; the bot is
//! `@<bot_localpart>:<server_name>`. The domain shows these ids (credentials),
//! the Synapse adapter registers and addresses them, and the reconciler tells
//! the service's own accounts from anyone else's in a room by them.

use crate::config::MatrixConfig;
use crate::model::UserId;

/// The naming rule of one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixIds {
    server_name: String,
    user_prefix: String,
    bot_localpart: String,
}

impl MatrixIds {
    #[must_use]
    pub fn new(config: &MatrixConfig) -> Self {
        MatrixIds {
            server_name: config.server_name.clone(),
            user_prefix: config.user_prefix.clone(),
            bot_localpart: config.bot_localpart.clone(),
        }
    }

    /// The localpart of app user `user`'s account: `<user_prefix><user>`.
    #[must_use]
    pub fn localpart(&self, user: UserId) -> String {
        format!("{}{user}", self.user_prefix)
    }

    /// The full Matrix id of app user `user`: `@<user_prefix><user>:<server_name>`.
    #[must_use]
    pub fn user(&self, user: UserId) -> String {
        format!("@{}{user}:{}", self.user_prefix, self.server_name)
    }

    /// `@<localpart>:<server_name>`.
    #[must_use]
    pub fn full(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name)
    }

    /// The bot's localpart.
    #[must_use]
    pub fn bot_localpart(&self) -> &str {
        &self.bot_localpart
    }

    /// The bot's full user id, `@<bot_localpart>:<server_name>`.
    #[must_use]
    pub fn bot(&self) -> String {
        self.full(&self.bot_localpart)
    }

    /// Whether a Matrix user id is one of the service's app accounts (the
    /// prefix, digits, this server): those the service adds and removes;
    /// anyone else in a room is left alone.
    #[must_use]
    pub fn is_app_user(&self, mxid: &str) -> bool {
        mxid.strip_prefix('@')
            .and_then(|s| s.strip_prefix(self.user_prefix.as_str()))
            .and_then(|s| s.strip_suffix(self.server_name.as_str()))
            .and_then(|s| s.strip_suffix(':'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_accounts_and_the_bot() {
        let ids = MatrixIds::new(&MatrixConfig {
            server_name: "example.org".into(),
            user_prefix: "u".into(),
            bot_localpart: "chat".into(),
            ..MatrixConfig::default()
        });
        assert_eq!(ids.localpart(42), "u42");
        assert_eq!(ids.user(42), "@u42:example.org");
        assert_eq!(ids.bot(), "@chat:example.org");
        assert!(ids.is_app_user("@u42:example.org"));
        for other in ["@chat:example.org", "@u42:other.org", "@u:example.org", "@ux2:example.org", "u42:example.org"] {
            assert!(!ids.is_app_user(other), "{other}");
        }
    }
}
