//! The OpenAPI document against the running binary, by schemathesis: every
//! check it has, the positive and negative phases (examples, coverage,
//! fuzzing) and the stateful phase that follows the document's links, at
//! least 5,000 generated requests, zero failures. A failure means the
//! document and the server disagree: a valid request refused, an invalid one
//! accepted, an answer whose status, type, headers or body the document does
//! not describe, a 5xx, a missing `Allow` on a 405, or auth not enforced.
//!
//! The server starts as every black-box test's does (a fresh data
//! directory, real HTTPS), with the pass-through proxy on so that its own
//! `/.well-known/matrix/client` is served, and without a homeserver: fuzzed
//! rooms name thousands of random users, each of whom would become a Matrix
//! account. Login then answers 503, as the document says, which is the one
//! status `not_a_server_error` is told to expect, for `POST /v1/user/login`
//! only; the end-to-end tests log in on a real Synapse. The fixtures are
//! made through the API; their real ids and a real API token and PAT go to
//! schemathesis's config. `tests/schemathesis/hooks.py` keeps valid deletion
//! times in the future, valid event-log cursors among the events that exist,
//! and long polls short. docs/api.md names all of this.
//!
//! Needs schemathesis: `SCHEMATHESIS` (the `st` program, as
//! `scripts/test-with-synapse.sh` exports it) or `.venv-synapse/bin/st`
//! (`scripts/schemathesis.sh install`). Without it the test fails: a skipped
//! fuzz run would pass CI having tested nothing.
//!
//! Run with `scripts/test-with-synapse.sh --test schemathesis`.
//! `SCHEMATHESIS_SEED` picks another seed, `SCHEMATHESIS_MAX_EXAMPLES` more
//! or fewer cases per operation.

#[path = "api/common/mod.rs"]
#[allow(dead_code, unused_imports, reason = "shared with tests/api, which uses the parts this target does not")]
mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::TestServer;

