//! Data that survives every upgrade, tested with the real binary on real
//! redb files: each database in `tests/fixtures` (written by an earlier
//! release with `scripts/write-fixture.sh`) is opened with today's code and
//! checked record by record; older schemas migrate once and whole, newer
//! ones are refused untouched; a kill -9 during a migration leaves the old
//! file or the new one; `check` finds broken indexes and `--repair` rebuilds
//! them; bad files get a message naming the file and what to do; room roles
//! of an old file follow the organization as docs/operations.md (Upgrade) says.
//!
//! Where a test needs a file in a state the service never writes (an index
//! entry gone, a record garbled, a schema from the future), it edits the
//! file with redb directly while the service is stopped, as damage would.
//!
//! Run with `cargo test --test upgrade`.

#[path = "../api/common/mod.rs"]
#[expect(dead_code, unused_imports, reason = "the shared harness serves several test targets")]
mod common;

mod support;

mod bad_input;
mod check;
mod fixtures;
mod key;
mod kill;
mod roles;
mod versions;
