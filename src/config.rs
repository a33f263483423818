//! Configuration: built-in defaults ← `config.toml` ← environment (`MESSENGER_CHAT_…`).
//!
//! Every key is documented here and in the shipped `config.toml`. Environment
//! variables use `__` between section and key: `MESSENGER_CHAT_SERVER__LISTEN`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The environment prefix of every configuration variable.
pub const ENV_PREFIX: &str = "MESSENGER_CHAT_";

/// The whole configuration, one typed section per area.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub rooms: RoomsConfig,
    pub security: SecurityConfig,
    pub matrix: MatrixConfig,
    pub proxy: ProxyConfig,
    pub limits: LimitsConfig,
    pub events: EventsConfig,
    pub webhooks: WebhooksConfig,
    pub log: LogConfig,
}

/// `[events]`: the event log (`GET /v1/events`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events older than this many days are removed in the background.
    pub retention_days: u32,
    /// Long polls (`GET /v1/events?wait=`) waiting at once, over all
    /// callers; beyond it a long poll is answered 503 with Retry-After.
    pub max_waiters: u32,
    /// The share of `max_waiters`, in percent, that one caller other than
    /// an API token (a user, all of its personal access tokens together)
    /// may hold, at least one place; beyond it 429 with Retry-After. One
    /// user's polls then cannot take every place.
    pub caller_share_percent: u32,
    /// The share of `max_waiters`, in percent, kept for API tokens:
    /// personal access tokens together hold at most the rest, so the
    /// backend's own polls always find a place (none is kept when
    /// `max_waiters` is 1).
    pub api_token_reserve_percent: u32,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self { retention_days: 90, max_waiters: 256, caller_share_percent: 10, api_token_reserve_percent: 25 }
    }
}

/// `[webhooks]`: signed deliveries of the event log (`PUT /v1/webhooks/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Webhooks that may exist at once (422 on creating one more).
    pub max_webhooks: u32,
    /// A webhook whose deliveries failed for this many hours (fractions
    /// allowed) is marked failing and sent nothing until it is PUT again.
    pub max_retry_hours: f64,
    /// The first retry waits this many milliseconds; each next one twice as long …
    pub retry_initial_ms: u64,
    /// … but never longer than this many seconds.
    pub retry_max_secs: u64,
    /// One delivery attempt (connect, TLS, request, response head) must be
    /// done within this many seconds; a slower receiver's attempt failed.
    pub timeout_secs: u64,
    /// The TCP connection (to one checked address) must be open within this many seconds.
    pub connect_timeout_secs: u64,
    /// Delivery attempts in flight at once, over all webhooks.
    pub max_concurrent: u32,
    /// A webhook's connection to its receiver is kept for its next delivery
    /// while it has been idle less than this many seconds (one connection
    /// per webhook at most); 0: a fresh connection for every delivery.
    pub keep_alive_secs: u64,
    /// Delivery attempts kept per webhook for `GET /v1/webhooks/{id}` (the oldest go first).
    pub delivery_log_size: u32,
    /// Allow plain `http://` URLs to hosts other than loopback (the body and
    /// its signature cross the network unencrypted).
    pub allow_http: bool,
    /// Allow addresses of private networks: RFC 1918, carrier-grade NAT,
    /// link-local (cloud metadata at 169.254.169.254), IPv6 unique-local and
    /// link-local. Off, a URL naming or resolving to one is refused.
    pub allow_private: bool,
    /// Allow loopback addresses (127.0.0.0/8, ::1, `localhost`). Off by
    /// default: the operators' listener and the homeserver's admin API often
    /// listen there. Turn on for a receiver on the same host.
    pub allow_loopback: bool,
    /// A PEM file of certificate authorities trusted for https receivers in
    /// addition to the web PKI roots (a private CA); empty: none.
    pub extra_ca_file: String,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            max_webhooks: 100,
            max_retry_hours: 24.0,
            retry_initial_ms: 1000,
            retry_max_secs: 3600,
            timeout_secs: 10,
            connect_timeout_secs: 5,
            max_concurrent: 8,
            keep_alive_secs: 30,
            delivery_log_size: 50,
            allow_http: false,
            allow_private: false,
            allow_loopback: false,
            extra_ca_file: String::new(),
        }
    }
}

impl WebhooksConfig {
    /// `max_retry_hours` as a duration in seconds.
    #[must_use]
    pub fn retry_window_secs(&self) -> i64 {
        #[expect(clippy::cast_possible_truncation, reason = "validated to at most 720 hours")]
        let secs = (self.max_retry_hours * 3600.0).ceil() as i64;
        secs.max(1)
    }
}

/// `[limits]`: per-user rate limits (429 with Retry-After above them).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Logins a user may make at once through `POST /v1/user/login` …
    pub login_burst: u32,
    /// … and then one more every this many seconds.
    pub login_refill_secs: u64,
    /// Personal access tokens that may be issued for one user at once …
    pub token_issue_burst: u32,
    /// … and then one more every this many seconds.
    pub token_issue_refill_secs: u64,
    /// `GET /v1/user/credentials` calls a user may make at once (each runs Argon2) …
    pub credentials_burst: u32,
    /// … and then one more every this many seconds.
    pub credentials_refill_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            login_burst: 10,
            login_refill_secs: 6,
            token_issue_burst: 10,
            token_issue_refill_secs: 6,
            credentials_burst: 10,
            credentials_refill_secs: 6,
        }
    }
}

