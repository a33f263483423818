//! The transport: one pooled hyper client over rustls, the configured
//! timeout on every request, the bot's session, and the sorting of answers
//! into [`MatrixError`]s.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, OnceCell};

use super::error::{ErrCode, MatrixError};
use super::ids::MatrixIds;
use super::types::{Capabilities, Versions};
use crate::config::MatrixConfig;

/// Largest answer body read from the homeserver; a room's member list is the
/// biggest thing the service asks for.
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// Device id of the bot's session, fixed so that logging in again replaces
/// the bot's previous token instead of piling up devices.
const BOT_DEVICE_ID: &str = "MESSENGERCHAT";

/// Characters left as they are in a path segment: RFC 3986 "unreserved".
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes one path segment (room ids hold `!` and `:`, user ids `@`).
pub(crate) fn enc(segment: &str) -> String {
    utf8_percent_encode(segment, PATH_SEGMENT).to_string()
}

/// A request body.
pub(crate) enum Body {
    Empty,
    Json(Vec<u8>),
    Raw { content_type: String, bytes: Bytes },
}

impl Body {
    pub(crate) fn json<T: Serialize>(value: &T) -> Self {
        // Serializing these plain structs and JSON values cannot fail.
        Self::Json(serde_json::to_vec(value).unwrap_or_default())
    }
}

/// Who a request is sent as.
#[derive(Clone, Copy)]
pub(crate) enum Auth<'a> {
    None,
    Token(&'a str),
}

/// A client of one homeserver. Cheap to clone; clones share the connection
/// pool and the bot's session.
/// The connector every homeserver connection uses: http, or https with
/// rustls (ring) and the web PKI roots.
///
/// # Errors
/// TLS cannot be set up.
pub(crate) fn https_connector() -> Result<HttpsConnector<HttpConnector>, MatrixError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MatrixError::Config(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_all_versions().build())
}

/// A pooled client over `connector`, for any body type.
pub(crate) fn pooled_client<B>(connector: HttpsConnector<HttpConnector>) -> Client<HttpsConnector<HttpConnector>, B>
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(connector)
}

#[derive(Clone)]
pub struct HomeserverClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    timeout: Duration,
    /// The naming rule of the service's accounts.
    ids: MatrixIds,
    bot_user_id: String,
    bot_password: String,
    shared_secret: String,
    /// The bot's access token; `None` until the first bot request logs in.
    bot_token: Mutex<Option<String>>,
    /// The homeserver's default room version, asked once.
    default_room_version: OnceCell<String>,
    /// Requests that failed in a retryable way (unreachable, timeout, 5xx, 429), for metrics.
    failures: AtomicU64,
}

impl std::fmt::Debug for HomeserverClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HomeserverClient")
            .field("base", &self.inner.base)
            .field("bot_user_id", &self.inner.bot_user_id)
            .finish_non_exhaustive()
    }
}

