//! HTTPS: a warp filter served by hyper over tokio-rustls.
//!
//! warp 0.4 has no TLS of its own, so the accept loop lives here: accept a
//! TCP connection, finish the TLS handshake with the current certificate,
//! then serve the filter on it with hyper's HTTP/1 + HTTP/2 builder.
//! The certificate can be swapped while running ([`TlsState::reload`]):
//! new connections get the new one, open ones keep theirs.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use warp::Filter;

use crate::client_addr::TrustedProxies;
use crate::config::{Config, ServerConfig as ServerSection};
use crate::proxy::{AnyBody, BoxError, Proxy, box_error};

mod slots;

pub use slots::{AddrKey, ConnStats};
use slots::{Refusal, Slots};

/// What happens to a request before the API sees it: its client address
/// is computed (and put into its extensions as a
/// [`ClientAddr`](crate::client_addr::ClientAddr)), and the proxy takes the
/// homeserver's paths when it is on.
#[derive(Default)]
pub struct Front {
    pub proxy: Option<Proxy>,
    pub trusted: TrustedProxies,
    /// The connection counts shown in `/metrics`.
    pub conns: Arc<ConnStats>,
}

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("certificate and key do not fit together: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
}

/// Where the certificate and key come from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The configured files, or the self-signed pair in the data directory
    /// (generated here when missing).
    ///
    /// # Errors
    /// The self-signed pair cannot be generated or written.
    pub fn from_config(config: &Config) -> Result<Self, TlsError> {
        if !config.tls.cert_file.is_empty() {
            return Ok(TlsFiles { cert: config.tls.cert_file.clone().into(), key: config.tls.key_file.clone().into() });
        }
        let dir = config.data_dir().join("tls");
        let files = TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        if !files.cert.exists() || !files.key.exists() {
            generate_self_signed(&dir, &files)?;
        }
        Ok(files)
    }

    /// Reads both files into a rustls server configuration (HTTP/2 and HTTP/1.1 by ALPN).
    ///
    /// # Errors
    /// A file is missing, holds no PEM, or the key does not match the certificate.
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let read = |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { path: p.to_path_buf(), source });
        let cert_pem = read(&self.cert)?;
        let key_pem = read(&self.key)?;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&cert_pem).filter_map(Result::ok).collect();
        if certs.is_empty() {
            return Err(TlsError::Pem { path: self.cert.clone(), what: "certificate" });
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|_| TlsError::Pem { path: self.key.clone(), what: "private key" })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

fn generate_self_signed(dir: &Path, files: &TlsFiles) -> Result<(), TlsError> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let certified = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    crate::secrets::create_private_dir(dir).map_err(|source| TlsError::Write { path: dir.to_path_buf(), source })?;
    crate::secrets::write_private_file(&files.key, certified.signing_key.serialize_pem().as_bytes())
        .map_err(|source| TlsError::Write { path: files.key.clone(), source })?;
    std::fs::write(&files.cert, certified.cert.pem())
        .map_err(|source| TlsError::Write { path: files.cert.clone(), source })?;
    tracing::info!(cert = %files.cert.display(), "generated a self-signed certificate");
    Ok(())
}

/// The certificate in use, replaceable while serving.
pub struct TlsState {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsState {
    /// Loads the certificate and key.
    ///
    /// # Errors
    /// As [`TlsFiles::load`].
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let current = RwLock::new(files.load()?);
        Ok(TlsState { files, current })
    }

    /// Re-reads the files; on failure the old certificate stays in use.
    ///
    /// # Errors
    /// As [`TlsFiles::load`].
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = self.files.load()?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }
}

/// The limits of the connection layer, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// TLS handshake; the first request head after it; a request head once begun; draining on close.
    pub header_timeout: Duration,
    /// The whole body of an API request; the longest stall of a proxied body.
    pub body_timeout: Duration,
    /// A connection with no request in flight; a client that reads nothing of an answer.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// 0: no cap per address.
    pub max_connections_per_address: usize,
    pub h2_max_concurrent_streams: u32,
    pub max_header_bytes: u32,
}

impl ConnLimits {
    #[must_use]
    pub fn from_config(c: &ServerSection) -> Self {
        ConnLimits {
            header_timeout: Duration::from_secs(c.header_timeout_secs),
            body_timeout: Duration::from_secs(c.body_timeout_secs),
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            max_connections: c.max_connections,
            max_connections_per_address: c.max_connections_per_address,
            h2_max_concurrent_streams: c.h2_max_concurrent_streams,
            max_header_bytes: c.max_header_bytes,
        }
    }

