#!/usr/bin/env bash
# The homeserver benchmark, on one machine in one run against one Synapse:
# login through the service against login straight at Synapse, and rooms
# per second through the service (matrix.concurrency = C) against the same
# work given to Synapse straight from a client with C requests in flight,
# for each C of BENCH_CONCURRENCY. Each C gets a fresh service of its own.
#
#   scripts/bench-matrix.sh   (BENCH_LOGINS=200, BENCH_ROOMS=60, BENCH_ROUNDS=4,
#                              BENCH_CONCURRENCY="4 8", BENCH_BCRYPT_ROUNDS=4)
#
# BENCH_BCRYPT_ROUNDS=12 measures logins at Synapse's default cost (see below);
# BENCH_LOGINS=0 measures the rooms only; BENCH_CONCURRENCY=4 only that
# concurrency; BENCH_BUILD=0 runs the release binaries already built.
#
# The same work on both sides: the direct client is the service's own
# Synapse adapter (examples/bench_matrix.rs), so Synapse gets the same
# createRoom bodies; the service's side waits for its rooms on the event
# log's long poll, which costs next to nothing. The rooms rows also show
# the CPU time Synapse, the service and the benchmark used per room on
# each side, Synapse's disk writes per room, and the load average.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOGINS=${BENCH_LOGINS:-200}
ROOMS=${BENCH_ROOMS:-60}
# Synapse's CPU for the same room moves by up to a quarter between the two
# sides of a run of 2 rounds; 4 rounds per side average it out.
ROUNDS=${BENCH_ROUNDS:-4}
CONCURRENCY=${BENCH_CONCURRENCY:-4 8}
SYNAPSE="$ROOT/scripts/synapse.sh"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

WORK=$(mktemp -d /tmp/messenger-chat-bench-matrix.XXXXXX)
SERVICE_PID=
stop_service() {
    if [ -n "$SERVICE_PID" ]; then
        kill -TERM "$SERVICE_PID" 2>/dev/null || true
        wait "$SERVICE_PID" 2>/dev/null || true
        SERVICE_PID=
    fi
}
cleanup() {
    stop_service
    "$SYNAPSE" stop "$WORK/synapse" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ "${BENCH_BUILD:-1}" != 0 ]; then
    echo "bench-matrix: building release binaries" >&2
    (cd "$ROOT" && cargo build --release --quiet --bin messenger-chat --example bench_matrix)
fi
"$SYNAPSE" install >&2
# BENCH_BCRYPT_ROUNDS=N (4 unless given): Synapse hashes passwords with N
# rounds of bcrypt instead of its default 12. Its login then takes milliseconds instead of hundreds, and its
# spread (about 44 ms at 12 rounds) no longer hides the 1 ms the login row
# judges; the service does the same on either setting (it hashes nothing at login).
BCRYPT_ROUNDS=${BENCH_BCRYPT_ROUNDS:-4}
out=$(SYNAPSE_BCRYPT_ROUNDS=$BCRYPT_ROUNDS "$SYNAPSE" start "$WORK/synapse")
SYNAPSE_URL=$(sed -n 's/^SYNAPSE_URL=//p' <<<"$out")
SECRET_FILE=$(sed -n 's/^SYNAPSE_SHARED_SECRET_FILE=//p' <<<"$out")
export BENCH_SYNAPSE_PID
BENCH_SYNAPSE_PID=$(cat "$WORK/synapse/pid")

echo "| measure | value |"
echo "|---|---|"
echo "| Synapse's bcrypt rounds (its password hashing at login) | $BCRYPT_ROUNDS (12 is its default) |"
logins=$LOGINS
for c in $CONCURRENCY; do
    svc="$WORK/svc$c"
    mkdir -p "$svc"
    (cd "$svc" && exec env MESSENGER_CHAT_SERVER__LISTEN=127.0.0.1:0 \
        MESSENGER_CHAT_SERVER__METRICS_LISTEN=127.0.0.1:0 \
        MESSENGER_CHAT_MATRIX__HOMESERVER_URL="$SYNAPSE_URL" \
        MESSENGER_CHAT_MATRIX__REGISTRATION_SHARED_SECRET_FILE="$SECRET_FILE" \
        MESSENGER_CHAT_MATRIX__SYNC_WAIT_MS=0 \
        MESSENGER_CHAT_MATRIX__CONCURRENCY="$c" \
        MESSENGER_CHAT_MATRIX__USER_PREFIX="c${c}u" \
        MESSENGER_CHAT_MATRIX__BOT_LOCALPART="benchbot$c" \
        MESSENGER_CHAT_LIMITS__LOGIN_BURST=100000 \
        MESSENGER_CHAT_LOG__LEVEL=warn \
        "$TARGET/release/messenger-chat" serve >"$svc/out" 2>"$svc/err") &
    SERVICE_PID=$!
    for _ in $(seq 100); do grep -q "listening on" "$svc/out" 2>/dev/null && break; sleep 0.1; done
    URL=$(grep "listening on" "$svc/out" | awk '{print $NF}')
    TOKEN=$(grep "API token" "$svc/out" | awk '{print $NF}')
    [ -n "$URL" ] || { cat "$svc/err" >&2; exit 1; }
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    BENCH_SERVICE_PID=$SERVICE_PID "$TARGET/release/examples/bench_matrix" "$URL" "$svc/data/tls/cert.pem" "$TOKEN" "$SYNAPSE_URL" "$SECRET_FILE" \
        "$logins" "$ROOMS" "$c" "$ROUNDS"
    # Figures on a shared machine mean little without the load they saw.
    echo "| load average before / after, concurrency $c | $load_before / $(cut -d' ' -f1-3 /proc/loadavg) |"
    logins=0
    stop_service
done
