//! Outside /v1: health, readiness, metrics, the OpenAPI document and its page.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use super::routes::ROUTES;
use super::{AppState, answer, json, with_state};
use crate::error::Error;
use crate::store::Read;

/// The OpenAPI 3.1 description of every route (checked against the routes by a test).
pub const OPENAPI: &str = include_str!("../../assets/openapi.json");
/// A page that renders [`OPENAPI`] for people.
pub const DOCS_HTML: &str = include_str!("../../assets/docs.html");

/// Upper bounds (seconds) of the request latency histogram.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

/// Request counters for /metrics, by route and status, with a latency
/// histogram per route. Routes are [`ROUTES`] plus one slot for unmatched paths.
pub struct Metrics {
    by_status: std::sync::Mutex<std::collections::BTreeMap<(usize, u16), u64>>,
    latency: Vec<RouteLatency>,
}

#[derive(Default)]
struct RouteLatency {
    /// Cumulative counts per bucket of [`BUCKETS`].
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            by_status: std::sync::Mutex::default(),
            latency: (0..=ROUTES.len()).map(|_| RouteLatency::default()).collect(),
        }
    }
}

impl Metrics {
    /// Counts one answered request of route `route` (`None`: no route matched).
    pub fn observe(&self, route: Option<usize>, status: u16, elapsed: Duration) {
        let slot = route.unwrap_or(ROUTES.len());
        *self.by_status.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry((slot, status)).or_default() +=
            1;
        let l = &self.latency[slot];
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

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let healthz =
        warp::path!("healthz").and(warp::get()).map(|| json(StatusCode::OK, &serde_json::json!({"status": "ok"})));
    let readyz = warp::path!("readyz").and(warp::get()).and(with_state(state.clone())).then(readyz);
    let metrics = warp::path!("metrics").and(warp::get()).and(with_state(state)).map(metrics);
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
    healthz.or(readyz).unify().or(metrics).unify().or(openapi).unify().or(docs).unify().boxed()
}

/// GET /readyz — anyone: 200 when the database answers and the homeserver
/// (when one is configured) answers too; 503 with the reason otherwise.
async fn readyz(state: AppState) -> Response {
    let depth = match state.domain.store.read().and_then(|r| r.outbox_depth()) {
        Ok(d) => d,
        Err(e) => return answer(Err(Error::Unavailable(format!("the database is not readable: {e}")))),
    };
    let homeserver = match &state.hs {
        None => "not configured",
        Some(hs) => match tokio::time::timeout(Duration::from_secs(3), hs.client.versions()).await {
            Ok(Ok(_)) => "ok",
            Ok(Err(e)) => return answer(Err(Error::Unavailable(format!("the homeserver does not answer: {e}")))),
            Err(_) => return answer(Err(Error::Unavailable("the homeserver did not answer within 3 s".into()))),
        },
    };
    json(
        StatusCode::OK,
        &serde_json::json!({"status": "ready", "database": "ok", "homeserver": homeserver, "outboxDepth": depth}),
    )
}

/// GET /metrics — anyone on the network that reaches the port: Prometheus text format.
fn metrics(state: AppState) -> Response {
    let m = &state.metrics;
    let mut out = String::new();
    out.push_str("# HELP messenger_chat_http_requests_total Answered requests by route and status.\n");
    out.push_str("# TYPE messenger_chat_http_requests_total counter\n");
    for ((slot, status), n) in m.by_status.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
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
    if let Some(hs) = &state.hs {
        out.push_str(
            "# HELP messenger_chat_homeserver_errors_total Homeserver steps that failed (and were retried).\n",
        );
        out.push_str("# TYPE messenger_chat_homeserver_errors_total counter\n");
        let _ = writeln!(out, "messenger_chat_homeserver_errors_total {}", hs.errors.load(Ordering::Relaxed));
    }
    warp::http::Response::builder()
        .header("content-type", "text/plain; version=0.0.4")
        .body(out.into())
        .unwrap_or_default()
}
