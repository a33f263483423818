//! /v1/user…: the caller's own Matrix login.

use http::StatusCode;
use warp::Filter;
use warp::filters::BoxedFilter;

use super::body::{Pending, Size, pending};
use super::extract::{self, int, param, query_pairs, raw_query};
use super::problem::Handled;
use super::views::LoginBody;
use super::{AppState, caller, json, reader, with_state};
use crate::client_addr::ClientAddr;
use crate::domain::Principal;
use crate::error::Result;
use crate::store::Reader;

pub fn routes(state: AppState) -> BoxedFilter<(Handled,)> {
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
        .and(pending(&state, Size::Small, false))
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
async fn credentials(state: AppState, r: Reader, p: Principal, query: String) -> Handled {
    let user = state.domain.acting_user(&r, p, user_id_param(&query)?)?;
    drop(r);
    state.credentials_limit.check((p, user), std::time::Instant::now())?;
    let c = state.sessions.credentials(user).await?;
    let mut resp = json(StatusCode::OK, &serde_json::json!({"username": c.username, "password": c.password}));
    resp.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// POST /v1/user/login — a PAT for its own user; an API token with `?user_id=`.
/// Logs the user's Matrix account in with its password, asking for a
/// refresh token; the app's address (the request's [`ClientAddr`]) goes
/// along so the homeserver's per-address login limits count the app, not the service.
async fn login(
    state: AppState,
    p: Principal,
    query: String,
    body: Pending,
    client: Option<ClientAddr>,
    host: Option<warp::host::Authority>,
) -> Handled {
    let user = state.domain.acting_user(&state.domain.store.read()?, p, user_id_param(&query)?)?;
    state.login_limit.check((p, user), std::time::Instant::now())?;
    let body = body.read(p).await?;
    let b: LoginBody = if body.is_empty() { LoginBody::default() } else { extract::json(&body)? };
    drop(body);
    // Where the app reached the service: its homeserver, with the proxy on.
    let reached_at = host.map(|host| format!("{}://{host}", client.map_or("https", |c| c.proto())));
    let login = state.sessions.login(user, b.device_id.as_deref(), client.map(|c| c.ip), reached_at).await?;
    let session = login.session;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "accessToken": session.access_token,
            "deviceID": session.device_id,
            "expiresInMS": session.expires_in_ms.unwrap_or(0),
            "refreshToken": session.refresh_token.unwrap_or_default(),
            "userID": session.user_id,
            "wellKnown": {"m.homeserver": {"base_url": login.homeserver_url}},
        }),
    ))
}
