#!/usr/bin/env bash
# `cargo test` against a real, fresh Synapse: installs the pinned Synapse
# and schemathesis (reused when present), starts Synapse in a new temporary
# directory, runs the tests with SYNAPSE_URL, SYNAPSE_SHARED_SECRET_FILE,
# SYNAPSE_DIR, SYNAPSE_SCRIPT and SCHEMATHESIS exported (tests that simulate
# an outage run "$SYNAPSE_SCRIPT stop|start $SYNAPSE_DIR"; tests/schemathesis.rs
# runs "$SCHEMATHESIS"), and stops Synapse whatever the outcome. Arguments go
# to `cargo test`.
#
#   scripts/test-with-synapse.sh                 every test
#   scripts/test-with-synapse.sh --test matrix_client
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SYNAPSE="$ROOT/scripts/synapse.sh"

"$SYNAPSE" install
SCHEMATHESIS="$("$ROOT/scripts/schemathesis.sh" install | sed -n 's/^SCHEMATHESIS=//p')"
export SCHEMATHESIS
dir="$(mktemp -d -t messenger-chat-synapse.XXXXXX)"

cleanup() {
    local status=$?
    "$SYNAPSE" stop "$dir" >/dev/null 2>&1 || true
    if ((status != 0)) && [[ -f "$dir/homeserver.log" ]]; then
        echo "--- last lines of Synapse's log ($dir/homeserver.log) ---" >&2
        tail -n 30 "$dir/homeserver.log" >&2 || true
    fi
    rm -rf "$dir"
    exit "$status"
}
trap cleanup EXIT

started=$EPOCHREALTIME
out="$("$SYNAPSE" start "$dir")"
SYNAPSE_URL="$(sed -n 's/^SYNAPSE_URL=//p' <<<"$out")"
SYNAPSE_SHARED_SECRET_FILE="$(sed -n 's/^SYNAPSE_SHARED_SECRET_FILE=//p' <<<"$out")"
SYNAPSE_DIR="$dir"
SYNAPSE_SCRIPT="$SYNAPSE"
export SYNAPSE_URL SYNAPSE_SHARED_SECRET_FILE SYNAPSE_DIR SYNAPSE_SCRIPT
awk -v url="$SYNAPSE_URL" -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "Synapse at %s, ready after %.1f s\n", url, b - a }'

cd "$ROOT"
cargo test "$@" </dev/null
