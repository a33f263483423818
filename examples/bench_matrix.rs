//! The homeserver half of the benchmark (scripts/bench-matrix.sh runs it,
//! once per `matrix.concurrency` the service was started with): login
//! through the service against login straight at Synapse, and rooms per
//! second through the service against the same work given to Synapse
//! straight from a client with as many requests in flight, on one machine
//! in one run. Prints rows of a Markdown table.
//!
//! bench_matrix <service_url> <cert.pem> <api_token> <synapse_url> <secret_file>
//!              <logins> <rooms> <concurrency> <rounds>
//!
//! With `BENCH_SYNAPSE_PID` and `BENCH_SERVICE_PID` set (the script sets
//! them), it also shows the CPU time Synapse and the service used per room
//! on each side: whether the service makes Synapse work more per room, or
//! leaves it idle between rooms.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

use messenger_chat::homeserver::synapse::Synapse;
use messenger_chat::homeserver::{DesiredRoom, Homeserver};
use messenger_chat::model::RoomRole;

type Conn = SendRequest<Full<Bytes>>;

async fn https(url: &str, cert_pem: &str) -> Conn {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert_pem).expect("read the certificate") {
        roots.add(c.expect("a PEM certificate")).expect("a usable certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("https://")).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("HTTP handshake");
    tokio::spawn(conn);
    send
}

async fn plain(url: &str) -> Conn {
    let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("http://")).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("HTTP handshake");
    tokio::spawn(conn);
    send
}

async fn call(conn: &mut Conn, method: &str, path: &str, auth: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut req = http::Request::builder().method(method).uri(path).header("host", "localhost");
    if let Some(token) = auth {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let bytes = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Bytes::from(serde_json::to_vec(&b).expect("JSON"))
        }
        None => Bytes::new(),
    };
    conn.ready().await.expect("connection ready");
    let resp = conn.send_request(req.body(Full::new(bytes)).expect("request")).await.expect("answer");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// CPU time a process used so far, user and system, from /proc; `None`
/// when the pid is not given or not readable.
fn cpu_secs(pid: Option<u32>) -> Option<[f64; 2]> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // The fields after the command (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // USER_HZ is 100 on Linux.
    let secs = |i: usize| Some(fields.get(i)?.parse::<f64>().ok()? / 100.0);
    Some([secs(11)?, secs(12)?])
}

fn pid_of(var: &str) -> Option<u32> {
    std::env::var(var).ok()?.parse().ok()
}

/// Bytes a process wrote to storage so far and its write system calls,
/// from /proc: Synapse's database work, which the machine's load does not
/// change the way it changes CPU time.
fn disk_writes(pid: Option<u32>) -> Option<[f64; 2]> {
    let io = std::fs::read_to_string(format!("/proc/{}/io", pid?)).ok()?;
    let field = |name: &str| io.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok());
    Some([field("write_bytes:")?, field("syscw:")?])
}

/// The processes measured: Synapse, the service, and this benchmark
/// itself (it waits on the service's event log on that side only).
const PROCESSES: usize = 3;
/// What is sampled around each side: the CPU seconds (user, system) of
/// each process, then Synapse's disk writes (bytes, write calls).
type Cpu = [Option<[f64; 2]>; PROCESSES + 1];

fn sample(pids: [Option<u32>; PROCESSES]) -> Cpu {
    [cpu_secs(pids[0]), cpu_secs(pids[1]), cpu_secs(pids[2]), disk_writes(pids[0])]
}

/// What each of `pids` used while `work` ran, beside its result.
async fn with_cpu<T>(pids: [Option<u32>; PROCESSES], work: impl Future<Output = T>) -> (T, Cpu) {
    let before = sample(pids);
    let out = work.await;
    let after = sample(pids);
    let used = |i: usize| Some([after[i]?[0] - before[i]?[0], after[i]?[1] - before[i]?[1]]);
    (out, [used(0), used(1), used(2), used(3)])
}

