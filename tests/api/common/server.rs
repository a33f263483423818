//! The real binary as a child process: spawned on a free port in a fresh
//! temporary directory, read until it says where it listens, stopped with
//! SIGTERM like an operator would.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::client::Client;

/// How long the binary may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM may take to end the process.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Settings every test server gets: a free port, its own data directory,
/// cheap Argon2, and a homeserver address where nothing listens (rooms stay
/// `pending`, login answers 503) with no waiting for it on writes.
fn base_env(data_dir: &Path) -> Vec<(String, String)> {
    [
        ("MESSENGER_CHAT_SERVER__LISTEN", "127.0.0.1:0".to_string()),
        // Servers run side by side: each operators' listener on a port of its own.
        ("MESSENGER_CHAT_SERVER__METRICS_LISTEN", "127.0.0.1:0".to_string()),
        ("MESSENGER_CHAT_STORAGE__DATA_DIR", data_dir.display().to_string()),
        ("MESSENGER_CHAT_SECURITY__ARGON2_MEMORY_KIB", "64".to_string()),
        ("MESSENGER_CHAT_SECURITY__ARGON2_ITERATIONS", "1".to_string()),
        ("MESSENGER_CHAT_MATRIX__HOMESERVER_URL", "http://127.0.0.1:9".to_string()),
        ("MESSENGER_CHAT_MATRIX__SYNC_WAIT_MS", "0".to_string()),
        ("MESSENGER_CHAT_MATRIX__REQUEST_TIMEOUT_MS", "1000".to_string()),
        ("MESSENGER_CHAT_LOG__FORMAT", "human".to_string()),
        ("MESSENGER_CHAT_LOG__LEVEL", "info".to_string()),
        // The log goes to a file that a failing test prints: no colour codes.
        ("NO_COLOR", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Copies the server key kept beside a database file (`NAME.key` for
/// `NAME.redb`, as the fixtures keep theirs, or the `secret.key` of the
/// data directory it is in) into `data_dir` as its
/// `secret.key`, owner-only: the database starts with its own key only.
fn copy_key_beside(db_file: &Path, data_dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let named = db_file.with_extension("key");
    let key = if named.exists() { named } else { db_file.with_file_name("secret.key") };
    if key.exists() {
        let to = data_dir.join("secret.key");
        std::fs::copy(&key, &to).unwrap_or_else(|e| panic!("copy {}: {e}", key.display()));
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod 600 secret.key");
    }
}

/// One running `messenger-chat serve`, with an HTTPS client that trusts its certificate.
pub struct TestServer {
    dir: TempDir,
    data_dir: PathBuf,
    extra_env: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
    /// `https://127.0.0.1:PORT` as printed by the server.
    pub url: String,
    /// The API token printed on the first start (empty when the test configured its own).
    pub api_token: String,
    /// Every stdout line of the latest start, up to and including `listening on`.
    pub stdout_lines: Vec<String>,
    /// `http://127.0.0.1:PORT` of the operators' listener (`server.metrics_listen`), empty when off.
    pub metrics_url: String,
    client: Option<Client>,
}

impl TestServer {
    /// Starts the binary with the test defaults.
    pub fn start() -> TestServer {
        TestServer::start_with(&[])
    }

    /// Starts the binary with extra `MESSENGER_CHAT_…` variables on top of the test defaults.
    pub fn start_with(env: &[(&str, &str)]) -> TestServer {
        TestServer::start_in(None, env)
    }

    /// [`TestServer::start_with`], with the data directory at `data_dir`
    /// (a file system the test mounted) instead of inside the temp dir.
    #[allow(dead_code, reason = "used by some of the test targets that share the harness")]
    pub fn start_in(data_dir: Option<&Path>, env: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::Builder::new().prefix("messenger-chat-test-").tempdir().expect("create a temp dir");
        let data_dir = data_dir.map_or_else(|| dir.path().join("data"), Path::to_path_buf);
        let extra_env = env.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
        let mut server = TestServer {
            dir,
            data_dir,
            extra_env,
            child: None,
            starts: 0,
            url: String::new(),
            api_token: String::new(),
            stdout_lines: Vec::new(),
            metrics_url: String::new(),
            client: None,
        };
        server.spawn();
        let configured = env.iter().any(|(k, _)| *k == "MESSENGER_CHAT_AUTH__API_TOKEN_HASHES");
        assert!(
            configured || !server.api_token.is_empty(),
            "the first start printed no API token line; stdout was {:?}",
            server.stdout_lines
        );
        server
    }

    /// Starts the binary on a copy of an existing database file, as an
    /// operator starts a new release on the data of the old one. The
    /// database holds its own API token (nothing is printed): `api_token`.
    #[allow(dead_code, reason = "used by the upgrade target, not by every target that shares the harness")]
    pub fn start_on(db_file: &Path, api_token: &str) -> TestServer {
        TestServer::start_on_with(db_file, api_token, &[])
    }

    /// [`TestServer::start_on`] with extra `MESSENGER_CHAT_…` variables.
    #[allow(dead_code, reason = "used by the upgrade target, not by every target that shares the harness")]
    pub fn start_on_with(db_file: &Path, api_token: &str, env: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::Builder::new().prefix("messenger-chat-test-").tempdir().expect("create a temp dir");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("create the data directory");
        std::fs::copy(db_file, data_dir.join("messenger-chat.redb"))
            .unwrap_or_else(|e| panic!("copy {}: {e}", db_file.display()));
        copy_key_beside(db_file, &data_dir);
        let mut server = TestServer {
            dir,
            data_dir,
            extra_env: env.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect(),
            child: None,
            starts: 0,
            url: String::new(),
            api_token: api_token.to_string(),
            stdout_lines: Vec::new(),
            metrics_url: String::new(),
            client: None,
        };
        server.spawn();
        assert_eq!(server.api_token, api_token, "a database with an API token got a new one printed");
        server
    }

    /// An HTTPS client of the running server.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("the server is not running")
    }

    /// The process id of the running server.
    #[allow(dead_code, reason = "used by the ops target, not by every target that shares the harness")]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is not running").id()
    }

    /// The data directory (`storage.data_dir`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's working directory: a `config.toml` written here is read on the next start.
    #[allow(dead_code, reason = "used by some of the test targets that share the harness")]
    pub fn work_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs an administration command of the binary (`messenger-chat ARGS`)
    /// with the server's settings and working directory; the server must
    /// be stopped (it holds the database exclusively). Returns the exit
    /// status's success, stdout and stderr.
    #[allow(dead_code, reason = "used by some of the test targets that share the harness")]
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        assert!(self.child.is_none(), "stop the server before running `messenger-chat {}`", args.join(" "));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_messenger-chat"));
        cmd.args(args).current_dir(self.dir.path()).stdin(Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("MESSENGER_CHAT_") {
                cmd.env_remove(key);
            }
        }
        for (k, v) in base_env(&self.data_dir).into_iter().chain(self.extra_env.clone()) {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run the messenger-chat binary");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `messenger-chat serve` with the server's settings plus `env`
    /// while the server is stopped, expecting it to refuse to start: its
    /// stdout and stderr when it exited with a failure within `within`; an
    /// error saying what it did instead (it is killed if still running).
    #[allow(dead_code, reason = "used by some of the test targets that share the harness")]
    pub fn serve_refused(&self, env: &[(&str, &str)], within: Duration) -> Result<String, String> {
        assert!(self.child.is_none(), "stop the server before starting another one on its data");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_messenger-chat"));
        cmd.arg("serve").current_dir(self.dir.path()).stdin(Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("MESSENGER_CHAT_") {
                cmd.env_remove(key);
            }
        }
        let extra = env.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string()));
        for (k, v) in base_env(&self.data_dir).into_iter().chain(self.extra_env.clone()).chain(extra) {
            cmd.env(k, v);
        }
        let out_path = self.dir.path().join("refused.log");
        let out = File::create(&out_path).expect("create the log of the refused start");
        cmd.stdout(Stdio::from(out.try_clone().expect("clone the log file"))).stderr(Stdio::from(out));
        let mut child = cmd.spawn().expect("spawn the messenger-chat binary");
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for messenger-chat") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = std::fs::read_to_string(&out_path).unwrap_or_default();
        match status {
            Some(s) if !s.success() => Ok(output),
            Some(_) => Err(format!("it exited successfully instead of refusing:\n{output}")),
            None => Err(format!("it was still running after {within:?} (it started):\n{output}")),
        }
    }

    /// What the server logged to stderr so far (all starts).
    pub fn stderr(&self) -> String {
        let mut all = String::new();
        for n in 1..=self.starts {
            if let Ok(s) = std::fs::read_to_string(self.stderr_path(n)) {
                all.push_str(&s);
            }
        }
        all
    }

    fn stderr_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("stderr-{start}.log"))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let stderr_path = self.stderr_path(self.starts);
        let stderr = File::create(&stderr_path).expect("create the stderr log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_messenger-chat"));
        cmd.arg("serve")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        // Nothing from the developer's environment may change the server under test.
        for (key, _) in std::env::vars() {
            if key.starts_with("MESSENGER_CHAT_") {
                cmd.env_remove(key);
            }
        }
        for (k, v) in base_env(&self.data_dir).into_iter().chain(self.extra_env.clone()) {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the messenger-chat binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        // Reads stdout to its end so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // After start-up nobody listens any more; keep draining anyway.
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);
        self.stdout_lines.clear();
        self.metrics_url.clear();
        let deadline = Instant::now() + START_TIMEOUT;
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    self.stdout_lines.push(line.clone());
                    if line.contains("API token") {
                        self.api_token = last_word(&line);
                    }
                    if line.contains("for operators on") {
                        let url = line.split_whitespace().find(|w| w.starts_with("http://"));
                        self.metrics_url = url.unwrap_or_default().to_string();
                    }
                    if line.contains("listening on") {
                        break last_word(&line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.fail_start("did not print `listening on` within 30 s");
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    self.fail_start(&format!("exited before listening ({status:?})"));
                }
            }
        };
        assert!(url.starts_with("https://"), "the server should speak HTTPS, it printed {url}");
        self.url = url;
        self.client = Some(Client::new(&self.url, &self.data_dir.join("tls").join("cert.pem")));
    }

    fn fail_start(&mut self, why: &str) -> ! {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let stderr = std::fs::read_to_string(self.stderr_path(self.starts)).unwrap_or_default();
        panic!(
            "messenger-chat {why} (start {})\n--- stdout ---\n{}\n--- stderr ---\n{stderr}",
            self.starts,
            self.stdout_lines.join("\n"),
        );
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let term = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("run kill");
        assert!(term.success(), "kill -TERM failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the server") {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("messenger-chat did not stop within 20 s of SIGTERM\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the server killed by the test (`kill -9 <pid>`) to end,
    /// leaving it stopped.
    #[allow(dead_code, reason = "used by some of the test targets that share the harness")]
    pub fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = child.wait().expect("wait for the killed server");
            assert!(!status.success(), "the server was to be killed, but exited cleanly");
        }
    }

    /// Starts the server again after it was killed (`kill -9 <pid>`), on the
    /// same data directory and settings.
    pub fn start_after_kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = child.wait().expect("wait for the killed server");
            assert!(!status.success(), "the server was to be killed, but exited cleanly");
        }
        self.spawn();
    }

    /// Stops the server and starts it again on the same data directory and settings.
    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// Stops the server and starts it again on the same data directory, with
    /// `env` added to (or replacing) the settings of the first start.
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        let clean = self.stop();
        assert!(clean, "messenger-chat exited with a failure on SIGTERM\n{}", self.stderr());
        for (k, v) in env {
            self.extra_env.retain(|(key, _)| key != k);
            self.extra_env.push(((*k).to_string(), (*v).to_string()));
        }
        self.spawn();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn last_word(line: &str) -> String {
    line.split_whitespace().last().unwrap_or_default().to_string()
}