impl HomeserverClient {
    /// A client for the homeserver of `config`, acting as the bot with
    /// `bot_password` (derived by the caller; the client only keeps it in memory).
    ///
    /// # Errors
    /// [`MatrixError::Config`] when the homeserver URL is not http(s) or the
    /// shared secret file cannot be read.
    pub fn new(config: &MatrixConfig, bot_password: String) -> Result<Self, MatrixError> {
        let base = config.homeserver_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(MatrixError::Config(format!(
                "matrix.homeserver_url {base:?} must start with http:// or https://"
            )));
        }
        base.parse::<http::Uri>().map_err(|e| MatrixError::Config(format!("matrix.homeserver_url {base:?}: {e}")))?;
        let shared_secret = if config.registration_shared_secret_file.is_empty() {
            config.registration_shared_secret.clone()
        } else {
            std::fs::read_to_string(&config.registration_shared_secret_file)
                .map_err(|e| {
                    MatrixError::Config(format!(
                        "matrix.registration_shared_secret_file {}: {e}",
                        config.registration_shared_secret_file
                    ))
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string()
        };

        let http = pooled_client(https_connector()?);

        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                timeout: Duration::from_millis(config.request_timeout_ms.max(1)),
                ids: MatrixIds::new(config),
                bot_user_id: MatrixIds::new(config).bot(),
                bot_password,
                shared_secret,
                bot_token: Mutex::new(None),
                default_room_version: OnceCell::new(),
                failures: AtomicU64::new(0),
            }),
        })
    }

    /// The bot's full user id, `@<bot_localpart>:<server_name>`.
    #[must_use]
    pub fn bot_user_id(&self) -> &str {
        &self.inner.bot_user_id
    }

    /// The bot's localpart.
    #[must_use]
    pub fn bot_localpart(&self) -> &str {
        self.inner.ids.bot_localpart()
    }

    /// The naming rule of the service's accounts on this homeserver.
    #[must_use]
    pub fn ids(&self) -> &MatrixIds {
        &self.inner.ids
    }

    /// How many requests have failed in a retryable way (the homeserver was
    /// unreachable, slow, failing or rate limiting) since the client was made.
    #[must_use]
    pub fn failure_count(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn shared_secret(&self) -> &str {
        &self.inner.shared_secret
    }

    pub(crate) fn bot_password(&self) -> &str {
        &self.inner.bot_password
    }

    /// `GET /_matrix/client/versions`: whether the homeserver answers at all.
    ///
    /// # Errors
    /// Any [`MatrixError`]; a retryable one means "not ready".
    pub async fn versions(&self) -> Result<Versions, MatrixError> {
        self.send(Method::GET, "/_matrix/client/versions", Auth::None, Body::Empty, None).await
    }

    /// The homeserver's default room version (`GET /capabilities`), asked once.
    pub(crate) async fn default_room_version(&self) -> Result<String, MatrixError> {
        self.inner
            .default_room_version
            .get_or_try_init(|| async {
                let caps: Capabilities =
                    self.bot_send(Method::GET, "/_matrix/client/v3/capabilities", || Body::Empty).await?;
                // The spec makes the capability optional; "1" is what a
                // server without it would create.
                Ok(caps.capabilities.room_versions.map_or_else(|| "1".to_string(), |v| v.default))
            })
            .await
            .cloned()
    }

    /// Sends one request as the bot, logging in first when there is no
    /// session, and once more when the homeserver forgot the token.
    pub(crate) async fn bot_send<R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: impl Fn() -> Body,
    ) -> Result<R, MatrixError> {
        let token = self.bot_token().await?;
        match self.send(method.clone(), path, Auth::Token(&token), body(), None).await {
            Err(e) if e.is(&ErrCode::UnknownToken) => {
                self.forget_bot_token(&token).await;
                let token = self.bot_token().await?;
                self.send(method, path, Auth::Token(&token), body(), None).await
            }
            other => other,
        }
    }

    /// The bot's access token, logging in when there is none.
    pub(crate) async fn bot_token(&self) -> Result<String, MatrixError> {
        let mut slot = self.inner.bot_token.lock().await;
        if let Some(token) = slot.as_ref() {
            return Ok(token.clone());
        }
        let login = self
            .password_login(self.inner.ids.bot_localpart(), &self.inner.bot_password, Some(BOT_DEVICE_ID), false, None)
            .await?;
        *slot = Some(login.access_token.clone());
        Ok(login.access_token)
    }

    /// Drops `stale` unless another task already replaced it.
    async fn forget_bot_token(&self, stale: &str) {
        let mut slot = self.inner.bot_token.lock().await;
        if slot.as_deref() == Some(stale) {
            *slot = None;
        }
    }

    /// One HTTP exchange under the configured timeout, sorted into a typed
    /// answer or a [`MatrixError`].
    pub(crate) async fn send<R: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        auth: Auth<'_>,
        body: Body,
        forwarded_for: Option<IpAddr>,
    ) -> Result<R, MatrixError> {
        let started = std::time::Instant::now();
        let result = self.exchange(method.clone(), path_and_query, auth, body, forwarded_for).await;
        let outcome = result.and_then(|(status, retry_after, bytes)| {
            if status.is_success() {
                Ok((status, bytes))
            } else {
                Err(MatrixError::from_response(status.as_u16(), retry_after, &bytes))
            }
        });
        // The path names rooms and users but never carries a token or password.
        let path = path_and_query.split('?').next().unwrap_or_default();
        let elapsed_ms = started.elapsed().as_millis();
        let (status, bytes) = match outcome {
            Ok(ok) => {
                tracing::debug!(%method, path, status = ok.0.as_u16(), elapsed_ms, "homeserver request");
                ok
            }
            Err(e) => {
                if e.is_retryable() {
                    self.inner.failures.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(%method, path, error = %e, elapsed_ms, "homeserver request failed");
                return Err(e);
            }
        };
        // Some endpoints answer 200 with an empty body where `{}` is meant.
        let bytes = if bytes.is_empty() { Bytes::from_static(b"{}") } else { bytes };
        serde_json::from_slice(&bytes)
            .map_err(|e| MatrixError::Decode { status: status.as_u16(), reason: format!("{path_and_query}: {e}") })
    }

    async fn exchange(
        &self,
        method: Method,
        path_and_query: &str,
        auth: Auth<'_>,
        body: Body,
        forwarded_for: Option<IpAddr>,
    ) -> Result<(StatusCode, Option<u64>, Bytes), MatrixError> {
        let uri = format!("{}{path_and_query}", self.inner.base);
        let mut builder = Request::builder().method(method).uri(&uri).header(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("messenger-chat/", env!("CARGO_PKG_VERSION"))),
        );
        if let Auth::Token(token) = auth {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(ip) = forwarded_for {
            // The app reaches the service over HTTPS only; without the proto
            // header Synapse logs a warning for every forwarded request.
            builder = builder.header("x-forwarded-for", ip.to_string()).header("x-forwarded-proto", "https");
        }
        let body = match body {
            Body::Empty => Full::new(Bytes::new()),
            Body::Json(bytes) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(bytes))
            }
            Body::Raw { content_type, bytes } => {
                builder = builder.header(header::CONTENT_TYPE, content_type);
                Full::new(bytes)
            }
        };
        let request = builder.body(body).map_err(|e| MatrixError::Config(format!("request to {uri}: {e}")))?;

        let exchange = async {
            let response = self.inner.http.request(request).await.map_err(|e| {
                if e.is_connect() {
                    MatrixError::Unreachable(error_chain(&e))
                } else {
                    MatrixError::Transport(error_chain(&e))
                }
            })?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| MatrixError::Transport(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok((status, retry_after, bytes))
        };
        tokio::time::timeout(self.inner.timeout, exchange)
            .await
            .map_err(|_| MatrixError::Timeout(self.inner.timeout))?
    }
}

