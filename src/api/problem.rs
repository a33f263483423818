//! The one place errors become HTTP answers: each kind of error gets its
//! status code here, and its RFC 9457 problem+json body; a remedy is said
//! as the request that would fix it.

use std::convert::Infallible;

use http::StatusCode;
use warp::http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::error::{Error, Remedy};
use crate::store::StoreError;

/// What an HTTP answer can fail with: the domain's errors, and those only
/// HTTP has (a method, a body's size, type or pace).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Domain(#[from] Error),
    /// The path exists with other methods.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// The body is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// The body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Domain(e.into())
    }
}

/// What every handler returns; [`reply`] answers it.
pub type Handled = Result<Response, ApiError>;

/// A rejection carrying an error (from the filters that authenticate and
/// read the body, before any handler runs).
#[derive(Debug)]
pub struct ApiReject(pub ApiError);

impl warp::reject::Reject for ApiReject {}

impl ApiError {
    /// The HTTP status of this error.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Domain(e) => match e.kind() {
                Error::Malformed(_) => StatusCode::BAD_REQUEST,
                Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                Error::Forbidden(_) => StatusCode::FORBIDDEN,
                Error::NotFound(_) => StatusCode::NOT_FOUND,
                Error::Conflict(_) => StatusCode::CONFLICT,
                Error::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                Error::HomeserverRefused(_) => StatusCode::BAD_GATEWAY,
                Error::Unavailable(_) | Error::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
                Error::DiskFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
                Error::Internal(_) | Error::Remedied { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The `detail` of the answer: what to change, with the request that
    /// would fix it; internal details are logged instead.
    fn detail(&self) -> String {
        let ApiError::Domain(e) = self else { return self.to_string() };
        if let Error::Internal(why) = e.kind() {
            tracing::error!(request_id = %crate::server::current_request_id(), error = %why, "internal error");
            return "the service failed to handle this request; it has been logged".to_string();
        }
        match e.remedy() {
            Some(remedy) => format!("{e}: {}", as_request(remedy)),
            None => e.to_string(),
        }
    }
}

/// A remedy as the API request that carries it out.
fn as_request(remedy: Remedy) -> String {
    match remedy {
        Remedy::CreateOrganization(org) => format!("create it with PUT /v1/organizations/{org}"),
        Remedy::CreateUser(user) => format!("create it with PUT /v1/users/{user}"),
        Remedy::ReactivateUser(user) => format!("reactivate them with PUT /v1/users/{user} first"),
        Remedy::RemoveDefaultRoom(org) => format!("remove it with DELETE /v1/chatrooms/default/{org}"),
    }
}

/// Turns an error into its problem+json answer.
#[must_use]
pub fn problem(err: impl Into<ApiError>) -> Response {
    answer(&err.into())
}

fn answer(err: &ApiError) -> Response {
    let status = err.status();
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": err.detail(),
    });
    let mut resp = warp::reply::with_status(body.to_string(), status).into_response();
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    if let ApiError::Domain(e) = err {
        match e.kind() {
            Error::Unauthorized(_) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Error::RateLimited { retry_after_secs, .. }
            | Error::Overloaded { retry_after_secs, .. }
            | Error::DiskFull { retry_after_secs, .. } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
    }
    resp
}

/// The answer of a handler: its response, or its error as problem+json.
#[must_use]
pub fn reply(handled: Handled) -> Response {
    handled.unwrap_or_else(problem)
}

/// Turns every rejection left after routing into problem+json.
///
/// # Errors
/// Never: every rejection gets an answer.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    if let Some(ApiReject(e)) = rejection.find::<ApiReject>() {
        return Ok(answer(e));
    }
    let err = if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed("this path does not answer this method; see /openapi.json for its methods".into())
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::TooLarge("the request body is larger than allowed (server.max_body_bytes)".into())
    } else if rejection.find::<warp::reject::UnsupportedMediaType>().is_some() {
        ApiError::UnsupportedMediaType("send the body as application/json".into())
    } else if rejection.find::<warp::reject::MissingHeader>().is_some()
        || rejection.find::<warp::reject::InvalidHeader>().is_some()
        || rejection.find::<warp::reject::InvalidQuery>().is_some()
    {
        Error::Malformed("malformed request headers or query".into()).into()
    } else {
        Error::NotFound("no route matches this path; see /openapi.json for every route".into()).into()
    };
    Ok(problem(err))
}

/// Adds `Allow` to a 405 (RFC 9110 §15.5.6): the methods some route answers at `path`.
#[must_use]
pub fn with_allow(path: &str, mut resp: Response) -> Response {
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        let allow = super::routes::methods_of(path).join(", ");
        if let Ok(value) = HeaderValue::from_str(&allow) {
            resp.headers_mut().insert(http::header::ALLOW, value);
        }
    }
    resp
}
