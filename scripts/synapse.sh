#!/usr/bin/env bash
# A real Synapse for the tests and for local development.
#
#   scripts/synapse.sh install       pinned Synapse in .venv-synapse/ (reused when already at the pin)
#   scripts/synapse.sh start DIR     config + data in DIR, started in the background; prints
#                                    SYNAPSE_URL=… and SYNAPSE_SHARED_SECRET_FILE=… lines.
#                                    On an existing DIR it restarts on the same port and data,
#                                    which the tests use to simulate an outage.
#   scripts/synapse.sh stop DIR      SIGTERM, then SIGKILL after 20 s
# SYNAPSE_BCRYPT_ROUNDS=N (when a DIR is first started): Synapse's bcrypt_rounds
# instead of its default 12 (scripts/bench-matrix.sh, BENCH_BCRYPT_ROUNDS).
#
# Reads no stdin; every command may be repeated.
set -euo pipefail

SYNAPSE_VERSION="1.163.2"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SYNAPSE_VENV:-$ROOT/.venv-synapse}"
PY="$VENV/bin/python"
START_TIMEOUT_SECS=120
STOP_GRACE_SECS=20

die() { echo "synapse.sh: $*" >&2; exit 1; }

installed_version() {
    [[ -x "$PY" ]] || return 1
    "$PY" -c 'import importlib.metadata as m; print(m.version("matrix-synapse"))' 2>/dev/null
}

