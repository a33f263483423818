//! The hostile clients of `scripts/abuse.sh`, all at once, over real TLS:
//!
//! - slowloris: connections that finish the TLS handshake, then send a
//!   request head one byte a second, never ending it; as many open at all
//!   times during the window as asked (a closed one is replaced);
//! - bodies: `POST /v1/chatrooms` without a token, `Content-Length` of N MiB,
//!   sending all of it but the last 64 KiB as fast as the server takes it,
//!   then stalling; as many open at all times during the window;
//! - credentials: one `GET /v1/user/credentials` per PAT of the tokens file,
//!   each on its own connection, all sent at the same moment once every
//!   connection is ready; the connection is then kept open and silent;
//! - ids: one `POST /v1/chatrooms/{room}/users` with `assignedUsers` 1..=N,
//!   from a PAT that may change the room; the connection is then kept open;
//! - bodies without rights: `POST /v1/chatrooms` from a PAT whose user may
//!   create no room, with a body of `--no-rights-bytes` sent whole as fast
//!   as the server takes it; as many open at all times during the window.
//!
//! The clients never close a connection themselves: each waits for the
//! server to close it, and the report says how long that took from the
//! moment its timeout started (the end of the TLS handshake for slowloris:
//! `server.header_timeout_secs`; the answer for bodies, whose unread rest
//! the server drains for at most `server.header_timeout_secs`; the answer
//! for credentials and ids, after which the connection is idle:
//! `server.idle_timeout_secs`). A body client sends one more byte every
//! 0.1 s once its bytes are out (after the server's close_notify too), so
//! it notices when the server drops the socket: the reset comes back.
//!
//! After the window no new connection is opened; the program waits until
//! the server has closed every one (at most `--wait-max` seconds), prints
//! its table, and a last line `closed_within_timeouts=PASS` or `=MISS`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Parser)]
#[command(about = "Hostile clients against a running messenger-chat")]
struct Args {
    /// The service's address, such as https://127.0.0.1:8443.
    #[arg(long)]
    url: String,
    /// The service's certificate (PEM), trusted as the only root.
    #[arg(long)]
    cert: PathBuf,
    /// Seconds during which slowloris and body clients keep their count open.
    #[arg(long, default_value_t = 20.0)]
    window: f64,
    /// Slowloris connections open at once.
    #[arg(long, default_value_t = 1000)]
    slowloris: usize,
    /// Unauthenticated stalled bodies open at once.
    #[arg(long, default_value_t = 50)]
    bodies: usize,
    /// Declared size of each stalled body, in MiB.
    #[arg(long, default_value_t = 20)]
    body_mib: usize,
    /// PATs, one per line: one credentials request each, all at once.
    #[arg(long)]
    credentials_tokens: Option<PathBuf>,
    /// Ids in the one oversized request.
    #[arg(long, default_value_t = 3_000_000)]
    ids: u64,
    /// PAT of a user who may change `--room`; without it no ids request.
    #[arg(long)]
    ids_token: Option<String>,
    /// Room of the ids request.
    #[arg(long, default_value_t = 1)]
    room: u64,
    /// Bodies from `--no-rights-token` open at once.
    #[arg(long, default_value_t = 0)]
    no_rights: usize,
    /// PAT of a user who may create no room.
    #[arg(long)]
    no_rights_token: Option<String>,
    /// Size of each of those bodies, in bytes.
    #[arg(long, default_value_t = 25_000_040)]
    no_rights_bytes: usize,
    /// The server's `server.header_timeout_secs`.
    #[arg(long, default_value_t = 10.0)]
    header_timeout: f64,
    /// The server's `server.idle_timeout_secs`.
    #[arg(long, default_value_t = 60.0)]
    idle_timeout: f64,
    /// Allowance beyond a timeout for timers and a loaded machine, in seconds.
    #[arg(long, default_value_t = 1.0)]
    slack: f64,
    /// Longest wait for the server's closes after the window, in seconds
    /// (default: both timeouts and 15 s more).
    #[arg(long)]
    wait_max: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Slowloris,
    Bodies,
    Credentials,
    Ids,
    NoRights,
}

