//! /v1/events: the event log, a page at a time, or waiting for the next
//! event (long poll). Also the audit log: every event names its actor.

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;

use super::extract::{int, param, query_pairs, raw_query};
use super::problem::Handled;
use super::{AppState, caller, json_bytes, with_state};
use crate::domain::Principal;
use crate::domain::events::{MAX_PAGE, Page};
use crate::error::{Error, Result};
use crate::model::{Actor, Event};

/// Longest `wait`, in seconds.
pub const MAX_WAIT_SECS: i64 = 30;
/// Events in a page when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;

pub fn routes(state: AppState) -> BoxedFilter<(Handled,)> {
    warp::path!("v1" / "events")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(caller(state))
        .and(raw_query())
        .then(get_events)
        .boxed()
}

/// What a request asks for.
struct Query {
    org: Option<i64>,
    after: u64,
    limit: usize,
    wait: Duration,
}

fn parse(raw: &str) -> Result<Query> {
    let q = query_pairs(raw)?;
    let org = param(&q, "organization_id").map(|v| int("organization_id", v)).transpose()?;
    let after = match param(&q, "after") {
        None => 0,
        Some(v) => u64::try_from(int("after", v)?)
            .map_err(|_| Error::Malformed(format!("after must be an event id (0 or more), got {v}")))?,
    };
    let max = i64::try_from(MAX_PAGE).unwrap_or(i64::MAX);
    let limit = match param(&q, "limit") {
        None => DEFAULT_LIMIT,
        Some(v) => match int("limit", v)? {
            n if (1..=max).contains(&n) => usize::try_from(n).unwrap_or(DEFAULT_LIMIT),
            n => return Err(Error::Malformed(format!("limit must be between 1 and {MAX_PAGE}, got {n}"))),
        },
    };
    let wait = match param(&q, "wait") {
        None => 0,
        Some(v) => match int("wait", v)? {
            n @ 0..=MAX_WAIT_SECS => n.unsigned_abs(),
            n => return Err(Error::Malformed(format!("wait must be between 0 and {MAX_WAIT_SECS} seconds, got {n}"))),
        },
    };
    Ok(Query { org, after, limit, wait: Duration::from_secs(wait) })
}

/// GET /v1/events?organization_id=&after=&limit=&wait= — an API token (any
/// organization, or the whole log without `organization_id`), or a PAT of an
/// owner/admin of the organization named. An empty page with `wait` waits
/// up to that many seconds for the next event.
async fn get_events(state: AppState, p: Principal, query: String) -> Handled {
    let q = parse(&query)?;
    let d = &state.domain;
    // Watching before reading: an event committed between the read and the
    // wait still wakes it.
    let mut appended = d.store.events_watch();
    let page = d.events(&d.store.read()?, p, q.org, q.after, q.limit)?;
    if !page.events.is_empty() || q.wait.is_zero() {
        return Ok(answer(&page));
    }
    let _place = state.event_waiters.take(p)?;
    let mut stopping = state.stopping.subscribe();
    let deadline = tokio::time::Instant::now() + q.wait;
    while !*stopping.borrow_and_update() {
        tokio::select! {
            woke = tokio::time::timeout_at(deadline, appended.changed()) => match woke {
                Ok(Ok(())) => {
                    // The read transaction is let go before waiting again.
                    let page = d.events(&d.store.read()?, p, q.org, q.after, q.limit)?;
                    if !page.events.is_empty() {
                        return Ok(answer(&page));
                    }
                }
                // Time is up (or the store is closing): the empty page.
                Ok(Err(_)) | Err(_) => break,
            },
            // The service is stopping: the empty page now.
            stopped = stopping.changed() => {
                if stopped.is_err() {
                    break;
                }
            }
        }
    }
    Ok(answer(&page))
}

fn answer(page: &Page) -> warp::reply::Response {
    let events: Vec<Value> = page.events.iter().map(event_json).collect();
    let body = json!({"events": events, "next": page.next});
    let mut resp = json_bytes(StatusCode::OK, body.to_string().into_bytes());
    resp.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    resp
}

/// One event as answered.
#[must_use]
pub fn event_json(e: &Event) -> Value {
    let actor = match &e.actor {
        Actor::ApiToken(id) => json!({"type": "apiToken", "apiTokenID": id}),
        Actor::User(u) => json!({"type": "user", "userID": u}),
        Actor::System => json!({"type": "system"}),
        Actor::CommandLine => json!({"type": "commandLine"}),
    };
    json!({
        "id": e.id,
        "time": crate::model::rfc3339(e.time),
        "organizationID": e.org_id,
        "actor": actor,
        "type": e.kind,
        "data": serde_json::from_str::<Value>(&e.data).unwrap_or(Value::Null),
    })
}
