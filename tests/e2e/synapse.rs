//! The homeserver's side: where Synapse is, a Synapse of a test's own for
//! the fault tests, and a server-admin account that reads what users cannot
//! see (room state, whether a room still exists, accounts).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use messenger_chat::config::MatrixConfig;
use messenger_chat::matrix::{HomeserverClient, Registration};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use crate::poll::unique;

/// The creation-content key that names the service's room id.
pub const MARKER: &str = "org.messengerchat.room_id";

/// Where a Synapse listens and the secret that registers accounts on it.
#[derive(Debug, Clone)]
pub struct Homeserver {
    pub url: String,
    pub secret_file: String,
}

fn required(name: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
        panic!(
            "{name} is not set: the end-to-end tests need a real Synapse. Run them with \
             `scripts/test-with-synapse.sh --test e2e`, which starts one and exports SYNAPSE_URL, \
             SYNAPSE_SHARED_SECRET_FILE, SYNAPSE_DIR and SYNAPSE_SCRIPT"
        )
    })
}

/// The Synapse the test command started, shared by the tests.
pub fn shared() -> Homeserver {
    // All four are checked so a half-configured environment fails every test alike.
    let _ = required("SYNAPSE_DIR");
    let _ = required("SYNAPSE_SCRIPT");
    Homeserver { url: required("SYNAPSE_URL"), secret_file: required("SYNAPSE_SHARED_SECRET_FILE") }
}

/// A Synapse of one test's own (`$SYNAPSE_SCRIPT start <tempdir>`), so that
/// stopping it disturbs no other test. Stopped when dropped.
pub struct OwnSynapse {
    script: PathBuf,
    dir: tempfile::TempDir,
    pub hs: Homeserver,
}

impl OwnSynapse {
    /// Starts a fresh Synapse in a new temporary directory.
    pub async fn start() -> OwnSynapse {
        let _ = shared();
        let script = PathBuf::from(required("SYNAPSE_SCRIPT"));
        let dir = tempfile::Builder::new().prefix("messenger-chat-e2e-synapse-").tempdir().expect("a temp dir");
        let out = run_script(&script, "start", dir.path().to_path_buf()).await;
        let line = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("`synapse.sh start` printed no {key} line:\n{out}"))
                .to_string()
        };
        let hs = Homeserver { url: line("SYNAPSE_URL="), secret_file: line("SYNAPSE_SHARED_SECRET_FILE=") };
        OwnSynapse { script, dir, hs }
    }

    /// Stops it (SIGTERM, as an operator would), keeping its data.
    pub async fn stop(&self) {
        run_script(&self.script, "stop", self.dir.path().to_path_buf()).await;
    }

    /// Starts it again on the same port and data; returns when it answers.
    pub async fn start_again(&self) {
        let out = run_script(&self.script, "start", self.dir.path().to_path_buf()).await;
        assert!(out.contains(&format!("SYNAPSE_URL={}", self.hs.url)), "Synapse came back elsewhere:\n{out}");
    }

    /// The end of Synapse's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("homeserver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for OwnSynapse {
    fn drop(&mut self) {
        let _ = Command::new(&self.script).arg("stop").arg(self.dir.path()).output();
    }
}

async fn run_script(script: &std::path::Path, command: &'static str, dir: PathBuf) -> String {
    let script = script.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&script)
            .arg(command)
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {} {command}: {e}", script.display()))
    })
    .await
    .expect("the script's thread");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "synapse.sh {command} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Percent-encodes one path segment (room ids hold `!` and `:`, user ids `@`).
pub fn enc(segment: &str) -> String {
    utf8_percent_encode(segment, NON_ALPHANUMERIC).to_string()
}

/// A server admin of the test's own, registered with the shared secret.
/// Reads rooms through Synapse's admin API, which needs no membership.
pub struct Admin {
    pub hs: Homeserver,
    /// A client of the homeserver for the client-server calls a user makes
    /// with their own token (`whoami`, `joined_rooms`, send, refresh).
    pub matrix: HomeserverClient,
    token: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// The state of one room as the admin API lists it.
#[derive(Debug, Clone)]
pub struct RoomState(pub Vec<Value>);

impl RoomState {
    /// The whole event of `(type, state_key)`.
    pub fn event(&self, kind: &str, key: &str) -> Option<&Value> {
        self.0.iter().find(|e| e["type"] == kind && e["state_key"] == key)
    }

    /// The content of `(type, state_key)`; `Null` when absent.
    pub fn content(&self, kind: &str, key: &str) -> Value {
        self.event(kind, key).map_or(Value::Null, |e| e["content"].clone())
    }

    /// `membership` of a user: `join`, `invite`, `leave`, … or "" when none.
    pub fn membership(&self, user: &str) -> String {
        self.content("m.room.member", user)["membership"].as_str().unwrap_or_default().to_string()
    }