impl Class {
    const ALL: [Class; 5] = [Class::Slowloris, Class::Bodies, Class::Credentials, Class::Ids, Class::NoRights];

    fn name(self) -> &'static str {
        match self {
            Class::Slowloris => "slowloris, head at 1 B/s",
            Class::Bodies => "stalled body, no token",
            Class::Credentials => "credentials, then idle",
            Class::Ids => "ids request, then idle",
            Class::NoRights => "whole body, PAT without rights",
        }
    }

    /// What starts the timeout that must close the connection, and which.
    fn clock(self) -> (&'static str, &'static str) {
        match self {
            Class::Slowloris => ("TLS done", "header_timeout_secs"),
            Class::Bodies | Class::NoRights => ("answer", "header_timeout_secs"),
            Class::Credentials | Class::Ids => ("answer", "idle_timeout_secs"),
        }
    }
}

/// What one connection saw, filled in as it happens.
#[derive(Default)]
struct Record {
    started: Option<Instant>,
    tls_done: Option<Instant>,
    /// The first byte of the request was written.
    sent_first: Option<Instant>,
    answer: Option<(u16, Instant)>,
    /// The first bytes of the answer (its status line and problem detail).
    answer_text: Vec<u8>,
    /// The server dropped the socket (EOF, reset, or a refused write).
    closed: Option<Instant>,
    /// Connect or TLS handshake failed: not an abusive connection that was open.
    failed: Option<String>,
}

type Shared = Arc<Mutex<Record>>;

struct Ctx {
    addr: SocketAddr,
    tls: TlsConnector,
    records: Mutex<Vec<(Class, Shared)>>,
}

impl Ctx {
    fn record(&self, class: Class) -> Shared {
        let r = Arc::new(Mutex::new(Record::default()));
        self.records.lock().expect("records").push((class, r.clone()));
        r
    }
}

fn set(rec: &Shared, f: impl FnOnce(&mut Record)) {
    f(&mut rec.lock().expect("record"));
}

/// What a client writes.
enum Script {
    /// A request head that never ends, one byte a second.
    Slowloris,
    /// A head, then `len` body bytes; then one byte every 0.1 s.
    Body { head: Vec<u8>, len: usize },
    /// One whole request, sent once `go` says so; then silence.
    Request { bytes: Arc<Vec<u8>>, go: Option<tokio::sync::watch::Receiver<bool>> },
}

/// Writes the script; returns only when a write fails (the server is gone).
async fn write_script<W: AsyncWrite + Unpin>(w: &mut W, script: Script, rec: &Shared) -> std::io::Error {
    async fn put<W: AsyncWrite + Unpin>(w: &mut W, b: &[u8]) -> std::io::Result<()> {
        w.write_all(b).await?;
        w.flush().await
    }
    let result: std::io::Result<()> = async {
        match script {
            Script::Slowloris => {
                let head =
                    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n".iter().chain(b"X-Slow: ...\r\n".iter().cycle());
                set(rec, |r| r.sent_first = Some(Instant::now()));
                for b in head {
                    put(w, &[*b]).await?;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(())
            }
            Script::Body { head, len } => {
                set(rec, |r| r.sent_first = Some(Instant::now()));
                put(w, &head).await?;
                let chunk = vec![b'['; 64 << 10];
                let mut left = len;
                while left > 0 {
                    let n = left.min(chunk.len());
                    w.write_all(&chunk[..n]).await?;
                    left -= n;
                }
                w.flush().await?;
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    put(w, b"[").await?;
                }
            }
            Script::Request { bytes, go } => {
                if let Some(mut go) = go {
                    let _ = go.wait_for(|v| *v).await;
                }
                set(rec, |r| r.sent_first = Some(Instant::now()));
                put(w, &bytes).await?;
                std::future::pending().await
            }
        }
    }
    .await;
    result.err().unwrap_or_else(|| std::io::Error::other("script ended"))
}

