//! Outside /v1: health, readiness, metrics, the OpenAPI document and its page.
//!
//! `/metrics` and the details of `/readyz` (outbox depth, the homeserver's
//! error) are for operators: on the public listener they need an API token;
//! the operators' listener (`server.metrics_listen`, loopback) serves them
//! without one. Readiness comes from a homeserver check a background task
//! repeats, so probing `/readyz` never turns into calls to the homeserver.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::watch;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use super::extract::token;
use super::problem::{Handled, reply};
use super::routes::ROUTES;
use super::{AppState, json, with_state};
use crate::domain::Principal;
use crate::error::Error;
use crate::store::Read;

/// How often the background task asks the homeserver whether it answers.
const HOMESERVER_CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long one check waits for the homeserver's answer.
const HOMESERVER_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The homeserver as the latest check saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeserverHealth {
    NotConfigured,
    Answers,
    /// Why it does not answer (for operators only).
    Fails(String),
}

/// The latest homeserver check, shared by every `/readyz`.
pub struct Readiness {
    tx: watch::Sender<Option<HomeserverHealth>>,
}

impl Readiness {
    /// Unchecked when a homeserver is configured; settled otherwise.
    #[must_use]
    pub fn new(configured: bool) -> Self {
        let first = if configured { None } else { Some(HomeserverHealth::NotConfigured) };
        Readiness { tx: watch::Sender::new(first) }
    }

    /// The latest result; a request before the first check waits for it
    /// (bounded) rather than call the homeserver itself.
    async fn current(&self) -> Option<HomeserverHealth> {
        let mut rx = self.tx.subscribe();
        let wait = HOMESERVER_CHECK_TIMEOUT + Duration::from_secs(1);
        match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
            Ok(Ok(seen)) => seen.clone(),
            _ => None,
        }
    }
}

/// Checks the homeserver now and every [`HOMESERVER_CHECK_EVERY`], for
/// `/readyz`; a no-op without a homeserver.
pub fn spawn_homeserver_check(state: &AppState) {
    let Some(hs) = state.sessions.homeserver().cloned() else { return };
    let readiness = state.readiness.clone();
    tokio::spawn(async move {
        loop {
            let health = match tokio::time::timeout(HOMESERVER_CHECK_TIMEOUT, hs.check()).await {
                Ok(Ok(_)) => HomeserverHealth::Answers,
                Ok(Err(e)) => HomeserverHealth::Fails(format!("the homeserver does not answer: {e}")),
                Err(_) => HomeserverHealth::Fails(format!(
                    "the homeserver did not answer within {} s",
                    HOMESERVER_CHECK_TIMEOUT.as_secs()
                )),
            };
            readiness.tx.send_replace(Some(health));
            tokio::time::sleep(HOMESERVER_CHECK_EVERY).await;
        }
    });
}

/// The OpenAPI 3.1 description of every route (checked against the routes by a test).
pub const OPENAPI: &str = include_str!("../../assets/openapi.json");
/// A page that renders [`OPENAPI`] for people.
pub const DOCS_HTML: &str = include_str!("../../assets/docs.html");

/// Upper bounds (seconds) of the request latency histogram.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

/// Request counters for /metrics, by route and status, with a latency
/// histogram per route. Routes are [`ROUTES`] plus one slot for unmatched paths.
pub struct Metrics {
    /// Counts of statuses outside [`STATUSES`] (none the service answers
    /// today): the only counters behind a lock.
    other_statuses: std::sync::Mutex<std::collections::BTreeMap<(usize, u16), u64>>,
    latency: Vec<RouteLatency>,
    /// The public listener's connections: open, refused, closed to make room.
    pub connections: Arc<crate::server::ConnStats>,
}

/// The statuses the service answers, counted per route without a lock: a
/// mutex taken on every request serialized the two workers on one counter map.
const STATUSES: [u16; 21] =
    [200, 201, 202, 204, 304, 400, 401, 403, 404, 405, 408, 409, 411, 413, 415, 422, 429, 500, 502, 503, 507];

#[derive(Default)]
struct RouteLatency {
    /// Answered requests per status of [`STATUSES`].
    statuses: [AtomicU64; STATUSES.len()],
    /// Cumulative counts per bucket of [`BUCKETS`].
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            other_statuses: std::sync::Mutex::default(),
            latency: (0..=ROUTES.len()).map(|_| RouteLatency::default()).collect(),
            connections: Arc::default(),
        }
    }
}

