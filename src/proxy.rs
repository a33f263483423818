//! The pass-through proxy: with `proxy.enabled`, `/_matrix/client/…` and
//! `/_matrix/media/…` go to the homeserver, bodies streamed both ways, so
//! the app needs one HTTPS host; `/.well-known/matrix/client` is answered
//! here and names that host.
//!
//! Only an allow-list reaches the homeserver: federation, `/_synapse/…`
//! (the admin API) and anything else under `/_matrix` get 404 here. A path
//! that could mean something else after normalization (dot-segments,
//! encoded separators, empty segments) is refused with 400, never
//! normalized and passed on, since the homeserver or a proxy behind it may
//! normalize differently and land outside the allow-list.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::api::problem::{ApiError, problem};
use crate::client_addr::ClientAddr;
use crate::config::Config;
use crate::error::Error;
use crate::matrix::client::{https_connector, pooled_client};
use crate::secrets::{API_TOKEN_PREFIX, PAT_PREFIX};
use crate::server::{BodyError, RequestBody};

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

/// The path the service answers itself.
const WELL_KNOWN: &str = "/.well-known/matrix/client";

/// The path prefixes passed on to the homeserver.
const ALLOWED: [&str; 2] = ["/_matrix/client/", "/_matrix/media/"];

pub struct Proxy {
    client: Client<HttpsConnector<HttpConnector>, AnyBody>,
    /// Scheme and authority of the homeserver.
    base: Uri,
    /// `proxy.public_url` without a trailing `/`; `None`: from each request.
    public_url: Option<String>,
}

impl Proxy {
    /// A proxy to `matrix.homeserver_url`, naming `proxy.public_url` in the well-known answer.
    ///
    /// # Errors
    /// The URL is not an absolute http(s) URL, or TLS cannot be set up.
    pub fn new(config: &Config) -> Result<Self, String> {
        let homeserver_url = &config.matrix.homeserver_url;
        let base: Uri = homeserver_url.parse().map_err(|e| format!("matrix.homeserver_url {homeserver_url:?}: {e}"))?;
        if base.scheme().is_none() || base.authority().is_none() {
            return Err(format!("matrix.homeserver_url {homeserver_url:?} must be an absolute http(s) URL"));
        }
        let public = config.proxy.public_url.trim_end_matches('/');
        Ok(Proxy {
            client: pooled_client(https_connector().map_err(|e| e.to_string())?),
            base,
            public_url: (!public.is_empty()).then(|| public.to_string()),
        })
    }

    /// Whether the proxy answers a request path rather than the API: all
    /// of the homeserver's namespaces, so that none of them can fall through
    /// to anything but a refusal or the allow-list.
    #[must_use]
    pub fn claims(path: &str) -> bool {
        path.starts_with("/_matrix") || path.starts_with("/_synapse") || path == WELL_KNOWN
    }

    /// Answers one request of a path [`Proxy::claims`]: the well-known
    /// document, a refusal, or the homeserver's answer streamed back.
    pub async fn answer(&self, req: Request<RequestBody>, client: ClientAddr) -> Response<AnyBody> {
        let path = req.uri().path();
        if path == WELL_KNOWN {
            return self.well_known(&req, client);
        }
        let refusal = match unsafe_path(path) {
            Some(why) => Some(Error::Malformed(why)),
            None if !ALLOWED.iter().any(|p| path.starts_with(p)) => Some(Error::NotFound(
                "only /_matrix/client/… and /_matrix/media/… reach the homeserver through this service".into(),
            )),
            None => None,
        };
        match refusal {
            Some(e) => refuse(e),
            None => self.forward(req, client).await,
        }
    }

    /// Passes one request on and streams the answer back. What the client
    /// said about itself or carried for the service (its token, cookies,
    /// forwarding headers) stays here; the homeserver's per-address limits
    /// see the client's address as the service computed it.
    async fn forward(&self, req: Request<RequestBody>, client: ClientAddr) -> Response<AnyBody> {
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
        strip_client_claims(&mut parts.headers);
        parts.headers.insert("x-forwarded-for", HeaderValue::from_str(&client.ip.to_string()).expect("an IP is ASCII"));
        parts.headers.insert("x-forwarded-proto", HeaderValue::from_static(client.proto()));
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        // A body that breaks off (malformed chunks, a reset stream, too
        // slow) fails the request to the homeserver too; that is the
        // client's fault, so it is answered as such, not as a 502.
        let broken = Arc::new(OnceLock::new());
        let seen = broken.clone();
        let body = body.map_err(move |e| {
            let _ = seen.set((matches!(e, BodyError::TimedOut(_)), e.to_string()));
            box_error(e)
        });
        let req = Request::from_parts(parts, body.boxed());
        match self.client.request(req).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.map_err(box_error).boxed())
            }
            Err(_) if let Some((timed_out, why)) = broken.get() => {
                if *timed_out {
                    refuse(ApiError::RequestTimeout(why.clone()))
                } else {
                    refuse(Error::Malformed(format!("could not read the request body: {why}")))
                }
            }
            Err(e) => {
                tracing::warn!(request_id = %crate::server::current_request_id(), error = %e, "homeserver unreachable through the proxy");
                bad_gateway("the homeserver cannot be reached")
            }
        }
    }

    /// GET /.well-known/matrix/client — anyone: the app's homeserver is
    /// this service (client discovery, Matrix spec), with the CORS header
    /// the spec asks for so web clients can read it.
    fn well_known(&self, req: &Request<RequestBody>, client: ClientAddr) -> Response<AnyBody> {
        const METHODS: &str = "GET, HEAD, OPTIONS";
        let mut resp = match *req.method() {
            http::Method::GET | http::Method::HEAD => {
                let base = match &self.public_url {
                    Some(url) => url.clone(),
                    None => match request_host(req) {
                        Some(host) => format!("{}://{host}", client.proto()),
                        None => {
                            return refuse(Error::Malformed(
                                "send a Host header (or the operator sets proxy.public_url)".into(),
                            ));
                        }
                    },
                };
                let body = serde_json::json!({"m.homeserver": {"base_url": base}}).to_string();
                let mut resp = Response::new(full(Bytes::from(body)));
                resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp
            }
            http::Method::OPTIONS => {
                let mut resp = Response::new(full(Bytes::new()));
                *resp.status_mut() = StatusCode::NO_CONTENT;
                let h = resp.headers_mut();
                h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(METHODS));
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
                );
                resp
            }
            _ => {
                let mut resp = refuse(ApiError::MethodNotAllowed(format!("{WELL_KNOWN} answers {METHODS}")));
                resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(METHODS));
                resp
            }
        };
        resp.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        resp
    }
}