/// Fewest generated requests a run must reach.
const MIN_CASES: u64 = 5_000;
/// Cases per operation and phase: 6,000 to 8,000 in all, whatever the seed.
const MAX_EXAMPLES: u32 = 120;
/// The default seed: the same requests on every run, so CI is repeatable.
const SEED: u64 = 20_261_129;
/// A run takes about 2½ minutes on two cores; one past this is stuck.
const RUN_LIMIT: Duration = Duration::from_secs(15 * 60);

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The schemathesis program, or a failure that says how to get it.
fn schemathesis() -> PathBuf {
    let st = std::env::var_os("SCHEMATHESIS")
        .filter(|v| !v.is_empty())
        .map_or_else(|| manifest_dir().join(".venv-synapse").join("bin").join("st"), PathBuf::from);
    assert!(
        st.is_file(),
        "schemathesis is not installed at {}: run `scripts/schemathesis.sh install`, or run this test with \
         `scripts/test-with-synapse.sh --test schemathesis`, which installs it and exports SCHEMATHESIS",
        st.display()
    );
    st
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

/// The real ids the fuzzer is pointed at, all made through the API.
struct Fixtures {
    api_token: String,
    /// A PAT of `owner`, the owner of `org`.
    pat: String,
    org: i64,
    /// An organization the fuzzer may delete.
    spare_org: i64,
    owner: i64,
    /// A member the fuzzer may deactivate, demote, remove and whose token it may revoke.
    spare_user: i64,
    spare_token: i64,
    room: i64,
    /// A custom room the fuzzer may delete.
    spare_room: i64,
    event: i64,
}

async fn fixtures(srv: &TestServer) -> Fixtures {
    let api = srv.api_token.clone();
    let (org, spare_org, owner, spare_user, event) = (1, 2, 11, 12, 5);
    srv.put(&format!("/v1/organizations/{org}"), &api, Some(json!({"name": "Acme"}))).await.expect(201);
    srv.put(&format!("/v1/organizations/{spare_org}"), &api, Some(json!({"name": "Spare"}))).await.expect(201);
    srv.put(&format!("/v1/users/{owner}"), &api, Some(json!({"displayName": "Olivia Owner"}))).await.expect(201);
    srv.put(&format!("/v1/users/{spare_user}"), &api, Some(json!({"displayName": "Sam Spare"}))).await.expect(201);
    for (user, role) in [(owner, "owner"), (spare_user, "member")] {
        let path = format!("/v1/organizations/{org}/members/{user}");
        srv.put(&path, &api, Some(json!({"role": role}))).await.expect(200);
    }
    let issue = |user: i64| {
        let path = format!("/v1/users/{user}/tokens");
        async move { srv.post(&path, &srv.api_token, Some(json!({"name": "fuzz"}))).await.expect(201).clone() }
    };
    let pat = issue(owner).await["token"].as_str().expect("a token").to_string();
    let spare_token = issue(spare_user).await["id"].as_i64().expect("a token id");
    let room = |body: Value| async move {
        common::room_id(srv.post("/v1/chatrooms", &srv.api_token, Some(body)).await.expect(201))
    };
    let room_id =
        room(json!({"name": "Board", "organizationID": org, "admins": [owner], "assignedUsers": [spare_user]})).await;
    let spare_room = room(json!({"name": "Spare", "organizationID": org})).await;
    let party = json!({"name": "Party", "organizationID": org, "eventID": event});
    srv.post("/v1/chatrooms/event", &api, Some(party)).await.expect(201);
    let default = json!({"organizationID": org, "automationEnabled": true});
    srv.post("/v1/chatrooms/default", &api, Some(default)).await.expect(201);
    Fixtures { api_token: api, pat, org, spare_org, owner, spare_user, spare_token, room: room_id, spare_room, event }
}

/// A TOML basic string.
fn toml(s: &str) -> String {
    serde_json::to_string(s).expect("a string encodes")
}

/// schemathesis.toml: every check and phase, the real token and ids, and
/// the disposable ids for the operations that delete.
fn config(srv: &TestServer, f: &Fixtures, dir: &Path) -> String {
    let cert = srv.data_dir().join("tls").join("cert.pem");
    let hooks = manifest_dir().join("tests").join("schemathesis").join("hooks.py");
    let seed = env_or("SCHEMATHESIS_SEED", SEED);
    let max_examples = env_or("SCHEMATHESIS_MAX_EXAMPLES", MAX_EXAMPLES);
    let mut c = String::new();
    let _ = writeln!(c, "base-url = {}", toml(&srv.url));
    let _ = writeln!(c, "tls-verify = {}", toml(&cert.display().to_string()));
    let _ = writeln!(c, "hooks = {}", toml(&hooks.display().to_string()));
    let _ = writeln!(c, "seed = {seed}");
    // Two workers for two cores; the server shares them.
    c.push_str("workers = 2\ncontinue-on-failure = true\nrequest-timeout = 30\ncolor = false\n");
    let _ = writeln!(c, "[reports]\ndirectory = {}", toml(&dir.join("report").display().to_string()));
    c.push_str("[cache]\nenabled = false\n");
    // Every check schemathesis has; none is left out.
    c.push_str("[checks]\nenabled = true\n");
    c.push_str("[phases.examples]\nenabled = true\n[phases.coverage]\nenabled = true\n");
    c.push_str("[phases.fuzzing]\nenabled = true\n[phases.stateful]\nenabled = true\n");
    let _ = writeln!(c, "[generation]\nmode = \"all\"\nmax-examples = {max_examples}\ndatabase = \":memory:\"");
    // The API token for the operations that take one first (all but the
    // caller's own Matrix login, which the PAT's user calls).
    let api = toml(&f.api_token);
    let pat = toml(&f.pat);
    let _ = writeln!(c, "[auth.openapi.apiToken]\nbearer = {api}\n[auth.openapi.apiTokenHeader]\napi_key = {api}");
    let _ = writeln!(c, "[auth.openapi.pat]\nbearer = {pat}\n[auth.openapi.patHeader]\napi_key = {pat}");
    let _ = writeln!(
        c,
        "[parameters]\n\"path.organizationID\" = {}\n\"query.organization_id\" = {}\n\"path.userID\" = {}\n\
         \"query.user_id\" = {}\n\"path.roomID\" = {}\n\"query.event_id\" = {}\n\"path.tokenID\" = {}",
        f.org, f.org, f.owner, f.owner, f.room, f.event, f.spare_token
    );
    // What deletes or demotes works on spare records, so the rest keeps its fixtures.
    let _ = writeln!(
        c,
        "[[operations]]\ninclude-operation-id = \"deleteOrganization\"\nparameters = {{ \"path.organizationID\" = {} }}",
        f.spare_org
    );
    let _ = writeln!(
        c,
        "[[operations]]\ninclude-operation-id = [\"deleteUser\", \"setMember\", \"removeMember\", \"revokeToken\"]\n\
         parameters = {{ \"path.userID\" = {} }}",
        f.spare_user
    );
    let _ = writeln!(
        c,
        "[[operations]]\ninclude-operation-id = \"deleteRoom\"\nparameters = {{ \"path.roomID\" = {} }}",
        f.spare_room
    );
    // A webhook URL that fits the schema may still be refused with 422 by
    // the rules no schema can state (an address refused by the SSRF rules,
    // one webhook beyond webhooks.max_webhooks), as the document says.
    c.push_str(
        "[[operations]]\ninclude-operation-id = \"putWebhook\"\n\
         checks.positive_data_acceptance.expected-statuses = [\"2xx\", \"401\", \"403\", \"404\", \"422\"]\n",
    );
    // No homeserver in this run: login answers 503 as documented.
    c.push_str(
        "[[operations]]\ninclude-operation-id = \"login\"\n\
         checks.not_a_server_error.expected-statuses = [\"2xx\", \"3xx\", \"4xx\", \"503\"]\n",
    );
    c
}

/// The number a line of schemathesis's summary starts with before `label`:
/// `6176 generated, 0 found …`, `== 3 failures, 1 warning in 95s ==`.
fn count_before(out: &str, label: &str) -> Option<u64> {
    out.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().filter(|w| !w.starts_with('=')).collect();
        match words.as_slice() {
            [n, word, ..] if word.trim_end_matches(',').starts_with(label) => n.parse().ok(),
            _ => None,
        }
    })
}

