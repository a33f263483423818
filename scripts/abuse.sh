#!/usr/bin/env bash
# Abuse benchmark: the release binary under hostile clients while a wrk load
# reads a room with a PAT, against the same load without them, in one run.
#
#   scripts/abuse.sh            build, seed, load, abuse, SIGTERM, print the table
#
# The phases, in order, all against one server process:
#   1. baseline: wrk alone (after a 2 s warm-up);
#   1b. bodies without rights: ABUSE_NO_RIGHTS POST /v1/chatrooms at once
#      (kept at that count for the whole wrk run), each a whole body just
#      under server.max_body_bytes, from a PAT whose user may create no room;
#      the same wrk load alongside; the server's VmHWM right after;
#   2. abuse: examples/abuse.rs opens, at the same moment, ABUSE_SLOWLORIS
#      slowloris connections and ABUSE_BODIES unauthenticated stalled bodies
#      of ABUSE_BODY_MIB MiB (both kept at that count for the whole wrk run:
#      a connection the server closes is replaced), ABUSE_CREDENTIALS
#      concurrent GET /v1/user/credentials (one user and PAT each, so that the
#      Argon2 bound, not the per-user rate limit, is what answers), and one
#      POST /v1/chatrooms/{id}/users naming ABUSE_IDS ids; the same wrk load
#      runs alongside; then the abusers wait until the server has closed every
#      one of their connections;
#   3. baseline again: wrk alone (the reference is the mean of 1 and 3, so a
#      drift in the machine's load shows and does not decide alone);
#   4. SIGTERM while a second wave of the same abuse and the wrk load run;
#      the time until the process has exited.
# The server's resident memory (VmRSS, and VmHWM, its peak) and open file
# descriptors are sampled every 0.2 s throughout.
#
# Knobs (environment): ABUSE_DURATION (20s: each wrk run, and the time the
# abusers keep their counts), ABUSE_CONNECTIONS (64), ABUSE_THREADS (2),
# ABUSE_SLOWLORIS (1000), ABUSE_BODIES (50), ABUSE_BODY_MIB (20),
# ABUSE_CREDENTIALS (200), ABUSE_IDS (3000000; 0: no such request),
# ABUSE_NO_RIGHTS (32; 0: no such phase), ABUSE_NO_RIGHTS_BYTES (unset:
# server.max_body_bytes - 1024),
# ABUSE_NICE (19), ABUSE_TARGET (unset: the native release build, as
# scripts/bench.sh; x86_64-unknown-linux-musl: the static binary install.sh
# ships), ABUSE_LOG_LEVEL (info), ABUSE_STRICT (1: exit 3 when a target is
# missed).
#
# The abusers share the machine's cores with the server and wrk, which a
# real attacker's machines would not: encrypting 50 bodies of 20 MiB at full
# speed alone took the wrk p99 from 15 to 135-150 ms on 2 cores. So they
# run at nice 19 (ABUSE_NICE), and the table shows the CPU they used.
#
# The server runs with its built-in defaults except: a data directory in a
# temporary directory, free ports, a homeserver URL on a closed loopback port
# (nothing leaves the machine), and any MESSENGER_CHAT_* variable set by the
# caller, such as MESSENGER_CHAT_SERVER__IDLE_TIMEOUT_SECS=10 for a shorter
# run: the table then marks that key as changed and judges against the value
# in force.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${ABUSE_DURATION:-20s}
CONNECTIONS=${ABUSE_CONNECTIONS:-64}
THREADS=${ABUSE_THREADS:-2}
SLOWLORIS=${ABUSE_SLOWLORIS:-1000}
BODIES=${ABUSE_BODIES:-50}
BODY_MIB=${ABUSE_BODY_MIB:-20}
CREDENTIALS=${ABUSE_CREDENTIALS:-200}
IDS=${ABUSE_IDS:-3000000}
NO_RIGHTS=${ABUSE_NO_RIGHTS:-32}
LOG_LEVEL=${ABUSE_LOG_LEVEL:-info}
NICE=${ABUSE_NICE:-19}
BUILD_TARGET=${ABUSE_TARGET:-}
SECONDS_RUN=${DURATION%s}

