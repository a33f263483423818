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
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use warp::Filter;

use crate::client_addr::TrustedProxies;
use crate::config::Config;
use crate::proxy::{AnyBody, Proxy, box_error};

/// What happens to a request before the API sees it: its client address
/// is computed (and put into its extensions as a
/// [`ClientAddr`](crate::client_addr::ClientAddr)), and the proxy takes the
/// homeserver's paths when it is on.
#[derive(Default)]
pub struct Front {
    pub proxy: Option<Proxy>,
    pub trusted: TrustedProxies,
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
) where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    R: warp::Reply,
{
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let svc = warp::service(filter.clone());
        let front = front.clone();
        let https = tls.is_some();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            handle(svc.clone(), front.clone(), req, peer, https)
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match &tls {
            Some(tls) => {
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            None => {
                tokio::spawn(async move {
                    let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("in-flight requests did not finish within the shutdown grace period");
        }
    }
}

/// One request: to the proxy when it claims the path, else to the API.
async fn handle<S, B>(
    mut svc: S,
    front: Arc<Front>,
    mut req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    https: bool,
) -> Result<hyper::Response<AnyBody>, Infallible>
where
    S: tower_service::Service<hyper::Request<hyper::body::Incoming>, Response = hyper::Response<B>, Error = Infallible>,
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let id = RequestId::of(req.headers());
    let header = http::HeaderValue::from_str(&id.to_string());
    let mut resp = REQUEST_ID
        .scope(id, async {
            let client = front.trusted.client_of(peer, req.headers(), https);
            if let Some(proxy) = front.proxy.as_ref().filter(|_| Proxy::claims(req.uri().path())) {
                return proxy.answer(req, client).await;
            }
            req.extensions_mut().insert(client);
            tower_call(&mut svc, req).await.map(|b| b.map_err(box_error).boxed())
        })
        .await;
    if let Ok(value) = header {
        resp.headers_mut().insert("x-request-id", value);
    }
    Ok(resp)
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

async fn tower_call<S>(svc: &mut S, req: hyper::Request<hyper::body::Incoming>) -> S::Response
where
    S: tower_service::Service<hyper::Request<hyper::body::Incoming>, Error = Infallible>,
{
    match svc.call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}
