//! The harness: the real binary ([`TestServer`]), a real HTTPS client
//! ([`Client`]), and a fixture organization with a user for every role ([`World`]).

mod client;
mod fixture;
mod server;

pub use client::{Client, Http, Resp};
pub use fixture::{World, png, png_of_size};
pub use server::TestServer;

use serde_json::Value;

/// Requests to the running server. A request that gets no answer at all
/// fails the test with the end of the server's log.
impl TestServer {
    /// Any method, exactly these headers and these body bytes, over HTTP/1.1.
    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
        match self.client().try_send(Http::H1, method, path, headers, body).await {
            Ok(resp) => resp,
            Err(e) => {
                let log = self.stderr();
                let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
                panic!("{method} {path}: {e}\n--- the server's stderr, last lines ---\n{}", tail.join("\n"))
            }
        }
    }

    /// A JSON request with `Authorization: Bearer <token>`; a body goes as `application/json`.
    pub async fn request(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> Resp {
        let auth = format!("Bearer {token}");
        match body {
            Some(b) => {
                let bytes = serde_json::to_vec(b).expect("serialize JSON");
                self.send(method, path, &[("authorization", &auth), ("content-type", "application/json")], bytes).await
            }
            None => self.send(method, path, &[("authorization", &auth)], Vec::new()).await,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.request("GET", path, token, None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Option<Value>) -> Resp {
        self.request("POST", path, token, body.as_ref()).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Option<Value>) -> Resp {
        self.request("PATCH", path, token, body.as_ref()).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Option<Value>) -> Resp {
        self.request("PUT", path, token, body.as_ref()).await
    }

    pub async fn delete(&self, path: &str, token: &str, body: Option<Value>) -> Resp {
        self.request("DELETE", path, token, body.as_ref()).await
    }

    /// Any method, exactly these headers (no token added) and these body bytes.
    pub async fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.send(method, path, headers, body.to_vec()).await
    }

    /// A request with the API token and a body sent with `content_type` as is.
    pub async fn raw_api(&self, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Resp {
        let auth = format!("Bearer {}", self.api_token);
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(ct) = content_type {
            headers.push(("content-type", ct));
        }
        self.send(method, path, &headers, body.to_vec()).await
    }

    /// `GET path` on the operators' plain-HTTP listener (`server.metrics_listen`).
    #[allow(dead_code, reason = "used by some of the test targets that share the harness")]
    pub async fn operator_get(&self, path: &str) -> Resp {
        use http_body_util::BodyExt;
        let authority = self.metrics_url.strip_prefix("http://").expect("the server printed its metrics listener");
        let request = format!("GET {path} (operators' listener)");
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(authority).await.map_err(|e| format!("connect: {e}"))?;
            let (mut send, conn) = hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            let req = http::Request::get(path).header("host", authority).body(http_body_util::Empty::new());
            let resp = send.send_request(req.map_err(|e| e.to_string())?).await.map_err(|e| format!("send: {e}"))?;
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await.map_err(|e| format!("read body: {e}"))?.to_bytes();
            Ok::<_, String>((parts, bytes))
        };
        let (parts, bytes) = tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
            .await
            .unwrap_or_else(|_| Err("no answer within 30 s".into()))
            .unwrap_or_else(|e| panic!("{request}: {e}"));
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp { request, status: parts.status.as_u16(), headers: parts.headers, text, body }
    }

    /// A room as the API token sees it.
    pub async fn room(&self, room: i64) -> Value {
        self.get(&format!("/v1/chatrooms/{room}"), &self.api_token).await.expect(200).clone()
    }

    /// Every room of an organization as the API token sees it (`all=true`).
    pub async fn rooms(&self, org: i64) -> Value {
        self.get(&format!("/v1/chatrooms?organization_id={org}&all=true"), &self.api_token).await.expect(200).clone()
    }

    /// The members of an organization as the API token sees them.
    pub async fn members(&self, org: i64) -> Value {
        self.get(&format!("/v1/organizations/{org}/members"), &self.api_token).await.expect(200).clone()
    }
}

/// The ids in a JSON array of numbers.
#[track_caller]
pub fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array of ids, got {v}"))
        .iter()
        .map(|x| x.as_i64().unwrap_or_else(|| panic!("expected an id, got {x}")))
        .collect()
}

/// The `roomID` of a room.
#[track_caller]
pub fn room_id(room: &Value) -> i64 {
    room["roomID"].as_i64().unwrap_or_else(|| panic!("a room without a numeric roomID: {room}"))
}

/// A room without `syncError`, which the background sync may set at any
/// moment (the test homeserver address has nobody listening).
#[track_caller]
pub fn stable(room: &Value) -> Value {
    let mut object = room.as_object().unwrap_or_else(|| panic!("a room is an object, got {room}")).clone();
    object.remove("syncError");
    Value::Object(object)
}

/// A list of rooms with [`stable`] applied to each entry.
#[track_caller]
pub fn stable_list(list: &Value) -> Value {
    let mut list = list.clone();
    if let Some(entries) = list.get_mut("entries").and_then(Value::as_array_mut) {
        for entry in entries {
            *entry = stable(entry);
        }
    }
    list
}
