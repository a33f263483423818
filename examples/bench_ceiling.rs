//! The ceiling of `scripts/bench.sh`: the service's own TLS accept loop
//! (`messenger_chat::server::serve`) around a filter that does no work.
//!
//! Whatever this reaches on a machine is what TLS, HTTP and the loopback
//! allow there; the benchmark judges the service's endpoints as a share of
//! it. The bodies are files captured from the real service, so both answers
//! carry the same bytes and only the handler's own work differs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use messenger_chat::config::ServerConfig;
use messenger_chat::server::{ConnLimits, Front, TlsFiles, TlsState, serve};
use tokio::signal::unix::{SignalKind, signal};
use warp::Filter;
use warp::path::FullPath;

/// The service's allocator (see `src/main.rs`), so the ceiling differs from
/// the service only in the handlers' work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Serves fixed JSON bodies over the service's TLS code")]
struct Args {
    /// PEM certificate (the service's self-signed one, so the same client trusts both).
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key of that certificate.
    #[arg(long)]
    key: PathBuf,
    /// Body of `GET /v1/chatrooms` (a page of rooms).
    #[arg(long)]
    list_body: PathBuf,
    /// Body of every other GET (one room).
    #[arg(long)]
    room_body: PathBuf,
    /// Port 0 picks a free port; the chosen address is printed.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// Reads a body once; it lives as long as the process, so replies borrow it
/// instead of copying it per request.
fn load(path: &std::path::Path) -> std::io::Result<&'static [u8]> {
    Ok(Box::leak(std::fs::read(path)?.into_boxed_slice()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let list = load(&args.list_body)?;
    let room = load(&args.room_body)?;
    let tls = Arc::new(TlsState::new(TlsFiles { cert: args.cert, key: args.key })?);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;

    // A filter that cannot reject: `serve` takes only filters whose every
    // outcome is an answer, as the service's (which ends in `recover`) is.
    let filter = warp::path::full().map(move |path: FullPath| {
        let body = if path.as_str() == "/v1/chatrooms" { list } else { room };
        warp::reply::with_header(body, "content-type", "application/json")
    });

    println!("bench_ceiling: listening on https://{}", listener.local_addr()?);
    let mut term = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    // The service's own connection limits, so the ceiling includes their cost.
    let limits = ConnLimits::from_config(&ServerConfig::default());
    serve(listener, Some(tls), filter, Arc::new(Front::default()), shutdown, Duration::from_secs(1), limits).await;
    Ok(())
}
