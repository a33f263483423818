//! The real `messenger-chat` binary as a child process, pointed at a
//! Synapse with a user prefix and a bot account of its own, spoken to over
//! HTTPS with a client that trusts exactly its self-signed certificate.
//! Unlike tests/api's server, it can be killed with SIGKILL and started
//! again on the same data.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::{Client, Http, Resp};
use crate::poll::{eventually, unique};
use crate::synapse::Homeserver;

/// How long the binary may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One running `messenger-chat serve`.
pub struct Service {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
    client: Option<Client>,
    /// The API token printed on the first start.
    pub api: String,
    /// `matrix.user_prefix`: app user N is `@<prefix>N:localhost`.
    pub prefix: String,
    /// `matrix.bot_localpart`.
    pub bot_localpart: String,
}

impl Service {
    /// Starts the binary against `hs`, waiting at most `sync_wait_ms` in write handlers.
    pub fn start(hs: &Homeserver, sync_wait_ms: u64) -> Service {
        Service::start_with(hs, sync_wait_ms, &[])
    }

    /// [`Service::start`] with more `MESSENGER_CHAT_…` settings.
    pub fn start_with(hs: &Homeserver, sync_wait_ms: u64, extra: &[(&str, &str)]) -> Service {
        let mut service = Service::prepare_with(hs, sync_wait_ms, extra);
        service.spawn();
        assert!(!service.api.is_empty(), "the first start printed no API token");
        service
    }

    /// A service set up against `hs` but not started: its user prefix and
    /// bot are known, so a test can make the homeserver match a database it
    /// brings before the service first looks ([`Service::start_on`]).
    pub fn prepare(hs: &Homeserver, sync_wait_ms: u64) -> Service {
        Service::prepare_with(hs, sync_wait_ms, &[])
    }

    /// [`Service::prepare`] with more `MESSENGER_CHAT_…` settings.
    pub fn prepare_with(hs: &Homeserver, sync_wait_ms: u64, extra: &[(&str, &str)]) -> Service {
        let dir = tempfile::Builder::new().prefix("messenger-chat-e2e-").tempdir().expect("a temp dir");
        let id = unique();
        let prefix = format!("t{id}u");
        let bot_localpart = format!("e2ebot{id}");
        let data_dir = dir.path().join("data");
        let env = [
            ("MESSENGER_CHAT_SERVER__LISTEN", "127.0.0.1:0".to_string()),
            ("MESSENGER_CHAT_SERVER__METRICS_LISTEN", "127.0.0.1:0".to_string()),
            ("MESSENGER_CHAT_STORAGE__DATA_DIR", data_dir.display().to_string()),
            ("MESSENGER_CHAT_SECURITY__ARGON2_MEMORY_KIB", "64".to_string()),
            ("MESSENGER_CHAT_SECURITY__ARGON2_ITERATIONS", "1".to_string()),
            ("MESSENGER_CHAT_MATRIX__HOMESERVER_URL", hs.url.clone()),
            ("MESSENGER_CHAT_MATRIX__REGISTRATION_SHARED_SECRET_FILE", hs.secret_file.clone()),
            ("MESSENGER_CHAT_MATRIX__SERVER_NAME", "localhost".to_string()),
            ("MESSENGER_CHAT_MATRIX__USER_PREFIX", prefix.clone()),
            ("MESSENGER_CHAT_MATRIX__BOT_LOCALPART", bot_localpart.clone()),
            ("MESSENGER_CHAT_MATRIX__SYNC_WAIT_MS", sync_wait_ms.to_string()),
            ("MESSENGER_CHAT_MATRIX__REQUEST_TIMEOUT_MS", "20000".to_string()),
            // Every test logs in a handful of times within seconds.
            ("MESSENGER_CHAT_LIMITS__LOGIN_BURST", "100".to_string()),
            ("MESSENGER_CHAT_LOG__FORMAT", "human".to_string()),
            ("MESSENGER_CHAT_LOG__LEVEL", "info".to_string()),
            ("NO_COLOR", "1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(extra.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())))
        .collect();
        Service { dir, env, child: None, starts: 0, client: None, api: String::new(), prefix, bot_localpart }
    }

    /// Starts a prepared service on a copy of an existing database file,
    /// which holds its own API token (`api_token`; nothing is printed), with
    /// the key kept beside the file.
    pub fn start_on(mut self, db_file: &std::path::Path, api_token: &str) -> Service {
        let data_dir = self.dir.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("create the data directory");
        std::fs::copy(db_file, data_dir.join("messenger-chat.redb"))
            .unwrap_or_else(|e| panic!("copy {}: {e}", db_file.display()));
        // The database starts with its own key only: the one kept beside it
        // (`NAME.key`, as the fixtures keep theirs), owner-only.
        let key = db_file.with_extension("key");
        if key.exists() {
            use std::os::unix::fs::PermissionsExt;
            let to = data_dir.join("secret.key");
            std::fs::copy(&key, &to).unwrap_or_else(|e| panic!("copy {}: {e}", key.display()));
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod 600 secret.key");
        }
        self.api = api_token.to_string();
        self.spawn();
        self
    }

    /// The Matrix id of app user `user`.
    pub fn mxid(&self, user: i64) -> String {
        format!("@{}{user}:localhost", self.prefix)
    }

    /// The Matrix id of the service's bot.
    pub fn bot(&self) -> String {
        format!("@{}:localhost", self.bot_localpart)
    }

    fn stderr_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("stderr-{start}.log"))
    }