/// `[server]`: the HTTPS listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on. Port 0 picks a free port (printed at start).
    pub listen: String,
    /// Serve plain HTTP instead of HTTPS. Only accepted on a loopback address,
    /// for a TLS-terminating reverse proxy on the same host.
    pub plain_http: bool,
    /// Largest request body accepted on the routes that may carry an avatar
    /// (creating a room or an event's room, PATCH of a room), in bytes (413
    /// above it). An avatar sent as a JSON array of numbers takes up to four
    /// bytes per image byte.
    pub max_body_bytes: u64,
    /// Largest request body accepted on every other route, in bytes (413
    /// above it; never more than `max_body_bytes`). The user lists of
    /// `/v1/chatrooms/{roomID}/users` get at least 32 bytes per user of
    /// `rooms.max_users_per_request`.
    pub max_small_body_bytes: u64,
    /// Request-body bytes buffered at once across all requests. Beyond it a
    /// request gets 503 with `Retry-After`; one caller (one API token, or one
    /// user's PATs) may hold a quarter of it, and at least one body of
    /// `max_body_bytes`, beyond which it gets 429. Must be at least `max_body_bytes`.
    pub body_budget_bytes: u64,
    /// How long in-flight requests may run after SIGTERM before the process exits.
    pub shutdown_grace_secs: u64,
    /// Reverse proxies (IP addresses or CIDR blocks) whose `X-Forwarded-For`
    /// names the client. From any other peer the header is ignored and the
    /// peer itself is the client (for the homeserver's login limits, the
    /// proxy's `X-Forwarded-For`, and the service's own limits).
    pub trusted_proxies: Vec<String>,
    /// Address of the operators' plain-HTTP listener for `/metrics` and the
    /// detailed `/readyz`; empty turns it off. Loopback by default: it has no
    /// TLS and no token.
    pub metrics_listen: String,
    /// A new connection must finish its TLS handshake within this many
    /// seconds, and then send its first request head within as many again;
    /// a request head whose first byte arrived must be complete within it.
    /// It also bounds how long a closing connection's unread bytes are drained.
    pub header_timeout_secs: u64,
    /// The whole body of an API request must arrive within this many seconds
    /// of its head (408 and the connection closed otherwise). A body passed
    /// through the `/_matrix` proxy may instead not stall longer than this.
    pub body_timeout_secs: u64,
    /// A connection with no request in flight is closed after this many
    /// seconds (HTTP/2: sent GOAWAY).
    pub idle_timeout_secs: u64,
    /// Open connections at most. At the cap, the connection without a
    /// request in flight (in its TLS handshake, waiting for its first
    /// request, or idle) that has waited longest is closed to make room;
    /// only when every one has a request in flight is a new one closed right
    /// after accept. Each takes a file descriptor (two while proxied), so
    /// the process's open-file limit must be above twice this.
    pub max_connections: usize,
    /// Open connections from one client address; beyond it a new one is
    /// closed right after accept, before TLS. An IPv4 address counts alone,
    /// an IPv6 address by its /64: one host usually holds a whole /64 and
    /// could otherwise open each connection from an address of its own.
    /// Peers in `trusted_proxies` are not counted: a reverse proxy carries
    /// many clients. The default (256) lets a NAT or a backend's connection
    /// pool through while one address holds at most a sixteenth of the
    /// default `max_connections`, so one client cannot take every slot.
    /// 0 turns the cap off.
    pub max_connections_per_address: usize,
    /// Requests (streams) one HTTP/2 connection may have in flight at once.
    pub h2_max_concurrent_streams: u32,
    /// Largest request head (request line and headers), in bytes: 431 above
    /// it on HTTP/1.1, the header list size announced on HTTP/2.
    pub max_header_bytes: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8443".into(),
            plain_http: false,
            max_body_bytes: 24 * 1024 * 1024,
            max_small_body_bytes: 256 * 1024,
            body_budget_bytes: 128 * 1024 * 1024,
            shutdown_grace_secs: 10,
            trusted_proxies: Vec::new(),
            metrics_listen: "127.0.0.1:8444".into(),
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            idle_timeout_secs: 60,
            max_connections: 4096,
            max_connections_per_address: 256,
            h2_max_concurrent_streams: 100,
            max_header_bytes: 32 * 1024,
        }
    }
}

/// `[tls]`: certificate and key as PEM files. Both empty: a self-signed
/// certificate is generated on first start and kept in the data directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_file: String,
    pub key_file: String,
}

/// `[storage]`: where state lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory of the database (`messenger-chat.redb`), the key file and the
    /// self-signed certificate. Created on first start.
    pub data_dir: String,
    /// Memory the database may use as page cache, in MiB.
    pub cache_mib: u64,
    /// Verify the checksum of every page of the database at every start, and
    /// refuse to serve a file that fails (it reads the whole file: see
    /// docs/operations.md for what that costs on a big database). Off by default: redb
    /// already verifies every page at the start after a crash or kill, a
    /// file it closed cleanly changes only when something outside the
    /// service writes to it, and damage met while serving stops every write
    /// anyway. Turn it on after restoring or moving the file, or on a disk
    /// you distrust. A boolean: `true` or `false`.
    pub verify_on_start: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { data_dir: "./data".into(), cache_mib: 16, verify_on_start: false }
    }
}

