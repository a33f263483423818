//! End-to-end tests of `messenger-chat` against a real Synapse: each test
//! starts the real binary pointed at the homeserver, drives it over HTTPS
//! as the app's backend and the app would, and checks every outcome from
//! the homeserver's side — with the Matrix tokens `POST /v1/user/login`
//! hands out, and, for what users cannot see, with a server-admin account
//! of the test's own.
//!
//! Needs `SYNAPSE_URL`, `SYNAPSE_SHARED_SECRET_FILE`, `SYNAPSE_DIR` and
//! `SYNAPSE_SCRIPT` as `scripts/test-with-synapse.sh` exports them; without
//! them every test fails (a skipped homeserver test would pass CI having
//! tested nothing). Tests share that Synapse, each with its own user prefix
//! and bot account; the fault tests start a Synapse of their own.
//!
//! Run with `scripts/test-with-synapse.sh --test e2e`.

#[path = "../api/common/client.rs"]
#[allow(dead_code, reason = "shared with tests/api, which uses the parts this target does not")]
mod client;

mod poll;
mod service;
mod synapse;

mod fairness;
mod fallback;
mod faults;
mod login;
mod membership;
mod read_only;
mod rooms;
mod upgrade;