/// Reads the answer; returns when the server ends its side (EOF) or the
/// connection fails. `true`: a clean end (close_notify or FIN).
async fn read_answer<R: AsyncRead + Unpin>(r: &mut R, rec: &Shared) -> bool {
    let mut buf = vec![0u8; 16 << 10];
    let mut head = Vec::new();
    loop {
        match r.read(&mut buf).await {
            Ok(0) => return true,
            Err(_) => return false,
            Ok(n) => {
                if head.len() < 2048 {
                    head.extend_from_slice(&buf[..n.min(2048 - head.len())]);
                    let mut rec = rec.lock().expect("record");
                    if rec.answer.is_none()
                        && let Some(status) = status_of(&head)
                    {
                        rec.answer = Some((status, Instant::now()));
                    }
                    rec.answer_text.clone_from(&head);
                }
            }
        }
    }
}

fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next().filter(|_| head.contains(&b'\n'))?;
    std::str::from_utf8(line).ok()?.split_whitespace().nth(1)?.parse().ok()
}

/// One connection, until the server has closed it.
async fn connection(ctx: &Ctx, rec: &Shared, script: Script, on_ready: Option<&AtomicUsize>) {
    set(rec, |r| r.started = Some(Instant::now()));
    let tcp = match TcpStream::connect(ctx.addr).await {
        Ok(t) => t,
        Err(e) => return set(rec, |r| r.failed = Some(format!("connect: {}", e.kind()))),
    };
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").expect("a server name");
    let tls = match ctx.tls.connect(name, tcp).await {
        Ok(t) => t,
        Err(e) => return set(rec, |r| r.failed = Some(format!("TLS: {}", e.kind()))),
    };
    set(rec, |r| r.tls_done = Some(Instant::now()));
    if let Some(ready) = on_ready {
        ready.fetch_add(1, Ordering::AcqRel);
    }
    let probes = matches!(script, Script::Body { .. });
    let (mut rd, mut wr) = tokio::io::split(tls);
    let reading = read_answer(&mut rd, rec);
    let writing = write_script(&mut wr, script, rec);
    tokio::pin!(reading, writing);
    tokio::select! {
        clean = &mut reading => {
            if clean && probes {
                // The server ended its side after its answer and may still
                // drain what this client sends: closed once a write is refused.
                let _ = (&mut writing).await;
            }
        }
        _ = &mut writing => {}
    }
    set(rec, |r| r.closed = Some(Instant::now()));
}

