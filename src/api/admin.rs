//! /v1/organizations… and /v1/users…: administration, API token only.

use http::StatusCode;
use serde_json::json as j;
use warp::Filter;
use warp::filters::BoxedFilter;

use super::body::{Body, Size, with_body};
use super::extract::{self, int};
use super::problem::Handled;
use super::views::{NameBody, RoleBody, TokenBody, TokenView, UserBody, rfc3339};
use super::{AppState, blocking, caller, json, no_content, reader, with_state};
use crate::domain::{Domain, Principal};
use crate::error::Error;
use crate::model::OrgRole;
use crate::store::Reader;

pub fn routes(state: AppState) -> BoxedFilter<(Handled,)> {
    let s = || with_state(state.clone());
    // The caller is known (or the request refused) before any body is read.
    let reader = || reader(state.clone());
    let caller = || caller(state.clone());
    let put_org = warp::path!("v1" / "organizations" / String)
        .and(warp::put())
        .and(s())
        .and(with_body(&state, Size::Small, true))
        .then(put_org);
    let delete_org =
        warp::path!("v1" / "organizations" / String).and(warp::delete()).and(s()).and(caller()).then(delete_org);
    let members = warp::path!("v1" / "organizations" / String / "members")
        .and(warp::get())
        .and(s())
        .and(reader())
        .then(list_members);
    let put_member = warp::path!("v1" / "organizations" / String / "members" / String)
        .and(warp::put())
        .and(s())
        .and(with_body(&state, Size::Small, true))
        .then(put_member);
    let delete_member = warp::path!("v1" / "organizations" / String / "members" / String)
        .and(warp::delete())
        .and(s())
        .and(caller())
        .then(delete_member);
    let put_user = warp::path!("v1" / "users" / String)
        .and(warp::put())
        .and(s())
        .and(with_body(&state, Size::Small, true))
        .then(put_user);
    let delete_user = warp::path!("v1" / "users" / String).and(warp::delete()).and(s()).and(caller()).then(delete_user);
    let issue = warp::path!("v1" / "users" / String / "tokens")
        .and(warp::post())
        .and(s())
        .and(with_body(&state, Size::Small, false))
        .then(issue_token);
    let list_tokens =
        warp::path!("v1" / "users" / String / "tokens").and(warp::get()).and(s()).and(reader()).then(list_tokens);
    let revoke = warp::path!("v1" / "users" / String / "tokens" / String)
        .and(warp::delete())
        .and(s())
        .and(caller())
        .then(revoke_token);
    put_org
        .or(delete_org)
        .unify()
        .or(members)
        .unify()
        .or(put_member)
        .unify()
        .or(delete_member)
        .unify()
        .or(put_user)
        .unify()
        .or(delete_user)
        .unify()
        .or(issue)
        .unify()
        .or(list_tokens)
        .unify()
        .or(revoke)
        .unify()
        .boxed()
}

fn id(name: &str, raw: &str) -> crate::error::Result<i64> {
    int(name, &extract::decode_segment(raw))
}

fn created_or_ok(created: bool) -> StatusCode {
    if created { StatusCode::CREATED } else { StatusCode::OK }
}

/// PUT /v1/organizations/{organizationID} — API token: create or rename.
async fn put_org(org: String, state: AppState, p: Principal, body: Body) -> Handled {
    let org = id("organizationID", &org)?;
    let b: NameBody = extract::json(&body)?;
    let d = state.domain.clone();
    let (org, created) = blocking(move || d.put_org(p, org, &b.name)).await?;
    Ok(json(created_or_ok(created), &j!({"organizationID": org.id, "name": org.name})))
}

/// DELETE /v1/organizations/{organizationID} — API token: with all its rooms.
async fn delete_org(org: String, state: AppState, p: Principal) -> Handled {
    let org = id("organizationID", &org)?;
    let d = state.domain.clone();
    blocking(move || d.delete_org(p, org)).await?;
    Ok(no_content())
}