    /// The end of what the service logged (all starts), for failure messages.
    pub fn log_tail(&self) -> String {
        let mut all = String::new();
        for n in 1..=self.starts {
            all.push_str("--- start ");
            all.push_str(&n.to_string());
            all.push_str(" ---\n");
            all.push_str(&std::fs::read_to_string(self.stderr_path(n)).unwrap_or_default());
        }
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Everything the service logged (all starts).
    pub fn log(&self) -> String {
        (1..=self.starts).map(|n| std::fs::read_to_string(self.stderr_path(n)).unwrap_or_default()).collect()
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let stderr = File::create(self.stderr_path(self.starts)).expect("create the stderr log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_messenger-chat"));
        cmd.arg("serve")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        for (key, _) in std::env::vars() {
            if key.starts_with("MESSENGER_CHAT_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().expect("spawn the messenger-chat binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let url = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("API token") => {
                    self.api = line.split_whitespace().last().unwrap_or_default().to_string();
                }
                Ok(line) if line.contains("listening on") => {
                    break line.split_whitespace().last().unwrap_or_default().to_string();
                }
                Ok(_) => {}
                Err(e) => {
                    self.kill();
                    panic!("messenger-chat did not start ({e:?})\n{}", self.log_tail());
                }
            }
        };
        let cert = self.dir.path().join("data").join("tls").join("cert.pem");
        self.client = Some(Client::new(&url, &cert));
    }

    /// SIGKILL: the process ends at once, whatever it was doing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL the service");
            child.wait().expect("reap the service");
        }
        self.client = None;
    }

    /// Changes one `MESSENGER_CHAT_…` setting for the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Starts the binary again on the same data directory and settings.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill");
        self.spawn();
    }

    /// One request; transport failures come back as `Err` (the burst test
    /// counts them as unacknowledged).
    pub async fn try_call(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> Result<Resp, String> {
        let client = self.client.as_ref().ok_or("the service is not running")?;
        let auth = format!("Bearer {token}");
        let mut headers = vec![("authorization", auth.as_str())];
        let bytes = match body {
            Some(b) => {
                headers.push(("content-type", "application/json"));
                serde_json::to_vec(b).expect("JSON")
            }
            None => Vec::new(),
        };
        client.try_send(Http::H1, method, path, &headers, bytes).await
    }

    /// One request that must get an answer.
    pub async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Resp {
        match self.try_call(method, path, token, body.as_ref()).await {
            Ok(resp) => resp,
            Err(e) => panic!("{method} {path}: {e}\n{}", self.log_tail()),
        }
    }

    /// A client of the running service, for requests from spawned tasks.
    pub fn client(&self) -> Client {
        self.client.clone().expect("the service is running")
    }

    /// `PUT /v1/organizations/{id}`.
    pub async fn org(&self, id: i64, name: &str) {
        let resp = self.call("PUT", &format!("/v1/organizations/{id}"), &self.api, Some(json!({"name": name}))).await;
        resp.expect(201);
    }

    /// Creates user `id` with a display name, gives them `role` in `org`
    /// (when some) and returns a fresh PAT of theirs.
    pub async fn user(&self, id: i64, name: &str, membership: Option<(i64, &str)>) -> String {
        let api = &self.api;
        self.call("PUT", &format!("/v1/users/{id}"), api, Some(json!({"displayName": name}))).await.expect(201);
        if let Some((org, role)) = membership {
            self.member(org, id, role).await;
        }
        let issued = self.call("POST", &format!("/v1/users/{id}/tokens"), api, Some(json!({"name": "phone"}))).await;
        issued.expect(201)["token"].as_str().expect("a token").to_string()
    }

    /// `PUT /v1/organizations/{org}/members/{user}` with a role.
    pub async fn member(&self, org: i64, user: i64, role: &str) {
        let path = format!("/v1/organizations/{org}/members/{user}");
        self.call("PUT", &path, &self.api, Some(json!({"role": role}))).await.expect(200);
    }

    /// `POST /v1/chatrooms` with the API token; the created room.
    pub async fn create_room(&self, body: Value) -> Value {
        self.call("POST", "/v1/chatrooms", &self.api, Some(body)).await.expect(201).clone()
    }

    /// The room as the API token sees it.
    pub async fn room(&self, room: i64) -> Value {
        self.call("GET", &format!("/v1/chatrooms/{room}"), &self.api, None).await.expect(200).clone()
    }

    /// Waits until the room is `ready` with a Matrix room id; returns it.
    pub async fn ready(&self, room: i64, within: Duration) -> Value {
        eventually(&format!("room {room} synced to the homeserver"), within, || async move {
            let r = self.room(room).await;
            let synced = r["syncState"] == "ready" && r["matrixRoomID"].as_str().is_some_and(|m| m.starts_with('!'));
            if synced { Ok(r) } else { Err(r.to_string()) }
        })
        .await
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The numeric `roomID` of a room.
#[track_caller]
pub fn room_id(room: &Value) -> i64 {
    room["roomID"].as_i64().unwrap_or_else(|| panic!("a room without a numeric roomID: {room}"))
}

/// The `matrixRoomID` of a room.
#[track_caller]
pub fn matrix_id(room: &Value) -> String {
    room["matrixRoomID"]
        .as_str()
        .filter(|m| m.starts_with('!'))
        .unwrap_or_else(|| panic!("no Matrix room: {room}"))
        .to_string()
}

/// A service on the shared Synapse and a server admin of the test's own.
pub async fn on_shared_synapse() -> (Service, crate::synapse::Admin) {
    let hs = crate::synapse::shared();
    let admin = crate::synapse::Admin::new(&hs).await;
    (Service::start(&hs, SYNC_WAIT_MS), admin)
}

/// `matrix.sync_wait` of the services on the shared Synapse: long enough
/// that a write usually answers `ready` even on a loaded machine.
pub const SYNC_WAIT_MS: u64 = 10_000;

/// How long a change may take to show on the homeserver before a test fails.
pub const CONVERGE: Duration = Duration::from_secs(30);