cmd_install() {
    if [[ "$(installed_version || true)" == "$SYNAPSE_VERSION" ]]; then
        echo "synapse.sh: matrix-synapse $SYNAPSE_VERSION already in $VENV"
        return
    fi
    if [[ ! -x "$PY" ]]; then
        python3 -m venv "$VENV"
    fi
    "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip </dev/null
    "$PY" -m pip install --quiet --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION" </dev/null
    echo "synapse.sh: installed matrix-synapse $(installed_version) in $VENV"
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# A live Synapse: the process exists, is not a zombie (a killed Synapse whose
# new parent never reaps it still answers kill -0) and runs the homeserver
# (the pid may have been reused).
alive() {
    local pid="$1" state
    [[ -r "/proc/$pid/stat" ]] || return 1
    state="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [[ "$state" != "Z" && "$state" != "X" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'synapse.app.homeserver'
}

# The pid of the Synapse of DIR, when it runs.
running_pid() {
    local dir="$1" pid
    [[ -f "$dir/pid" ]] || return 1
    pid="$(cat "$dir/pid")"
    [[ -n "$pid" ]] && alive "$pid" || return 1
    echo "$pid"
}

write_config() {
    local dir="$1" port="$2" secret="$3"
    cat >"$dir/homeserver.yaml" <<YAML
# Written by scripts/synapse.sh for tests and local development; not for production.
server_name: "localhost"
pid_file: "$dir/synapse.pid"
public_baseurl: "http://127.0.0.1:$port/"
listeners:
  - port: $port
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    # The service passes the app's address on, so Synapse rate-limits per app
    # client rather than treating the service as one client.
    x_forwarded: true
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: "$dir/homeserver.db"
log_config: "$dir/log.config"
media_store_path: "$dir/media_store"
signing_key_path: "$dir/signing.key"
registration_shared_secret: "$secret"
enable_registration: false
report_stats: false
suppress_key_server_warning: true
trusted_key_servers: []
federation_domain_whitelist: []
macaroon_secret_key: "$("$PY" -c 'import secrets; print(secrets.token_hex(32))')"
form_secret: "$("$PY" -c 'import secrets; print(secrets.token_hex(32))')"
# Logins that ask for a refresh token get one; plain logins keep a long-lived token.
refreshable_access_token_lifetime: 1h
refresh_token_lifetime: 7d
# Tests create many rooms, users and logins from one address in seconds.
rc_message: {per_second: 10000, burst_count: 100000}
rc_registration: {per_second: 10000, burst_count: 100000}
rc_registration_token_validity: {per_second: 10000, burst_count: 100000}
rc_login:
  address: {per_second: 10000, burst_count: 100000}
  account: {per_second: 10000, burst_count: 100000}
  failed_attempts: {per_second: 10000, burst_count: 100000}
rc_admin_redaction: {per_second: 10000, burst_count: 100000}
rc_joins:
  local: {per_second: 10000, burst_count: 100000}
  remote: {per_second: 10000, burst_count: 100000}
rc_joins_per_room: {per_second: 10000, burst_count: 100000}
rc_invites:
  per_room: {per_second: 10000, burst_count: 100000}
  per_user: {per_second: 10000, burst_count: 100000}
  per_issuer: {per_second: 10000, burst_count: 100000}
rc_3pid_validation: {per_second: 10000, burst_count: 100000}
rc_media_create: {per_second: 10000, burst_count: 100000}
rc_room_creation: {per_second: 10000, burst_count: 100000}
rc_presence:
  per_user: {per_second: 10000, burst_count: 100000}
rc_delayed_event_mgmt: {per_second: 10000, burst_count: 100000}
rc_reports: {per_second: 10000, burst_count: 100000}
YAML
    # Benchmarks may lower the cost of Synapse's password hashing (its
    # default is 12 rounds of bcrypt) to measure what lies around it.
    if [[ -n ${SYNAPSE_BCRYPT_ROUNDS:-} ]]; then
        [[ $SYNAPSE_BCRYPT_ROUNDS =~ ^[0-9]+$ ]] || die "SYNAPSE_BCRYPT_ROUNDS must be a number, got $SYNAPSE_BCRYPT_ROUNDS"
        echo "bcrypt_rounds: $SYNAPSE_BCRYPT_ROUNDS" >>"$dir/homeserver.yaml"
    fi
    cat >"$dir/log.config" <<YAML
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: "$dir/homeserver.log"
    encoding: utf8
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
YAML
}

cmd_start() {
    local dir="${1:-}"
    [[ -n "$dir" ]] || die "usage: $0 start DIR"
    [[ "$(installed_version || true)" == "$SYNAPSE_VERSION" ]] ||
        die "matrix-synapse $SYNAPSE_VERSION is not installed in $VENV: run '$0 install' first"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"

    local port secret
    if [[ -f "$dir/homeserver.yaml" && -f "$dir/port" && -f "$dir/shared_secret" ]]; then
        # Restart on the same port and data.
        port="$(cat "$dir/port")"
    else
        port="$(free_port)"
        secret="$("$PY" -c 'import secrets; print(secrets.token_urlsafe(32))')"
        (umask 077 && printf '%s' "$secret" >"$dir/shared_secret")
        mkdir -p "$dir/media_store"
        write_config "$dir" "$port" "$secret"
        echo "$port" >"$dir/port"
        "$PY" -m synapse.app.homeserver --config-path "$dir/homeserver.yaml" --generate-keys </dev/null >/dev/null
    fi

    local url="http://127.0.0.1:$port"
    if ! running_pid "$dir" >/dev/null; then
        # setsid: Synapse outlives this script and the caller's process group.
        setsid "$PY" -m synapse.app.homeserver --config-path "$dir/homeserver.yaml" \
            </dev/null >>"$dir/stdout.log" 2>&1 &
        echo $! >"$dir/pid"
    fi

    local deadline=$((SECONDS + START_TIMEOUT_SECS))
    until "$PY" - "$url/_matrix/client/versions" <<'PYEOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2).read()
PYEOF
    do
        if ! running_pid "$dir" >/dev/null; then
            echo "synapse.sh: Synapse exited during start-up; last log lines:" >&2
            tail -n 40 "$dir/homeserver.log" "$dir/stdout.log" >&2 2>/dev/null || true
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "synapse.sh: Synapse did not answer within ${START_TIMEOUT_SECS}s; last log lines:" >&2
            tail -n 40 "$dir/homeserver.log" "$dir/stdout.log" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.3
    done
    echo "SYNAPSE_URL=$url"
    echo "SYNAPSE_SHARED_SECRET_FILE=$dir/shared_secret"
}

cmd_stop() {
    local dir="${1:-}" pid
    [[ -n "$dir" ]] || die "usage: $0 stop DIR"
    if ! pid="$(running_pid "$dir")"; then
        rm -f "$dir/pid"
        echo "synapse.sh: not running"
        return
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_GRACE_SECS))
    while alive "$pid"; do
        if ((SECONDS >= deadline)); then
            echo "synapse.sh: no exit after ${STOP_GRACE_SECS}s, sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    # A killed Synapse leaves this behind and would refuse the next start.
    rm -f "$dir/pid" "$dir/synapse.pid"
    echo "synapse.sh: stopped"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start "${2:-}" ;;
    stop) cmd_stop "${2:-}" ;;
    *) die "usage: $0 install | start DIR | stop DIR" ;;
esac