    /// hyper's builder with the HTTP/1 and HTTP/2 bounds. hyper's own HTTP/1
    /// header-read timeout stays off: it also runs while a keep-alive
    /// connection waits for its next request, so it would cut every idle
    /// connection at the head timeout; [`watchdog`] tells the two apart.
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .header_read_timeout(None)
            .max_buf_size(usize::try_from(self.max_header_bytes).unwrap_or(usize::MAX));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.h2_max_concurrent_streams)
            .max_header_list_size(self.max_header_bytes)
            // Pings find a peer that vanished while a stream is in flight.
            .keep_alive_interval(self.idle_timeout)
            .keep_alive_timeout(self.header_timeout);
        builder
    }
}

/// Serves `filter` on `listener` until `shutdown` resolves; then stops
/// accepting and gives open connections `grace` to finish.
/// With `tls` `None` the connection is plain HTTP.
pub async fn serve<F, R>(
    listener: TcpListener,
    tls: Option<Arc<TlsState>>,
    filter: F,
    front: Arc<Front>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: ConnLimits,
) where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    R: warp::Reply,
{
    warn_if_few_files(limits.max_connections);
    let builder = Arc::new(limits.builder());
    let slots = Arc::new(Slots::new(
        limits.max_connections,
        limits.max_connections_per_address,
        front.trusted.clone(),
        front.conns.clone(),
    ));
    // Each connection's task holds a sender: once all are dropped, every
    // connection has ended (the way to wait for them at shutdown).
    let (alive, mut all_ended) = tokio::sync::mpsc::channel::<()>(1);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut refused = Throttled::new("connections refused: server.max_connections open already");
    let mut refused_address =
        Throttled::new("connections refused: server.max_connections_per_address open from one address already");
    let mut made_room = Throttled::new(
        "connections closed to make room: server.max_connections open, the one idle longest is closed for a new one",
    );
    let mut failed = Throttled::new("accept failed");
    let mut backoff = ACCEPT_BACKOFF_MIN;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    pair
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead
                    // of spinning, and log a line now and then, not per failure.
                    failed.note(&e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let conn_state = Arc::new(ConnState::new());
        // Refused before the TLS handshake: a refusal costs an accept and a close.
        let slot = match slots.admit(peer.ip(), &conn_state) {
            Ok((slot, closed_other)) => {
                if closed_other {
                    made_room.note(&format_args!("{} open", limits.max_connections));
                }
                slot
            }
            Err(Refusal::Address(key)) => {
                drop(tcp);
                refused_address.note(&format_args!("{key} has {} open", limits.max_connections_per_address));
                continue;
            }
            Err(Refusal::Full) => {
                drop(tcp);
                refused.note(&format_args!("{} open, each with a request in flight", limits.max_connections));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let svc = warp::service(filter.clone());
        let front = front.clone();
        let builder = builder.clone();
        let stop = stop_rx.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let _slot = slot;
            let conn = (peer, conn_state);
            let Some(acceptor) = acceptor else {
                return serve_connection(tcp, false, false, &builder, svc, front, conn, limits, stop).await;
            };
            // A handshake is not a request in flight: a stopping server does
            // not wait for it, and it may be closed to make room.
            let mut stopped = stop.clone();
            let handshake = tokio::select! {
                done = tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)) => done,
                () = stopping(&mut stopped) => return,
                () = conn.1.evicted() => {
                    tracing::debug!(%peer, "closing the connection in its TLS handshake: room for a new one");
                    return;
                }
            };
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake not finished within server.header_timeout_secs");
                    return;
                }
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            serve_connection(stream, true, h2, &builder, svc, front, conn, limits, stop).await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive);
    tokio::select! {
        _ = all_ended.recv() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("in-flight requests did not finish within the shutdown grace period");
        }
    }
}

/// First wait after a failed accept, doubled per failure up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one warning per this long for a repeated event (refusals, accept failures).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A warning for an event that may repeat thousands of times a second:
/// logged at its first occurrence, then at most once per [`WARN_EVERY`] with the count.
struct Throttled {
    what: &'static str,
    since_last: u64,
    last: Option<Instant>,
}

impl Throttled {
    fn new(what: &'static str) -> Self {
        Throttled { what, since_last: 0, last: None }
    }

