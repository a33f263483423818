//! The one place errors become HTTP answers: RFC 9457 problem+json.

use std::convert::Infallible;

use http::StatusCode;
use warp::http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::error::Error;

/// A rejection carrying the service's error (from the filters that
/// authenticate and read the body, before any handler runs).
#[derive(Debug)]
pub struct ApiReject(pub Error);

impl warp::reject::Reject for ApiReject {}

/// Turns an error into its problem+json answer. Internal details are logged, not sent.
#[must_use]
pub fn problem(err: &Error) -> Response {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let detail = match err {
        Error::Internal(why) => {
            tracing::error!(request_id = %crate::server::current_request_id(), error = %why, "internal error");
            "the service failed to handle this request; it has been logged".to_string()
        }
        other => other.to_string(),
    };
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut resp = warp::reply::with_status(body.to_string(), status).into_response();
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    match err {
        Error::Unauthorized(_) => {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        Error::RateLimited { retry_after_secs, .. } | Error::Overloaded { retry_after_secs, .. } => {
            headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        _ => {}
    }
    resp
}

/// Turns every rejection left after routing into problem+json.
///
/// # Errors
/// Never: every rejection gets an answer.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    if let Some(ApiReject(e)) = rejection.find::<ApiReject>() {
        return Ok(problem(e));
    }
    let err = if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        Error::MethodNotAllowed("this path does not answer this method; see /openapi.json for its methods".into())
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        Error::TooLarge("the request body is larger than allowed (server.max_body_bytes)".into())
    } else if rejection.find::<warp::reject::UnsupportedMediaType>().is_some() {
        Error::UnsupportedMediaType("send the body as application/json".into())
    } else if rejection.find::<warp::reject::MissingHeader>().is_some()
        || rejection.find::<warp::reject::InvalidHeader>().is_some()
        || rejection.find::<warp::reject::InvalidQuery>().is_some()
    {
        Error::BadRequest("malformed request headers or query".into())
    } else {
        Error::NotFound("no route matches this path; see /openapi.json for every route".into())
    };
    Ok(problem(&err))
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