#[test]
fn summary_counts_are_read() {
    let out = "Test cases:\n  6041 generated, 36 found 37 unique failures, 93 skipped\n";
    assert_eq!(count_before(out, "generated"), Some(6041));
    let last = "================= 37 failures, 3 errors, 1 warning in 101.81s ==================";
    assert_eq!(count_before(last, "failure"), Some(37));
    assert_eq!(count_before(&last.replace(", ", "\n"), "error"), Some(3));
    assert_eq!(count_before("============ No issues found in 95.1s ============", "failure"), None);
}

#[tokio::test]
async fn the_server_does_what_its_openapi_document_says() {
    let st = schemathesis();
    let srv = TestServer::start_with(&[
        ("MESSENGER_CHAT_PROXY__ENABLED", "true"),
        // Rate limits would answer most of the fuzzer's logins and token
        // issues with 429 before their bodies are looked at.
        ("MESSENGER_CHAT_LIMITS__LOGIN_BURST", "1000000"),
        ("MESSENGER_CHAT_LIMITS__TOKEN_ISSUE_BURST", "1000000"),
        ("MESSENGER_CHAT_LOG__ACCESS", "none"),
    ]);
    let f = fixtures(&srv).await;
    let dir = tempfile::Builder::new().prefix("messenger-chat-schemathesis-").tempdir().expect("a temp dir");
    let config_path = dir.path().join("schemathesis.toml");
    std::fs::write(&config_path, config(&srv, &f, dir.path())).expect("write schemathesis.toml");
    let output_path = dir.path().join("output.txt");
    let output = std::fs::File::create(&output_path).expect("create the output file");

    let started = Instant::now();
    let mut child = Command::new(&st)
        .arg("--config-file")
        .arg(&config_path)
        .args(["run", &format!("{}/openapi.json", srv.url), "--report", "junit,ndjson"])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(output.try_clone().expect("clone the output file")))
        .stderr(Stdio::from(output))
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", st.display()));
    // A run takes minutes; one that hangs is stopped and fails the test.
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for schemathesis") {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            let out = std::fs::read_to_string(&output_path).unwrap_or_default();
            panic!("schemathesis did not finish within {} s; its output so far:\n{out}", RUN_LIMIT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let secs = started.elapsed().as_secs();
    let out = std::fs::read_to_string(&output_path).expect("read schemathesis's output");

    let cases = count_before(&out, "generated");
    let last = out.lines().rev().find(|l| l.starts_with('=')).unwrap_or_default();
    let failures = count_before(last, "failure").unwrap_or(0);
    let errors = count_before(&last.replace(", ", "\n"), "error").unwrap_or(0);
    println!(
        "schemathesis: {} cases, {failures} failures, {errors} errors, exit {}, in {secs} s (seed {})",
        cases.map_or_else(|| "?".to_string(), |n| n.to_string()),
        status.code().map_or_else(|| "by signal".to_string(), |c| c.to_string()),
        env_or("SCHEMATHESIS_SEED", SEED),
    );
    let report = || {
        // The failures and the summary; the progress lines above them say little.
        let from = ["=== ERRORS", "=== FAILURES", "=== SUMMARY"].iter().find_map(|h| out.find(h)).unwrap_or(0);
        out[from..].to_string()
    };
    let passed = status.success() && failures == 0 && errors == 0 && cases.is_some_and(|n| n >= MIN_CASES);
    if !passed {
        // Keep the reports (and the config, with its test-only token) for a look.
        let kept = dir.keep();
        eprintln!("schemathesis's config, output and reports are kept in {}", kept.display());
    }
    assert!(
        status.success() && failures == 0 && errors == 0,
        "schemathesis found the server and its OpenAPI document disagreeing ({failures} failures, {errors} errors, \
         {status}):\n{}",
        report()
    );
    let cases = cases.unwrap_or_else(|| panic!("schemathesis printed no `N generated` count:\n{}", report()));
    assert!(cases >= MIN_CASES, "schemathesis generated {cases} cases, fewer than {MIN_CASES}:\n{}", report());
}

#[test]
fn the_document_is_valid_openapi() {
    let st = schemathesis();
    let validator = st.with_file_name("openapi-spec-validator");
    let doc = manifest_dir().join("assets").join("openapi.json");
    let out = Command::new(&validator)
        .arg(&doc)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", validator.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains(": OK"), "openapi-spec-validator on {}:\n{text}", doc.display());
}
