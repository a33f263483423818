#!/usr/bin/env bash
# Writes the upgrade fixture of the current release: tests/fixtures/schema-<N>.redb
# (a database with something in every table, made by this release's own code
# with a pinned clock), schema-<N>.json (what it holds, and this release's
# answers for it) and schema-<N>.key (its server key, whose fingerprint the
# database records: it starts with that key only). tests/upgrade opens every
# fixture in tests/fixtures with the code of the day, so each release keeps
# the files its predecessors wrote.
#
#   scripts/write-fixture.sh            write the fixture of this release's schema version
#   scripts/write-fixture.sh --force    replace it (only while that release is unreleased)
#
# Run it from a clean checkout of the release (the manifest records the commit).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
commit="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    commit="$commit-dirty"
fi
cargo build --quiet --example write_fixture
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
"$TARGET/debug/examples/write_fixture" --dir "$ROOT/tests/fixtures" --commit "$commit" "$@"