    /// The `users` map of `m.room.power_levels`.
    pub fn power_users(&self) -> BTreeMap<String, i64> {
        let pl = self.content("m.room.power_levels", "");
        pl["users"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(i64::MIN))).collect())
            .unwrap_or_default()
    }

    /// The power of a user as the room gives it (`users`, else `users_default`).
    pub fn level_of(&self, user: &str) -> i64 {
        let pl = self.content("m.room.power_levels", "");
        pl["users"][user].as_i64().unwrap_or_else(|| pl["users_default"].as_i64().unwrap_or(0))
    }

    /// The service's room id in the creation content.
    pub fn marker(&self) -> Option<i64> {
        self.content("m.room.create", "")[MARKER].as_i64()
    }

    /// Who created the room.
    pub fn creator(&self) -> String {
        self.event("m.room.create", "").and_then(|e| e["sender"].as_str()).unwrap_or_default().to_string()
    }

    /// Users by membership, for failure messages.
    pub fn members(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| {
                (
                    e["state_key"].as_str().unwrap_or_default().to_string(),
                    e["content"]["membership"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

impl Admin {
    /// Registers a fresh server admin on `hs` and logs it in.
    pub async fn new(hs: &Homeserver) -> Admin {
        let localpart = format!("e2eadmin{}", unique());
        let password = format!("pw-{}", unique());
        let config = MatrixConfig {
            homeserver_url: hs.url.clone(),
            server_name: "localhost".into(),
            registration_shared_secret_file: hs.secret_file.clone(),
            bot_localpart: localpart.clone(),
            user_prefix: "nobody".into(),
            request_timeout_ms: 30_000,
            ..MatrixConfig::default()
        };
        let matrix = HomeserverClient::new(&config, password.clone()).expect("a homeserver client");
        let made = matrix.register(&localpart, &password, true, Some("E2E admin")).await;
        assert!(
            matches!(made, Ok(Registration::Created { .. })),
            "registering the test's admin account on {}: {made:?}",
            hs.url
        );
        let login = matrix
            .login_user(&localpart, &password, Some("E2EADMIN"), None)
            .await
            .unwrap_or_else(|e| panic!("the test's admin cannot log in: {e}"));
        // No idle connections: the fault tests restart Synapse under them.
        let http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(HttpConnector::new());
        Admin { hs: hs.clone(), matrix, token: login.access_token, http }
    }

    /// One request with the admin's token: status and JSON body (`Null` when none).
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (status, bytes) = self.call_raw(method, path, body, &self.token).await;
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn call_raw(&self, method: Method, path: &str, body: Option<&Value>, token: &str) -> (u16, Bytes) {
        let what = format!("{method} {}{path}", self.hs.url);
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.hs.url))
            .header("authorization", format!("Bearer {token}"));
        let bytes = match body {
            Some(b) => {
                builder = builder.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(b).expect("JSON"))
            }
            None => Bytes::new(),
        };
        let request = builder.body(Full::new(bytes)).expect("a request");
        let exchange = async {
            let resp = self.http.request(request).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(std::time::Duration::from_secs(30), exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => panic!("{what}: {e}"),
            Err(tokio::time::error::Elapsed { .. }) => panic!("{what}: no answer within 30 s"),
        }
    }

    /// Whether Synapse still knows the room (`GET /_synapse/admin/v1/rooms/{room}`).
    pub async fn room_exists(&self, room: &str) -> bool {
        let (status, body) = self.call(Method::GET, &format!("/_synapse/admin/v1/rooms/{}", enc(room)), None).await;
        match status {
            200 => true,
            404 => false,
            _ => panic!("admin room details of {room}: {status} {body}"),
        }
    }

    /// The room's current state; `None` when Synapse does not know the room.
    pub async fn state(&self, room: &str) -> Option<RoomState> {
        let (status, body) =
            self.call(Method::GET, &format!("/_synapse/admin/v1/rooms/{}/state", enc(room)), None).await;
        match status {
            200 => Some(RoomState(body["state"].as_array().cloned().unwrap_or_default())),
            404 => None,
            _ => panic!("admin state of {room}: {status} {body}"),
        }
    }

    /// Every room Synapse knows.
    pub async fn all_rooms(&self) -> Vec<String> {
        let mut rooms = Vec::new();
        let mut from = 0;
        loop {
            let (status, body) =
                self.call(Method::GET, &format!("/_synapse/admin/v1/rooms?limit=200&from={from}"), None).await;
            assert_eq!(status, 200, "admin room list: {body}");
            let page = body["rooms"].as_array().cloned().unwrap_or_default();
            rooms.extend(page.iter().filter_map(|r| r["room_id"].as_str().map(str::to_string)));
            match body["next_batch"].as_i64() {
                Some(next) if !page.is_empty() => from = next,
                _ => return rooms,
            }
        }
    }

    /// The account as the admin API shows it; `None` when there is none.
    pub async fn user(&self, mxid: &str) -> Option<Value> {
        let (status, body) = self.call(Method::GET, &format!("/_synapse/admin/v2/users/{}", enc(mxid)), None).await;
        match status {
            200 => Some(body),
            404 => None,
            _ => panic!("admin user {mxid}: {status} {body}"),
        }
    }

    /// Downloads an `mxc://server/id` URI through the authenticated media API.
    pub async fn download(&self, mxc: &str) -> (u16, Bytes) {
        let rest = mxc.strip_prefix("mxc://").unwrap_or_else(|| panic!("not an mxc:// URI: {mxc:?}"));
        let (server, id) = rest.split_once('/').unwrap_or_else(|| panic!("an mxc:// URI without a media id: {mxc}"));
        let path = format!("/_matrix/client/v1/media/download/{}/{}", enc(server), enc(id));
        self.call_raw(Method::GET, &path, None, &self.token).await
    }

    /// A request with a user's own access token (what their client would send).
    pub async fn as_user(&self, token: &str, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (status, bytes) = self.call_raw(method, path, body, token).await;
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}