    fn note(&mut self, detail: &dyn std::fmt::Display) {
        self.since_last += 1;
        let now = Instant::now();
        if self.last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            return;
        }
        tracing::warn!(count = self.since_last, detail = %detail, "{}", self.what);
        self.since_last = 0;
        self.last = Some(now);
    }
}

/// Warns when the open-file limit cannot hold `max_connections` (each takes
/// a descriptor, two while proxied): accept would fail before the cap refuses.
fn warn_if_few_files(max_connections: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else { return };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    let wanted = max_connections.saturating_mul(2).saturating_add(256);
    if let Some(soft) = soft
        && soft < wanted
    {
        tracing::warn!(
            open_files = soft,
            max_connections,
            "the open-file limit is below 2 × server.max_connections + 256 = {wanted}: raise it \
             (LimitNOFILE= in the systemd unit) or lower server.max_connections"
        );
    }
}

/// Serves one connection (after its TLS handshake) until it ends, its
/// [`watchdog`] expires, or the server stops.
#[expect(clippy::too_many_arguments, reason = "one call site; the pieces of one connection")]
async fn serve_connection<I, S, B>(
    io: I,
    https: bool,
    h2: bool,
    builder: &auto::Builder<TokioExecutor>,
    svc: S,
    front: Arc<Front>,
    (peer, conn_state): (SocketAddr, Arc<ConnState>),
    limits: ConnLimits,
    stop: tokio::sync::watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower_service::Service<hyper::Request<RequestBody>, Response = hyper::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    conn_state.handshake_done(h2);
    let io = Watched::new(io, conn_state.clone(), limits.header_timeout);
    let state = conn_state.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        handle(svc.clone(), front.clone(), req, peer, https, state.clone(), limits.body_timeout)
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // The timeouts and the shutdown signal are watched by a task of their
    // own: polled here with the connection, they would cost a lock on every
    // wake of this task, several per request.
    let (signal_tx, signal) = tokio::sync::oneshot::channel();
    tokio::spawn(guard(conn_state.clone(), limits, stop, signal_tx));
    let why = tokio::select! {
        biased;
        ended = conn.as_mut() => {
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        signal = signal => match signal {
            Ok(Signal::Expired(why)) => why,
            Ok(Signal::Stop) => {
                // Shutting down: in-flight requests finish within the shutdown
                // grace; a connection without one ends now. hyper's graceful
                // close alone would wait for a first head that may never come
                // (a slowloris held the stop for the whole grace), and the
                // drain after an early answer would run its full time.
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = nothing_to_finish(&conn_state) => {
                        tracing::debug!(%peer, "closing the connection: shutting down");
                    }
                }
                return;
            }
            Err(_) => {
                // The guard ended without a word (it cannot): serve on, unguarded.
                let _ = conn.await;
                return;
            }
        },
    };
    tracing::debug!(%peer, ?why, "closing the connection");
    let head_begun = conn_state.head_since.load(Ordering::Acquire) != 0;
    if matches!(why, Expired::SlowHead | Expired::WriteStalled) || (why == Expired::Evicted && head_begun) {
        // A graceful close would wait for the head to end, or for the very
        // write that does not move.
        return;
    }
    // HTTP/1: closes it at once (nothing is in flight); HTTP/2: GOAWAY.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.header_timeout, conn).await;
}

/// Resolves once a stopping server owes the connection's client nothing:
/// no request in flight, and either none was ever begun on it (its first
/// head still trickling in, or none sent) or its last answer is out and
/// only the drain of an unread body is left. Looked at every 50 ms, only
/// while the server stops.
async fn nothing_to_finish(state: &ConnState) {
    loop {
        if state.in_flight.load(Ordering::Acquire) == 0
            && (!state.served.load(Ordering::Acquire) || state.draining.load(Ordering::Acquire))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a connection's guard tells it.
enum Signal {
    Expired(Expired),
    Stop,
}

/// Watches one connection's timeouts and the server's stop, until one of
/// them fires or the connection ends (drops the receiver).
async fn guard(
    state: Arc<ConnState>,
    limits: ConnLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut tx: tokio::sync::oneshot::Sender<Signal>,
) {
    let signal = tokio::select! {
        why = watchdog(&state, &limits) => Signal::Expired(why),
        () = state.evicted() => Signal::Expired(Expired::Evicted),
        () = stopping(&mut stop) => Signal::Stop,
        () = tx.closed() => return,
    };
    let _ = tx.send(signal);
}

/// Resolves once the server stops.
async fn stopping(stop: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            // The server dropped the sender without stopping: never.
            return std::future::pending().await;
        }
    }
}

