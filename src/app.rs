//! `serve`: config → database → secrets → TLS listener → serve until SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::client_addr::TrustedProxies;
use crate::config::Config;
use crate::domain::api_tokens::{ApiTokenSource, ApiTokenStatus, FIRST_START_NAME, FirstStartToken};
use crate::domain::sessions::Sessions;
use crate::domain::{Domain, SystemClock};
use crate::homeserver::Homeserver;
use crate::homeserver::synapse::Synapse;
use crate::proxy::Proxy;
use crate::reconciler::{Progress, Reconciler};
use crate::secrets::ServerKey;
use crate::server::{self, Front, TlsFiles, TlsState};
use crate::store::{Store, StoreError};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "messenger-chat.redb";
/// File name of the server key inside the data directory.
pub const KEY_FILE: &str = "secret.key";

/// Opens the database and the server key of a configuration.
///
/// # Errors
/// A line naming what could not be opened.
pub fn open_domain(config: Config) -> Result<Domain, String> {
    let (store, key) = open_keyed_store(&config)?;
    Domain::new(store, Arc::new(config), key, Arc::new(SystemClock)).map_err(|e| e.to_string())
}

/// Opens the database with its server key ([`crate::store::key_fingerprint`]).
/// A key file that cannot be used, a missing or other key, and a file of a
/// newer release are refused from a read-only look, before the database is
/// opened for writing: a refused start leaves the file as it was.
///
/// # Errors
/// A line naming the file and what to do.
fn open_keyed_store(config: &Config) -> Result<(Store, ServerKey), String> {
    use crate::store::key_fingerprint::{inspect, verdict};
    let dir = config.data_dir();
    let (db, key_file) = (dir.join(DB_FILE), dir.join(KEY_FILE));
    let key = ServerKey::load(&key_file)?;
    let found = inspect(&db).map_err(|source| OpenError::Store { path: db.clone(), source }.to_string())?;
    if let Some(refusal) = found.and_then(|record| verdict(&record, key.as_ref()).refusal(&db, &key_file)) {
        return Err(refusal);
    }
    let store = open_store(config).map_err(|e| e.to_string())?;
    let key = store.bind_key(key, &db, &key_file)?;
    Ok((store, key))
}

/// Why the database of a configuration cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {}: {source}", .dir.display())]
    DataDir { dir: PathBuf, source: std::io::Error },
    #[error("cannot open {}: {source}", .path.display())]
    Store { path: PathBuf, source: StoreError },
}

