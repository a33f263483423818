//! `serve`: config → database → secrets → TLS listener → serve until SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::domain::{Domain, SystemClock};
use crate::proxy::Proxy;
use crate::reconciler::{Homeserver, Reconciler};
use crate::secrets::ServerKey;
use crate::server::{self, TlsFiles, TlsState};
use crate::store::Store;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "messenger-chat.redb";
/// File name of the server key inside the data directory.
pub const KEY_FILE: &str = "secret.key";

/// Opens the database and the server key of a configuration.
///
/// # Errors
/// A line naming what could not be opened.
pub fn open_domain(config: Config) -> Result<Domain, String> {
    let dir = config.data_dir();
    crate::secrets::create_private_dir(&dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
    let cache = usize::try_from(config.storage.cache_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
    let db_path = dir.join(DB_FILE);
    let store = Store::open(&db_path, cache).map_err(|e| format!("cannot open {}: {e}", db_path.display()))?;
    let key = ServerKey::load_or_create(&dir.join(KEY_FILE))?;
    Domain::new(store, Arc::new(config), key, Arc::new(SystemClock)).map_err(|e| e.to_string())
}

/// Runs the service until SIGTERM or SIGINT.
///
/// # Errors
/// A line saying why it cannot start.
pub async fn serve(config: Config) -> Result<(), String> {
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
    if let Some(token) = tokio::task::block_in_place(|| domain.ensure_api_token()).map_err(|e| e.to_string())? {
        println!("messenger-chat: API token (shown once, keep it now): {token}");
    }
    let proxy = if domain.config.proxy.enabled {
        Some(Arc::new(Proxy::new(&domain.config.matrix.homeserver_url)?))
    } else {
        None
    };
    let listener = TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let host = if bound.ip().is_unspecified() { "localhost".to_string() } else { bound.ip().to_string() };
    let host = if bound.is_ipv6() && host != "localhost" { format!("[{host}]") } else { host };
    let scheme = if plain { "http" } else { "https" };
    println!("messenger-chat: listening on {scheme}://{host}:{}", bound.port());
    tracing::info!(%bound, tls = !plain, "serving");

    let hs = Homeserver::new(domain.clone())?;
    match &hs {
        Some(hs) => {
            tokio::spawn(Reconciler::new(hs.clone()).run());
            tracing::info!(homeserver = %domain.config.matrix.homeserver_url, "keeping the homeserver in step");
        }
        None => tracing::warn!(
            "no matrix.registration_shared_secret(_file) configured: rooms stay pending and login answers 503"
        ),
    }
    tokio::spawn(delete_scheduled_rooms(domain.clone()));
    let state = AppState::new(domain, hs);
    let routes = api::routes(state);
    spawn_reload_on_hangup(tls.clone());
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    server::serve(listener, tls, routes, proxy, shutdown_signal(), grace, limits).await;
    tracing::info!("stopped");
    Ok(())
}

/// Deletes rooms whose scheduled deletion has come; checks every second, so
/// a time that passed while the service was down is caught at start.
async fn delete_scheduled_rooms(domain: Arc<Domain>) {
    loop {
        let d = domain.clone();
        match tokio::task::spawn_blocking(move || d.delete_due_rooms()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "scheduled deletions failed; retrying"),
            Err(e) => tracing::error!(error = %e, "scheduled deletions task failed; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
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