/// Why a path may not be passed on, if it may not: a dot-segment, an
/// empty segment, a `\`, or an encoded `/`, `.` or `\`. A trailing `/` is
/// allowed: it is how a client names an empty state key.
fn unsafe_path(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        if *segment == "." || *segment == ".." {
            return Some("the path has a dot-segment (/./ or /../); send the path without it".into());
        }
        if segment.is_empty() && i != last {
            return Some("the path has an empty segment (//); send the path without it".into());
        }
        if segment.contains('\\') {
            return Some("the path has a backslash; send the path without it".into());
        }
        let bytes = segment.as_bytes();
        for w in bytes.windows(3) {
            if w[0] == b'%' && matches!((w[1], w[2].to_ascii_uppercase()), (b'2', b'F' | b'E') | (b'5', b'C')) {
                return Some("the path has an encoded /, . or \\ (%2F, %2E, %5C); these are refused".into());
            }
        }
    }
    None
}

/// Headers that describe the client or carry its credentials for this
/// service: the homeserver hears about the client only from us.
fn strip_client_claims(headers: &mut http::HeaderMap) {
    for name in ["api-token", "cookie", "forwarded", "x-real-ip", "host"] {
        headers.remove(name);
    }
    let forwarded: Vec<HeaderName> =
        headers.keys().filter(|k| k.as_str().starts_with("x-forwarded-")).cloned().collect();
    for name in forwarded {
        headers.remove(name);
    }
    // A Matrix client sends the homeserver's access token here; one of this
    // service's own tokens sent by mistake must not reach the homeserver.
    let ours = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        let token = v.trim().get(7..).unwrap_or_default().trim_start();
        token.starts_with(API_TOKEN_PREFIX) || token.starts_with(PAT_PREFIX)
    });
    if ours {
        headers.remove(header::AUTHORIZATION);
    }
}

/// The host the client addressed: `Host` on HTTP/1.1, the authority on HTTP/2.
fn request_host(req: &Request<RequestBody>) -> Option<String> {
    let raw = match req.headers().get(header::HOST).and_then(|v| v.to_str().ok()) {
        Some(h) => h.to_string(),
        None => req.uri().authority()?.as_str().to_string(),
    };
    let authority: http::uri::Authority = raw.parse().ok()?;
    (!authority.host().is_empty() && !authority.as_str().contains('@')).then(|| authority.as_str().to_string())
}

/// A refusal as problem+json. A request body left unread closes the
/// connection after it (the server's connection layer says so with
/// `Connection: close`), so its bytes are never taken for the next request.
fn refuse(err: impl Into<ApiError>) -> Response<AnyBody> {
    problem(err).map(|b| b.map_err(box_error).boxed())
}

fn full(bytes: Bytes) -> AnyBody {
    http_body_util::Full::new(bytes).map_err(|never| match never {}).boxed()
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
    problem(Error::HomeserverRefused(detail.to_string())).map(|b| b.map_err(box_error).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_be_normalized_are_refused() {
        for bad in [
            "/_matrix/../_synapse/admin/v1/register",
            "/_matrix/client/./v3/login",
            "/_matrix/client/..",
            "/_matrix/%2e%2e/_synapse/admin/v1/users",
            "/_matrix/client/%2E%2E/x",
            "/_matrix//_synapse/admin",
            "/_matrix/client/v3%2F..%2F..%2F_synapse",
            "/_matrix/client/v3%2f",
            "/_matrix/client/%5c_synapse",
            "/_matrix/client/%5C",
            "/_matrix/client/a\\b",
            "/_matrix/client/v3//x/",
        ] {
            assert!(unsafe_path(bad).is_some(), "{bad} passed");
        }
        for good in [
            "/_matrix/client/versions",
            "/_matrix/client/v3/rooms/%21abc%3Aexample.org/state/m.room.name/",
            "/_matrix/media/v3/download/example.org/abc",
            "/_matrix/client/v3/rooms/!r:example.org/send/m.room.message/txn1",
        ] {
            assert_eq!(unsafe_path(good), None, "{good}");
        }
    }

    #[test]
    fn what_the_client_says_of_itself_is_dropped() {
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("api-token", "mcp_x"),
            ("cookie", "a=b"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-for", "1.2.3.4"),
            ("authorization", "Bearer mcp_secret"),
            ("content-type", "application/json"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_client_claims(&mut h);
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), vec!["content-type"]);
        let mut h = http::HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer syt_matrix_token"));
        strip_client_claims(&mut h);
        assert!(h.contains_key(header::AUTHORIZATION), "a Matrix access token passes");
    }
}