/// Opens (or creates) the database of a configuration, without the server
/// key: what `export` needs. [`StoreError::InUse`] in `OpenError::Store`
/// means a running service holds it.
///
/// # Errors
/// The data directory cannot be created, or the database cannot be opened.
pub fn open_store(config: &Config) -> Result<Store, OpenError> {
    let dir = config.data_dir();
    crate::secrets::create_private_dir(&dir).map_err(|source| OpenError::DataDir { dir: dir.clone(), source })?;
    let cache = usize::try_from(config.storage.cache_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
    let path = dir.join(DB_FILE);
    Store::open_verified(&path, cache, config.storage.verify_on_start)
        .map_err(|source| OpenError::Store { path, source })
}

/// Runs the service until SIGTERM or SIGINT. `config_path`: the file given
/// with `--config`, for the commands the first start prints.
///
/// # Errors
/// A line saying why it cannot start.
pub async fn serve(config: Config, config_path: Option<&Path>) -> Result<(), String> {
    let plain = config.server.plain_http;
    let addr = config.listen_addr();
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let limits = server::ConnLimits::from_config(&config.server);
    let tls = if plain {
        None
    } else {
        let files = TlsFiles::from_config(&config).map_err(|e| e.to_string())?;
        Some(Arc::new(TlsState::new(files).map_err(|e| e.to_string())?))
    };
    let domain = Arc::new(tokio::task::block_in_place(|| open_domain(config))?);
    // Damage met anywhere from now on (a panic inside redb included) stops writes.
    crate::store::health::watch(domain.store.health().clone());
    if let Some(token) = tokio::task::block_in_place(|| domain.ensure_api_token()).map_err(|e| e.to_string())? {
        announce_first_token(&domain, &token, config_path);
    }
    warn_about_api_tokens(&domain);
    let webhook_tls = crate::webhooks::tls_config(&domain.config.webhooks)?;
    let proxy = if domain.config.proxy.enabled { Some(Proxy::new(&domain.config)?) } else { None };
    let trusted = TrustedProxies::parse(&domain.config.server.trusted_proxies)
        .map_err(|e| format!("config key server.trusted_proxies: {e}"))?;
    // Registered before the service says it listens: a SIGTERM right after
    // start (an operator, systemd, a test) stops it cleanly instead of killing it.
    let stop = shutdown_signal();
    let listener = TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let metrics_listener = match domain.config.server.metrics_listen.as_str() {
        "" => None,
        m => {
            let listener = TcpListener::bind(m)
                .await
                .map_err(|e| format!("cannot listen on {m} (server.metrics_listen; empty turns it off): {e}"))?;
            let bound = listener.local_addr().map_err(|e| e.to_string())?;
            println!("messenger-chat: metrics and readiness for operators on http://{bound} (/metrics, /readyz)");
            Some(listener)
        }
    };
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let host = if bound.ip().is_unspecified() { "localhost".to_string() } else { bound.ip().to_string() };
    let host = if bound.is_ipv6() && host != "localhost" { format!("[{host}]") } else { host };
    let scheme = if plain { "http" } else { "https" };
    println!("messenger-chat: listening on {scheme}://{host}:{}", bound.port());
    tracing::info!(%bound, tls = !plain, "serving");

    let hs = homeserver(&domain)?;
    let sessions = Arc::new(Sessions::new(domain.clone(), hs.clone()));
    let sync = match hs {
        Some(hs) => {
            let progress = Arc::new(Progress::new(domain.clone()));
            tokio::spawn(Reconciler::new(domain.clone(), hs, sessions.clone(), progress.clone()).run());
            tracing::info!(homeserver = %domain.config.matrix.homeserver_url, "keeping the homeserver in step");
            Some(progress)
        }
        None => {
            tracing::warn!(
                "no matrix.registration_shared_secret(_file) configured: rooms stay pending and login answers 503"
            );
            None
        }
    };
    tokio::spawn(delete_scheduled_rooms(domain.clone()));
    tokio::spawn(prune_old_events(domain.clone()));
    let kept = domain.clone();
    let state = AppState::new(domain.clone(), sessions, sync);
    let front = Arc::new(Front { proxy, trusted, conns: state.metrics.connections.clone() });
    // Deliveries end when the stop begins: an attempt cut short is sent again
    // after the restart (at least once), from the stored cursor.
    tokio::spawn(crate::webhooks::run(domain, webhook_tls, state.stopping.subscribe()));
    // Long polls of /v1/events end when the stop begins, not after the grace period.
    let stopping = state.stopping.clone();
    let stop = async move {
        stop.await;
        stopping.send_replace(true);
    };
    api::meta::spawn_homeserver_check(&state);
    // The operators' listener stops when the public one has stopped.
    let (stop_operators, operators_stopped) = tokio::sync::watch::channel(());
    let operators = metrics_listener.map(|listener| {
        let routes = api::meta::operator_routes(state.clone());
        let mut stopped = operators_stopped;
        let stop = async move {
            let _ = stopped.changed().await;
        };
        tokio::spawn(server::serve(listener, None, routes, Arc::new(Front::default()), stop, grace, limits))
    });
    let routes = api::routes(state);
    spawn_reload_on_hangup(tls.clone());
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    server::serve(listener, tls, routes, front, stop, grace, limits).await;
    drop(stop_operators);
    if let Some(task) = operators {
        let _ = task.await;
    }
    kept.forget_all_passwords();
    tracing::info!("stopped");
    Ok(())
}

/// The homeserver of the configuration, when it names a registration secret.
///
/// # Errors
/// The adapter cannot be configured (bad URL, unreadable secret file).
fn homeserver(domain: &Domain) -> Result<Option<Arc<dyn Homeserver>>, String> {
    let m = &domain.config.matrix;
    if m.registration_shared_secret.is_empty() && m.registration_shared_secret_file.is_empty() {
        return Ok(None);
    }
    let bot_password = domain.key.matrix_password(&domain.config.security, &domain.ids.bot())?;
    let synapse = Synapse::new(m, bot_password).map_err(|e| e.to_string())?;
    Ok(Some(Arc::new(synapse)))
}

/// Tells the operator, once, the token the first start made: where it
/// went (only its hash, in the database) and how to list and revoke it.
fn announce_first_token(domain: &Domain, token: &FirstStartToken, config_path: Option<&Path>) {
    let cli = match config_path {
        Some(p) => format!("messenger-chat --config {}", p.display()),
        None => "messenger-chat".to_string(),
    };
    let db = domain.config.data_dir().join(DB_FILE);
    println!("messenger-chat: API token (shown once, keep it now): {}", token.secret);
    println!(
        "messenger-chat: only its SHA-256 is kept, in the database {}, as token {} named \"{FIRST_START_NAME}\"",
        db.display(),
        token.id
    );
    println!(
        "messenger-chat: list tokens with `{cli} token list-api`; revoke this one with `{cli} token revoke-api {}` (stop the service first)",
        token.id
    );
    println!(
        "messenger-chat: it is refused once auth.api_token_hashes lists other tokens (`{cli} token new-api` makes one)"
    );
}

/// Logs what an operator should fix about the API tokens: config entries
/// revoked but still listed, a first-start token the config now overrides.
fn warn_about_api_tokens(domain: &Domain) {
    let tokens = match domain.store.read().map_err(crate::error::Error::from).and_then(|r| domain.api_tokens(&r)) {
        Ok(t) => t,
        Err(e) => return tracing::warn!(error = %e, "cannot list the API tokens"),
    };
    for t in tokens {
        match (&t.source, t.status) {
            (ApiTokenSource::Config { index }, ApiTokenStatus::Revoked) => tracing::warn!(
                id = %t.id, name = %t.name,
                "auth.api_token_hashes[{index}] is revoked and refused; remove it from the config"
            ),
            (ApiTokenSource::Database, ApiTokenStatus::NotListed) => tracing::info!(
                id = %t.id, name = %t.name,
                "a stored API token is refused: auth.api_token_hashes is set and does not list it"
            ),
            _ => {}
        }
    }
}

/// Deletes rooms whose scheduled deletion has come, and makes read-only
/// those whose `readOnlyAt` has; checks every second, so a time that
/// passed while the service was down is caught at start.
async fn delete_scheduled_rooms(domain: Arc<Domain>) {
    loop {
        if !domain.store.health().writable() {
            // Damaged or on a full disk: nothing would be written (the log said why once).
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let d = domain.clone();
        match tokio::task::spawn_blocking(move || d.delete_due_rooms()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "scheduled deletions failed; retrying"),
            Err(e) => tracing::error!(error = %e, "scheduled deletions task failed; retrying"),
        }
        let d = domain.clone();
        match tokio::task::spawn_blocking(move || d.make_due_rooms_read_only()).await {
            // The write queued the rooms' sync, which wakes the reconciler.
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "scheduled read-only switches failed; retrying"),
            Err(e) => tracing::error!(error = %e, "scheduled read-only task failed; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Removes events older than `events.retention_days`: a batch per write
/// transaction, so the API's writes go on between batches; checks once a
/// minute (and at start) once nothing more is due.
async fn prune_old_events(domain: Arc<Domain>) {
    loop {
        if !domain.store.health().writable() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let d = domain.clone();
        let pause = match tokio::task::spawn_blocking(move || d.prune_events()).await {
            Ok(Ok(n)) if n >= crate::domain::events::PRUNE_BATCH => Duration::from_millis(10),
            Ok(Ok(n)) => {
                if n > 0 {
                    tracing::info!(events = n, "removed events past events.retention_days");
                }
                Duration::from_secs(60)
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "pruning old events failed; retrying");
                Duration::from_secs(60)
            }
            Err(e) => {
                tracing::error!(error = %e, "pruning old events failed; retrying");
                Duration::from_secs(60)
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// Resolves on SIGTERM or SIGINT; SIGTERM is caught from the call on.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    stopped(term)
}

async fn stopped(term: std::io::Result<tokio::signal::unix::Signal>) {
    let mut term = match term {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight requests"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: finishing in-flight requests"),
    }
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
}

/// Tells systemd (Type=notify) about the service's state; a no-op elsewhere.
fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// SIGHUP re-reads the certificate and key; open connections keep theirs.
fn spawn_reload_on_hangup(tls: Option<Arc<TlsState>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Some(tls) = tls else { return };
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
                notify_systemd(&[sd_notify::NotifyState::Reloading, now]);
            }
            let outcome = tls.reload();
            notify_systemd(&[sd_notify::NotifyState::Ready]);
            match outcome {
                Ok(()) => tracing::info!("SIGHUP: reloaded the TLS certificate"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: kept the old certificate"),
            }
        }
    });
}

/// Sets up logging to stderr: human on a terminal, JSON otherwise (or as configured).
pub fn init_logging(config: &Config) {
    use std::io::IsTerminal;
    let directives = format!("rustls=error,{}", config.log.level);
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("rustls=error,info"));
    let json = match config.log.format.as_str() {
        "json" => true,
        "human" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