/// Why a connection's watchdog closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// Not a byte of a first request within `header_timeout` of the TLS handshake.
    NoRequest,
    /// A request head begun but not complete in time: the first within
    /// `header_timeout` of the handshake, a later one within `header_timeout` of its first byte.
    SlowHead,
    /// No request in flight for `idle_timeout`.
    Idle,
    /// An answer the client has not read any of for `idle_timeout`.
    WriteStalled,
    /// No request in flight, and the server at `max_connections`: closed
    /// to make room for a new connection.
    Evicted,
}

/// Waits until one of the connection's timeouts expires. Request bodies
/// have their own bound ([`RequestBody`]); a request being answered is never cut.
async fn watchdog(state: &ConnState, limits: &ConnLimits) -> Expired {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (head, idle) = (ms(limits.header_timeout), ms(limits.idle_timeout));
    loop {
        let now = state.now_ms();
        let stalled = state.write_stalled_since.load(Ordering::Relaxed);
        let due = if stalled != 0 && now >= stalled + idle {
            Some((stalled + idle, Expired::WriteStalled))
        } else if state.in_flight.load(Ordering::Acquire) > 0 {
            None
        } else {
            let head_since = state.head_since.load(Ordering::Acquire);
            let idle_since = state.idle_since.load(Ordering::Acquire);
            if !state.served.load(Ordering::Acquire) {
                // The first head, however it trickles, by one head timeout after the handshake.
                Some((idle_since + head, if head_since == 0 { Expired::NoRequest } else { Expired::SlowHead }))
            } else if head_since != 0 {
                Some((head_since + head, Expired::SlowHead))
            } else {
                Some((idle_since + idle, Expired::Idle))
            }
        };
        // Looked at again when the deadline is due, and at least once per
        // the shorter timeout: a head or an idle spell that begins meanwhile
        // is then still caught exactly at its own deadline (it cannot be due
        // before the next look), without waking this per request. Capped at
        // the head timeout alone, an idle timeout shorter than it was
        // overslept: the connection closed up to a head timeout late.
        let wait = match due {
            Some((at, why)) if at <= now => return why,
            Some((at, _)) => (at - now).min(head.min(idle)),
            None => head.min(idle),
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// What one connection's pieces (the I/O, the requests, the watchdog) share.
/// Times are milliseconds since `base` plus one, so that 0 means "never".
struct ConnState {
    /// The accept.
    base: Instant,
    /// HTTP/2: bytes between requests are frames (pings, settings), not a head.
    h2: AtomicBool,
    /// Requests whose answer is not yet sent.
    in_flight: AtomicUsize,
    /// A request was seen on this connection.
    served: AtomicBool,
    /// When `in_flight` last dropped to 0 (at first: the accept, then the
    /// end of the TLS handshake).
    idle_since: AtomicU64,
    /// HTTP/1: when the first byte of the next head arrived after an idle spell.
    head_since: AtomicU64,
    /// When a write last found the client not reading.
    write_stalled_since: AtomicU64,
    /// HTTP/1 has one request at a time: whether its body was read to the end.
    body_done: AtomicBool,
    /// An answer went out with the body unread: drain it on close.
    linger: AtomicBool,
    /// That answer is out (close_notify and FIN sent); the drain is under way.
    draining: AtomicBool,
    /// Told when the connection is to close to make room for a new one.
    evict: tokio::sync::Notify,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            base: Instant::now(),
            h2: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(1),
            head_since: AtomicU64::new(0),
            write_stalled_since: AtomicU64::new(0),
            body_done: AtomicBool::new(false),
            linger: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            evict: tokio::sync::Notify::new(),
        }
    }

    /// The TLS handshake is done (or there is none): the first request head is due.
    fn handshake_done(&self, h2: bool) {
        self.h2.store(h2, Ordering::Relaxed);
        self.idle_since.store(self.now_ms(), Ordering::Release);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Bytes arrived from the client.
    fn on_read(&self) {
        // Only the first byte after an idle spell matters; the loads keep the
        // common case (a request in flight) to two relaxed reads.
        if self.h2.load(Ordering::Relaxed)
            || self.in_flight.load(Ordering::Relaxed) > 0
            || self.head_since.load(Ordering::Relaxed) != 0
            || self.linger.load(Ordering::Relaxed)
        {
            return;
        }
        self.head_since.store(self.now_ms(), Ordering::Release);
    }

    fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        self.head_since.store(0, Ordering::Release);
        self.body_done.store(false, Ordering::Release);
        InFlight(self.clone())
    }
}

/// One request being answered; dropped with the answer's body, that is,
/// once the answer is sent (or abandoned).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        s.idle_since.store(s.now_ms(), Ordering::Release);
        s.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The body of every answer: the answer's own, holding its [`InFlight`].
pub struct ResponseBody {
    inner: AnyBody,
    _in_flight: InFlight,
}

impl http_body::Body for ResponseBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// How long a request body may take.
#[derive(Debug, Clone, Copy)]
enum BodyLimit {
    /// The whole body by then (API requests: at most `max_body_bytes`).
    Total(Instant),
    /// No longer than this between two pieces (proxied uploads of any size).
    Stall(Duration),
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("{0}")]
    Read(#[from] hyper::Error),
    #[error("the request body did not arrive within {} s (server.body_timeout_secs)", .0.as_secs())]
    TimedOut(Duration),
}

/// The body of every request: hyper's, bounded in time, telling the
/// connection when it was read to the end.
pub struct RequestBody {
    inner: hyper::body::Incoming,
    limit: BodyLimit,
    timeout: Duration,
    last_progress: Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    conn: Arc<ConnState>,
}

impl RequestBody {
    fn finished(&self) {
        self.conn.body_done.store(true, Ordering::Release);
    }
}

impl http_body::Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finished();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.finished();
                }
                if matches!(this.limit, BodyLimit::Stall(_)) {
                    this.last_progress = Instant::now();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Pending => {
                let deadline = match this.limit {
                    BodyLimit::Total(at) => at,
                    BodyLimit::Stall(d) => this.last_progress + d,
                };
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
                if timer.deadline() != deadline.into() {
                    timer.as_mut().reset(deadline.into());
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::TimedOut(this.timeout)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's I/O, reporting reads and stalled writes to its
/// [`ConnState`], and draining unread bytes on close when an answer went out
/// before its request body was read: closing a socket with unread bytes
/// makes the kernel send a reset, which can destroy the answer before the
/// client has read it (RFC 9112 §9.6).
struct Watched<I> {
    inner: I,
    state: Arc<ConnState>,
    linger_for: Duration,
    shut: bool,
    linger_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> Watched<I> {
    fn new(inner: I, state: Arc<ConnState>, linger_for: Duration) -> Self {
        Watched { inner, state, linger_for, shut: false, linger_timer: None }
    }

    fn wrote(&self, result: &Poll<std::io::Result<usize>>) {
        match result {
            Poll::Pending => {
                if self.state.write_stalled_since.load(Ordering::Relaxed) == 0 {
                    self.state.write_stalled_since.store(self.state.now_ms(), Ordering::Relaxed);
                }
            }
            Poll::Ready(_) => {
                if self.state.write_stalled_since.load(Ordering::Relaxed) != 0 {
                    self.state.write_stalled_since.store(0, Ordering::Relaxed);
                }
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.on_read();
        }
        result
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.shut {
            // TLS close_notify, then FIN: the client sees the answer end cleanly.
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.shut = true;
        }
        if !this.state.linger.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        this.state.draining.store(true, Ordering::Release);
        // Read and drop what the client still sends until it closes its side,
        // for at most `linger_for`.
        let linger_for = this.linger_for;
        let timer = this.linger_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(linger_for)));
        let mut scratch = [0u8; 8192];
        loop {
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    return match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// One request: to the homeserver when the proxy takes its path, else to the API.
async fn handle<S, B>(
    mut svc: S,
    front: Arc<Front>,
    req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    https: bool,
    conn: Arc<ConnState>,
    body_timeout: Duration,
) -> Result<hyper::Response<ResponseBody>, Infallible>
where
    S: tower_service::Service<hyper::Request<RequestBody>, Response = hyper::Response<B>, Error = Infallible>,
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let in_flight = conn.begin_request();
    let id = RequestId::of(req.headers());
    let header = id.header_value();
    let http1 = req.version() < http::Version::HTTP_2;
    let has_body = !http_body::Body::is_end_stream(req.body());
    let client = front.trusted.client_of(peer, req.headers(), https);
    let proxy = front.proxy.as_ref().filter(|_| Proxy::claims(req.uri().path()));
    let now = Instant::now();
    let limit = if proxy.is_some() { BodyLimit::Stall(body_timeout) } else { BodyLimit::Total(now + body_timeout) };
    let mut req = req.map(|inner| RequestBody {
        inner,
        limit,
        timeout: body_timeout,
        last_progress: now,
        timer: None,
        conn: conn.clone(),
    });
    let mut resp = REQUEST_ID
        .scope(id, async {
            if let Some(proxy) = proxy {
                return proxy.answer(req, client).await;
            }
            req.extensions_mut().insert(client);
            // A panic (redb's, on a page it cannot read) answers this request
            // 500 instead of dropping the connection; the store learns of it
            // from the panic hook (`store::health::watch`).
            match futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(tower_call(&mut svc, req))).await {
                Ok(resp) => resp.map(|b| b.map_err(box_error).boxed()),
                Err(_) => panicked(),
            }
        })
        .await;
    if let Ok(value) = header {
        resp.headers_mut().insert("x-request-id", value);
    }
    if http1 && has_body && !conn.body_done.load(Ordering::Acquire) {
        // Answered before the body was read to its end (401, 404, 405, 413,
        // 415, 408, …): the rest of the body would be read as the next
        // request, so this answer ends the connection, and says so, so that a
        // keep-alive client never sends its next request into a closing one.
        resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        conn.linger.store(true, Ordering::Release);
    }
    Ok(resp.map(|inner| ResponseBody { inner, _in_flight: in_flight }))
}

/// The answer of a request whose handler panicked.
fn panicked() -> hyper::Response<crate::proxy::AnyBody> {
    tracing::error!(request_id = %current_request_id(), "a request handler panicked; answered 500");
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "the service failed to handle this request; it has been logged",
    });
    let mut resp = hyper::Response::new(
        http_body_util::Full::new(bytes::Bytes::from(body.to_string())).map_err(box_error).boxed(),
    );
    *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/problem+json"));
    resp
}

/// The id of a request: the caller's `X-Request-Id` when it is a sane
/// token, else a fresh random one. It comes back in the answer and names
/// the request in its log lines ([`current_request_id`]).
#[derive(Debug, Clone)]
pub enum RequestId {
    Given(Arc<str>),
    Made(u64),
}

impl RequestId {
    fn of(headers: &http::HeaderMap) -> Self {
        headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            })
            .map_or_else(|| RequestId::Made(rand::random()), |v| RequestId::Given(v.into()))
    }
}

