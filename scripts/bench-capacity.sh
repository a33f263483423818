#!/usr/bin/env bash
# Capacity of one big organization: 1,000,000 rooms written in the format of
# the previous release (schema 1), then, with the release binary:
#   - the first start, which migrates them (time to "listening on", and the
#     migration's own time from its log line), and the memory it took;
#   - a second start on the migrated file: time to "listening on", RSS at rest;
#   - GetRooms, first page and last page (limit 50), median of several;
#   - RSS after the deep page.
#
#   scripts/bench-capacity.sh            build, seed, measure, print
#
# Knobs (environment): CAPACITY_ROOMS (default 1000000), CAPACITY_RUNS (7
# requests per page for the medians, on one kept-alive HTTPS connection). Timings are printed, not judged: on a
# shared machine they move; compare runs made on the same machine.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOMS=${CAPACITY_ROOMS:-1000000}
RUNS=${CAPACITY_RUNS:-7}

log() { printf 'bench-capacity: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
command -v curl >/dev/null || die "curl is needed"

WORK=$(mktemp -d /tmp/messenger-chat-capacity.XXXXXX)
PID=
cleanup() {
    if [ -n "$PID" ]; then
        kill -TERM "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building release binaries"
(cd "$ROOT" && timeout 1800 cargo build --release --quiet --bin messenger-chat --example bench_seed)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/messenger-chat
SEED_BIN=$TARGET/release/examples/bench_seed

# Seeds $DATA with ROOMS rooms; $1 is --old-schema or nothing. Sets SEED_MS, DB_MIB, BIG_ORG, TOKEN.
seed() {
    local t0
    rm -rf "$DATA"
    t0=$(date +%s%N)
    # shellcheck disable=SC2086 # $1 is one flag or none
    timeout 1800 "$SEED_BIN" --data-dir "$DATA" --small 1 --big "$ROOMS" $1 >"$WORK/seed.out"
    SEED_MS=$((($(date +%s%N) - t0) / 1000000))
    BIG_ORG=$(sed -n 's/^big_org=//p' "$WORK/seed.out")
    TOKEN=$(sed -n 's/^token=//p' "$WORK/seed.out")
    [ -n "$TOKEN" ] || die "bench_seed printed no token"
    DB_MIB=$(du -m "$DATA/messenger-chat.redb" | cut -f1)
}

# Starts the service; sets PID and STARTUP_MS (spawn to "listening on").
start() {
    local out=$WORK/service.$1 t0 now
    mkdir -p "$WORK/cwd"
    t0=$(date +%s%N)
    (
        cd "$WORK/cwd"
        export MESSENGER_CHAT_SERVER__LISTEN=127.0.0.1:0
        export MESSENGER_CHAT_STORAGE__DATA_DIR="$DATA"
        export MESSENGER_CHAT_MATRIX__HOMESERVER_URL=http://127.0.0.1:9
        export MESSENGER_CHAT_LOG__FORMAT=json
        exec "$BIN" serve >"$out" 2>"$out.err"
    ) &
    PID=$!
    while ! grep -q 'listening on ' "$out" 2>/dev/null; do
        kill -0 "$PID" 2>/dev/null || { cat "$out" "$out.err" >&2; die "the service exited"; }
        now=$(date +%s%N)
        [ $(((now - t0) / 1000000000)) -lt 1800 ] || die "the service did not start within 30 minutes"
        sleep 0.001
    done
    now=$(date +%s%N)
    STARTUP_MS=$(awk -v a="$t0" -v b="$now" 'BEGIN{printf "%.0f", (b - a) / 1e6}')
    URL=$(grep -m1 'listening on ' "$out" | awk '{print $NF}')
    ERR=$out.err
}
stop() {
    kill -TERM "$PID"
    wait "$PID" || die "the service did not stop cleanly"
    PID=
}
rss_mib() { awk '/^VmRSS:/{printf "%.1f", $2 / 1024}' "/proc/$PID/status"; }
hwm_mib() { awk '/^VmHWM:/{printf "%.1f", $2 / 1024}' "/proc/$PID/status"; }

# Median time in ms of RUNS GETs of a path over one kept-alive connection
# (a first, unmeasured GET pays for the TLS handshake); each must answer 200.
median_ms() {
    local path=$1 i args=()
    for i in $(seq 0 "$RUNS"); do
        args+=(-o "$WORK/page.$i.json" "$URL$path")
    done
    curl -sS --max-time 120 --cacert "$DATA/tls/cert.pem" -H "Authorization: Bearer $TOKEN" \
        -w '%{http_code} %{time_total}\n' "${args[@]}" >"$WORK/times" || die "GET $path failed"
    if grep -qv '^200 ' "$WORK/times"; then
        die "GET $path answered $(grep -v '^200 ' "$WORK/times" | head -1): $(head -c 300 "$WORK/page.0.json")"
    fi
    cp "$WORK/page.0.json" "$WORK/page.json"
    tail -n +2 "$WORK/times" | awk '{print $2}' | sort -g |
        awk '{a[NR] = $1} END{printf "%.1f", a[int((NR + 1) / 2)] * 1000}'
}

# On a started service: RSS at rest, the first and the last page, RSS
# after the deep pages; stops it. Sets REST, FIRST, LAST, DEEP.
measure() {
    sleep 1
    REST=$(rss_mib)
    FIRST=$(median_ms "/v1/chatrooms?organization_id=$BIG_ORG&limit=50")
    grep -q "\"total\":$ROOMS" "$WORK/page.json" || die "the organization does not report $ROOMS rooms"
    grep -q '"topic":""' "$WORK/page.json" || die "the rooms show no empty topic"
    LAST=$(median_ms "/v1/chatrooms?organization_id=$BIG_ORG&limit=50&offset=$((ROOMS - 50))")
    DEEP=$(rss_mib)
    stop
}

DATA=$WORK/data
log "seeding $ROOMS rooms in one organization, as schema 1 (the previous release) wrote them"
seed --old-schema
OLD_SEED_MS=$SEED_MS OLD_DB_MIB=$DB_MIB
log "first start: migrating $ROOMS rooms"
start migrate
MIGRATE_START_MS=$STARTUP_MS
MIGRATION_MS=$(grep -m1 'migrated the database' "$ERR" | sed -n 's/.*"elapsed_ms":\([0-9]*\).*/\1/p')
[ -n "$MIGRATION_MS" ] || die "no migration was logged: $(head -c 2000 "$ERR")"
COMPACT_MS=$(grep -m1 'compacted the migrated database' "$ERR" | sed -n 's/.*"elapsed_ms":\([0-9]*\).*/\1/p')
MIGRATE_HWM=$(hwm_mib)
stop
log "second start: the migrated file"
start again
M_START=$STARTUP_MS
measure
M_REST=$REST M_FIRST=$FIRST M_LAST=$LAST M_DEEP=$DEEP M_MIB=$(du -m "$DATA/messenger-chat.redb" | cut -f1)

# The same measurements on a file this release wrote itself, in the same
# run: what the migrated file is compared with.
log "seeding $ROOMS rooms as this release writes them"
seed ""
start fresh
F_START=$STARTUP_MS
measure

echo
echo "messenger-chat capacity: $ROOMS rooms in one organization, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
printf '%-44s %s\n' "seeding schema 1 (straight into redb)" "$OLD_SEED_MS ms, file $OLD_DB_MIB MiB"
printf '%-44s %s\n' "first start, migrating schema 1 -> 2" \
    "$MIGRATE_START_MS ms to listening: migration $MIGRATION_MS ms (one transaction), compaction ${COMPACT_MS:-?} ms; peak RSS $MIGRATE_HWM MiB; file $M_MIB MiB after"
printf '\n%-44s %22s %22s\n' "" "migrated from schema 1" "written by this release"
printf '%-44s %22s %22s\n' "start to listening" "$M_START ms" "$F_START ms"
printf '%-44s %22s %22s\n' "RSS at rest" "$M_REST MiB" "$REST MiB"
printf '%-44s %22s %22s\n' "GetRooms first page (limit 50), median" "$M_FIRST ms" "$FIRST ms"
printf '%-44s %22s %22s\n' "GetRooms last page (offset $((ROOMS - 50))), median" "$M_LAST ms" "$LAST ms"
printf '%-44s %22s %22s\n' "RSS after the deep pages" "$M_DEEP MiB" "$DEEP MiB"
echo "(medians of $RUNS requests on one kept-alive HTTPS connection; the file this release wrote is $DB_MIB MiB)"