/// `[auth]`: API tokens and personal access tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// SHA-256 hashes (hex) of the API tokens that may do everything, each
    /// as a string or as `{ hash = "…", name = "…" }`.
    /// `messenger-chat token hash` prints the hash of a token. When this list
    /// is empty, the first start creates one token, prints it once and keeps
    /// only its hash in the database; once it lists any hash, only the listed
    /// tokens are accepted.
    pub api_token_hashes: Vec<ApiTokenHash>,
    /// Longest lifetime of a personal access token, in days.
    pub pat_max_days: u32,
    /// Lifetime of a personal access token when the request names none.
    pub pat_default_days: u32,
    /// Tokens whose holder is remembered in memory, so that a request
    /// authenticates without reading the database (about 100 bytes each);
    /// 0 turns it off. A revocation, a deactivation or an expiry applies to
    /// the very next request whatever this is.
    pub token_cache_entries: usize,
}

/// Most tokens `auth.token_cache_entries` may remember (about 100 MiB).
pub const MAX_TOKEN_CACHE_ENTRIES: usize = 1_000_000;

impl Default for AuthConfig {
    fn default() -> Self {
        Self { api_token_hashes: Vec::new(), pat_max_days: 365, pat_default_days: 90, token_cache_entries: 10_000 }
    }
}

/// One entry of `auth.api_token_hashes`: the hash of an API token, and the
/// name operators know it by (empty when the entry is a bare string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenHash {
    /// 64 hex characters: the SHA-256 of the token.
    pub hash: String,
    /// Shown by `messenger-chat token list-api`; empty: unnamed.
    pub name: String,
}

impl ApiTokenHash {
    /// The name to show for entry `index` of the list.
    #[must_use]
    pub fn shown_name(&self, index: usize) -> String {
        if self.name.is_empty() { format!("auth.api_token_hashes[{index}]") } else { self.name.clone() }
    }
}

/// A bare string stays a bare string, so `check-config` shows the file's form.
impl Serialize for ApiTokenHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.name.is_empty() {
            return s.serialize_str(&self.hash);
        }
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("hash", &self.hash)?;
        map.serialize_entry("name", &self.name)?;
        map.end()
    }
}

/// Accepts `"<hash>"` (the original form) or `{ hash = "<hash>", name = "…" }`.
impl<'de> Deserialize<'de> for ApiTokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = ApiTokenHash;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a hex SHA-256 string, or a table { hash = \"…\", name = \"…\" }")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ApiTokenHash, E> {
                Ok(ApiTokenHash { hash: v.to_string(), name: String::new() })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ApiTokenHash, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Named {
                    hash: String,
                    #[serde(default)]
                    name: String,
                }
                let n = Named::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ApiTokenHash { hash: n.hash, name: n.name })
            }
        }
        d.deserialize_any(Entry)
    }
}

/// `[rooms]`: rules for chatrooms.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Name of an organization's default room when the organization has no name.
    pub default_name: String,
    /// Largest avatar image accepted, in bytes.
    pub max_avatar_bytes: u64,
    /// Most users one request may name in `admins`, `moderators` and
    /// `assignedUsers` together (422 above it).
    pub max_users_per_request: u32,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self { default_name: "General".into(), max_avatar_bytes: 5 * 1024 * 1024, max_users_per_request: 1000 }
    }
}

/// `[security]`: cost of the Argon2id derivation of Matrix passwords.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Memory per derivation, in KiB (OWASP's recommendation: 19456).
    pub argon2_memory_kib: u32,
    /// Passes over that memory.
    pub argon2_iterations: u32,
    /// Lanes.
    pub argon2_parallelism: u32,
    /// Derivations that may run at once; 0 means one per core. Each holds
    /// `argon2_memory_kib` while it runs.
    pub argon2_concurrency: u32,
    /// Derivations that may wait for one of those; 0 means twice
    /// `argon2_concurrency`. Beyond them a request is answered 503 with Retry-After.
    pub argon2_queue: u32,
    /// Derived passwords kept in memory (least recently used out first),
    /// so a login does not derive each time; 0 keeps none. Each entry
    /// takes about 150 bytes; never written to disk.
    pub password_cache_size: u32,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            argon2_memory_kib: 19456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            argon2_concurrency: 0,
            argon2_queue: 0,
            password_cache_size: 10_000,
        }
    }
}

impl SecurityConfig {
    /// How many derivations run at once: `argon2_concurrency`, or the cores.
    #[must_use]
    pub fn derivations_at_once(&self) -> usize {
        match self.argon2_concurrency {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n as usize,
        }
    }

    /// How many derivations may wait: `argon2_queue`, or twice those at once.
    #[must_use]
    pub fn derivations_waiting(&self) -> usize {
        match self.argon2_queue {
            0 => 2 * self.derivations_at_once(),
            n => n as usize,
        }
    }
}

