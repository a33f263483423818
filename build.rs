//! Build script: on musl only, links LLVM's libc memory functions (memcpy,
//! memmove, memset, memcmp, bcmp) ahead of musl's own.
//!
//! Why: musl's are written for size. Its memcmp and bcmp compare one byte per
//! iteration, its memcpy is `rep movsq` behind a byte loop, and a backward
//! memmove is `std; rep movsb`. Rust calls these for every slice copy,
//! comparison and `Vec` growth (TLS records, HTTP headers, JSON, redb keys),
//! and the profile of the static binary showed them as the largest difference
//! to the glibc build (whose versions are vectorised). LLVM's libc is
//! maintained by the LLVM project and built as a library to lay over a system
//! libc; Debian ships it (`libllvmlibc-NN-dev`, which install.sh installs
//! beside musl-tools). Its objects for these five functions are freestanding
//! (no other symbol needed) and use only baseline x86-64 (SSE2), so the
//! binary still runs on any x86-64.
//!
//! The objects go into a static library linked with this crate, which the
//! linker searches before musl's libc.a: these symbols are defined by then,
//! so musl's copies are never pulled in (each is alone in its archive
//! member, so nothing else drags them in).
//!
//! `LLVMLIBC_ARCHIVE` names the archive (`libllvmlibc.a`) when it is not
//! under /usr/lib/llvm-*/lib; `LLVMLIBC_ARCHIVE=none` builds with musl's
//! own functions (slower, for systems without the library). A musl build that
//! finds no archive stops with an error, so that a slow binary is never built
//! by accident.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The functions taken from LLVM's libc: the ones Rust code calls on every
/// request. Each lives in its own archive member named `<function>.<ext>`.
const FUNCTIONS: [&str; 5] = ["memcpy", "memmove", "memset", "memcmp", "bcmp"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LLVMLIBC_ARCHIVE");
    if env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("musl") {
        return;
    }
    let archive = match env::var("LLVMLIBC_ARCHIVE") {
        Ok(v) if v == "none" => {
            println!("cargo:warning=LLVMLIBC_ARCHIVE=none: musl's own memcpy/memcmp (slower)");
            return;
        }
        Ok(v) if !v.is_empty() => PathBuf::from(v),
        _ => match find_archive() {
            Some(p) => p,
            None => fail(
                "no libllvmlibc.a under /usr/lib/llvm-*/lib. Install LLVM's libc \
                 (Debian/Ubuntu: apt-get install libllvmlibc-19-dev, or another \
                 libllvmlibc-NN-dev), or set LLVMLIBC_ARCHIVE to its path, \
                 or LLVMLIBC_ARCHIVE=none to keep musl's slower functions",
            ),
        },
    };
    println!("cargo:rerun-if-changed={}", archive.display());
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("llvmlibc");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", out.display())));

    let listing = run(Command::new("ar").arg("t").arg(&archive), &archive);
    let mut members = Vec::new();
    for function in FUNCTIONS {
        let prefix = format!("{function}.");
        match listing.lines().find(|m| m.starts_with(&prefix)) {
            Some(m) => members.push(m.to_owned()),
            None => fail(&format!("{} has no member for {function}", archive.display())),
        }
    }
    run(Command::new("ar").arg("x").arg(&archive).args(&members).current_dir(&out), &archive);
    for member in &members {
        check_freestanding(&out.join(member), &archive);
    }
    // A static library of our own, linked with this crate: it comes before
    // the C library on the linker's command line, so these symbols are
    // defined by the time libc.a is searched.
    run(Command::new("ar").arg("crs").arg("libmessenger_chat_mem.a").args(&members).current_dir(&out), &archive);
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=messenger_chat_mem");
}

/// The newest /usr/lib/llvm-NN/lib/libllvmlibc.a, if any.
fn find_archive() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version: u32 = name.strip_prefix("llvm-")?.parse().ok()?;
            let path = e.path().join("lib/libllvmlibc.a");
            path.is_file().then_some((version, path))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// An object that needed other symbols of LLVM's libc (its errno, its
/// internals) would not link against musl: refuse it here, clearly.
fn check_freestanding(object: &Path, archive: &Path) {
    let undefined = run(Command::new("nm").arg("-u").arg(object), archive);
    if let Some(symbol) = undefined.split_whitespace().find(|s| *s != "U") {
        fail(&format!(
            "{} from {} needs {symbol}: this LLVM libc is not freestanding; set LLVMLIBC_ARCHIVE",
            object.display(),
            archive.display()
        ));
    }
}

fn run(cmd: &mut Command, archive: &Path) -> String {
    let out =
        cmd.output().unwrap_or_else(|e| fail(&format!("cannot run {cmd:?} (binutils) on {}: {e}", archive.display())));
    if !out.status.success() {
        fail(&format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fail(message: &str) -> ! {
    eprintln!("messenger-chat build: {message}");
    std::process::exit(1);
}