/// GET /v1/organizations/{organizationID}/members — API token.
async fn list_members(org: String, state: AppState, r: Reader, p: Principal) -> Handled {
    let members = state.domain.members(&r, p, id("organizationID", &org)?)?;
    let list: Vec<_> = members.iter().map(|(u, role)| j!({"userID": u, "role": role.as_str()})).collect();
    Ok(json(StatusCode::OK, &list))
}

/// PUT /v1/organizations/{organizationID}/members/{userID} — API token: set the role.
async fn put_member(org: String, user: String, state: AppState, p: Principal, body: Body) -> Handled {
    let org = id("organizationID", &org)?;
    let user = id("userID", &user)?;
    let b: RoleBody = extract::json(&body)?;
    let role = OrgRole::parse(&b.role)
        .ok_or_else(|| Error::invalid("role", format!("must be owner, admin or member, got {:?}", b.role)))?;
    let d = state.domain.clone();
    blocking(move || d.set_member(p, org, user, role)).await?;
    Ok(json(StatusCode::OK, &j!({"userID": user, "role": role.as_str()})))
}

/// DELETE /v1/organizations/{organizationID}/members/{userID} — API token: they leave every room of it.
async fn delete_member(org: String, user: String, state: AppState, p: Principal) -> Handled {
    let org = id("organizationID", &org)?;
    let user = id("userID", &user)?;
    let d = state.domain.clone();
    blocking(move || d.remove_member(p, org, user)).await?;
    Ok(no_content())
}

/// PUT /v1/users/{userID} — API token: create or update (reactivates).
async fn put_user(user: String, state: AppState, p: Principal, body: Body) -> Handled {
    let user = id("userID", &user)?;
    let b: UserBody = extract::json(&body)?;
    let d = state.domain.clone();
    let (u, created) = blocking(move || d.put_user(p, user, &b.display_name)).await?;
    Ok(json(created_or_ok(created), &j!({"userID": u.id, "displayName": u.display_name, "deactivated": u.deactivated})))
}

/// DELETE /v1/users/{userID} — API token: deactivate.
async fn delete_user(user: String, state: AppState, p: Principal) -> Handled {
    let user = id("userID", &user)?;
    let d = state.domain.clone();
    blocking(move || d.deactivate_user(p, user)).await?;
    Ok(no_content())
}

/// POST /v1/users/{userID}/tokens — API token: issue a PAT, shown only in this answer.
/// Rate-limited per user, counted only for callers allowed to issue.
async fn issue_token(user: String, state: AppState, p: Principal, body: Body) -> Handled {
    Domain::require_api(p)?;
    let user = id("userID", &user)?;
    let b: TokenBody = if body.is_empty() { TokenBody::default() } else { extract::json(&body)? };
    state.token_limit.check((p, user), std::time::Instant::now())?;
    let d = state.domain.clone();
    let issued = blocking(move || d.issue_token(p, user, b.name.as_deref(), b.expires_in_days)).await?;
    let mut resp = json(
        StatusCode::CREATED,
        &j!({
            "id": issued.record.id,
            "token": issued.secret,
            "expiresAt": issued.record.expires_at.map(rfc3339),
        }),
    );
    resp.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// GET /v1/users/{userID}/tokens — API token: never the secrets.
async fn list_tokens(user: String, state: AppState, r: Reader, p: Principal) -> Handled {
    let tokens = state.domain.tokens(&r, p, id("userID", &user)?)?;
    let list: Vec<TokenView> = tokens.iter().map(TokenView::from).collect();
    Ok(json(StatusCode::OK, &list))
}

/// DELETE /v1/users/{userID}/tokens/{tokenID} — API token: revoke.
async fn revoke_token(user: String, token_id: String, state: AppState, p: Principal) -> Handled {
    let user = id("userID", &user)?;
    let token_id = id("tokenID", &token_id)?;
    let d = state.domain.clone();
    blocking(move || d.revoke_token(p, user, token_id)).await?;
    Ok(no_content())
}
