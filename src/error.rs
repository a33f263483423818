//! The service's error: what went wrong, in words a client can act on.
//! `api::problem` turns it into problem+json; storage details never reach a client.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: malformed request, wrong type, missing or out-of-range parameter.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: valid token, action not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such thing.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists with other methods.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 408: the request body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: it exists already, or the state forbids the change.
    #[error("{0}")]
    Conflict(String),
    /// 413: body larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// 415: body that is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid.
    #[error("{0}")]
    Invalid(String),
    /// 429: too many requests; retry after the given seconds.
    #[error("{detail}")]
    RateLimited { detail: String, retry_after_secs: u64 },
    /// 502: the homeserver answered with a failure.
    #[error("{0}")]
    BadGateway(String),
    /// 503: the homeserver (or another dependency) cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    /// 503: the service itself is too busy for this now; retry after the given seconds.
    #[error("{detail}")]
    Overloaded { detail: String, retry_after_secs: u64 },
    /// 500: the service itself failed; the detail is logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Internal(e.to_string())
    }
}

impl Error {
    /// The HTTP status of this error.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::NotFound(_) => 404,
            Error::MethodNotAllowed(_) => 405,
            Error::RequestTimeout(_) => 408,
            Error::Conflict(_) => 409,
            Error::TooLarge(_) => 413,
            Error::UnsupportedMediaType(_) => 415,
            Error::Invalid(_) => 422,
            Error::RateLimited { .. } => 429,
            Error::BadGateway(_) => 502,
            Error::Unavailable(_) | Error::Overloaded { .. } => 503,
            Error::Internal(_) => 500,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
