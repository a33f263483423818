//! HTTP: warp filters and thin handlers. Parsing and status codes live here;
//! rules live in `domain`.

pub mod admin;
pub mod body;
pub mod budget;
pub mod events;
pub mod export;
pub mod extract;
pub mod limits;
pub mod meta;
pub mod problem;
pub mod rooms;
pub mod routes;
pub mod user;
pub mod views;
pub mod waiters;
pub mod webhooks;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde::Serialize;
use warp::filters::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::domain::sessions::Sessions;
use crate::domain::{Domain, Principal};
use crate::error::{Error, Result};
use crate::reconciler::Progress;
use crate::store::{Read, Reader};

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState(Arc<State>);

/// What [`AppState`] shares; one `Arc` so each request clones one pointer.
pub struct State {
    pub domain: Arc<Domain>,
    pub metrics: Arc<meta::Metrics>,
    /// Accounts and logins of app users on the homeserver.
    pub sessions: Arc<Sessions>,
    /// How far the reconciler got; `None` when no homeserver is configured.
    pub sync: Option<Arc<Progress>>,
    pub login_limit: Arc<limits::RateLimiter>,
    pub token_limit: Arc<limits::RateLimiter>,
    pub credentials_limit: Arc<limits::RateLimiter>,
    /// The latest homeserver check, for `/readyz`.
    pub readiness: Arc<meta::Readiness>,
    /// Places for long polls of `/v1/events` (`events.max_waiters`), shared fairly.
    pub event_waiters: Arc<waiters::Waiters>,
    /// Memory request bodies may take (`server.body_budget_bytes`).
    pub body_budget: Arc<budget::BodyBudget>,
    /// Set when the service begins to stop: long polls answer at once
    /// rather than hold the shutdown for up to their `wait`.
    pub stopping: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    #[must_use]
    pub fn new(domain: Arc<Domain>, sessions: Arc<Sessions>, sync: Option<Arc<Progress>>) -> Self {
        let l = &domain.config.limits;
        let login_limit =
            Arc::new(limits::RateLimiter::new("login", l.login_burst, Duration::from_secs(l.login_refill_secs)));
        let token_limit = Arc::new(limits::RateLimiter::new(
            "token issue",
            l.token_issue_burst,
            Duration::from_secs(l.token_issue_refill_secs),
        ));
        let credentials_limit = Arc::new(limits::RateLimiter::new(
            "credentials",
            l.credentials_burst,
            Duration::from_secs(l.credentials_refill_secs),
        ));
        let readiness = Arc::new(meta::Readiness::new(sessions.homeserver().is_some()));
        let event_waiters = Arc::new(waiters::Waiters::new(&domain.config.events));
        let server = &domain.config.server;
        let body_budget = budget::BodyBudget::new(server.body_budget_bytes, server.max_body_bytes);
        AppState(Arc::new(State {
            domain,
            metrics: Arc::new(meta::Metrics::default()),
            sessions,
            sync,
            login_limit,
            token_limit,
            credentials_limit,
            readiness,
            event_waiters,
            body_budget,
            stopping: tokio::sync::watch::Sender::new(false),
        }))
    }

    /// Waits (at most `matrix.sync_wait`) for a changed room to reach the
    /// homeserver, then answers with the room as stored.
    async fn settled(&self, room: crate::model::Room, status: StatusCode) -> problem::Handled {
        let Some(sync) = &self.sync else {
            return Ok(json_bytes(status, room.to_json()));
        };
        sync.wait_synced(room.id, room.generation).await;
        let now = self.domain.store.read()?.room(room.id)?.unwrap_or(room);
        Ok(json_bytes(status, now.to_json()))
    }

    /// A snapshot and the caller behind `token`.
    fn caller(&self, token: Result<String>) -> Result<(Reader, Principal)> {
        let token = token?;
        let r = self.domain.store.read()?;
        let p = self.domain.authenticate(&r, &token)?;
        Ok((r, p))
    }
}

impl std::ops::Deref for AppState {
    type Target = State;

    fn deref(&self) -> &State {
        &self.0
    }
}

/// A filter handing each handler the state.
fn with_state(state: AppState) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// The caller behind the request's token and the snapshot the token was
/// checked in, for routes that read. It runs right after the path and
/// method filters: a request without a valid token gets 401 before anything
/// else of it, its body above all, is read.
fn reader(state: AppState) -> impl Filter<Extract = (Reader, Principal), Error = Rejection> + Clone {
    extract::token()
        .and_then(move |token| {
            futures_util::future::ready(
                state.caller(token).map_err(|e| warp::reject::custom(problem::ApiReject(e.into()))),
            )
        })
        .untuple_one()
}

/// The caller behind the request's token, for routes that read a body or
/// write: the snapshot is let go at once rather than held while a body arrives.
fn caller(state: AppState) -> impl Filter<Extract = (Principal,), Error = Rejection> + Clone {
    reader(state).map(|_: Reader, p: Principal| p)
}

/// Every route, with errors as problem+json and each request logged and counted.
pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone + Send + Sync + 'static {
    let metrics = state.metrics.clone();
    let access = state.domain.config.log.access.clone();
    let log = warp::log::custom(move |info| {
        metrics.observe(routes::route_of(info.method().as_str(), info.path()), info.status().as_u16(), info.elapsed());
        let wanted = match access.as_str() {
            "all" => true,
            "errors" => info.status().as_u16() >= 400 || info.elapsed() >= Duration::from_secs(1),
            _ => false,
        };
        if !wanted {
            return;
        }
        tracing::info!(
            target: "messenger_chat::access",
            request_id = %crate::server::current_request_id(),
            method = %info.method(),
            path = info.path(),
            status = info.status().as_u16(),
            micros = u64::try_from(info.elapsed().as_micros()).unwrap_or(u64::MAX),
        );
    });
    // The hot reads first: every miss before the matching route costs a path comparison.
    let api = rooms::hot(state.clone())
        .or(shadowed())
        .unify()
        .or(rooms::routes(state.clone()))
        .unify()
        .or(meta::routes(state.clone()))
        .unify()
        .or(user::routes(state.clone()))
        .unify()
        .or(admin::routes(state.clone()))
        .unify()
        .or(events::routes(state.clone()))
        .unify()
        .or(webhooks::routes(state.clone()))
        .unify()
        .or(export::routes(state).map(Ok))
        .unify()
        .map(problem::reply)
        .recover(problem::recover)
        .unify();
    warp::path::full().and(api).map(|path: FullPath, resp| problem::with_allow(path.as_str(), resp)).with(log)
}

/// 405 for a method that only a parameter route would take at a literal
/// path (`PATCH /v1/chatrooms/event`): `event` and `default` are paths of
/// their own there, never room ids. Everything else passes on untouched.
fn shadowed() -> impl Filter<Extract = (problem::Handled,), Error = warp::Rejection> + Clone {
    warp::method().and(warp::path::full()).and_then(|method: http::Method, path: warp::path::FullPath| async move {
        if routes::shadowed(method.as_str(), path.as_str()) {
            Ok(Err(problem::ApiError::MethodNotAllowed(
                "this path does not answer this method; see /openapi.json for its methods".into(),
            )))
        } else {
            Err(warp::reject::not_found())
        }
    })
}

/// A JSON answer.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

/// A JSON answer already encoded. Built as it is sent: a `Vec<u8>` reply
/// would first get an octet-stream type to be replaced.
pub(crate) fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = http::Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp.into_response()
}

/// 204 No Content.
pub(crate) fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Runs blocking work (redb writes, Argon2) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("worker failed: {e}")))?
}
