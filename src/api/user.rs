//! /v1/user…: the caller's own Matrix login.

use bytes::Bytes;
use http::StatusCode;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use super::extract::{self, body, int, param, query_pairs, raw_query, token};
use super::views::LoginBody;
use super::{AppState, answer, blocking, json, with_state};
use crate::error::{Error, Result};

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let max = state.max_body();
    let s = || with_state(state.clone());
    let credentials = warp::path!("v1" / "user" / "credentials")
        .and(warp::get())
        .and(s())
        .and(token())
        .and(raw_query())
        .then(credentials);
    let login = warp::path!("v1" / "user" / "login")
        .and(warp::post())
        .and(s())
        .and(token())
        .and(raw_query())
        .and(body(max, false))
        .then(login);
    credentials.or(login).unify().boxed()
}

fn user_id_param(query: &str) -> Result<Option<i64>> {
    let q = query_pairs(query)?;
    param(&q, "user_id").map(|v| int("user_id", v)).transpose()
}

/// GET /v1/user/credentials — a PAT for its own user; an API token with `?user_id=`.
async fn credentials(state: AppState, token: Option<String>, query: String) -> Response {
    answer(
        async {
            let (r, p) = state.caller(token.as_deref())?;
            let user = state.domain.acting_user(&r, p, user_id_param(&query)?)?;
            drop(r);
            let d = state.domain.clone();
            let (username, password) = blocking(move || d.credentials(user)).await?;
            let mut resp = json(StatusCode::OK, &serde_json::json!({"username": username, "password": password}));
            resp.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
            Ok(resp)
        }
        .await,
    )
}

/// POST /v1/user/login — a PAT for its own user; an API token with `?user_id=`.
async fn login(state: AppState, token: Option<String>, query: String, body: Bytes) -> Response {
    answer((|| {
        let (r, p) = state.caller(token.as_deref())?;
        let _user = state.domain.acting_user(&r, p, user_id_param(&query)?)?;
        let _body: LoginBody = if body.is_empty() { LoginBody::default() } else { extract::json(&body)? };
        Err(Error::Unavailable(
            "logging in to Matrix needs the homeserver connection, which this build does not have yet; \
             use GET /v1/user/credentials with the homeserver's password login meanwhile"
                .into(),
        ))
    })())
}