/// `[matrix]`: the homeserver the rooms live on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatrixConfig {
    /// Where the service reaches the homeserver's client-server API.
    pub homeserver_url: String,
    /// The homeserver's `server_name` (the part after `:` in user ids).
    pub server_name: String,
    /// Homeserver URL handed to the app in login's `wellKnown`. Empty: with
    /// `proxy.enabled`, the service itself (`proxy.public_url`, else the
    /// scheme and host the app used); without it, `homeserver_url`.
    pub public_base_url: String,
    /// Synapse's `registration_shared_secret`, inline …
    pub registration_shared_secret: String,
    /// … or read from this file (takes precedence when set).
    pub registration_shared_secret_file: String,
    /// Localpart of the service's own (server admin) account.
    pub bot_localpart: String,
    /// App user N gets the Matrix account `@<user_prefix>N:<server_name>`.
    pub user_prefix: String,
    /// How long a write request waits for its change to reach the homeserver, in ms.
    pub sync_wait_ms: u64,
    /// Timeout of one request to the homeserver, in ms.
    pub request_timeout_ms: u64,
    /// Matrix accounts the background sync creates for one room before it
    /// lets other changes go first; the room stays pending and its sync
    /// resumes behind them, so a room of thousands of new users does not
    /// hold up every other organization.
    pub accounts_per_step: u32,
    /// Outbox entries the background sync applies at once, each about a
    /// different room or user (one room's changes stay in order). A
    /// homeserver makes rooms faster with a few in flight than one at a time.
    pub concurrency: u32,
    /// Whether the service uses Synapse's admin API (admin join, room
    /// purge, display names and deactivation without the user's session);
    /// see [`AdminApi`]. Shown in `/readyz` (details) and logged at start.
    pub admin_api: AdminApi,
}

/// `matrix.admin_api`: whether the homeserver's admin API (`/_synapse/admin`
/// beyond shared-secret registration, which is always used) is used.
/// Without it the service falls back to what any homeserver offers: a claim
/// is an invite the user's own session accepts (the service derives the
/// password, logs in, joins and logs out), display names and deactivation
/// go through the user's own session, and a deleted room is emptied, made
/// invite-only and left: what an operator loses is the purge, the room's
/// history stays on the homeserver (logged and counted in `/metrics` as
/// `messenger_chat_rooms_left_with_history_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminApi {
    /// Probe at start (the bot, registered as a server admin, asks the admin
    /// API whether it is one) and use it when it answers; fall back when it
    /// is refused (no such endpoint, a proxy that does not pass it on, a
    /// bot that is no admin). A probe that fails (no answer, 5xx) is
    /// repeated with the reconciler's backoff before anything else is done.
    #[default]
    Auto,
    /// Require it: when the probe is refused, nothing is changed on the
    /// homeserver and `/readyz` answers 503 naming this key; the probe is
    /// repeated with the reconciler's backoff until it is answered.
    On,
    /// Never use it, nor probe; a bot registered now is no server admin
    /// (an existing bot account keeps the rights it has).
    Off,
}

impl AdminApi {
    /// The setting as written in the configuration.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AdminApi::Auto => "auto",
            AdminApi::On => "on",
            AdminApi::Off => "off",
        }
    }
}

impl Default for MatrixConfig {
    fn default() -> Self {
        Self {
            homeserver_url: "http://127.0.0.1:8008".into(),
            server_name: "localhost".into(),
            public_base_url: String::new(),
            registration_shared_secret: String::new(),
            registration_shared_secret_file: String::new(),
            bot_localpart: "messenger-chat".into(),
            user_prefix: "u".into(),
            sync_wait_ms: 5000,
            request_timeout_ms: 10000,
            accounts_per_step: 20,
            concurrency: 4,
            admin_api: AdminApi::Auto,
        }
    }
}

impl MatrixConfig {
    /// How long a write request waits for the homeserver.
    #[must_use]
    pub fn sync_wait(&self) -> Duration {
        Duration::from_millis(self.sync_wait_ms)
    }
}

/// `[proxy]`: pass `/_matrix/client/…` and `/_matrix/media/…` through to
/// the homeserver, and answer `/.well-known/matrix/client` with the service's own URL.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub enabled: bool,
    /// The service's own public URL as the app reaches it
    /// (`https://chat.example.org`), named by `/.well-known/matrix/client`.
    /// Empty: the scheme and `Host` of each request.
    pub public_url: String,
}

/// `[log]`: what the service writes to stderr.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `auto` (human on a terminal, else JSON), `human` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `messenger_chat=debug,info`.
    pub level: String,
    /// Which requests get an access log line: `all`, `errors` (status 400 and
    /// up, or slower than a second) or `none`. Every request is counted in
    /// /metrics either way; a line per request costs about a quarter of the
    /// throughput of the hot reads.
    pub access: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: "auto".into(), level: "info".into(), access: "errors".into() }
    }
}