/// The error and its causes on one line: hyper's top-level message alone
/// ("client error (Connect)") does not say what happened.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_ids_as_one_segment() {
        assert_eq!(enc("!abc:example.org"), "%21abc%3Aexample.org");
        assert_eq!(enc("@u1:localhost"), "%40u1%3Alocalhost");
        assert_eq!(enc("a/b c"), "a%2Fb%20c");
    }

    #[tokio::test]
    async fn unreachable_is_retryable() {
        // Port 9 (discard) on loopback: nothing listens there.
        let config = MatrixConfig {
            homeserver_url: "http://127.0.0.1:9".into(),
            request_timeout_ms: 2000,
            ..MatrixConfig::default()
        };
        let client = HomeserverClient::new(&config, "pw".into()).unwrap();
        let err = client.versions().await.unwrap_err();
        assert!(matches!(err, MatrixError::Unreachable(_)), "{err:?}");
        assert!(err.is_retryable());
        assert_eq!(client.failure_count(), 1);
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        // Accepts the connection and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(socket);
        });
        let config = MatrixConfig {
            homeserver_url: format!("http://{addr}"),
            request_timeout_ms: 300,
            ..MatrixConfig::default()
        };
        let client = HomeserverClient::new(&config, "pw".into()).unwrap();
        let err = client.versions().await.unwrap_err();
        assert!(matches!(err, MatrixError::Timeout(_)), "{err:?}");
        assert!(err.is_retryable());
        hold.abort();
    }

    #[tokio::test]
    async fn failed_tls_handshake_is_unreachable() {
        // Accepts TCP and closes at once: the TLS handshake cannot finish.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let closer = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let config = MatrixConfig {
            homeserver_url: format!("https://{addr}"),
            request_timeout_ms: 2000,
            ..MatrixConfig::default()
        };
        let client = HomeserverClient::new(&config, "pw".into()).unwrap();
        let err = client.versions().await.unwrap_err();
        assert!(matches!(err, MatrixError::Unreachable(_)), "{err:?}");
        closer.abort();
    }

    #[test]
    fn rejects_non_http_url() {
        let config = MatrixConfig { homeserver_url: "ftp://x".into(), ..MatrixConfig::default() };
        assert!(matches!(HomeserverClient::new(&config, String::new()), Err(MatrixError::Config(_))));
    }
}
