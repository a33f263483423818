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
/// and what a static binary has anyway.
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
            keep_large_blocks_in_mmap();
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

/// Large blocks (a 19 MiB Argon2 buffer, a body of megabytes) are mapped on
/// their own and given back to the system when freed. glibc otherwise
/// raises its mmap threshold to the size of each large block freed (up to
/// 32 MiB), after which such blocks come from the heap of whichever
/// thread's arena served them and mostly stay there: under the abuse
/// benchmark the glibc build kept 400 MiB resident after the clients had
/// gone, 25 MiB with the threshold fixed. The static musl build that
/// install.sh ships maps large blocks on its own and needs nothing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_large_blocks_in_mmap() {
    // glibc's default starting threshold; setting it turns the raising off.
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only changes allocator parameters; it is called before
    // any thread of this process is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_blocks_in_mmap() {}
