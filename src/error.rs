//! The service's error, in the domain's terms: what went wrong, in words a
//! caller can act on, and no HTTP. `api::problem` gives each kind its status
//! code and problem+json; the CLI prints it as a line. Storage details never
//! reach a client.

use crate::model::{OrgId, UserId};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request cannot be read: malformed, of the wrong type, or a
    /// required part missing or out of range.
    #[error("{0}")]
    Malformed(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials; the action is not allowed to them.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// It exists already, or the state forbids the change.
    #[error("{0}")]
    Conflict(String),
    /// A field is well-formed but invalid, for `reason` (which reads on from the field's name).
    #[error("{field} {reason}")]
    Invalid { field: String, reason: String },
    /// Too many requests; retry after the given seconds.
    #[error("{detail}")]
    RateLimited { detail: String, retry_after_secs: u64 },
    /// The homeserver answered a call needed now with a failure.
    #[error("{0}")]
    HomeserverRefused(String),
    /// The homeserver (or another dependency) cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    /// The service itself is too busy for this now; retry after the given seconds.
    #[error("{detail}")]
    Overloaded { detail: String, retry_after_secs: u64 },
    /// The disk of the data directory is full: nothing can be written now;
    /// retry after the given seconds.
    #[error("{detail}")]
    DiskFull { detail: String, retry_after_secs: u64 },
    /// The service itself failed; the detail is logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
    /// `error`, and what would fix it: each front end says that in its own
    /// terms (the API names a request, the CLI a command).
    #[error("{error}")]
    Remedied { error: Box<Error>, remedy: Remedy },
}

/// What the caller can do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// Create the organization first.
    CreateOrganization(OrgId),
    /// Create the user first.
    CreateUser(UserId),
    /// Reactivate the user first.
    ReactivateUser(UserId),
    /// The default room is removed as the organization's default room.
    RemoveDefaultRoom(OrgId),
}

impl Error {
    /// A field that is well-formed but invalid; `reason` reads on from the field's name.
    #[must_use]
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid { field: field.into(), reason: reason.into() }
    }

    /// This error with what would fix it.
    #[must_use]
    pub fn with_remedy(self, remedy: Remedy) -> Self {
        Error::Remedied { error: Box::new(self), remedy }
    }

    /// The error without its remedy: what decides how it is answered.
    #[must_use]
    pub fn kind(&self) -> &Error {
        match self {
            Error::Remedied { error, .. } => error.kind(),
            other => other,
        }
    }

    /// The remedy, when the error has one.
    #[must_use]
    pub fn remedy(&self) -> Option<Remedy> {
        match self {
            Error::Remedied { remedy, .. } => Some(*remedy),
            _ => None,
        }
    }

    /// The error as a line for a shell user: with the remedy as a command.
    #[must_use]
    pub fn for_cli(&self) -> String {
        match self.remedy() {
            None => self.to_string(),
            Some(remedy) => format!("{self}: {}", remedy.as_command()),
        }
    }
}

impl Remedy {
    /// The remedy as `messenger-chat` subcommands say it.
    #[must_use]
    pub fn as_command(self) -> String {
        match self {
            Remedy::CreateOrganization(org) => {
                format!("create it with `messenger-chat org put {org} --name <name>`")
            }
            Remedy::CreateUser(user) => {
                format!("create it with `messenger-chat user put {user} --display-name <name>`")
            }
            Remedy::ReactivateUser(user) => {
                format!("reactivate them with `messenger-chat user put {user} --display-name <name>` first")
            }
            Remedy::RemoveDefaultRoom(org) => {
                format!("remove it as the default room of organization {org}, through the API")
            }
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSpace { .. } => {
                Error::DiskFull { detail: e.to_string(), retry_after_secs: crate::store::health::DISK_FULL_RETRY_SECS }
            }
            // The file's path and the damage are for the operator's log.
            StoreError::WritesRefused { .. } => Error::Unavailable(
                "the database file is damaged, so the service refuses every write until an operator repairs or \
                 restores it; reads that do not reach the damage still work"
                    .into(),
            ),
            StoreError::Reopening => Error::Overloaded { detail: e.to_string(), retry_after_secs: 2 },
            other => Error::Internal(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
