//! /v1/webhooks: where the service POSTs the event log's events, signed.
//! API token only. The secret is in the answer that made it, never again.

use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;

use super::body::{Body, Size, with_body};
use super::extract::{self, int, param, query_pairs, raw_query};
use super::problem::Handled;
use super::{AppState, blocking, caller, json as reply_json, no_content, reader, with_state};
use crate::domain::Principal;
use crate::domain::webhooks::{Created, MAX_PAGE, WebhookSpec};
use crate::error::Error;
use crate::model::{DeliveryAttempt, Webhook, rfc3339};
use crate::store::Reader;

/// Webhooks in a page when `limit` is not given.
const DEFAULT_LIMIT: usize = 50;

pub fn routes(state: AppState) -> BoxedFilter<(Handled,)> {
    let s = || with_state(state.clone());
    let put = warp::path!("v1" / "webhooks" / String)
        .and(warp::put())
        .and(s())
        .and(with_body(&state, Size::Small, true))
        .then(put_webhook);
    let get =
        warp::path!("v1" / "webhooks" / String).and(warp::get()).and(s()).and(reader(state.clone())).then(get_webhook);
    let list = warp::path!("v1" / "webhooks")
        .and(warp::get())
        .and(s())
        .and(reader(state.clone()))
        .and(raw_query())
        .then(list_webhooks);
    let delete = warp::path!("v1" / "webhooks" / String)
        .and(warp::delete())
        .and(s())
        .and(caller(state.clone()))
        .then(delete_webhook);
    let rotate = warp::path!("v1" / "webhooks" / String / "secret")
        .and(warp::post())
        .and(s())
        .and(caller(state))
        .then(rotate_secret);
    put.or(get).unify().or(list).unify().or(delete).unify().or(rotate).unify().boxed()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WebhookBody {
    url: String,
    event_types: Vec<String>,
    /// An integer, also written as `531.0` (JSON Schema's integers include it).
    #[serde(default, rename = "organizationID", deserialize_with = "super::views::optional_int")]
    organization_id: Option<i64>,
}

/// A webhook as answered, without its secret.
fn view(hook: &Webhook, deliveries: Option<&[DeliveryAttempt]>) -> Value {
    let status = if hook.failing {
        "failing"
    } else if hook.failing_since.is_some() {
        "retrying"
    } else {
        "active"
    };
    let mut v = json!({
        "id": hook.id,
        "url": hook.url,
        "eventTypes": hook.event_types,
        "organizationID": hook.org_id,
        "status": status,
        "cursor": hook.cursor,
        "failingSince": hook.failing_since.map(rfc3339),
        "createdAt": rfc3339(hook.created_at),
        "updatedAt": rfc3339(hook.updated_at),
    });
    if let Some(d) = deliveries {
        v["deliveries"] = d
            .iter()
            .map(|a| {
                json!({
                    "eventID": a.event_id,
                    "time": rfc3339(a.time),
                    "status": a.status,
                    "error": a.error,
                    "latencyMs": a.latency_ms,
                })
            })
            .collect();
    }
    v
}

fn with_secret(c: &Created, status: StatusCode) -> warp::reply::Response {
    let mut v = view(&c.webhook, None);
    if let Some(secret) = &c.secret {
        v["secret"] = json!(secret);
    }
    let mut resp = reply_json(status, &v);
    resp.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    resp
}

/// PUT /v1/webhooks/{webhookID} — API token: create (201, with the secret,
/// shown only here) or replace (200, the secret kept; a failing webhook is
/// sent to again from where it stopped).
async fn put_webhook(id: String, state: AppState, p: Principal, body: Body) -> Handled {
    let id = extract::decode_segment(&id);
    let b: WebhookBody = extract::json(&body)?;
    let spec = WebhookSpec { url: b.url, event_types: b.event_types, org_id: b.organization_id };
    let d = state.domain.clone();
    let created = blocking(move || d.put_webhook(p, &id, spec)).await?;
    let status = if created.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(with_secret(&created, status))
}

/// POST /v1/webhooks/{webhookID}/secret — API token: a new secret, shown only here.
async fn rotate_secret(id: String, state: AppState, p: Principal) -> Handled {
    let id = extract::decode_segment(&id);
    let d = state.domain.clone();
    let created = blocking(move || d.rotate_webhook_secret(p, &id)).await?;
    Ok(with_secret(&created, StatusCode::OK))
}

/// GET /v1/webhooks/{webhookID} — API token: the webhook and its latest
/// delivery attempts (newest first), never its secret.
async fn get_webhook(id: String, state: AppState, r: Reader, p: Principal) -> Handled {
    let (hook, deliveries) = state.domain.webhook(&r, p, &extract::decode_segment(&id))?;
    Ok(reply_json(StatusCode::OK, &view(&hook, Some(&deliveries))))
}

/// GET /v1/webhooks?after=&limit= — API token: webhooks in id order, a page
/// at a time; `next` is the `after` of the next page (`null` at the end).
async fn list_webhooks(state: AppState, r: Reader, p: Principal, query: String) -> Handled {
    let q = query_pairs(&query)?;
    let after = param(&q, "after").filter(|a| !a.is_empty());
    let max = i64::try_from(MAX_PAGE).unwrap_or(i64::MAX);
    let limit = match param(&q, "limit") {
        None => DEFAULT_LIMIT,
        Some(v) => match int("limit", v)? {
            n if (1..=max).contains(&n) => usize::try_from(n).unwrap_or(DEFAULT_LIMIT),
            n => return Err(Error::Malformed(format!("limit must be between 1 and {MAX_PAGE}, got {n}")).into()),
        },
    };
    let hooks = state.domain.webhooks(&r, p, after, limit)?;
    let next = if hooks.len() == limit { hooks.last().map(|h| h.id.clone()) } else { None };
    let list: Vec<Value> = hooks.iter().map(|h| view(h, None)).collect();
    Ok(reply_json(StatusCode::OK, &json!({"webhooks": list, "next": next})))
}

/// DELETE /v1/webhooks/{webhookID} — API token: nothing more is sent to it.
async fn delete_webhook(id: String, state: AppState, p: Principal) -> Handled {
    let id = extract::decode_segment(&id);
    let d = state.domain.clone();
    blocking(move || d.delete_webhook(p, &id)).await?;
    Ok(no_content())
}