/// Why the configuration cannot be used: one line naming the key and where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Loads defaults ← `file` (when given, or `./config.toml` when present) ← environment.
    ///
    /// # Errors
    /// A missing file that was named explicitly, a malformed file, an unknown
    /// key or a value of the wrong type or range.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError(format!(
                        "config file {} does not exist (pass --config with an existing file)",
                        path.display()
                    )));
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => {
                let default = Path::new("config.toml");
                if default.is_file() {
                    figment = figment.merge(Toml::file_exact(default));
                }
            }
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).ignore(&["CONFIG"]).split("__"));
        let config: Config = figment.extract().map_err(|e| ConfigError(describe(&e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and combinations that the types alone cannot express.
    ///
    /// # Errors
    /// The first key whose value cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("config key {key}: {why}")));
        let addr: SocketAddr = match self.server.listen.parse() {
            Ok(a) => a,
            Err(_) => {
                return bad(
                    "server.listen",
                    format!("{:?} is not an address:port such as 0.0.0.0:8443", self.server.listen),
                );
            }
        };
        if self.server.plain_http && !addr.ip().is_loopback() {
            return bad(
                "server.plain_http",
                format!("plain HTTP is only allowed on a loopback address, not {}", addr.ip()),
            );
        }
        if let Err(why) = crate::client_addr::TrustedProxies::parse(&self.server.trusted_proxies) {
            return bad("server.trusted_proxies", why);
        }
        if !self.server.metrics_listen.is_empty() && self.server.metrics_listen.parse::<SocketAddr>().is_err() {
            return bad(
                "server.metrics_listen",
                format!(
                    "{:?} is not an address:port such as 127.0.0.1:8444 (empty turns the listener off)",
                    self.server.metrics_listen
                ),
            );
        }
        if self.server.max_body_bytes < 1024 {
            return bad("server.max_body_bytes", "must be at least 1024".into());
        }
        if self.server.max_small_body_bytes < 1024 {
            return bad("server.max_small_body_bytes", "must be at least 1024".into());
        }
        if self.server.body_budget_bytes < self.server.max_body_bytes {
            return bad(
                "server.body_budget_bytes",
                format!(
                    "must be at least server.max_body_bytes ({}), or no body of that size could ever be read",
                    self.server.max_body_bytes
                ),
            );
        }
        for (key, secs) in [
            ("server.header_timeout_secs", self.server.header_timeout_secs),
            ("server.body_timeout_secs", self.server.body_timeout_secs),
            ("server.idle_timeout_secs", self.server.idle_timeout_secs),
        ] {
            if !(1..=3600).contains(&secs) {
                return bad(key, format!("must be between 1 and 3600 seconds, got {secs}"));
            }
        }
        if !(1..=1_000_000).contains(&self.server.max_connections) {
            return bad("server.max_connections", "must be between 1 and 1000000".into());
        }
        if self.server.max_connections_per_address > 1_000_000 {
            return bad("server.max_connections_per_address", "must be between 0 (no cap) and 1000000".into());
        }
        if !(1..=10_000).contains(&self.server.h2_max_concurrent_streams) {
            return bad("server.h2_max_concurrent_streams", "must be between 1 and 10000".into());
        }
        // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
        if !(8192..=1024 * 1024).contains(&self.server.max_header_bytes) {
            return bad("server.max_header_bytes", "must be between 8192 and 1048576".into());
        }
        if self.tls.cert_file.is_empty() != self.tls.key_file.is_empty() {
            return bad("tls.cert_file", "tls.cert_file and tls.key_file must be set together".into());
        }
        if self.storage.data_dir.is_empty() {
            return bad("storage.data_dir", "must not be empty".into());
        }
        for (i, h) in self.auth.api_token_hashes.iter().enumerate() {
            if h.hash.len() != 64 || !h.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(
                    &format!("auth.api_token_hashes[{i}]"),
                    "must be the 64-character hex SHA-256 printed by `messenger-chat token hash`".into(),
                );
            }
            if h.name.chars().count() > 255 || h.name.chars().any(char::is_control) {
                return bad(
                    &format!("auth.api_token_hashes[{i}].name"),
                    "must be at most 255 printable characters".into(),
                );
            }
        }
        if self.auth.pat_max_days == 0 || self.auth.pat_default_days == 0 {
            return bad("auth.pat_max_days", "token lifetimes must be at least one day".into());
        }
        if self.auth.pat_default_days > self.auth.pat_max_days {
            return bad("auth.pat_default_days", "must not exceed auth.pat_max_days".into());
        }
        if self.auth.token_cache_entries > MAX_TOKEN_CACHE_ENTRIES {
            return bad(
                "auth.token_cache_entries",
                format!("must be at most {MAX_TOKEN_CACHE_ENTRIES} (0 turns the cache off)"),
            );
        }
        if self.rooms.default_name.trim().is_empty() {
            return bad("rooms.default_name", "must not be empty".into());
        }
        if self.rooms.max_avatar_bytes == 0 || self.rooms.max_avatar_bytes > self.server.max_body_bytes {
            return bad("rooms.max_avatar_bytes", "must be between 1 and server.max_body_bytes".into());
        }
        if self.rooms.max_users_per_request == 0 {
            return bad("rooms.max_users_per_request", "must be at least 1".into());
        }
        if self.security.argon2_concurrency > 1024 {
            return bad("security.argon2_concurrency", "must be at most 1024 (0 means one per core)".into());
        }
        if self.security.argon2_queue > 65_536 {
            return bad("security.argon2_queue", "must be at most 65536 (0 means twice argon2_concurrency)".into());
        }
        if self.security.password_cache_size > 10_000_000 {
            return bad("security.password_cache_size", "must be at most 10000000 (0 keeps none)".into());
        }
        if self.security.argon2_memory_kib < 8 * self.security.argon2_parallelism.max(1) {
            return bad("security.argon2_memory_kib", "must be at least 8 KiB per lane".into());
        }
        if self.security.argon2_iterations == 0 || self.security.argon2_parallelism == 0 {
            return bad("security.argon2_iterations", "iterations and parallelism must be at least 1".into());
        }
        if !self.matrix.homeserver_url.starts_with("http://") && !self.matrix.homeserver_url.starts_with("https://") {
            return bad("matrix.homeserver_url", "must start with http:// or https://".into());
        }
        if !self.proxy.public_url.is_empty() && !is_origin(&self.proxy.public_url) {
            return bad(
                "proxy.public_url",
                format!(
                    "{:?} must be an http(s) URL of a host without a path, such as https://chat.example.org",
                    self.proxy.public_url
                ),
            );
        }
        if self.matrix.server_name.is_empty() {
            return bad("matrix.server_name", "must not be empty".into());
        }
        if self.matrix.bot_localpart.is_empty() || !valid_localpart(&self.matrix.bot_localpart) {
            return bad("matrix.bot_localpart", "must be lowercase letters, digits or ._=-/".into());
        }
        if !valid_localpart(&self.matrix.user_prefix) {
            return bad("matrix.user_prefix", "must be lowercase letters, digits or ._=-/".into());
        }
        if self.matrix.accounts_per_step == 0 {
            return bad("matrix.accounts_per_step", "must be at least 1".into());
        }
        if !(1..=256).contains(&self.matrix.concurrency) {
            return bad("matrix.concurrency", format!("must be between 1 and 256, got {}", self.matrix.concurrency));
        }
        for (key, burst) in [
            ("limits.login_burst", self.limits.login_burst),
            ("limits.token_issue_burst", self.limits.token_issue_burst),
            ("limits.credentials_burst", self.limits.credentials_burst),
        ] {
            if burst == 0 {
                return bad(key, "bursts must be at least 1".into());
            }
        }
        if !(1..=36_500).contains(&self.events.retention_days) {
            return bad(
                "events.retention_days",
                format!("must be between 1 and 36500, got {}", self.events.retention_days),
            );
        }
        if !(1..=100_000).contains(&self.events.max_waiters) {
            return bad("events.max_waiters", format!("must be between 1 and 100000, got {}", self.events.max_waiters));
        }
        if !(1..=100).contains(&self.events.caller_share_percent) {
            return bad(
                "events.caller_share_percent",
                format!("must be between 1 and 100, got {}", self.events.caller_share_percent),
            );
        }
        if self.events.api_token_reserve_percent > 90 {
            return bad(
                "events.api_token_reserve_percent",
                format!("must be between 0 and 90, got {}", self.events.api_token_reserve_percent),
            );
        }
        let w = &self.webhooks;
        if !(1..=10_000).contains(&w.max_webhooks) {
            return bad("webhooks.max_webhooks", format!("must be between 1 and 10000, got {}", w.max_webhooks));
        }
        if !(w.max_retry_hours > 0.0 && w.max_retry_hours <= 720.0) {
            return bad(
                "webhooks.max_retry_hours",
                format!("must be above 0 and at most 720 (30 days), got {}", w.max_retry_hours),
            );
        }
        if !(1..=3_600_000).contains(&w.retry_initial_ms) {
            return bad(
                "webhooks.retry_initial_ms",
                format!("must be between 1 and 3600000, got {}", w.retry_initial_ms),
            );
        }
        if !(1..=86_400).contains(&w.retry_max_secs) || w.retry_max_secs * 1000 < w.retry_initial_ms {
            return bad(
                "webhooks.retry_max_secs",
                format!("must be between 1 and 86400 and not below retry_initial_ms, got {}", w.retry_max_secs),
            );
        }
        if !(1..=300).contains(&w.timeout_secs) {
            return bad("webhooks.timeout_secs", format!("must be between 1 and 300, got {}", w.timeout_secs));
        }
        if !(1..=300).contains(&w.connect_timeout_secs) {
            return bad(
                "webhooks.connect_timeout_secs",
                format!("must be between 1 and 300, got {}", w.connect_timeout_secs),
            );
        }
        if !(1..=1024).contains(&w.max_concurrent) {
            return bad("webhooks.max_concurrent", format!("must be between 1 and 1024, got {}", w.max_concurrent));
        }
        if w.keep_alive_secs > 300 {
            return bad("webhooks.keep_alive_secs", format!("must be between 0 and 300, got {}", w.keep_alive_secs));
        }
        if !(1..=10_000).contains(&w.delivery_log_size) {
            return bad(
                "webhooks.delivery_log_size",
                format!("must be between 1 and 10000, got {}", w.delivery_log_size),
            );
        }
        if !matches!(self.log.access.as_str(), "all" | "errors" | "none") {
            return bad("log.access", format!("{:?} is not one of all, errors, none", self.log.access));
        }
        if !matches!(self.log.format.as_str(), "auto" | "human" | "json") {
            return bad("log.format", format!("{:?} is not one of auto, human, json", self.log.format));
        }
        Ok(())
    }

    /// The parsed listen address (checked by [`Config::validate`]).
    #[must_use]
    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen.parse().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 8443)))
    }

    /// The homeserver URL the app is told to use (login's `wellKnown`), when
    /// the configuration names it; `None`: the service's own URL as the app
    /// reached it (the proxy is on and `proxy.public_url` is empty).
    #[must_use]
    pub fn app_homeserver_url(&self) -> Option<&str> {
        let url = if !self.matrix.public_base_url.is_empty() {
            &self.matrix.public_base_url
        } else if self.proxy.enabled {
            &self.proxy.public_url
        } else {
            &self.matrix.homeserver_url
        };
        (!url.is_empty()).then(|| url.trim_end_matches('/'))
    }

    /// The data directory.
    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(&self.storage.data_dir)
    }
}

