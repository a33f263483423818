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

/// CPU time (user + system) a process used so far, from /proc; `None`
/// when the pid is not given or not readable.
fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // The fields after the command (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks / 100.0)
}

fn pid_of(var: &str) -> Option<u32> {
    std::env::var(var).ok()?.parse().ok()
}

/// CPU seconds of (Synapse, the service) spent while `work` ran, beside its result.
async fn with_cpu<T>(pids: (Option<u32>, Option<u32>), work: impl Future<Output = T>) -> (T, [Option<f64>; 2]) {
    let before = [cpu_secs(pids.0), cpu_secs(pids.1)];
    let out = work.await;
    let after = [cpu_secs(pids.0), cpu_secs(pids.1)];
    let used = |i: usize| Some(after[i]? - before[i]?);
    (out, [used(0), used(1)])
}

fn add(total: &mut [Option<f64>; 2], part: [Option<f64>; 2]) {
    for (t, p) in total.iter_mut().zip(part) {
        *t = t.zip(p).map(|(a, b)| a + b);
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

/// Creates `rooms` rooms through the service (answered at once: sync_wait
/// 0) and returns the time until every room of the organization is ready
/// on Synapse.
async fn through_service(service: &str, cert: &str, api: &str, round: usize, rooms: usize) -> Duration {
    // A connection of its own: the one of the set-up may have been closed while idle.
    let svc = &mut https(service, cert).await;
    let started = Instant::now();
    for i in 0..rooms {
        let body = json!({"organizationID": 1, "name": format!("Room {round}.{i}"), "admins": [1], "moderators": [2], "assignedUsers": [3, 4]});
        ok(call(svc, "POST", "/v1/chatrooms", Some(api), Some(body)).await, 201);
    }
    let want = (round + 1) * rooms;
    loop {
        let list = ok(call(svc, "GET", "/v1/chatrooms?organization_id=1&all=true", Some(api), None).await, 200);
        let ready = list["entries"].as_array().unwrap().iter().filter(|r| r["syncState"] == "ready").count();
        if ready == want {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(600), "rooms did not converge: {ready}/{want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client of its own straight at Synapse: a bot and the 4 users its rooms
/// invite, registered with the shared secret.
struct Direct {
    synapse: String,
    token: String,
    users: Vec<String>,
    bot: String,
    /// Synapse's default room version, which the service's rooms get too.
    version: String,
}

impl Direct {
    async fn new(synapse: &str, secret_file: &str, concurrency: usize) -> Direct {
        let config = messenger_chat::config::MatrixConfig {
            homeserver_url: synapse.to_string(),
            registration_shared_secret_file: secret_file.to_string(),
            bot_localpart: format!("benchdirect{concurrency}"),
            user_prefix: format!("d{concurrency}u"),
            ..Default::default()
        };
        let password = "bench-direct-password".to_string();
        let client = messenger_chat::matrix::HomeserverClient::new(&config, password.clone()).expect("client");
        client.ensure_bot().await.expect("register the direct bot");
        let ids = client.ids().clone();
        let mut users = Vec::new();
        for u in 1..=4 {
            client.register(&ids.localpart(u), &password, false, None).await.expect("register a direct user");
            users.push(ids.user(u));
        }
        let mut hs = plain(synapse).await;
        let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": ids.bot_localpart()},
                          "password": password});
        let login = ok(call(&mut hs, "POST", "/_matrix/client/v3/login", None, Some(body)).await, 200);
        let token = login["access_token"].as_str().expect("a token").to_string();
        let caps = ok(call(&mut hs, "GET", "/_matrix/client/v3/capabilities", Some(&token), None).await, 200);
        let version = caps["capabilities"]["m.room_versions"]["default"].as_str().expect("a default version");
        Direct { synapse: synapse.to_string(), token, users, bot: ids.bot(), version: version.to_string() }
    }

    /// What the service asks of Synapse for one room (admin 1, moderator 2,
    /// users 3 and 4 assigned): createRoom, private and invite only, with a
    /// name, a marker, power levels and 4 invites. With `in_flight`
    /// connections each sending the next room as soon as the last is made.
    async fn create(&self, round: usize, rooms: usize, in_flight: usize) -> Duration {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..in_flight {
            let mut conn = plain(&self.synapse).await;
            let (next, token, users, bot) = (next.clone(), self.token.clone(), self.users.clone(), self.bot.clone());
            let version = self.version.clone();
            // As the service does: from room version 12 on the creator is
            // all-powerful and may not be listed.
            let list_bot = !(version == "org.matrix.hydra.11" || version.parse::<u32>().is_ok_and(|v| v >= 12));
            workers.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= rooms {
                        return;
                    }
                    let mut levels = serde_json::Map::new();
                    levels.insert(users[0].clone(), json!(100));
                    levels.insert(users[1].clone(), json!(50));
                    if list_bot {
                        levels.insert(bot.clone(), json!(100));
                    }
                    let body = json!({
                        "name": format!("Direct {round}.{i}"),
                        "preset": "private_chat",
                        "visibility": "private",
                        "room_version": version,
                        "creation_content": {"bench.marker": round * rooms + i},
                        "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "invite"}}],
                        "power_level_content_override": {"users": levels},
                        "invite": users,
                    });
                    ok(call(&mut conn, "POST", "/_matrix/client/v3/createRoom", Some(&token), Some(body)).await, 200);
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
    let pids = (pid_of("BENCH_SYNAPSE_PID"), pid_of("BENCH_SERVICE_PID"));
    let (mut cpu_service, mut cpu_straight) = ([Some(0.0); 2], [Some(0.0); 2]);
    for round in 0..rounds {
        // Alternating which goes first, so both see the same machine load.
        for side in [round % 2, 1 - round % 2] {
            if side == 0 {
                let (t, cpu) = with_cpu(pids, through_service(service, cert, api, round, rooms)).await;
                via_service += t;
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
        "| the same, straight at Synapse, {concurrency} in flight | {:.1} s ({r_direct:.2} rooms/s) |",
        straight.as_secs_f64()
    );
    let per_room = |cpu: Option<f64>| cpu.map_or_else(|| "-".to_string(), |c| format!("{:.0} ms", c * 1000.0 / total));
    if pids.0.is_some() {
        println!(
            "| CPU per room, concurrency {concurrency}: Synapse through the service / straight | {} / {} (Synapse busy {:.0}% / {:.0}% of the wall time) |",
            per_room(cpu_service[0]),
            per_room(cpu_straight[0]),
            cpu_service[0].unwrap_or(0.0) * 100.0 / via_service.as_secs_f64(),
            cpu_straight[0].unwrap_or(0.0) * 100.0 / straight.as_secs_f64(),
        );
    }
    if pids.1.is_some() {
        println!(
            "| CPU per room, concurrency {concurrency}: the service (API, reconciler, polling answered) | {} |",
            per_room(cpu_service[1])
        );
    }
    println!(
        "| service / Synapse, concurrency {concurrency} | {:.0}% (target ≥ 90%: {}) |",
        ratio * 100.0,
        if ratio >= 0.9 { "met" } else { "MISSED" }
    );
}
