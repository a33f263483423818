#!/usr/bin/env bash
# The homeserver benchmark: login through the service against login straight
# at Synapse, and room creation throughput, on one machine in one run.
#
#   scripts/bench-matrix.sh        (BENCH_LOGINS=30, BENCH_ROOMS=50)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOGINS=${BENCH_LOGINS:-30}
ROOMS=${BENCH_ROOMS:-50}
SYNAPSE="$ROOT/scripts/synapse.sh"

WORK=$(mktemp -d /tmp/messenger-chat-bench-matrix.XXXXXX)
SERVICE_PID=
cleanup() {
    [ -n "$SERVICE_PID" ] && kill -TERM "$SERVICE_PID" 2>/dev/null && wait "$SERVICE_PID" 2>/dev/null
    "$SYNAPSE" stop "$WORK/synapse" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "bench-matrix: building release binaries" >&2
(cd "$ROOT" && cargo build --release --quiet --bin messenger-chat --example bench_matrix)
"$SYNAPSE" install >&2
out=$("$SYNAPSE" start "$WORK/synapse")
SYNAPSE_URL=$(sed -n 's/^SYNAPSE_URL=//p' <<<"$out")
SECRET_FILE=$(sed -n 's/^SYNAPSE_SHARED_SECRET_FILE=//p' <<<"$out")

mkdir -p "$WORK/svc"
(cd "$WORK/svc" && exec env MESSENGER_CHAT_SERVER__LISTEN=127.0.0.1:0 \
    MESSENGER_CHAT_SERVER__METRICS_LISTEN=127.0.0.1:0 \
    MESSENGER_CHAT_MATRIX__HOMESERVER_URL="$SYNAPSE_URL" \
    MESSENGER_CHAT_MATRIX__REGISTRATION_SHARED_SECRET_FILE="$SECRET_FILE" \
    MESSENGER_CHAT_MATRIX__SYNC_WAIT_MS=0 \
    MESSENGER_CHAT_LIMITS__LOGIN_BURST=100000 \
    MESSENGER_CHAT_LOG__LEVEL=warn \
    "$ROOT/target/release/messenger-chat" serve >"$WORK/svc/out" 2>"$WORK/svc/err") &
SERVICE_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$WORK/svc/out" 2>/dev/null && break; sleep 0.1; done
URL=$(grep "listening on" "$WORK/svc/out" | awk '{print $NF}')
TOKEN=$(grep "API token" "$WORK/svc/out" | awk '{print $NF}')
[ -n "$URL" ] || { cat "$WORK/svc/err" >&2; exit 1; }

"$ROOT/target/release/examples/bench_matrix" "$URL" "$WORK/svc/data/tls/cert.pem" "$TOKEN" "$SYNAPSE_URL" "$LOGINS" "$ROOMS"