/// `scheme://host[:port]` with an http(s) scheme and nothing after the authority but `/`.
fn is_origin(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else { return false };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.authority().is_some_and(|a| !a.host().is_empty() && !a.as_str().contains('@'))
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none()
}

fn valid_localpart(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/".contains(&b))
}

/// One line per figment error: the key, what is wrong, and the file or variable it came from.
fn describe(e: &figment::Error) -> String {
    let mut lines = Vec::new();
    for err in e.clone() {
        let key = if err.path.is_empty() { "(top level)".to_string() } else { err.path.join(".") };
        let source = err
            .metadata
            .as_ref()
            .and_then(|m| m.source.as_ref().map(|s| format!(" in {s}")).or_else(|| Some(format!(" in {}", m.name))))
            .unwrap_or_default();
        let what = match &err.kind {
            figment::error::Kind::UnknownField(field, _) => {
                let full = if err.path.last() == Some(field) || err.path.is_empty() {
                    if err.path.is_empty() { field.clone() } else { key.clone() }
                } else {
                    format!("{key}.{field}")
                };
                return format!("config key {full}{source}: unknown key (see the shipped config.toml for every key)");
            }
            kind => kind.to_string(),
        };
        lines.push(format!("config key {key}{source}: {what}"));
    }
    lines.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().0;
        assert!(err.contains("server.lisen"), "{err}");
        assert!(err.contains("config.toml"), "{err}");
    }

    #[test]
    fn wrong_type_names_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "[rooms]\nmax_avatar_bytes = \"big\"\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().0;
        assert!(err.contains("rooms.max_avatar_bytes"), "{err}");
    }

    #[test]
    fn request_and_derivation_limits_are_checked() {
        let mut c = Config::default();
        c.server.max_small_body_bytes = 100;
        assert!(c.validate().unwrap_err().0.contains("server.max_small_body_bytes"));
        let mut c = Config::default();
        c.server.body_budget_bytes = c.server.max_body_bytes - 1;
        assert!(c.validate().unwrap_err().0.contains("server.body_budget_bytes"));
        let mut c = Config::default();
        c.rooms.max_users_per_request = 0;
        assert!(c.validate().unwrap_err().0.contains("rooms.max_users_per_request"));
        let mut c = Config::default();
        c.limits.credentials_burst = 0;
        assert!(c.validate().unwrap_err().0.contains("limits.credentials_burst"));
        let mut c = Config::default();
        c.matrix.accounts_per_step = 0;
        assert!(c.validate().unwrap_err().0.contains("matrix.accounts_per_step"));
        for wrong in [0, 257] {
            let mut c = Config::default();
            c.matrix.concurrency = wrong;
            assert!(c.validate().unwrap_err().0.contains("matrix.concurrency"), "{wrong}");
        }
        let mut c = Config::default();
        c.security.argon2_concurrency = 5000;
        assert!(c.validate().unwrap_err().0.contains("security.argon2_concurrency"));
        let mut c = Config::default();
        c.security.argon2_queue = 100_000;
        assert!(c.validate().unwrap_err().0.contains("security.argon2_queue"));
        let mut c = Config::default();
        c.security.password_cache_size = 10_000_001;
        assert!(c.validate().unwrap_err().0.contains("security.password_cache_size"));

        let mut c = Config::default();
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!((c.security.derivations_at_once(), c.security.derivations_waiting()), (cores, 2 * cores));
        c.security.argon2_concurrency = 3;
        assert_eq!((c.security.derivations_at_once(), c.security.derivations_waiting()), (3, 6));
        c.security.argon2_queue = 1;
        assert_eq!(c.security.derivations_waiting(), 1);
    }

    #[test]
    fn api_token_hashes_take_both_forms() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        let hash = "ab".repeat(32);
        std::fs::write(
            &file,
            format!("[auth]\napi_token_hashes = [\"{hash}\", {{ hash = \"{hash}\", name = \"backend\" }}]\n"),
        )
        .unwrap();
        let c = Config::load(Some(&file)).unwrap();
        assert_eq!(c.auth.api_token_hashes[0], ApiTokenHash { hash: hash.clone(), name: String::new() });
        assert_eq!(c.auth.api_token_hashes[1], ApiTokenHash { hash: hash.clone(), name: "backend".into() });
        assert_eq!(c.auth.api_token_hashes[0].shown_name(0), "auth.api_token_hashes[0]");
        std::fs::write(&file, format!("[auth]\napi_token_hashes = [{{ hash = \"{hash}\", nmae = \"x\" }}]\n")).unwrap();
        let err = Config::load(Some(&file)).unwrap_err().0;
        assert!(err.contains("auth.api_token_hashes") && err.contains("nmae"), "{err}");
    }

    #[test]
    fn proxy_and_listener_keys_are_checked() {
        let mut c = Config::default();
        c.server.trusted_proxies = vec!["10.0.0.0/8".into(), "::1".into()];
        c.validate().unwrap();
        c.server.trusted_proxies = vec!["10.0.0.0/40".into()];
        assert!(c.validate().unwrap_err().0.contains("server.trusted_proxies"));
        let mut c = Config::default();
        c.server.metrics_listen = String::new();
        c.validate().unwrap();
        c.server.metrics_listen = "9100".into();
        assert!(c.validate().unwrap_err().0.contains("server.metrics_listen"));
        let mut c = Config::default();
        for good in ["https://chat.example.org", "https://chat.example.org:8443/", "http://127.0.0.1:8080"] {
            c.proxy.public_url = good.into();
            c.validate().unwrap();
        }
        for bad in ["chat.example.org", "https://chat.example.org/app", "ftp://x", "https://u@x"] {
            c.proxy.public_url = bad.into();
            assert!(c.validate().unwrap_err().0.contains("proxy.public_url"), "{bad}");
        }
    }

    #[test]
    fn connection_limits_are_checked() {
        let mut c = Config::default();
        c.server.header_timeout_secs = 0;
        assert!(c.validate().unwrap_err().0.contains("server.header_timeout_secs"));
        let mut c = Config::default();
        c.server.idle_timeout_secs = 4000;
        assert!(c.validate().unwrap_err().0.contains("server.idle_timeout_secs"));
        let mut c = Config::default();
        c.server.max_connections = 0;
        assert!(c.validate().unwrap_err().0.contains("server.max_connections"));
        let mut c = Config::default();
        c.server.max_connections_per_address = 1_000_001;
        assert!(c.validate().unwrap_err().0.contains("server.max_connections_per_address"));
        c.server.max_connections_per_address = 0;
        c.validate().unwrap();
        let mut c = Config::default();
        c.server.max_header_bytes = 4096;
        assert!(c.validate().unwrap_err().0.contains("server.max_header_bytes"));
    }

    #[test]
    fn admin_api_takes_auto_on_or_off() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        assert_eq!(Config::default().matrix.admin_api, AdminApi::Auto);
        for (text, setting) in [("auto", AdminApi::Auto), ("on", AdminApi::On), ("off", AdminApi::Off)] {
            std::fs::write(&file, format!("[matrix]\nadmin_api = \"{text}\"\n")).unwrap();
            assert_eq!(Config::load(Some(&file)).unwrap().matrix.admin_api, setting, "{text}");
            assert_eq!(setting.as_str(), text);
        }
        std::fs::write(&file, "[matrix]\nadmin_api = \"yes\"\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().0;
        assert!(err.contains("matrix.admin_api") && err.contains("auto"), "{err}");
    }

    #[test]
    fn event_log_keys_are_checked() {
        for (retention_days, max_waiters, key) in
            [(0, 1, "events.retention_days"), (36_501, 1, "events.retention_days"), (90, 0, "events.max_waiters")]
        {
            let c = Config {
                events: EventsConfig { retention_days, max_waiters, ..EventsConfig::default() },
                ..Config::default()
            };
            assert!(c.validate().unwrap_err().0.contains(key), "{key}");
        }
        for (share, reserve, key) in [
            (0, 25, "events.caller_share_percent"),
            (101, 25, "events.caller_share_percent"),
            (10, 91, "events.api_token_reserve_percent"),
        ] {
            let events = EventsConfig {
                caller_share_percent: share,
                api_token_reserve_percent: reserve,
                ..EventsConfig::default()
            };
            let c = Config { events, ..Config::default() };
            assert!(c.validate().unwrap_err().0.contains(key), "{key}");
        }
        // The shipped file states the defaults.
        let shipped = Config::load(Some(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")))).unwrap();
        let (e, d) = (shipped.events, EventsConfig::default());
        assert_eq!((e.retention_days, e.max_waiters), (90, 256));
        assert_eq!(
            (e.caller_share_percent, e.api_token_reserve_percent),
            (d.caller_share_percent, d.api_token_reserve_percent)
        );
    }

    #[test]
    fn webhook_keys_are_checked() {
        type Change = fn(&mut WebhooksConfig);
        let cases: [(Change, &str); 8] = [
            (|w| w.max_webhooks = 0, "webhooks.max_webhooks"),
            (|w| w.max_retry_hours = 0.0, "webhooks.max_retry_hours"),
            (|w| w.max_retry_hours = 721.0, "webhooks.max_retry_hours"),
            (|w| w.retry_max_secs = 0, "webhooks.retry_max_secs"),
            (|w| w.timeout_secs = 0, "webhooks.timeout_secs"),
            (|w| w.max_concurrent = 0, "webhooks.max_concurrent"),
            (|w| w.delivery_log_size = 0, "webhooks.delivery_log_size"),
            (|w| w.keep_alive_secs = 301, "webhooks.keep_alive_secs"),
        ];
        for (change, key) in cases {
            let mut c = Config::default();
            change(&mut c.webhooks);
            assert!(c.validate().unwrap_err().0.contains(key), "{key}");
        }
        assert_eq!(WebhooksConfig::default().retry_window_secs(), 86_400);
        // The shipped file states the defaults.
        let shipped = Config::load(Some(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")))).unwrap();
        let (w, d) = (shipped.webhooks, WebhooksConfig::default());
        assert_eq!(
            (w.max_webhooks, w.max_retry_hours, w.retry_initial_ms, w.retry_max_secs, w.timeout_secs),
            (d.max_webhooks, d.max_retry_hours, d.retry_initial_ms, d.retry_max_secs, d.timeout_secs)
        );
        assert_eq!(
            (w.connect_timeout_secs, w.max_concurrent, w.delivery_log_size, w.allow_http, w.allow_private),
            (d.connect_timeout_secs, d.max_concurrent, d.delivery_log_size, d.allow_http, d.allow_private)
        );
        assert_eq!((w.allow_loopback, w.extra_ca_file, w.keep_alive_secs), (false, String::new(), d.keep_alive_secs));
    }

    #[test]
    fn the_token_cache_is_bounded() {
        let mut c = Config::default();
        c.auth.token_cache_entries = MAX_TOKEN_CACHE_ENTRIES + 1;
        assert!(c.validate().unwrap_err().0.contains("auth.token_cache_entries"));
        c.auth.token_cache_entries = 0;
        c.validate().unwrap();
    }

    #[test]
    fn plain_http_needs_loopback() {
        let mut c = Config::default();
        c.server.plain_http = true;
        assert!(c.validate().unwrap_err().0.contains("server.plain_http"));
        c.server.listen = "127.0.0.1:8080".into();
        c.validate().unwrap();
    }
}