impl RequestId {
    /// The id as the `X-Request-Id` of the answer: a made id is written
    /// as hex straight into the header, not through `Display` into a
    /// `String` first, on every request.
    fn header_value(&self) -> Result<http::HeaderValue, http::header::InvalidHeaderValue> {
        match self {
            RequestId::Given(s) => http::HeaderValue::from_str(s),
            RequestId::Made(n) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let mut hex = [0u8; 16];
                for (i, b) in hex.iter_mut().enumerate() {
                    *b = HEX[usize::try_from((n >> (60 - 4 * i)) & 0xf).unwrap_or(0)];
                }
                http::HeaderValue::from_bytes(&hex)
            }
        }
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestId::Given(s) => f.write_str(s),
            RequestId::Made(n) => write!(f, "{n:016x}"),
        }
    }
}

tokio::task_local! {
    /// The request being answered by this task. A task-local rather than a
    /// tracing span: a span per request cost a fifth of the throughput of
    /// the hot reads, and only the few requests that log need the id.
    static REQUEST_ID: RequestId;
}

/// The id of the request this code answers, for log lines ("-" outside one).
#[must_use]
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(ToString::to_string).unwrap_or_else(|_| "-".to_string())
}

async fn tower_call<S>(svc: &mut S, req: hyper::Request<RequestBody>) -> S::Response
where
    S: tower_service::Service<hyper::Request<RequestBody>, Error = Infallible>,
{
    match svc.call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::RequestId;

    #[test]
    fn a_made_request_id_reads_in_its_header_as_in_the_logs() {
        for n in [0, 1, 0xabc, 0x0123_4567_89ab_cdef, u64::MAX] {
            let id = RequestId::Made(n);
            assert_eq!(id.header_value().unwrap().to_str().unwrap(), id.to_string());
        }
        let given = RequestId::Given("abc-1.2_3".into());
        assert_eq!(given.header_value().unwrap().to_str().unwrap(), "abc-1.2_3");
    }
}
