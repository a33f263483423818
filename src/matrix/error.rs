//! What can go wrong talking to the homeserver, sorted by what the caller
//! should do about it: retry later, or give up on this request.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A Matrix `errcode`, parsed once so that callers match on variants rather
/// than on strings. Codes the service does not act on keep their text in
/// [`ErrCode::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrCode {
    /// `M_FORBIDDEN`: wrong password, not allowed, or not in the room.
    Forbidden,
    /// `M_UNKNOWN_TOKEN`: the access token expired or was logged out.
    UnknownToken,
    /// `M_MISSING_TOKEN`: the request needed an access token.
    MissingToken,
    /// `M_USER_IN_USE`: registration of an existing account.
    UserInUse,
    /// `M_INVALID_USERNAME`: a localpart the homeserver refuses.
    InvalidUsername,
    /// `M_NOT_FOUND`: no such room, event, state or user.
    NotFound,
    /// `M_LIMIT_EXCEEDED`: rate limited.
    LimitExceeded,
    /// `M_USER_DEACTIVATED`: login to a deactivated account.
    UserDeactivated,
    /// `M_BAD_JSON` / `M_NOT_JSON`: the request body was refused.
    BadJson,
    /// `M_INVALID_PARAM` / `M_MISSING_PARAM`.
    InvalidParam,
    /// `M_UNRECOGNIZED`: the homeserver does not know the endpoint.
    Unrecognized,
    /// `M_UNKNOWN`: the homeserver gave no more specific code.
    Unknown,
    /// Any other code, verbatim.
    Other(String),
}

impl ErrCode {
    /// The code as the homeserver spells it.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Forbidden => "M_FORBIDDEN",
            Self::UnknownToken => "M_UNKNOWN_TOKEN",
            Self::MissingToken => "M_MISSING_TOKEN",
            Self::UserInUse => "M_USER_IN_USE",
            Self::InvalidUsername => "M_INVALID_USERNAME",
            Self::NotFound => "M_NOT_FOUND",
            Self::LimitExceeded => "M_LIMIT_EXCEEDED",
            Self::UserDeactivated => "M_USER_DEACTIVATED",
            Self::BadJson => "M_BAD_JSON",
            Self::InvalidParam => "M_INVALID_PARAM",
            Self::Unrecognized => "M_UNRECOGNIZED",
            Self::Unknown => "M_UNKNOWN",
            Self::Other(s) => s,
        }
    }
}

impl From<String> for ErrCode {
    fn from(s: String) -> Self {
        match s.as_str() {
            "M_FORBIDDEN" => Self::Forbidden,
            "M_UNKNOWN_TOKEN" => Self::UnknownToken,
            "M_MISSING_TOKEN" => Self::MissingToken,
            "M_USER_IN_USE" => Self::UserInUse,
            "M_INVALID_USERNAME" => Self::InvalidUsername,
            "M_NOT_FOUND" => Self::NotFound,
            "M_LIMIT_EXCEEDED" => Self::LimitExceeded,
            "M_USER_DEACTIVATED" => Self::UserDeactivated,
            "M_BAD_JSON" | "M_NOT_JSON" => Self::BadJson,
            "M_INVALID_PARAM" | "M_MISSING_PARAM" => Self::InvalidParam,
            "M_UNRECOGNIZED" => Self::Unrecognized,
            "M_UNKNOWN" => Self::Unknown,
            _ => Self::Other(s),
        }
    }
}

impl<'de> Deserialize<'de> for ErrCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::from)
    }
}

