use clap::Parser;

use messenger_chat::cli::{Cli, Command};
use messenger_chat::config::Config;

/// mimalloc instead of the C library's allocator. The binary install.sh
/// ships is static on musl, whose malloc takes one lock and keeps no
/// per-thread caches: GetRooms, which allocates per room, ran at a fifth of
/// the glibc build's rate on it. mimalloc builds from C with musl-gcc (no
/// cmake, no autotools), keeps per-thread heaps, and returns freed memory to
/// the system, so memory at rest stays close to glibc's. Both builds use it,
/// so the glibc build measures the same allocator. Thread-local storage is
/// the initial-exec model (the crate's default): right for an executable,
/// and what a static binary has anyway. musl's memcpy/memcmp, the other
/// difference the profile showed, are replaced in build.rs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("messenger-chat: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve => {
            messenger_chat::app::init_logging(&config);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(messenger_chat::app::serve(config, cli.config.as_deref())))
        }
        other => messenger_chat::cli::run_admin(config, other, cli.config.as_deref()).map(|out| {
            if !out.is_empty() {
                println!("{out}");
            }
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("messenger-chat: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
