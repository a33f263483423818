//! /v1/user…: the caller's own Matrix login.

use bytes::Bytes;
use http::StatusCode;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use super::extract::{self, body, int, param, query_pairs, raw_query};
use super::views::LoginBody;
use super::{AppState, answer, caller, json, reader, with_state};
use crate::client_addr::ClientAddr;
use crate::domain::Principal;
use crate::domain::passwords::Wait;
use crate::error::{Error, Result};
use crate::matrix::{ErrCode, MatrixError};
use crate::reconciler::StepError;
use crate::store::Reader;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let max = state.max_body();
    let s = || with_state(state.clone());
    let credentials = warp::path!("v1" / "user" / "credentials")
        .and(warp::get())
        .and(s())
        .and(reader(state.clone()))
        .and(raw_query())
        .then(credentials);
    let login = warp::path!("v1" / "user" / "login")
        .and(warp::post())
        .and(s())
        .and(caller(state.clone()))
        .and(raw_query())
        .and(body(max, false))
        .and(warp::ext::optional::<ClientAddr>())
        .and(warp::host::optional())
        .then(login);
    credentials.or(login).unify().boxed()
}

fn user_id_param(query: &str) -> Result<Option<i64>> {
    let q = query_pairs(query)?;
    param(&q, "user_id").map(|v| int("user_id", v)).transpose()
}

/// GET /v1/user/credentials — a PAT for its own user; an API token with `?user_id=`.
/// Rate-limited per caller and user; the derivation is refused with 503 when
/// too many are under way.
async fn credentials(state: AppState, r: Reader, p: Principal, query: String) -> Response {
    answer(
        async {
            let user = state.domain.acting_user(&r, p, user_id_param(&query)?)?;
            drop(r);
            state.credentials_limit.check((p, user), std::time::Instant::now())?;
            let (username, password) = state.domain.credentials(user, Wait::Bounded).await?;
            if let Some(hs) = &state.hs {
                // The credentials are only useful once the account exists.
                hs.ensure_account(user, Some(&password)).await.map_err(step_error)?;
            }
            let mut resp = json(StatusCode::OK, &serde_json::json!({"username": username, "password": password}));
            resp.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
            Ok(resp)
        }
        .await,
    )
}

/// POST /v1/user/login — a PAT for its own user; an API token with `?user_id=`.
/// Logs the user's Matrix account in with its password, asking for a
/// refresh token; the app's address (the request's [`ClientAddr`]) goes
/// along so the homeserver's per-address login limits count the app, not the service.
async fn login(
    state: AppState,
    p: Principal,
    query: String,
    body: Bytes,
    client: Option<ClientAddr>,
    host: Option<warp::host::Authority>,
) -> Response {
    answer(
        async {
            let user = state.domain.acting_user(&state.domain.store.read()?, p, user_id_param(&query)?)?;
            state.login_limit.check((p, user), std::time::Instant::now())?;
            let b: LoginBody = if body.is_empty() { LoginBody::default() } else { extract::json(&body)? };
            if let Some(d) = &b.device_id
                && (d.is_empty() || d.chars().count() > 255 || d.chars().any(char::is_control))
            {
                return Err(Error::Invalid("deviceID must be 1 to 255 printable characters".into()));
            }
            let Some(hs) = &state.hs else {
                return Err(Error::Unavailable(
                    "no homeserver is configured (matrix.registration_shared_secret): login is unavailable".into(),
                ));
            };
            let (_, password) = state.domain.credentials(user, Wait::Bounded).await?;
            hs.ensure_account(user, Some(&password)).await.map_err(step_error)?;
            let granted = hs
                .client
                .login_user(&hs.matrix_id(user), &password, b.device_id.as_deref(), client.map(|c| c.ip))
                .await
                .map_err(matrix_error)?;
            // With the proxy on, the app's homeserver is this service, as the app reached it.
            let base = match (state.domain.config.app_homeserver_url(), host) {
                (Some(url), _) => url.to_string(),
                (None, Some(host)) => format!("{}://{host}", client.map_or("https", |c| c.proto())),
                (None, None) => {
                    return Err(Error::BadRequest("send a Host header (or the operator sets proxy.public_url)".into()));
                }
            };
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({
                    "accessToken": granted.access_token,
                    "deviceID": granted.device_id,
                    "expiresInMS": granted.expires_in_ms.unwrap_or(0),
                    "refreshToken": granted.refresh_token.unwrap_or_default(),
                    "userID": granted.user_id,
                    "wellKnown": {"m.homeserver": {"base_url": base}},
                }),
            ))
        }
        .await,
    )
}

fn step_error(e: StepError) -> Error {
    match e {
        StepError::Matrix(m) => matrix_error(m),
        other => Error::Unavailable(format!("the homeserver account cannot be prepared now: {other}")),
    }
}

/// What the app sees of a homeserver failure: never a 500.
fn matrix_error(e: MatrixError) -> Error {
    match e {
        MatrixError::RateLimited { retry_after_ms } => Error::RateLimited {
            detail: "the homeserver limits logins for now; retry later".into(),
            retry_after_secs: retry_after_ms.map_or(60, |ms| ms.div_ceil(1000).max(1)),
        },
        MatrixError::Api { errcode: ErrCode::UserDeactivated, .. } => {
            Error::Forbidden("the Matrix account of this user is deactivated".into())
        }
        e @ (MatrixError::Api { .. } | MatrixError::Server { .. } | MatrixError::Decode { .. }) => {
            Error::BadGateway(format!("the homeserver refused the login: {e}"))
        }
        e => Error::Unavailable(format!("the homeserver cannot be reached now: {e}")),
    }
}