impl fmt::Display for ErrCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The standard Matrix error body `{"errcode": …, "error": …}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    pub errcode: ErrCode,
    #[serde(default)]
    pub error: String,
    /// Present on `M_LIMIT_EXCEEDED` (older servers; newer ones send `Retry-After`).
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

/// A failed homeserver request.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// No connection could be made (refused, DNS, TLS handshake): retry later.
    #[error("homeserver unreachable: {0}")]
    Unreachable(String),
    /// The connection broke while the request was in flight: retry later.
    #[error("homeserver connection failed: {0}")]
    Transport(String),
    /// No complete answer within the configured request timeout: retry later.
    #[error("homeserver did not answer within {0:?}")]
    Timeout(Duration),
    /// The homeserver answered 5xx: retry later.
    #[error("homeserver error {status}{}", errcode_suffix(.errcode.as_ref(), .message))]
    Server { status: u16, errcode: Option<ErrCode>, message: String },
    /// 429 or `M_LIMIT_EXCEEDED`: retry after the given time.
    #[error("homeserver rate limit (retry after {retry_after_ms:?} ms)")]
    RateLimited { retry_after_ms: Option<u64> },
    /// A 4xx with a Matrix error body: this request will not succeed as it is.
    #[error("homeserver refused the request ({status} {errcode}: {message})")]
    Api { status: u16, errcode: ErrCode, message: String },
    /// An answer that is not what the endpoint promises (not JSON, wrong
    /// shape, a 4xx without an error body).
    #[error("undecodable homeserver answer (status {status}): {reason}")]
    Decode { status: u16, reason: String },
    /// The client itself is misconfigured (bad URL, unreadable secret file).
    #[error("matrix client configuration: {0}")]
    Config(String),
}

fn errcode_suffix(code: Option<&ErrCode>, message: &str) -> String {
    match code {
        Some(c) => format!(" ({c}: {message})"),
        None if message.is_empty() => String::new(),
        None => format!(" ({message})"),
    }
}

impl MatrixError {
    /// Whether the same request may succeed later without any change.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable(_)
                | Self::Transport(_)
                | Self::Timeout(_)
                | Self::Server { .. }
                | Self::RateLimited { .. }
        )
    }

    /// The Matrix error code, when the homeserver sent one.
    #[must_use]
    pub fn errcode(&self) -> Option<&ErrCode> {
        match self {
            Self::Api { errcode, .. } => Some(errcode),
            Self::Server { errcode, .. } => errcode.as_ref(),
            _ => None,
        }
    }

    /// Whether the homeserver answered with this error code.
    #[must_use]
    pub fn is(&self, code: &ErrCode) -> bool {
        self.errcode() == Some(code)
    }

    /// The wait the homeserver asked for, for a rate-limited request.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after_ms: Some(ms) } => Some(Duration::from_millis(*ms)),
            _ => None,
        }
    }

    /// Sorts a non-2xx answer by its status and (when present) Matrix error body.
    pub(crate) fn from_response(status: u16, retry_after_header: Option<u64>, body: &[u8]) -> Self {
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        if status == 429 || parsed.as_ref().is_some_and(|b| b.errcode == ErrCode::LimitExceeded) {
            let from_body = parsed.as_ref().and_then(|b| b.retry_after_ms);
            return Self::RateLimited { retry_after_ms: retry_after_header.map(|s| s * 1000).or(from_body) };
        }
        if status >= 500 {
            let (errcode, message) = match parsed {
                Some(b) => (Some(b.errcode), b.error),
                None => (None, String::new()),
            };
            return Self::Server { status, errcode, message };
        }
        match parsed {
            Some(b) => Self::Api { status, errcode: b.errcode, message: b.error },
            None => Self::Decode {
                status,
                reason: format!("no Matrix error body in a {status} answer ({} bytes)", body.len()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_answers() {
        let e = MatrixError::from_response(400, None, br#"{"errcode":"M_USER_IN_USE","error":"taken"}"#);
        assert!(e.is(&ErrCode::UserInUse));
        assert!(!e.is_retryable());

        let e = MatrixError::from_response(429, None, br#"{"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":1500}"#);
        assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
        assert!(e.is_retryable());

        let e = MatrixError::from_response(429, Some(3), b"");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));

        let e = MatrixError::from_response(502, None, b"<html>bad gateway</html>");
        assert!(matches!(e, MatrixError::Server { status: 502, errcode: None, .. }));
        assert!(e.is_retryable());

        let e = MatrixError::from_response(404, None, b"not json");
        assert!(matches!(e, MatrixError::Decode { status: 404, .. }));
        assert!(!e.is_retryable());

        let e = MatrixError::from_response(403, None, br#"{"errcode":"ORG_CUSTOM","error":"x"}"#);
        assert_eq!(e.errcode(), Some(&ErrCode::Other("ORG_CUSTOM".into())));
    }
}