fn add(total: &mut Cpu, part: Cpu) {
    for (t, p) in total.iter_mut().zip(part) {
        *t = t.zip(p).map(|(a, b)| [a[0] + b[0], a[1] + b[1]]);
    }
}

/// Waits until Synapse has used under a tenth of a core for a whole
/// second (at most 30 s) and returns how long that took and the CPU it used
/// meanwhile. Work it does in the background after the logins and the
/// set-up (batched writes, device lists) would otherwise land on whichever
/// side goes first: always the service's, in the first round.
async fn settle(pid: Option<u32>) -> Option<(Duration, f64)> {
    let started = Instant::now();
    let first = cpu_secs(pid)?;
    let mut last = first;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cpu_secs(pid)?;
        let used = (now[0] + now[1]) - (last[0] + last[1]);
        last = now;
        if used < 0.1 || started.elapsed() > Duration::from_secs(30) {
            return Some((started.elapsed(), (now[0] + now[1]) - (first[0] + first[1])));
        }
    }
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn ok((status, body): (u16, Value), want: u16) -> Value {
    assert_eq!(status, want, "{body}");
    body
}

/// The number in a line `name value` of the service's /metrics.
async fn metric(svc: &mut Conn, api: &str, name: &str) -> f64 {
    let mut req = http::Request::builder().method("GET").uri("/metrics").header("host", "localhost");
    req = req.header("authorization", format!("Bearer {api}"));
    svc.ready().await.expect("connection ready");
    let resp = svc.send_request(req.body(Full::new(Bytes::new())).expect("request")).await.expect("answer");
    let text = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Waits until the service has nothing left for the homeserver.
async fn drained(svc: &mut Conn, api: &str) {
    let started = Instant::now();
    while metric(svc, api, "messenger_chat_outbox_depth").await > 0.0 {
        assert!(started.elapsed() < Duration::from_secs(600), "the outbox did not drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The id of the organization's last event: where a reader of the log
/// starts to see only what follows.
async fn log_end(svc: &mut Conn, api: &str) -> u64 {
    let mut after = 0;
    loop {
        let path = format!("/v1/events?organization_id=1&after={after}&limit=1000");
        let page = ok(call(svc, "GET", &path, Some(api), None).await, 200);
        let next = page["next"].as_u64().expect("a cursor");
        if next == after {
            return after;
        }
        after = next;
    }
}

/// Creates `rooms` rooms through the service (answered at once: sync_wait
/// 0) and returns the time until every one of them is ready on Synapse, as
/// its `room.ready` event in the service's event log tells. The log is
/// followed with long polls, as a consumer would: each answers at the
/// next commit, so the benchmark costs the service (and the two cores)
/// next to nothing while it waits. (It listed every room every 20 ms
/// before: that cost the service and the benchmark 2-3 times the
/// service's own CPU per room, on the core Synapse's database thread
/// also uses, on this side only.)
///
/// Also returns how many of the service's homeserver steps failed (and
/// were retried) meanwhile: a createRoom over `matrix.request_timeout_ms`
/// on a loaded machine pauses the reconciler, which the direct client,
/// waiting as long as it takes, never does.
async fn through_service(service: &str, cert: &str, api: &str, round: usize, rooms: usize) -> (Duration, f64) {
    const FAILED: &str = "messenger_chat_homeserver_errors_total";
    // A connection of its own: the one of the set-up may have been closed while idle.
    let svc = &mut https(service, cert).await;
    let failed = metric(svc, api, FAILED).await;
    let mut after = log_end(svc, api).await;
    let started = Instant::now();
    let mut waiting = std::collections::HashSet::new();
    for i in 0..rooms {
        let body = json!({"organizationID": 1, "name": format!("Room {round}.{i}"), "admins": [1], "moderators": [2], "assignedUsers": [3, 4]});
        let room = ok(call(svc, "POST", "/v1/chatrooms", Some(api), Some(body)).await, 201);
        waiting.insert(room["roomID"].as_i64().expect("a room id"));
    }
    while !waiting.is_empty() {
        let path = format!("/v1/events?organization_id=1&after={after}&limit=1000&wait=30");
        let page = ok(call(svc, "GET", &path, Some(api), None).await, 200);
        for event in page["events"].as_array().expect("events") {
            if event["type"] == "room.ready" {
                waiting.remove(&event["data"]["roomID"].as_i64().expect("a room id"));
            }
        }
        after = page["next"].as_u64().expect("a cursor");
        assert!(started.elapsed() < Duration::from_secs(600), "rooms did not converge: {} left", waiting.len());
    }
    let took = started.elapsed();
    (took, metric(svc, api, FAILED).await - failed)
}

/// A client of its own straight at Synapse: the service's own Synapse
/// adapter (`messenger_chat::homeserver::synapse::Synapse`), with a bot and
/// 4 users of its own registered with the shared secret and the same
/// display names as the service's. Its rooms go through the same
/// `create_room` the reconciler calls, so Synapse gets the same request
/// body byte for byte but the name and the marker (same shape, same sizes):
/// what the comparison leaves out is exactly the service around the
/// adapter (its API, its database, the reconciler).
struct Direct {
    hs: Arc<Synapse>,
}

impl Direct {
    async fn new(synapse: &str, secret_file: &str, concurrency: usize) -> Direct {
        let config = messenger_chat::config::MatrixConfig {
            homeserver_url: synapse.to_string(),
            registration_shared_secret_file: secret_file.to_string(),
            bot_localpart: format!("benchdirect{concurrency}"),
            user_prefix: format!("d{concurrency}u"),
            // Nothing retries here as the reconciler would: a createRoom
            // slowed by a loaded machine is waited for, not failed.
            request_timeout_ms: 600_000,
            ..Default::default()
        };
        let password = "bench-direct-password".to_string();
        let hs = Synapse::new(&config, password.clone()).expect("client");
        hs.prepare().await.expect("register the direct bot");
        for u in 1..=4 {
            hs.ensure_account(u, &password, Some(&format!("User {u}"))).await.expect("register a direct user");
        }
        Direct { hs: Arc::new(hs) }
    }

    /// What the service asks of Synapse for one room (admin 1, moderator 2,
    /// users 3 and 4 assigned, as `through_service` makes them): the
    /// adapter's `create_room`. With `in_flight` tasks each sending the
    /// next room as soon as the last is made.
    async fn create(&self, round: usize, rooms: usize, in_flight: usize) -> Duration {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..in_flight {
            let (next, hs) = (next.clone(), self.hs.clone());
            workers.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= rooms {
                        return;
                    }
                    let desired = DesiredRoom {
                        // The service's rooms are numbered from 1 too.
                        marker: u64::try_from(round * rooms + i + 1).expect("a room number"),
                        name: format!("Room {round}.{i}"),
                        topic: String::new(),
                        avatar_url: String::new(),
                        members: vec![
                            (1, RoomRole::Admin),
                            (2, RoomRole::Moderator),
                            (3, RoomRole::Assigned),
                            (4, RoomRole::Assigned),
                        ],
                        joined: Vec::new(),
                        read_only: false,
                    };
                    hs.create_room(&desired).await.expect("createRoom straight at Synapse");
                }
            });
        }
        while let Some(done) = workers.join_next().await {
            done.expect("a direct worker");
        }
        started.elapsed()
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, service, cert, api, synapse, secret_file, logins, rooms, concurrency, rounds] = args.as_slice() else {
        panic!(
            "usage: bench_matrix <service_url> <cert.pem> <api_token> <synapse_url> <secret_file> <logins> <rooms> <concurrency> <rounds>"
        )
    };
    let logins: usize = logins.parse().expect("logins");
    let rooms: usize = rooms.parse().expect("rooms");
    let concurrency: usize = concurrency.parse().expect("concurrency");
    let rounds: usize = rounds.parse().expect("rounds");
    let mut svc = https(service, cert).await;
    ok(call(&mut svc, "PUT", "/v1/organizations/1", Some(api), Some(json!({"name": "Bench"}))).await, 201);
    for u in 1..=4 {
        let name = json!({"displayName": format!("User {u}")});
        ok(call(&mut svc, "PUT", &format!("/v1/users/{u}"), Some(api), Some(name)).await, 201);
        let role = json!({"role": "member"});
        ok(call(&mut svc, "PUT", &format!("/v1/organizations/1/members/{u}"), Some(api), Some(role)).await, 200);
    }
    let pat = ok(call(&mut svc, "POST", "/v1/users/1/tokens", Some(api), Some(json!({"name": "bench"}))).await, 201);
    let pat = pat["token"].as_str().expect("token").to_string();
    // The first login makes the Matrix account and derives the password; it is not measured.
    ok(call(&mut svc, "POST", "/v1/user/login", Some(&pat), Some(json!({"deviceID": "WARM"}))).await, 200);
    let creds = ok(call(&mut svc, "GET", "/v1/user/credentials", Some(&pat), None).await, 200);
    let (user, password) =
        (creds["username"].as_str().unwrap().to_string(), creds["password"].as_str().unwrap().to_string());
    // Every account exists before anything is timed.
    drained(&mut svc, api).await;

    if logins > 0 {
        // The derivation a login would cost without the cache, shipped parameters.
        let key = messenger_chat::secrets::ServerKey::from_bytes([7; 32]);
        let security = messenger_chat::config::SecurityConfig::default();
        let argon: Vec<Duration> = (0..logins.min(20))
            .map(|_| {
                let t = Instant::now();
                key.matrix_password(&security, &user).expect("derive");
                t.elapsed()
            })
            .collect();
        let derived_before = metric(&mut svc, api, "messenger_chat_password_derivations_total").await;
        let mut hs = plain(synapse).await;
        let mut via_service = Vec::with_capacity(logins);
        let mut direct = Vec::with_capacity(logins);
        for i in 0..logins {
            // Interleaved, each first in turn, so both see the same machine load.
            let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                              "password": password, "device_id": format!("D{i}"), "refresh_token": true});
            let mine = json!({"deviceID": format!("S{i}")});
            for side in [i % 2, 1 - i % 2] {
                let t = Instant::now();
                if side == 0 {
                    ok(call(&mut svc, "POST", "/v1/user/login", Some(&pat), Some(mine.clone())).await, 200);
                    via_service.push(t.elapsed());
                } else {
                    ok(call(&mut hs, "POST", "/_matrix/client/v3/login", None, Some(body.clone())).await, 200);
                    direct.push(t.elapsed());
                }
            }
        }
        let derived = metric(&mut svc, api, "messenger_chat_password_derivations_total").await - derived_before;
        let paired = median(
            via_service.iter().zip(&direct).map(|(s, d)| (s.as_secs_f64() - d.as_secs_f64()) * 1000.0).collect(),
        );
        let (m_service, m_direct, m_argon) = (median_ms(via_service), median_ms(direct), median_ms(argon));
        let gap = m_service - m_direct;
        println!("| login through the service, median of {logins} | {m_service:.1} ms |");
        println!("| login straight at Synapse, median of {logins} | {m_direct:.1} ms |");
        println!(
            "| difference of the medians | {gap:+.1} ms (target within 1 ms: {}); median of the paired differences {paired:+.1} ms |",
            if gap.abs() <= 1.0 { "met" } else { "MISSED" }
        );
        println!(
            "| password derivations during those logins | {derived:.0} (kept in memory; one would take {m_argon:.1} ms) |"
        );
    }

    let direct = Direct::new(synapse, secret_file, concurrency).await;
    let (mut via_service, mut straight) = (Duration::ZERO, Duration::ZERO);
    let mut failed_steps = 0.0;
    let pids = [pid_of("BENCH_SYNAPSE_PID"), pid_of("BENCH_SERVICE_PID"), Some(std::process::id())];
    if let Some((waited, cpu)) = settle(pids[0]).await {
        println!(
            "| Synapse idle before the rooms, concurrency {concurrency} | after {:.1} s (its CPU meanwhile: {cpu:.2} s) |",
            waited.as_secs_f64()
        );
    }
    let (mut cpu_service, mut cpu_straight): (Cpu, Cpu) =
        ([Some([0.0; 2]); PROCESSES + 1], [Some([0.0; 2]); PROCESSES + 1]);
    for round in 0..rounds {
        // Alternating which goes first, so both see the same machine load.
        for side in [round % 2, 1 - round % 2] {
            if side == 0 {
                let ((t, failed), cpu) = with_cpu(pids, through_service(service, cert, api, round, rooms)).await;
                via_service += t;
                failed_steps += failed;
                add(&mut cpu_service, cpu);
            } else {
                let (t, cpu) = with_cpu(pids, direct.create(round, rooms, concurrency)).await;
                straight += t;
                add(&mut cpu_straight, cpu);
            }
        }
    }
    let total = (rooms * rounds) as f64;
    let (r_service, r_direct) = (total / via_service.as_secs_f64(), total / straight.as_secs_f64());
    let ratio = r_service / r_direct;
    println!(
        "| {total} rooms (name, powers, 4 invites), concurrency {concurrency}: through the service | {:.1} s ({r_service:.2} rooms/s) |",
        via_service.as_secs_f64()
    );
    println!(
        "| the same, straight at Synapse (the service's adapter alone), {concurrency} in flight | {:.1} s ({r_direct:.2} rooms/s) |",
        straight.as_secs_f64()
    );
    // Milliseconds per room, with the user / system split.
    let per_room = |cpu: Option<[f64; 2]>| {
        cpu.map_or_else(
            || "-".to_string(),
            |[u, s]| {
                format!("{:.0} ms ({:.0} + {:.0})", (u + s) * 1000.0 / total, u * 1000.0 / total, s * 1000.0 / total)
            },
        )
    };
    let busy = |cpu: Option<[f64; 2]>, wall: Duration| cpu.map_or(0.0, |[u, s]| (u + s) * 100.0 / wall.as_secs_f64());
    if pids[0].is_some() {
        println!(
            "| CPU per room, concurrency {concurrency}: Synapse through the service / straight (user + system) | {} / {} (Synapse busy {:.0}% / {:.0}% of the wall time) |",
            per_room(cpu_service[0]),
            per_room(cpu_straight[0]),
            busy(cpu_service[0], via_service),
            busy(cpu_straight[0], straight),
        );
    }
    if pids[0].is_some() {
        let writes = |w: Option<[f64; 2]>| {
            w.map_or_else(
                || "-".to_string(),
                |[b, n]| format!("{:.0} KiB in {:.0} write calls", b / 1024.0 / total, n / total),
            )
        };
        println!(
            "| Synapse's disk writes per room, concurrency {concurrency}: through the service / straight | {} / {} |",
            writes(cpu_service[3]),
            writes(cpu_straight[3])
        );
    }
    if pids[1].is_some() {
        println!(
            "| CPU per room, concurrency {concurrency}: the service (API, reconciler, polling answered) | {} |",
            per_room(cpu_service[1])
        );
    }
    println!(
        "| homeserver steps that failed through the service and were retried, concurrency {concurrency} | {failed_steps:.0} |"
    );
    println!(
        "| CPU per room, concurrency {concurrency}: this benchmark, polling the service / driving Synapse | {} / {} |",
        per_room(cpu_service[2]),
        per_room(cpu_straight[2])
    );
    println!(
        "| service / Synapse, concurrency {concurrency} | {:.0}% (target ≥ 90%: {}) |",
        ratio * 100.0,
        if ratio >= 0.9 { "met" } else { "MISSED" }
    );
}
