//! The webhook sender: one background task that keeps a worker per active
//! webhook, each delivering that webhook's wanted events in event-id order
//! from its stored cursor (so a restart loses nothing: at least once).
//!
//! A delivery is a POST of the event's JSON (as `GET /v1/events` shows it)
//! signed per Standard Webhooks; a 2xx answer moves the cursor on. A failure
//! is retried with a doubling backoff (`webhooks.retry_initial_ms` up to
//! `webhooks.retry_max_secs`) until `webhooks.max_retry_hours` have passed
//! since the first failed attempt; then the webhook is marked failing and
//! its worker ends until the webhook is PUT again.
//!
//! Nothing waits on a receiver but its own worker: each attempt is bounded
//! (`webhooks.timeout_secs`), attempts in flight are bounded over all
//! webhooks (`webhooks.max_concurrent`), at most 64 KiB of an answer's
//! body is read (to keep the connection for the next delivery, for at most
//! `webhooks.keep_alive_secs` of idleness: one connection per webhook at
//! most), and the API, the reconciler and other webhooks share no lock with it but
//! the database's short write transactions that record an attempt.
//!
//! Server-side request forgery: every address a host resolves to is checked
//! ([`refused_address`]) and the connection goes to the checked address
//! itself, so a DNS answer that changes between check and connect
//! (rebinding) cannot reach a refused one.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::domain::Domain;
use crate::domain::webhooks::{Target, check_url, refused_address, wants};
use crate::model::{DeliveryAttempt, Event, Webhook};
use crate::store::webhooks as stored;

/// Events read from the log per look for a webhook's next wanted one.
const SCAN: usize = 256;
/// At most this much of a receiver's answer body is read (and thrown
/// away) to keep its connection for the next delivery; a longer body costs
/// the connection.
const DRAIN_BYTES: usize = 64 * 1024;
/// How often the set of workers is compared with the stored webhooks even
/// without a change (a worker that ended on a storage error comes back).
const RESYNC: Duration = Duration::from_secs(30);

/// Counts for `/metrics`, since start.
#[derive(Debug, Default)]
pub struct Stats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