# Targets.
MIN_KEPT_PCT=80
MAX_P99_MS=50
MAX_RSS_MIB=256
MAX_NO_RIGHTS_RSS_MIB=400

log() { printf 'abuse: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

WORK=$(mktemp -d /tmp/messenger-chat-abuse.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools ------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
    log "installing wrk"
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    timeout 300 $SUDO apt-get install -y -q wrk </dev/null >/dev/null ||
        { timeout 300 $SUDO apt-get update -q </dev/null >/dev/null &&
            timeout 300 $SUDO apt-get install -y -q wrk </dev/null >/dev/null; } ||
        die "cannot install wrk (Debian package wrk)"
fi
command -v curl >/dev/null || die "curl is needed to check the endpoint before loading it"

# The server holds a descriptor per connection: give it what the systemd
# unit gives it (LimitNOFILE=8448), or as much as this shell may.
ulimit -n 8448 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- build ------------------------------------------------------------------
log "building release binaries"
(cd "$ROOT" && timeout 1800 cargo build --release --quiet \
    --bin messenger-chat --example bench_seed --example abuse)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/messenger-chat
if [ -n "$BUILD_TARGET" ]; then
    # The server as install.sh builds it (ABUSE_TARGET=x86_64-unknown-linux-musl);
    # the seeder and the abusers stay native.
    log "building the server for $BUILD_TARGET"
    (cd "$ROOT" && timeout 3600 cargo build --release --quiet --target "$BUILD_TARGET" --bin messenger-chat)
    BIN=$TARGET/$BUILD_TARGET/release/messenger-chat
fi
SEED_BIN=$TARGET/release/examples/bench_seed
ABUSE_BIN=$TARGET/release/examples/abuse

# --- configuration ----------------------------------------------------------
# cwd is a scratch directory so no ./config.toml is picked up.
DATA=$WORK/data
mkdir -p "$WORK/cwd"
export MESSENGER_CHAT_SERVER__LISTEN=127.0.0.1:0
export MESSENGER_CHAT_SERVER__METRICS_LISTEN=127.0.0.1:0
# Every client of this run speaks from 127.0.0.1: no cap per address.
export MESSENGER_CHAT_SERVER__MAX_CONNECTIONS_PER_ADDRESS=0
export MESSENGER_CHAT_STORAGE__DATA_DIR="$DATA"
export MESSENGER_CHAT_MATRIX__HOMESERVER_URL=http://127.0.0.1:9
export MESSENGER_CHAT_LOG__LEVEL="$LOG_LEVEL"
export MESSENGER_CHAT_LOG__FORMAT=json
# The values in force, as the binary reads them (check-config prints JSON).
(cd "$WORK/cwd" && "$BIN" check-config) >"$WORK/config.json" || die "check-config failed"
(cd "$WORK/cwd" && env -u MESSENGER_CHAT_SERVER__HEADER_TIMEOUT_SECS -u MESSENGER_CHAT_SERVER__BODY_TIMEOUT_SECS \
    -u MESSENGER_CHAT_SERVER__IDLE_TIMEOUT_SECS -u MESSENGER_CHAT_SERVER__SHUTDOWN_GRACE_SECS \
    "$BIN" check-config) >"$WORK/defaults.json" || die "check-config failed"
key() { sed -n "s/^ *\"$1\": \([0-9]*\),\{0,1\}$/\1/p" "${2:-$WORK/config.json}" | head -n1; }
HEADER_TIMEOUT=$(key header_timeout_secs)
BODY_TIMEOUT=$(key body_timeout_secs)
IDLE_TIMEOUT=$(key idle_timeout_secs)
GRACE=$(key shutdown_grace_secs)
MAX_USERS=$(key max_users_per_request)
MAX_BODY=$(key max_body_bytes)
BUDGET=$(key body_budget_bytes)
NO_RIGHTS_BYTES=${ABUSE_NO_RIGHTS_BYTES:-$((MAX_BODY - 1024))}
[ -n "$HEADER_TIMEOUT" ] && [ -n "$IDLE_TIMEOUT" ] && [ -n "$GRACE" ] || die "cannot read the configuration"
# "10 s" when it is the shipped default, "5 s (default 10 s, changed for this run)" otherwise.
described() {
    local now default
    now=$(key "$1")
    default=$(key "$1" "$WORK/defaults.json")
    if [ "$now" = "$default" ]; then echo "$now s"; else echo "$now s (default $default s, changed for this run)"; fi
}

# --- seed -------------------------------------------------------------------
# One user more than the credentials requests take: its PAT sends the bodies
# without rights (a member of the small organization: it may create no room).
log "seeding 100 rooms, $((CREDENTIALS + 2)) users with a PAT each"
timeout 600 "$SEED_BIN" --data-dir "$DATA" --small 100 --big 0 \
    --users "$((CREDENTIALS + 1))" --tokens-file "$WORK/all-tokens" >"$WORK/seed.out"
head -n "$CREDENTIALS" "$WORK/all-tokens" >"$WORK/tokens"
NO_RIGHTS_TOKEN=$(tail -n 1 "$WORK/all-tokens")
seed_value() { sed -n "s/^$1=//p" "$WORK/seed.out"; }
ROOM=$(seed_value room)
TOKEN=$(seed_value token)
if [ -z "$TOKEN" ] || [ -z "$ROOM" ]; then die "bench_seed printed no token or room"; fi

# --- server -----------------------------------------------------------------
log "starting the service"
(cd "$WORK/cwd" && exec "$BIN" serve >"$WORK/service.out" 2>"$WORK/service.err") &
SERVICE_PID=$!
PIDS+=("$SERVICE_PID")
for _ in $(seq 1 300); do
    grep -q 'listening on ' "$WORK/service.out" 2>/dev/null && break
    kill -0 "$SERVICE_PID" 2>/dev/null || { cat "$WORK/service.err" >&2; die "the service did not start"; }
    sleep 0.1
done
URL=$(grep -m1 'listening on ' "$WORK/service.out" | awk '{print $NF}')
[ -n "$URL" ] || die "the service did not say where it listens"
CERT=$DATA/tls/cert.pem
ROOM_PATH="/v1/chatrooms/$ROOM"
code=$(curl -sS --max-time 10 --cacert "$CERT" -H "Authorization: Bearer $TOKEN" -o "$WORK/room.json" \
    -w '%{http_code}' "$URL$ROOM_PATH") || die "the service does not answer $ROOM_PATH"
[ "$code" = 200 ] || die "GET $ROOM_PATH answered $code: $(head -c 300 "$WORK/room.json")"

# Samples: seconds since the epoch, VmRSS KiB, VmHWM KiB, open descriptors.
(
    while [ -r "/proc/$SERVICE_PID/status" ]; do
        rss=$(awk '/^VmRSS:/{r=$2} /^VmHWM:/{h=$2} END{print r, h}' "/proc/$SERVICE_PID/status" 2>/dev/null) || break
        fds=$(find "/proc/$SERVICE_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        [ -n "$rss" ] && echo "$(date +%s.%N) $rss $fds"
        sleep 0.2
    done
) >"$WORK/samples" &
PIDS+=($!)
now() { date +%s.%N; }
# Peak RSS (MiB) and peak open descriptors between two times.
peaks() {
    awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b && NF == 4 {if ($2 > r) r = $2; if ($4 > f) f = $4}
        END{printf "%.1f %d\n", r / 1024, f}' "$WORK/samples"
}
# CPU seconds (user + system) the server has used so far.
server_cpu() { awk '{sub(/.*\) /, ""); printf "%.2f\n", ($12 + $13) / 100}' "/proc/$SERVICE_PID/stat"; }

# --- load -------------------------------------------------------------------
cat >"$WORK/load.lua" <<'LUA'
wrk.headers["Authorization"] = "Bearer " .. os.getenv("ABUSE_TOKEN")
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %.1f %.3f %.3f %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.status, e.connect + e.read + e.write + e.timeout))
end
LUA
wrk_run() {
    ABUSE_TOKEN=$TOKEN timeout $((SECONDS_RUN + 120)) wrk -c"$CONNECTIONS" -t"$THREADS" -d"$1" --latency \
        -s "$WORK/load.lua" "$URL$ROOM_PATH" </dev/null
}
# Echoes "req/s p50 p99 non2xx errors" of a finished wrk output file.
result_of() { awk '/^RESULT /{print $2, $3, $4, $5, $6; found = 1} END{exit !found}' "$1"; }

IDS_ARGS=()
[ "$IDS" = 0 ] || IDS_ARGS=(--ids "$IDS" --ids-token "$TOKEN" --room "$ROOM")
abusers() {
    nice -n "$NICE" "$ABUSE_BIN" --url "$URL" --cert "$CERT" --window "$1" \
        --slowloris "$SLOWLORIS" --bodies "$BODIES" --body-mib "$BODY_MIB" \
        --credentials-tokens "$WORK/tokens" "${IDS_ARGS[@]}" \
        --header-timeout "$HEADER_TIMEOUT" --idle-timeout "$IDLE_TIMEOUT" "${@:2}" </dev/null
}

no_rights_abusers() {
    nice -n "$NICE" "$ABUSE_BIN" --url "$URL" --cert "$CERT" --window "$SECONDS_RUN" \
        --slowloris 0 --bodies 0 --ids 0 --no-rights "$NO_RIGHTS" --no-rights-token "$NO_RIGHTS_TOKEN" \
        --no-rights-bytes "$NO_RIGHTS_BYTES" --header-timeout "$HEADER_TIMEOUT" --idle-timeout "$IDLE_TIMEOUT" </dev/null
}

LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "baseline: wrk -c$CONNECTIONS -t$THREADS -d$DURATION on $ROOM_PATH"
wrk_run 2s >/dev/null
T0=$(now)
CPU0=$(server_cpu)
wrk_run "$DURATION" >"$WORK/wrk.base1"
T1=$(now)
CPU1=$(server_cpu)
read -r B1_RPS B1_P50 B1_P99 B1_BAD B1_ERR < <(result_of "$WORK/wrk.base1") || die "wrk gave no baseline result"

if [ "$NO_RIGHTS" != 0 ]; then
    log "bodies without rights: $NO_RIGHTS x $NO_RIGHTS_BYTES B to POST /v1/chatrooms; wrk alongside"
    no_rights_abusers >"$WORK/norights.out" 2>"$WORK/norights.err" &
    NR_PID=$!
    PIDS+=("$NR_PID")
    TN0=$(now)
    CPUN0=$(server_cpu)
    wrk_run "$DURATION" >"$WORK/wrk.norights"
    CPUN1=$(server_cpu)
    read -r N_RPS N_P50 N_P99 N_BAD N_ERR < <(result_of "$WORK/wrk.norights") || die "wrk gave no result"
    wait "$NR_PID" || { cat "$WORK/norights.err" >&2; die "the bodies without rights failed"; }
    TN1=$(now)
    HWM_NO_RIGHTS=$(awk '/^VmHWM:/{printf "%.1f", $2 / 1024}' "/proc/$SERVICE_PID/status")
    sleep 1
fi

log "abuse: $SLOWLORIS slowloris, $BODIES x $BODY_MIB MiB bodies, $CREDENTIALS credentials, $IDS ids; wrk alongside"
abusers "$SECONDS_RUN" >"$WORK/abuse.out" 2>"$WORK/abuse.err" &
ABUSE_PID=$!
PIDS+=("$ABUSE_PID")
T2=$(now)
CPU2=$(server_cpu)
wrk_run "$DURATION" >"$WORK/wrk.abuse"
T3=$(now)
CPU3=$(server_cpu)
read -r A_RPS A_P50 A_P99 A_BAD A_ERR < <(result_of "$WORK/wrk.abuse") || die "wrk gave no result under abuse"
log "waiting for the server to close every abusive connection (up to $((HEADER_TIMEOUT + IDLE_TIMEOUT + 15)) s)"
wait "$ABUSE_PID" || { cat "$WORK/abuse.err" >&2; die "the abusers failed"; }
T4=$(now)
RSS_AFTER_ABUSE=$(awk '/^VmRSS:/{printf "%.1f", $2 / 1024}' "/proc/$SERVICE_PID/status")

log "baseline again"
sleep 1
wrk_run "$DURATION" >"$WORK/wrk.base2"
read -r B2_RPS B2_P50 B2_P99 B2_BAD B2_ERR < <(result_of "$WORK/wrk.base2") || die "wrk gave no second baseline"
T5=$(now)
HWM_MIB=$(awk '/^VmHWM:/{printf "%.1f", $2 / 1024}' "/proc/$SERVICE_PID/status")

# --- SIGTERM under abuse ----------------------------------------------------
log "SIGTERM while the abuse and the load run again"
abusers 30 --wait-max 5 >"$WORK/abuse2.out" 2>"$WORK/abuse2.err" &
ABUSE2_PID=$!
PIDS+=("$ABUSE2_PID")
ABUSE_TOKEN=$TOKEN timeout 120 wrk -c"$CONNECTIONS" -t"$THREADS" -d30s -s "$WORK/load.lua" "$URL$ROOM_PATH" \
    </dev/null >/dev/null 2>&1 &
WRK2_PID=$!
PIDS+=("$WRK2_PID")
sleep 3
OPEN_AT_TERM=$(find "/proc/$SERVICE_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
HWM_MIB=$(awk '/^VmHWM:/{printf "%.1f", $2 / 1024}' "/proc/$SERVICE_PID/status")
TERM_AT=$(now)
kill -TERM "$SERVICE_PID"
set +e
wait "$SERVICE_PID"
EXIT_CODE=$?
set -e
EXITED_AT=$(now)
kill -TERM "$ABUSE2_PID" "$WRK2_PID" 2>/dev/null || true
wait "$ABUSE2_PID" "$WRK2_PID" 2>/dev/null || true
LOAD_AT_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report -----------------------------------------------------------------
FAILED=0
verdict() { if [ "$1" = 1 ]; then VERDICT=PASS; else FAILED=1; VERDICT=MISS; fi; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN{print (a >= b) ? 1 : 0}'; }
lt() { awk -v a="$1" -v b="$2" 'BEGIN{print (a < b) ? 1 : 0}'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN{print (a <= b) ? 1 : 0}'; }
calc() { awk "BEGIN{printf \"$1\", $2}"; }

REF_RPS=$(calc "%.1f" "($B1_RPS + $B2_RPS) / 2")
KEPT=$(calc "%.0f" "100 * $A_RPS / $REF_RPS")
read -r RSS_BASE FDS_BASE < <(peaks "$T0" "$T1")
read -r RSS_ABUSE FDS_ABUSE < <(peaks "$T2" "$T4")
EXIT_S=$(calc "%.2f" "$EXITED_AT - $TERM_AT")
WARNINGS=$(grep -c '"level":"WARN"' "$WORK/service.err" || true)
ERRORS=$(grep -c '"level":"ERROR"' "$WORK/service.err" || true)

row() { printf '%-44s %10s %9s %9s %12s  %s\n' "$@"; }
echo
echo "messenger-chat abuse benchmark (server: ${BUILD_TARGET:-native} release build): $(nproc) CPUs, load average $LOAD_AT_START at the start," \
    "$LOAD_AT_END at the end; $(date -u +%FT%TZ)"
echo "wrk -c$CONNECTIONS -t$THREADS -d$DURATION GET $ROOM_PATH with a PAT; timeouts in force:" \
    "header $(described header_timeout_secs), body $(described body_timeout_secs)," \
    "idle $(described idle_timeout_secs), shutdown grace $(described shutdown_grace_secs)"
echo "abusers on the same cores at nice $NICE (their CPU is in their table); $SLOWLORIS slowloris and $BODIES bodies" \
    "kept open for $DURATION, $CREDENTIALS credentials at once, one request of $IDS ids"
echo "targets: >= $MIN_KEPT_PCT% of the req/s without abuse, p99 < $MAX_P99_MS ms, RSS < $MAX_RSS_MIB MiB," \
    "every abusive connection closed within its timeout (+1 s), exit within the shutdown grace after SIGTERM"
echo
row "wrk load" "req/s" "p50 ms" "p99 ms" "server CPU s" "non-2xx / socket errors"
row "without abuse (before)" "$B1_RPS" "$B1_P50" "$B1_P99" "$(calc "%.1f" "$CPU1 - $CPU0")" "$B1_BAD / $B1_ERR"
if [ "$NO_RIGHTS" != 0 ]; then
    row "under bodies without rights" "$N_RPS" "$N_P50" "$N_P99" "$(calc "%.1f" "$CPUN1 - $CPUN0")" "$N_BAD / $N_ERR"
fi
row "under abuse" "$A_RPS" "$A_P50" "$A_P99" "$(calc "%.1f" "$CPU3 - $CPU2")" "$A_BAD / $A_ERR"
row "without abuse (after)" "$B2_RPS" "$B2_P50" "$B2_P99" "" "$B2_BAD / $B2_ERR"
echo
verdict "$(ge "$KEPT" "$MIN_KEPT_PCT")"
printf '%-44s %s  %s\n' "req/s kept under abuse" "$KEPT% of $REF_RPS (mean of before and after)" "$VERDICT"
verdict "$(lt "$A_P99" "$MAX_P99_MS")"
printf '%-44s %s  %s\n' "p99 under abuse" "$A_P99 ms" "$VERDICT"
verdict "$(lt "$HWM_MIB" "$MAX_RSS_MIB")"
printf '%-44s %s  %s\n' "server peak RSS (VmHWM, whole run)" \
    "$HWM_MIB MiB; sampled: $RSS_BASE MiB under load alone, $RSS_ABUSE MiB under abuse, $RSS_AFTER_ABUSE MiB after" \
    "$VERDICT"
printf '%-44s %s\n' "server open descriptors (peak)" "$FDS_BASE under load alone, $FDS_ABUSE under abuse"
if [ "$NO_RIGHTS" != 0 ]; then
    echo
    KEPT_NR=$(calc "%.0f" "100 * $N_RPS / $REF_RPS")
    read -r RSS_NR _ < <(peaks "$TN0" "$TN1")
    echo "bodies without rights: $NO_RIGHTS at once, each $NO_RIGHTS_BYTES bytes (server.max_body_bytes $MAX_BODY," \
        "server.body_budget_bytes $BUDGET), kept open for $DURATION"
    verdict "$(ge "$KEPT_NR" "$MIN_KEPT_PCT")"
    printf '%-44s %s  %s\n' "req/s kept under bodies without rights" "$KEPT_NR% of $REF_RPS" "$VERDICT"
    verdict "$(lt "$HWM_NO_RIGHTS" "$MAX_NO_RIGHTS_RSS_MIB")"
    printf '%-44s %s  %s\n' "server peak RSS (VmHWM, up to here)" \
        "$HWM_NO_RIGHTS MiB (target < $MAX_NO_RIGHTS_RSS_MIB); sampled: $RSS_NR MiB" "$VERDICT"
    grep -v '^closed_within_timeouts=' "$WORK/norights.out"
    NR_VERDICT=$(sed -n 's/^closed_within_timeouts=//p' "$WORK/norights.out")
    verdict "$([ "$NR_VERDICT" = PASS ] && echo 1 || echo 0)"
    printf '%-44s %s\n' "every body without rights answered and closed" "$VERDICT"
fi
echo
grep -v '^closed_within_timeouts=' "$WORK/abuse.out"
ABUSE_VERDICT=$(sed -n 's/^closed_within_timeouts=//p' "$WORK/abuse.out")
verdict "$([ "$ABUSE_VERDICT" = PASS ] && echo 1 || echo 0)"
printf '%-44s %s\n' "every abusive connection closed in time" "$VERDICT"
echo
verdict "$(le "$EXIT_S" "$GRACE")"
printf '%-44s %s  %s\n' "SIGTERM to exit, under a second wave" \
    "$EXIT_S s (grace $GRACE s; exit status $EXIT_CODE; $OPEN_AT_TERM descriptors open at SIGTERM)" "$VERDICT"
printf '%-44s %s\n' "server log" "$WARNINGS warnings, $ERRORS errors"
grep '"level":"\(WARN\|ERROR\)"' "$WORK/service.err" | sed 's/^/    /' | head -n 10
printf '%-44s %s\n' "limits in force" "rooms.max_users_per_request $MAX_USERS, server.max_body_bytes $MAX_BODY"
echo
if [ "$FAILED" = 0 ]; then
    echo "all targets met"
else
    echo "some targets missed"
    if [ "${ABUSE_STRICT:-0}" = 1 ]; then exit 3; fi
fi