impl Metrics {
    /// Counts one answered request of route `route` (`None`: no route matched).
    pub fn observe(&self, route: Option<usize>, status: u16, elapsed: Duration) {
        let slot = route.unwrap_or(ROUTES.len());
        let l = &self.latency[slot];
        match STATUSES.iter().position(|s| *s == status) {
            Some(i) => {
                l.statuses[i].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                *self
                    .other_statuses
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry((slot, status))
                    .or_default() += 1;
            }
        }
        let secs = elapsed.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                l.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        l.count.fetch_add(1, Ordering::Relaxed);
        l.sum_micros.fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

fn route_label(slot: usize) -> (&'static str, &'static str) {
    ROUTES.get(slot).copied().unwrap_or(("", "unmatched"))
}

fn healthz() -> BoxedFilter<(Response,)> {
    warp::path!("healthz").and(warp::get()).map(|| json(StatusCode::OK, &serde_json::json!({"status": "ok"}))).boxed()
}

pub fn routes(state: AppState) -> BoxedFilter<(Handled,)> {
    let healthz = healthz();
    let readyz = warp::path!("readyz").and(warp::get()).and(with_state(state.clone())).and(token()).then(public_readyz);
    let metrics = warp::path!("metrics").and(warp::get()).and(with_state(state)).and(token()).map(public_metrics);
    let openapi = warp::path!("openapi.json").and(warp::get()).map(|| {
        warp::http::Response::builder()
            .header("content-type", "application/json")
            .body(OPENAPI.into())
            .unwrap_or_default()
    });
    let docs = warp::path!("docs").and(warp::get()).map(|| {
        warp::http::Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(DOCS_HTML.into())
            .unwrap_or_default()
    });
    healthz.or(readyz).unify().or(metrics).unify().or(openapi).unify().or(docs).unify().map(Ok).boxed()
}

/// The operators' listener (`server.metrics_listen`): `/metrics`, the
/// detailed `/readyz` and `/healthz`, without a token.
pub fn operator_routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let readyz = warp::path!("readyz").and(warp::get()).and(with_state(state.clone())).then(|s| readyz(s, true));
    let metrics = warp::path!("metrics").and(warp::get()).and(with_state(state)).map(metrics);
    healthz().or(readyz).unify().or(metrics).unify().recover(super::problem::recover).unify()
}

/// Whether the request's token is an API token (details for operators).
fn is_operator(state: &AppState, token: &Result<String, Error>) -> bool {
    token.as_ref().is_ok_and(|t| {
        state.domain.store.read().is_ok_and(|r| matches!(state.domain.authenticate(&r, t), Ok(Principal::Api(_))))
    })
}

/// GET /readyz — anyone: 200 when the database answers and the homeserver
/// (when one is configured) answered the latest check; 503 otherwise. The
/// details (outbox depth, the homeserver's error) only with an API token.
async fn public_readyz(state: AppState, token: Result<String, Error>) -> Response {
    let detailed = is_operator(&state, &token);
    readyz(state, detailed).await
}

async fn readyz(state: AppState, detailed: bool) -> Response {
    if let Some(trouble) = storage_trouble(state.domain.store.health(), detailed) {
        return reply(Err(trouble.into()));
    }
    let depth = match state.domain.store.read().and_then(|r| r.outbox_depth()) {
        Ok(d) => d,
        Err(e) if detailed => {
            return reply(Err(Error::Unavailable(format!("the database is not readable: {e}")).into()));
        }
        Err(_) => return reply(Err(not_ready("the database is not readable").into())),
    };
    let homeserver = match state.readiness.current().await {
        Some(HomeserverHealth::NotConfigured) => "not configured",
        Some(HomeserverHealth::Answers) => "ok",
        Some(HomeserverHealth::Fails(why)) if detailed => return reply(Err(Error::Unavailable(why).into())),
        Some(HomeserverHealth::Fails(_)) => return reply(Err(not_ready("the homeserver does not answer").into())),
        None => return reply(Err(not_ready("the homeserver has not been checked yet").into())),
    };
    let body = if detailed {
        let mut body =
            serde_json::json!({"status": "ready", "database": "ok", "homeserver": homeserver, "outboxDepth": depth});
        if let Some(hs) = state.sessions.homeserver() {
            body["adminApi"] = admin_api(&state.domain.config.matrix, hs.offers());
        }
        body
    } else {
        serde_json::json!({"status": "ready"})
    };
    json(StatusCode::OK, &body)
}

/// `adminApi` of the detailed `/readyz`: the setting (`matrix.admin_api`),
/// whether the homeserver's admin API is used (`null` until the reconciler
/// has settled it at start) and why.
fn admin_api(config: &crate::config::MatrixConfig, offers: Option<crate::homeserver::Offers>) -> serde_json::Value {
    match offers {
        Some(o) => serde_json::json!({"setting": config.admin_api.as_str(), "used": o.all(), "why": o.why}),
        None => serde_json::json!({
            "setting": config.admin_api.as_str(),
            "used": null,
            "why": "not settled yet: the service probes the homeserver when it first reaches it",
        }),
    }
}

/// Why the database keeps `/readyz` at 503: damaged, or its disk full.
fn storage_trouble(health: &crate::store::health::Health, detailed: bool) -> Option<Error> {
    use crate::store::health::{DAMAGE_REMEDY, State};
    match health.state() {
        State::Ok => None,
        State::Damaged(why) if detailed => Some(Error::Unavailable(format!(
            "the database file {} is damaged ({why}): every write is refused; {DAMAGE_REMEDY}",
            health.path().display()
        ))),
        State::Damaged(_) => Some(not_ready("the database file is damaged, every write is refused")),
        State::DiskFull if detailed => Some(Error::Unavailable(format!(
            "the disk holding the data directory {} is full: writes answer 507 until it has space again (they \
             resume by themselves); reads go on",
            health.data_dir().display()
        ))),
        State::DiskFull => Some(not_ready("the disk holding the data directory is full, writes answer 507")),
    }
}

fn not_ready(what: &str) -> Error {
    Error::Unavailable(format!(
        "not ready: {what}; operators see why on the metrics listener (server.metrics_listen) or with an API token"
    ))
}

/// GET /metrics — an API token (the operators' listener needs none): Prometheus text format.
fn public_metrics(state: AppState, token: Result<String, Error>) -> Response {
    match state.caller(token) {
        Ok((_, Principal::Api(_))) => metrics(state),
        Ok((_, Principal::User(_))) => reply(Err(Error::Forbidden(
            "metrics are for operators: send an API token, or read them on the metrics listener (server.metrics_listen)"
                .into(),
        )
        .into())),
        Err(e) => reply(Err(e.into())),
    }
}

/// The metrics in Prometheus text format.
fn metrics(state: AppState) -> Response {
    let m = &state.metrics;
    let mut out = String::new();
    out.push_str("# HELP messenger_chat_http_requests_total Answered requests by route and status.\n");
    out.push_str("# TYPE messenger_chat_http_requests_total counter\n");
    // In (route, status) order, only the pairs seen, as one map kept them before.
    let mut by_status = m.other_statuses.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    for (slot, l) in m.latency.iter().enumerate() {
        for (status, n) in STATUSES.iter().zip(&l.statuses) {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                by_status.insert((slot, *status), n);
            }
        }
    }
    for ((slot, status), n) in &by_status {
        let (method, route) = route_label(*slot);
        let _ = writeln!(
            out,
            "messenger_chat_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
        );
    }
    out.push_str("# HELP messenger_chat_http_request_duration_seconds Time to answer a request, by route.\n");
    out.push_str("# TYPE messenger_chat_http_request_duration_seconds histogram\n");
    for (slot, l) in m.latency.iter().enumerate() {
        let count = l.count.load(Ordering::Relaxed);
        if count == 0 {
            continue;
        }
        let (method, route) = route_label(slot);
        let labels = format!("method=\"{method}\",route=\"{route}\"");
        for (le, b) in BUCKETS.iter().zip(&l.buckets) {
            let _ = writeln!(
                out,
                "messenger_chat_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {}",
                b.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(out, "messenger_chat_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}");
        #[expect(clippy::cast_precision_loss, reason = "a metric, not an account balance")]
        let sum = l.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "messenger_chat_http_request_duration_seconds_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "messenger_chat_http_request_duration_seconds_count{{{labels}}} {count}");
    }
    if let Ok(depth) = state.domain.store.read().and_then(|r| r.outbox_depth()) {
        out.push_str("# HELP messenger_chat_outbox_depth Changes not yet applied to the homeserver.\n");
        out.push_str("# TYPE messenger_chat_outbox_depth gauge\n");
        let _ = writeln!(out, "messenger_chat_outbox_depth {depth}");
    }
    if let Ok((rooms, users)) = state.domain.store.read().and_then(|r| r.totals()) {
        out.push_str("# HELP messenger_chat_rooms Stored chatrooms.\n# TYPE messenger_chat_rooms gauge\n");
        let _ = writeln!(out, "messenger_chat_rooms {rooms}");
        out.push_str("# HELP messenger_chat_users Stored app users.\n# TYPE messenger_chat_users gauge\n");
        let _ = writeln!(out, "messenger_chat_users {users}");
    }
    if let Ok(last) = state.domain.store.read().and_then(|r| r.last_event_id()) {
        out.push_str("# HELP messenger_chat_events_last_id Id of the last event appended to the event log.\n");
        out.push_str("# TYPE messenger_chat_events_last_id gauge\n");
        let _ = writeln!(out, "messenger_chat_events_last_id {last}");
    }
    webhook_metrics(&state, &mut out);
    connection_metrics(&m.connections, &mut out);
    storage_metrics(state.domain.store.health(), &mut out);
    let waiting = state.event_waiters.waiting();
    out.push_str("# HELP messenger_chat_event_polls_waiting Long polls of /v1/events waiting (events.max_waiters bounds them).\n");
    out.push_str("# TYPE messenger_chat_event_polls_waiting gauge\n");
    let _ = writeln!(out, "messenger_chat_event_polls_waiting {waiting}");
    body_metrics(&state, &mut out);
    out.push_str("# HELP messenger_chat_password_derivations_total Argon2id password derivations run since start.\n");
    out.push_str("# TYPE messenger_chat_password_derivations_total counter\n");
    let _ = writeln!(out, "messenger_chat_password_derivations_total {}", state.domain.derivations_done());
    out.push_str("# HELP messenger_chat_password_cache_entries Derived passwords kept in memory.\n");
    out.push_str("# TYPE messenger_chat_password_cache_entries gauge\n");
    let _ = writeln!(out, "messenger_chat_password_cache_entries {}", state.domain.password_cache().len());
    if let Some(sync) = &state.sync {
        out.push_str(
            "# HELP messenger_chat_homeserver_errors_total Homeserver steps that failed (and were retried).\n",
        );
        out.push_str("# TYPE messenger_chat_homeserver_errors_total counter\n");
        let _ = writeln!(out, "messenger_chat_homeserver_errors_total {}", sync.errors());
        out.push_str(
            "# HELP messenger_chat_rooms_left_with_history_total Rooms deleted without the homeserver's admin API \
             (matrix.admin_api): emptied, made invite-only and left, their history still on the homeserver.\n",
        );
        out.push_str("# TYPE messenger_chat_rooms_left_with_history_total counter\n");
        let _ = writeln!(out, "messenger_chat_rooms_left_with_history_total {}", sync.rooms_left_with_history());
        out.push_str(
            "# HELP messenger_chat_deleted_room_members_stayed_total Members the homeserver refused to remove from \
             rooms deleted without its admin API: they stay in those rooms, with the history (the log names them).\n",
        );
        out.push_str("# TYPE messenger_chat_deleted_room_members_stayed_total counter\n");
        let _ =
            writeln!(out, "messenger_chat_deleted_room_members_stayed_total {}", sync.members_left_in_deleted_rooms());
    }
    warp::http::Response::builder()
        .header("content-type", "text/plain; version=0.0.4")
        .body(out.into())
        .unwrap_or_default()
}

/// Damage met, full-disk outages, and whether writes go through now.
fn storage_metrics(health: &crate::store::health::Health, out: &mut String) {
    out.push_str(
        "# HELP messenger_chat_store_damage_events_total Times the database file was found damaged (a corruption \
         error or a panic inside redb) since start; after the first, every write is refused.\n",
    );
    out.push_str("# TYPE messenger_chat_store_damage_events_total counter\n");
    let _ = writeln!(out, "messenger_chat_store_damage_events_total {}", health.damage_events());
    out.push_str(
        "# HELP messenger_chat_disk_full_events_total Times a write found the disk of the data directory full \
         (writes answer 507 until there is space again).\n",
    );
    out.push_str("# TYPE messenger_chat_disk_full_events_total counter\n");
    let _ = writeln!(out, "messenger_chat_disk_full_events_total {}", health.disk_full_events());
    out.push_str(
        "# HELP messenger_chat_store_writable 1 when writes go through, 0 while refused (damaged file, full disk).\n",
    );
    out.push_str("# TYPE messenger_chat_store_writable gauge\n");
    let _ = writeln!(out, "messenger_chat_store_writable {}", u8::from(health.writable()));
}

/// Open connections, and those refused or closed to make room.
fn connection_metrics(c: &crate::server::ConnStats, out: &mut String) {
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    out.push_str("# HELP messenger_chat_connections_open Open connections of the HTTPS listener (server.max_connections bounds them).\n");
    out.push_str("# TYPE messenger_chat_connections_open gauge\n");
    let _ = writeln!(out, "messenger_chat_connections_open {}", n(&c.open));
    out.push_str("# HELP messenger_chat_connections_refused_total Connections closed right after accept, by reason: address (server.max_connections_per_address) or full (server.max_connections, none idle).\n");
    out.push_str("# TYPE messenger_chat_connections_refused_total counter\n");
    let _ = writeln!(out, "messenger_chat_connections_refused_total{{reason=\"address\"}} {}", n(&c.refused_address));
    let _ = writeln!(out, "messenger_chat_connections_refused_total{{reason=\"full\"}} {}", n(&c.refused_full));
    out.push_str("# HELP messenger_chat_connections_closed_for_room_total Connections without a request in flight closed at server.max_connections to admit a new one.\n");
    out.push_str("# TYPE messenger_chat_connections_closed_for_room_total counter\n");
    let _ = writeln!(out, "messenger_chat_connections_closed_for_room_total {}", n(&c.closed_for_room));
}

/// Request-body memory in use, and requests refused for it.
fn body_metrics(state: &AppState, out: &mut String) {
    let b = &state.body_budget;
    out.push_str(
        "# HELP messenger_chat_request_body_bytes Request-body bytes held in memory now (server.body_budget_bytes bounds them).\n",
    );
    out.push_str("# TYPE messenger_chat_request_body_bytes gauge\n");
    let _ = writeln!(out, "messenger_chat_request_body_bytes {}", b.in_use());
    let (server, caller) = b.refused();
    out.push_str(
        "# HELP messenger_chat_request_bodies_refused_total Requests refused for request-body memory since start: \
         the budget in use (503) or the caller's share in use (429).\n",
    );
    out.push_str("# TYPE messenger_chat_request_bodies_refused_total counter\n");
    let _ = writeln!(out, "messenger_chat_request_bodies_refused_total{{reason=\"budget\"}} {server}");
    let _ = writeln!(out, "messenger_chat_request_bodies_refused_total{{reason=\"caller_share\"}} {caller}");
}

/// Webhook deliveries since start, webhooks marked failing, and the events
/// not yet handled by the webhooks still sending.
fn webhook_metrics(state: &AppState, out: &mut String) {
    let stats = &state.domain.webhook_stats;
    out.push_str("# HELP messenger_chat_webhook_deliveries_total Webhook delivery attempts since start, by outcome.\n");
    out.push_str("# TYPE messenger_chat_webhook_deliveries_total counter\n");
    let _ = writeln!(
        out,
        "messenger_chat_webhook_deliveries_total{{outcome=\"ok\"}} {}",
        stats.delivered.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "messenger_chat_webhook_deliveries_total{{outcome=\"failed\"}} {}",
        stats.failed.load(Ordering::Relaxed)
    );
    let Ok(r) = state.domain.store.read() else { return };
    let (Ok(hooks), Ok(last)) = (crate::store::webhooks::webhooks(&r, None, usize::MAX), r.last_event_id()) else {
        return;
    };
    let failing = hooks.iter().filter(|h| h.failing).count();
    let backlog: u64 = hooks.iter().filter(|h| !h.failing).map(|h| last.saturating_sub(h.cursor)).sum();
    out.push_str(
        "# HELP messenger_chat_webhooks_failing Webhooks that gave up (webhooks.max_retry_hours) until PUT again.\n",
    );
    out.push_str("# TYPE messenger_chat_webhooks_failing gauge\n");
    let _ = writeln!(out, "messenger_chat_webhooks_failing {failing}");
    out.push_str(
        "# HELP messenger_chat_webhook_backlog_events Events after the cursors of the webhooks still sending \
         (summed over webhooks; includes events a webhook does not want until it passes them).\n",
    );
    out.push_str("# TYPE messenger_chat_webhook_backlog_events gauge\n");
    let _ = writeln!(out, "messenger_chat_webhook_backlog_events {backlog}");
}
