//! A small HTTPS client: real TLS that trusts exactly the server's
//! self-signed certificate, HTTP/1.1 over hyper, one connection per request.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
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
        assert_eq!(
            self.status, status,
            "{} answered {} (expected {status}): {}",
            self.request, self.status, self.text
        );
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

/// An HTTPS client of one running server.
#[derive(Clone)]
pub struct Client {
    connector: TlsConnector,
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
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: ServerName::try_from(host).expect("a host name or IP address"),
            authority,
        }
    }

    /// Sends one request with exactly these headers and body bytes.
    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
        let request = format!("{method} {path}");
        let fut = self.exchange(method, path, headers, body);
        let (status, headers, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| panic!("{request}: no answer within 30 s"))
            .unwrap_or_else(|e| panic!("{request}: {e}"));
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp { request, status, headers, text, body }
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(u16, HeaderMap, Bytes), String> {
        let tcp = TcpStream::connect(&self.authority).await.map_err(|e| format!("connect: {e}"))?;
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake (verifying the server's certificate): {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut builder = Request::builder().method(method).uri(path).header("host", &self.authority);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder.body(Full::new(Bytes::from(body))).map_err(|e| format!("build request: {e}"))?;
        let resp = sender.send_request(req).await.map_err(|e| format!("send: {e}"))?;
        let (parts, incoming) = resp.into_parts();
        let bytes = incoming.collect().await.map_err(|e| format!("read body: {e}"))?.to_bytes();
        Ok((parts.status.as_u16(), parts.headers, bytes))
    }

    /// A JSON request with `Authorization: Bearer <token>`; a body is sent as `application/json`.
    pub async fn json(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> Resp {
        let auth = format!("Bearer {token}");
        match body {
            Some(b) => {
                let bytes = serde_json::to_vec(b).expect("serialize JSON");
                self.send(method, path, &[("authorization", &auth), ("content-type", "application/json")], bytes)
                    .await
            }
            None => self.send(method, path, &[("authorization", &auth)], Vec::new()).await,
        }
    }
}