/// Keeps one connection of `class` open until `until`: a closed one is replaced.
async fn sustain(ctx: Arc<Ctx>, class: Class, until: Instant, script: impl Fn() -> Script) {
    while Instant::now() < until {
        let rec = ctx.record(class);
        connection(&ctx, &rec, script(), None).await;
        if rec.lock().expect("record").failed.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn tls_connector(cert: &std::path::Path) -> Result<TlsConnector, Box<dyn std::error::Error>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert)? {
        roots.add(c?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection pays a full handshake, as a client bent on harm makes it.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

fn get(path: &str, token: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n").into_bytes()
}

/// `{"assignedUsers":[1,2,…,n]}` as a whole request.
fn ids_request(room: u64, n: u64, token: &str) -> (Vec<u8>, usize) {
    let mut body = Vec::with_capacity(usize::try_from(n).unwrap_or(0) * 8 + 32);
    body.extend_from_slice(b"{\"assignedUsers\":[");
    for id in 1..=n {
        if id > 1 {
            body.push(b',');
        }
        body.extend_from_slice(id.to_string().as_bytes());
    }
    body.extend_from_slice(b"]}");
    let mut req = format!(
        "POST /v1/chatrooms/{room}/users HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    let len = body.len();
    req.extend_from_slice(&body);
    (req, len)
}

/// CPU seconds this process used (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces): state is the first.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here;
    // Linux reports them in USER_HZ, 100 a second.
    (ticks(11) + ticks(12)) / 100.0
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn spread(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(f64::total_cmp);
    format!("{:.2} / {:.2} / {:.2}", v[0], v[v.len() / 2], v[v.len() - 1])
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let addr: SocketAddr = args.url.trim_start_matches("https://").trim_end_matches('/').parse()?;
    let ctx = Arc::new(Ctx { addr, tls: tls_connector(&args.cert)?, records: Mutex::new(Vec::new()) });
    let tokens: Vec<String> = match &args.credentials_tokens {
        Some(p) => std::fs::read_to_string(p)?.lines().filter(|l| !l.is_empty()).map(String::from).collect(),
        None => Vec::new(),
    };
    let ids = args.ids_token.as_deref().map(|t| ids_request(args.room, args.ids, t));
    let body_len = args.body_mib << 20;
    let body_head = Arc::new(
        format!(
            "POST /v1/chatrooms HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {body_len}\r\n\r\n"
        )
        .into_bytes(),
    );

    let cpu_before = cpu_seconds();
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(args.window);
    let mut tasks = tokio::task::JoinSet::new();

    // Credentials first: their handshakes, then one signal for all requests.
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let ready = Arc::new(AtomicUsize::new(0));
    let mut credentials = Vec::new();
    for token in &tokens {
        let (ctx, ready, go) = (ctx.clone(), ready.clone(), go_rx.clone());
        let bytes = Arc::new(get("/v1/user/credentials", token));
        let rec = ctx.record(Class::Credentials);
        credentials.push(rec.clone());
        tasks.spawn(async move {
            connection(&ctx, &rec, Script::Request { bytes, go: Some(go) }, Some(&ready)).await;
        });
    }
    if let Some((bytes, _)) = &ids {
        let (ctx, bytes) = (ctx.clone(), Arc::new(bytes.clone()));
        tasks.spawn(async move {
            let rec = ctx.record(Class::Ids);
            connection(&ctx, &rec, Script::Request { bytes, go: None }, None).await;
        });
    }
    for _ in 0..args.slowloris {
        tasks.spawn(sustain(ctx.clone(), Class::Slowloris, until, || Script::Slowloris));
    }
    if let Some(token) = &args.no_rights_token {
        let head = Arc::new(
            format!(
                "POST /v1/chatrooms HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                args.no_rights_bytes
            )
            .into_bytes(),
        );
        let len = args.no_rights_bytes;
        for _ in 0..args.no_rights {
            let head = head.clone();
            tasks
                .spawn(sustain(ctx.clone(), Class::NoRights, until, move || Script::Body { head: head.to_vec(), len }));
        }
    }
    for _ in 0..args.bodies {
        let head = body_head.clone();
        tasks.spawn(sustain(ctx.clone(), Class::Bodies, until, move || Script::Body {
            head: head.to_vec(),
            len: body_len - (64 << 10),
        }));
    }
    // Go once every credentials connection is ready (or has failed), or after 5 s.
    let go_deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < go_deadline {
        let failed = credentials.iter().filter(|r| r.lock().expect("record").failed.is_some()).count();
        if ready.load(Ordering::Acquire) + failed >= tokens.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = go_tx.send(true);
    let go_at = Instant::now();

    let wait_max = args.wait_max.unwrap_or(args.header_timeout + args.idle_timeout + 15.0);
    let deadline = until.max(Instant::now()) + Duration::from_secs_f64(wait_max);
    let all_closed =
        tokio::time::timeout_at(deadline.into(), async { while tasks.join_next().await.is_some() {} }).await.is_ok();
    tasks.abort_all();
    let elapsed = start.elapsed();
    let cpu = cpu_seconds() - cpu_before;

    // --- report ----------------------------------------------------------
    let records = ctx.records.lock().expect("records");
    let mut pass = all_closed;
    println!(
        "{:<26} {:>6} {:>7} {:<22} {:>9} {:<21} {:<9} {:>6}  result",
        "abuse", "conns", "failed", "answers", "clock", "closed after, s", "limit", "open s"
    );
    for class in Class::ALL {
        let of: Vec<&Shared> = records.iter().filter(|(c, _)| *c == class).map(|(_, r)| r).collect();
        if of.is_empty() {
            continue;
        }
        let (clock_name, key) = class.clock();
        let limit = if key == "header_timeout_secs" { args.header_timeout } else { args.idle_timeout };
        let mut statuses = BTreeMap::<String, usize>::new();
        let mut failures = BTreeMap::<String, usize>::new();
        let (mut failed, mut open, mut late) = (0, 0, 0);
        let (mut after, mut max_total) = (Vec::new(), 0.0f64);
        // Of the late ones: how long their TLS handshake took here. The
        // server's clock starts when it has finished the handshake, which
        // under a burst of handshakes on busy cores is after the client's.
        let (mut handshakes, mut late_handshakes) = (Vec::new(), Vec::new());
        for r in &of {
            let r = r.lock().expect("record");
            if let Some(why) = &r.failed {
                failed += 1;
                *failures.entry(why.clone()).or_default() += 1;
                continue;
            }
            let Some(tls_done) = r.tls_done else { continue };
            *statuses.entry(r.answer.map_or("none".into(), |(s, _)| s.to_string())).or_default() += 1;
            let Some(closed) = r.closed else {
                open += 1;
                continue;
            };
            let clock = match class {
                Class::Slowloris => Some(tls_done),
                _ => r.answer.map(|(_, at)| at),
            };
            // A connection whose clock never started (no answer) is judged
            // from the handshake against the longest bound it could have.
            let (from, bound) = match clock {
                Some(at) => (at, limit),
                None => (tls_done, limit + args.header_timeout.max(args.idle_timeout)),
            };
            let waited = secs(closed.saturating_duration_since(from));
            handshakes.push(secs(tls_done.saturating_duration_since(r.started.unwrap_or(tls_done))));
            if waited > bound + args.slack {
                late += 1;
                late_handshakes.push(secs(tls_done.saturating_duration_since(r.started.unwrap_or(tls_done))));
            }
            after.push(waited);
            max_total = max_total.max(secs(closed.saturating_duration_since(r.started.unwrap_or(tls_done))));
        }
        let ok = open == 0 && late == 0;
        pass &= ok;
        let answers = statuses.iter().map(|(s, n)| format!("{s}:{n}")).collect::<Vec<_>>().join(" ");
        println!(
            "{:<26} {:>6} {:>7} {:<22} {:>9} {:<21} {:<9} {:>6.1}  {}",
            class.name(),
            of.len(),
            failed,
            answers,
            clock_name,
            spread(after),
            format!("{limit:.0} s"),
            max_total,
            if ok { "PASS".to_string() } else { format!("MISS ({late} late, {open} still open)") }
        );
        for (why, n) in failures {
            println!("    {n} failed before TLS was up: {why}");
        }
        if !late_handshakes.is_empty() {
            println!(
                "    TLS handshakes here took (min / median / max) {} s; those of the {late} late ones {} s",
                spread(handshakes),
                spread(late_handshakes)
            );
        }
    }

    // The details a reader needs to judge the classes with answers.
    let creds: Vec<f64> = credentials
        .iter()
        .filter_map(|r| {
            let r = r.lock().expect("record");
            r.answer.map(|(_, at)| secs(at.saturating_duration_since(r.sent_first.unwrap_or(go_at))))
        })
        .collect();
    if !tokens.is_empty() {
        println!(
            "credentials: {} requests sent at once; answered in s (min / median / max): {}",
            tokens.len(),
            spread(creds)
        );
    }
    if let Some((bytes, body)) = &ids {
        let of = records.iter().find(|(c, _)| *c == Class::Ids).map(|(_, r)| r.lock().expect("record"));
        if let Some(r) = of {
            let answered = match (r.sent_first, r.answer) {
                (Some(s), Some((status, at))) => format!("{status} after {:.0} ms", secs(at - s) * 1000.0),
                _ => "no answer".into(),
            };
            let text = String::from_utf8_lossy(&r.answer_text);
            let detail = text.find("\"detail\"").map_or("", |i| &text[i..]).chars().take(160).collect::<String>();
            println!(
                "ids: {} ids, body {body} bytes ({:.1} MiB), request {} bytes: {answered}; {detail}",
                args.ids,
                *body as f64 / f64::from(1 << 20),
                bytes.len()
            );
        }
    }
    println!("abuse clients: {:.1} s wall, {cpu:.1} s CPU (user + system) on this machine's cores", secs(elapsed));
    println!("closed_within_timeouts={}", if pass { "PASS" } else { "MISS" });
    Ok(())
}
