//! The pass-through proxy: with `proxy.enabled`, `/_matrix/…` and
//! `/.well-known/matrix/client` go to the homeserver, bodies streamed both
//! ways, so the app needs one HTTPS host.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::matrix::client::{https_connector, pooled_client};
use crate::server::RequestBody;

/// Boxed error of a streamed body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every answer the server sends.
pub type AnyBody = BoxBody<Bytes, BoxError>;

/// Boxes a body error (a named function: closures here trip lifetime inference).
pub fn box_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> BoxError {
    Box::new(e)
}

/// Headers that belong to one connection and are never passed on (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

pub struct Proxy {
    client: Client<HttpsConnector<HttpConnector>, AnyBody>,
    /// Scheme and authority of the homeserver.
    base: Uri,
}

impl Proxy {
    /// A proxy to the homeserver at `homeserver_url`.
    ///
    /// # Errors
    /// The URL is not an absolute http(s) URL, or TLS cannot be set up.
    pub fn new(homeserver_url: &str) -> Result<Self, String> {
        let base: Uri = homeserver_url.parse().map_err(|e| format!("matrix.homeserver_url {homeserver_url:?}: {e}"))?;
        if base.scheme().is_none() || base.authority().is_none() {
            return Err(format!("matrix.homeserver_url {homeserver_url:?} must be an absolute http(s) URL"));
        }
        Ok(Proxy { client: pooled_client(https_connector().map_err(|e| e.to_string())?), base })
    }

    /// Whether a request path is the homeserver's.
    #[must_use]
    pub fn handles(path: &str) -> bool {
        path.starts_with("/_matrix/") || path == "/.well-known/matrix/client"
    }

    /// Passes one request on and streams the answer back. The peer's
    /// address replaces any `X-Forwarded-For` it sent, so the homeserver's
    /// per-address limits see the app and cannot be fooled by it.
    pub async fn forward(&self, req: Request<RequestBody>, peer: SocketAddr) -> Response<AnyBody> {
        let (mut parts, body) = req.into_parts();
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = Uri::builder()
            .scheme(self.base.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP))
            .authority(self.base.authority().cloned().expect("checked in Proxy::new"))
            .path_and_query(path_and_query)
            .build();
        let uri = match uri {
            Ok(u) => u,
            Err(e) => return bad_gateway(&format!("cannot build the homeserver URL: {e}")),
        };
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        parts.headers.insert("x-forwarded-for", HeaderValue::from_str(&peer.ip().to_string()).expect("an IP is ASCII"));
        parts.headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        let req = Request::from_parts(parts, body.map_err(box_error).boxed());
        match self.client.request(req).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.map_err(box_error).boxed())
            }
            Err(e) => {
                tracing::warn!(request_id = %crate::server::current_request_id(), error = %e, "homeserver unreachable through the proxy");
                bad_gateway("the homeserver cannot be reached")
            }
        }
    }
}

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&listed) {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

fn bad_gateway(detail: &str) -> Response<AnyBody> {
    let body = serde_json::json!({"type": "about:blank", "title": "Bad Gateway", "status": 502, "detail": detail});
    let mut resp =
        Response::new(http_body_util::Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    resp
}