/// The TLS settings of every delivery: the web PKI roots, plus the
/// certificate authorities of `webhooks.extra_ca_file`.
///
/// # Errors
/// The extra CA file cannot be read or holds no certificate.
pub fn tls_config(config: &crate::config::WebhooksConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if !config.extra_ca_file.is_empty() {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.extra_ca_file)
            .and_then(Iterator::collect)
            .map_err(|e| format!("webhooks.extra_ca_file {}: {e}", config.extra_ca_file))?;
        if certs.is_empty() {
            return Err(format!("webhooks.extra_ca_file {} holds no certificate", config.extra_ca_file));
        }
        for c in certs {
            roots.add(c).map_err(|e| format!("webhooks.extra_ca_file {}: {e}", config.extra_ca_file))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// What every worker shares.
struct Ctx {
    domain: Arc<Domain>,
    tls: Arc<rustls::ClientConfig>,
    slots: Semaphore,
    stopping: watch::Receiver<bool>,
}

/// Runs until `stopping` turns true: keeps one worker per webhook that is
/// not failing, started again whenever a webhook changes.
pub async fn run(domain: Arc<Domain>, tls: Arc<rustls::ClientConfig>, mut stopping: watch::Receiver<bool>) {
    let slots = Semaphore::new(domain.config.webhooks.max_concurrent as usize);
    let ctx = Arc::new(Ctx { domain: domain.clone(), tls, slots, stopping: stopping.clone() });
    let mut workers: HashMap<String, (u64, JoinHandle<()>)> = HashMap::new();
    loop {
        match domain.store.read().and_then(|r| stored::webhooks(&r, None, usize::MAX)) {
            Ok(hooks) => {
                let mut active = HashSet::new();
                for h in hooks.into_iter().filter(|h| !h.failing) {
                    active.insert(h.id.clone());
                    let running = workers.get(&h.id).is_some_and(|(g, j)| *g == h.generation && !j.is_finished());
                    if !running {
                        if let Some((_, old)) = workers.remove(&h.id) {
                            old.abort();
                        }
                        let task = tokio::spawn(worker(ctx.clone(), h.id.clone(), h.generation));
                        workers.insert(h.id, (h.generation, task));
                    }
                }
                workers.retain(|id, (_, task)| {
                    let keep = active.contains(id);
                    if !keep {
                        task.abort();
                    }
                    keep
                });
            }
            Err(e) => tracing::error!(error = %e, "webhooks: cannot read the webhooks; retrying"),
        }
        tokio::select! {
            () = domain.webhooks_changed.notified() => {}
            () = tokio::time::sleep(RESYNC) => {}
            _ = stopping.wait_for(|s| *s) => break,
        }
    }
    for (_, (_, task)) in workers {
        task.abort();
    }
}

/// What the next step of a worker is.
enum Next {
    /// Deliver this event; `before` is the last unwanted id passed on the way.
    Deliver { event: Event, before: u64 },
    /// Nothing wanted up to `cursor` (the last event read); `more`: the
    /// scan stopped at its bound, not at the log's end.
    Caught { cursor: u64, more: bool },
}

fn next_event(domain: &Domain, hook: &Webhook) -> Result<Next, crate::store::StoreError> {
    let r = domain.store.read()?;
    let events = r_events(&r, hook)?;
    let more = events.len() == SCAN;
    let mut cursor = hook.cursor;
    for event in events {
        if wants(&hook.event_types, &event.kind) {
            return Ok(Next::Deliver { event, before: cursor });
        }
        cursor = event.id;
    }
    Ok(Next::Caught { cursor, more })
}

fn r_events(r: &crate::store::Reader, hook: &Webhook) -> Result<Vec<Event>, crate::store::StoreError> {
    use crate::store::Read;
    r.events_after(hook.org_id, hook.cursor, SCAN)
}

/// How an attempt ended, for the record.
struct Outcome {
    event_id: u64,
    /// The cursor after it: the event's id when delivered, else the last
    /// unwanted id before it.
    cursor: u64,
    attempt: DeliveryAttempt,
    delivered: bool,
}

/// Writes an attempt (or, without one, a cursor moved past unwanted
/// events) to the webhook, unless it changed meanwhile. Returns whether the
/// worker goes on (`false`: the webhook is gone, changed or now failing).
fn record(
    domain: &Domain,
    id: &str,
    generation: u64,
    cursor: u64,
    outcome: Option<&Outcome>,
) -> crate::error::Result<bool> {
    let config = &domain.config.webhooks;
    let now = domain.clock.now();
    domain.write(|w| {
        let Some(mut hook) = stored::webhook(w, id)? else { return Ok(false) };
        if hook.generation != generation || hook.failing {
            return Ok(false);
        }
        hook.cursor = hook.cursor.max(cursor);
        if let Some(o) = outcome {
            w.log_delivery(id, &o.attempt, config.delivery_log_size as usize)?;
            if o.delivered {
                hook.cursor = hook.cursor.max(o.cursor);
                hook.failing_since = None;
            } else {
                let since = *hook.failing_since.get_or_insert(o.attempt.time);
                if now - since >= config.retry_window_secs() {
                    hook.failing = true;
                    tracing::warn!(
                        webhook = id, event = o.event_id,
                        "webhook deliveries failed for webhooks.max_retry_hours: marked failing, nothing more is sent until it is PUT again"
                    );
                }
            }
        }
        w.put_webhook(&hook)?;
        Ok(!hook.failing)
    })
}

async fn record_async(ctx: &Ctx, id: &str, generation: u64, cursor: u64, outcome: Option<Outcome>) -> Option<bool> {
    let (d, id2) = (ctx.domain.clone(), id.to_string());
    match tokio::task::spawn_blocking(move || record(&d, &id2, generation, cursor, outcome.as_ref())).await {
        Ok(Ok(go_on)) => Some(go_on),
        Ok(Err(e)) => {
            tracing::error!(webhook = id, error = %e, "webhooks: cannot record a delivery; retrying");
            None
        }
        Err(e) => {
            tracing::error!(webhook = id, error = %e, "webhooks: recording a delivery failed; retrying");
            None
        }
    }
}

/// Delivers one webhook's events in order until it changes, is deleted,
/// turns failing, or the service stops.
async fn worker(ctx: Arc<Ctx>, id: String, generation: u64) {
    let config = &ctx.domain.config.webhooks;
    let initial = Duration::from_millis(config.retry_initial_ms);
    let max = Duration::from_secs(config.retry_max_secs);
    let mut appended = ctx.domain.store.events_watch();
    let mut stopping = ctx.stopping.clone();
    let mut backoff = initial;
    let keep_alive = Duration::from_secs(config.keep_alive_secs);
    let mut kept: Option<Kept> = None;
    loop {
        if *stopping.borrow() {
            return;
        }
        if !ctx.domain.store.health().writable() {
            // The cursor could not be moved: a delivery now would be sent again and again.
            pause(&mut stopping, crate::store::slot::RETRY_EVERY).await;
            continue;
        }
        // Seen before reading: an event committed after the read still wakes the wait.
        appended.borrow_and_update();
        let hook = match ctx.domain.store.read().and_then(|r| stored::webhook(&r, &id)) {
            Ok(Some(h)) if h.generation == generation && !h.failing => h,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(webhook = %id, error = %e, "webhooks: cannot read the webhook; retrying");
                pause(&mut stopping, Duration::from_secs(1)).await;
                continue;
            }
        };
        let next = match next_event(&ctx.domain, &hook) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(webhook = %id, error = %e, "webhooks: cannot read the event log; retrying");
                pause(&mut stopping, Duration::from_secs(1)).await;
                continue;
            }
        };
        let (event, before) = match next {
            Next::Caught { cursor, more } => {
                if cursor > hook.cursor && record_async(&ctx, &id, generation, cursor, None).await == Some(false) {
                    return;
                }
                if !more {
                    // An idle kept connection is closed once it has been idle for keep_alive_secs.
                    let idle = kept.as_ref().map(|k| keep_alive.saturating_sub(k.idle_since.elapsed()));
                    tokio::select! {
                        _ = appended.changed() => {}
                        () = tokio::time::sleep(idle.unwrap_or_default()), if idle.is_some() => kept = None,
                        _ = stopping.wait_for(|s| *s) => return,
                    }
                }
                continue;
            }
            Next::Deliver { event, before } => (event, before),
        };
        let outcome = deliver(&ctx, &mut kept, &hook, &event).await;
        let delivered = outcome.delivered;
        let counter = if delivered { &ctx.domain.webhook_stats.delivered } else { &ctx.domain.webhook_stats.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        match record_async(&ctx, &id, generation, before, Some(outcome)).await {
            Some(false) => return,
            Some(true) if delivered => backoff = initial,
            _ => {
                // Not kept through a backoff that may last an hour.
                kept = None;
                pause(&mut stopping, backoff).await;
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

async fn pause(stopping: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        _ = stopping.wait_for(|s| *s) => {}
    }
}

/// One attempt at one event.
async fn deliver(ctx: &Ctx, kept: &mut Option<Kept>, hook: &Webhook, event: &Event) -> Outcome {
    let started = Instant::now();
    let time = ctx.domain.clock.now();
    let result = match ctx.domain.key.open_webhook_secret(&hook.id, &hook.sealed_secret) {
        Ok(secret) => {
            let body = Bytes::from(crate::api::events::event_json(event).to_string());
            let _slot = ctx.slots.acquire().await;
            attempt(ctx, kept, &hook.url, &event.id.to_string(), &secret, body).await
        }
        Err(e) => Err(format!("the signing secret cannot be opened ({e}): was the server key replaced?")),
    };
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (status, error) = match result {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e)),
    };
    let delivered = status.is_some_and(|s| (200..300).contains(&s));
    if !delivered {
        tracing::info!(webhook = %hook.id, event = event.id, ?status, error = error.as_deref().unwrap_or(""), "webhook delivery failed; retrying");
    }
    Outcome {
        event_id: event.id,
        cursor: event.id,
        attempt: DeliveryAttempt { event_id: event.id, time, status, error, latency_ms },
        delivered,
    }
}

/// POSTs `body` to `url`; the receiver's status code. Reuses the worker's
/// kept connection while it is open and has been idle less than
/// `webhooks.keep_alive_secs`; one that fails before an answer is given up
/// for a fresh one within the same attempt (a receiver may close an idle
/// connection just as a request goes out).
async fn attempt(
    ctx: &Ctx,
    kept: &mut Option<Kept>,
    url: &str,
    msg_id: &str,
    secret: &[u8],
    body: Bytes,
) -> Result<u16, String> {
    let config = &ctx.domain.config.webhooks;
    // Checked again: the settings may have become stricter since the PUT.
    let target = check_url(url, config).map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(config.timeout_secs);
    let deadline = tokio::time::Instant::now() + limit;
    let keep_alive = Duration::from_secs(config.keep_alive_secs);
    let request = || {
        let timestamp = ctx.domain.clock.now();
        let signature = crate::secrets::webhook_signature(secret, msg_id, timestamp, &body);
        http::Request::post(target.path_and_query.as_str())
            .header(http::header::HOST, target.authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, concat!("messenger-chat/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(body.clone()))
            .map_err(|e| format!("cannot build the request: {e}"))
    };
    let keep = |conn: Option<Kept>| conn.filter(|_| !keep_alive.is_zero());
    if let Some(conn) = kept.take().filter(|k| k.idle_since.elapsed() < keep_alive && !k.sender.is_closed()) {
        match exchange(conn, request()?, deadline, limit).await {
            Ok((status, conn)) => {
                *kept = keep(conn);
                return Ok(status);
            }
            Err(e) => tracing::debug!(error = %e, "webhooks: the kept connection failed; opening a fresh one"),
        }
    }
    let conn = tokio::time::timeout_at(deadline, async {
        let addr = resolve(&target, config).await?;
        let connect = Duration::from_secs(config.connect_timeout_secs);
        let tcp = tokio::time::timeout(connect, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| {
                format!("no connection to {addr} within {} s (webhooks.connect_timeout_secs)", connect.as_secs())
            })?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if target.https {
            let name = rustls_pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| format!("{} is no TLS server name: {e}", target.host))?;
            let tls = tokio_rustls::TlsConnector::from(ctx.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {}: {e}", target.host))?;
            handshake(TokioIo::new(tls)).await
        } else {
            handshake(TokioIo::new(tcp)).await
        }
    })
    .await
    .map_err(|_| format!("no answer within {} s (webhooks.timeout_secs)", limit.as_secs()))??;
    let (status, conn) = exchange(conn, request()?, deadline, limit).await?;
    *kept = keep(conn);
    Ok(status)
}

/// The first address of the target that the rules allow.
async fn resolve(target: &Target, config: &crate::config::WebhooksConfig) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
            .collect(),
    };
    let mut refused = Vec::new();
    for a in &addrs {
        match refused_address(a.ip(), config) {
            None => return Ok(*a),
            Some(why) => refused.push(format!("{} {why}", a.ip())),
        }
    }
    Err(if refused.is_empty() {
        format!("{} resolves to no address", target.host)
    } else {
        format!("{} resolves only to refused addresses: {}", target.host, refused.join("; "))
    })
}

/// A connection to a webhook's receiver kept open by its worker for the
/// next delivery (`webhooks.keep_alive_secs`): a burst of events then
/// costs one round trip each instead of a TCP and TLS handshake each.
/// Dropping it closes the connection.
struct Kept {
    sender: SendRequest<Full<Bytes>>,
    /// Drives the connection (reads the answers, notices the receiver closing it).
    driver: JoinHandle<()>,
    idle_since: Instant,
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Opens HTTP/1.1 on `io`; the connection is driven by a task of its own
/// until the [`Kept`] is dropped.
async fn handshake<I>(io: I) -> Result<Kept, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        // Its end (the receiver closed, or an error) shows in the sender.
        let _ = conn.await;
    });
    Ok(Kept { sender, driver, idle_since: Instant::now() })
}

/// Sends the request on `conn` and returns the status of the answer, with
/// the connection if it can carry the next request: the answer's body is
/// read and thrown away, at most [`DRAIN_BYTES`] of it and only until
/// `deadline`; a longer or slower body costs the connection, not the
/// delivery.
async fn exchange(
    mut conn: Kept,
    request: http::Request<Full<Bytes>>,
    deadline: tokio::time::Instant,
    limit: Duration,
) -> Result<(u16, Option<Kept>), String> {
    use http_body_util::BodyExt;
    let answer = tokio::time::timeout_at(deadline, async {
        conn.sender.ready().await.map_err(|e| format!("connection closed: {e}"))?;
        conn.sender.send_request(request).await.map_err(|e| format!("no answer: {e}"))
    })
    .await
    .map_err(|_| format!("no answer within {} s (webhooks.timeout_secs)", limit.as_secs()))??;
    let status = answer.status().as_u16();
    let mut body = answer.into_body();
    let drained = tokio::time::timeout_at(deadline, async {
        let mut read = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > DRAIN_BYTES {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    conn.idle_since = Instant::now();
    Ok((status, drained.then_some(conn)))
}
