//! A small HTTPS client: real TLS that trusts exactly the server's
//! self-signed certificate, HTTP/1.1 over hyper, one connection per request.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Longest time one request may take before the test fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What came back: status, headers, the body as text and (when it is JSON) parsed.
#[derive(Debug, Clone)]
pub struct Resp {
    /// `METHOD path`, for failure messages.
    pub request: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    /// The parsed body; `Value::Null` when empty or not JSON.
    pub body: Value,
}

impl Resp {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    /// Asserts the status and returns the parsed body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "{} answered {} (expected {status}): {}", self.request, self.status, self.text);
        if status == 204 {
            assert!(self.text.is_empty(), "{} answered 204 with a body: {}", self.request, self.text);
        }
        if (200..300).contains(&status) && self.request.contains(" /v1/") && status != 204 {
            let ct = self.header("content-type");
            assert!(
                ct.starts_with("application/json"),
                "{} answered {status} with Content-Type {ct:?}, expected application/json",
                self.request
            );
        }
        &self.body
    }

    /// Asserts an RFC 9457 problem with this status: the content type,
    /// `type`, `title`, `status` and a non-empty `detail`. Returns the detail.
    #[track_caller]
    pub fn expect_problem(&self, status: u16) -> String {
        self.expect(status);
        let ct = self.header("content-type");
        assert!(
            ct.starts_with("application/problem+json"),
            "{} answered {status} with Content-Type {ct:?}, expected application/problem+json: {}",
            self.request,
            self.text
        );
        assert_eq!(self.body["type"], "about:blank", "{}: problem type: {}", self.request, self.text);
        assert_eq!(self.body["status"], status, "{}: problem status: {}", self.request, self.text);
        assert!(
            self.body["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{}: problem without a title: {}",
            self.request,
            self.text
        );
        let detail = self.body["detail"].as_str().unwrap_or_default().to_string();
        assert!(!detail.trim().is_empty(), "{}: problem without a detail: {}", self.request, self.text);
        if status == 401 {
            assert!(
                self.header("www-authenticate").starts_with("Bearer"),
                "{}: 401 without `WWW-Authenticate: Bearer` (got {:?})",
                self.request,
                self.header("www-authenticate")
            );
        }
        detail
    }
}

/// The HTTP version spoken over TLS, chosen by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http {
    H1,
    H2,
}

/// An HTTPS client of one running server.
#[derive(Clone)]
pub struct Client {
    h1: TlsConnector,
    h2: TlsConnector,
    server_name: ServerName<'static>,
    /// `host:port` to connect to and to send as `Host`.
    authority: String,
}

impl Client {
    /// A client for `url` (`https://host:port`) that trusts only the certificate in `cert_pem`.
    pub fn new(url: &str, cert_pem: &Path) -> Client {
        let authority = url.strip_prefix("https://").expect("an https:// URL").trim_end_matches('/').to_string();
        let host = match authority.rsplit_once(':') {
            Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']').to_string(),
            None => authority.clone(),
        };
        let mut roots = RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
            .unwrap_or_else(|e| panic!("read {}: {e}", cert_pem.display()))
            .collect::<Result<_, _>>()
            .expect("PEM certificates");
        assert!(!certs.is_empty(), "{} holds no certificate", cert_pem.display());
        for cert in certs {
            roots.add(cert).expect("a usable certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let with_alpn = |protocol: &[u8]| {
            let mut config = config.clone();
            config.alpn_protocols = vec![protocol.to_vec()];
            TlsConnector::from(Arc::new(config))
        };
        Client {
            h1: with_alpn(b"http/1.1"),
            h2: with_alpn(b"h2"),
            server_name: ServerName::try_from(host).expect("a host name or IP address"),
            authority,
        }
    }

    /// Sends one HTTP/1.1 request with exactly these headers and body bytes.
    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
        let request = format!("{method} {path}");
        self.try_send(Http::H1, method, path, headers, body).await.unwrap_or_else(|e| panic!("{request}: {e}"))
    }

    /// Sends one request; connection, TLS and protocol failures come back as `Err`.
    pub async fn try_send(
        &self,
        http: Http,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Resp, String> {
        let request = format!("{method} {path}");
        let fut = self.exchange(http, method, path, headers, body);
        let (status, headers, bytes) =
            tokio::time::timeout(REQUEST_TIMEOUT, fut).await.map_err(|_| "no answer within 30 s".to_string())??;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Resp { request, status, headers, text, body })
    }

    async fn exchange(
        &self,
        http: Http,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(u16, HeaderMap, Bytes), String> {
        let tcp = TcpStream::connect(&self.authority).await.map_err(|e| format!("connect: {e}"))?;
        let connector = match http {
            Http::H1 => &self.h1,
            Http::H2 => &self.h2,
        };
        let tls = connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake (verifying the server's certificate): {e}"))?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut builder = Request::builder().method(method);
        builder = match http {
            Http::H1 => builder.uri(path).header("host", &self.authority),
            Http::H2 => builder.uri(format!("https://{}{path}", self.authority)),
        };
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder.body(Full::new(Bytes::from(body))).map_err(|e| format!("build request: {e}"))?;
        let resp = match http {
            Http::H1 => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender.send_request(req).await
            }
            Http::H2 => {
                if alpn.as_deref() != Some(b"h2".as_slice()) {
                    return Err(format!("the server did not agree to h2 by ALPN ({alpn:?})"));
                }
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender.send_request(req).await
            }
        }
        .map_err(|e| format!("send: {e}"))?;
        let (parts, incoming) = resp.into_parts();
        let bytes = incoming.collect().await.map_err(|e| format!("read body: {e}"))?.to_bytes();
        Ok((parts.status.as_u16(), parts.headers, bytes))
    }
}
