#!/usr/bin/env bash
# Tests install.sh, the systemd unit and the static release binary, without
# touching the system: every install goes into a temporary DESTDIR.
#
#   scripts/test-install.sh
#   TEST_INSTALL_BINARY=path/to/messenger-chat scripts/test-install.sh
#
# The binary: $TEST_INSTALL_BINARY when set (not MESSENGER_CHAT_…: the
# binary reads every variable of that prefix as configuration) (it must be the static musl
# build), else one `cargo build --release --locked --target
# x86_64-unknown-linux-musl` (a no-op when target/ is up to date, several
# minutes from cold; the Rust target, musl-tools and libllvmlibc-NN-dev are
# added when missing).
# The installs themselves take seconds, each bounded by a timeout.
#
# `systemd-analyze verify` needs ExecStart's binary to exist, and the unit
# names /usr/local/bin/messenger-chat, which is not on this machine: it is
# run on a copy of the installed unit whose ExecStart points at the DESTDIR
# copy of the binary, every other line unchanged. The security rating is
# taken from the installed unit as it is. The systemd package (for
# systemd-analyze) is installed with apt-get when missing.
#
# Prints one line per check and `N passed, M failed`; exits non-zero when a
# check fails. Reads no standard input.
set -euo pipefail
exec </dev/null
# The caller's configuration must not reach the binaries under test.
for v in $(compgen -e); do
    if [[ $v == MESSENGER_CHAT_* ]]; then unset "$v"; fi
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly NAME=messenger-chat
readonly TARGET=x86_64-unknown-linux-musl
readonly MAX_EXPOSURE=2.0
INSTALL=(timeout 120 "$ROOT/install.sh")
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

passed=0
failed=0
ok() {
    passed=$((passed + 1))
    printf 'ok    %s\n' "$*"
}
fail() {
    failed=$((failed + 1))
    printf 'FAIL  %s\n' "$*"
}
# check DESCRIPTION COMMAND...: one check, passing when COMMAND succeeds.
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
step() { printf '\n== %s\n' "$*"; }
mode_of() { stat -c %a "$1"; }
sum_of() { sha256sum "$1" | cut -d' ' -f1; }
# Octal mode of $1 has none of the bits of $2.
mode_without() { (((8#$(mode_of "$1") & 8#$2) == 0)); }
has_line() { grep -qxF -- "$2" "$1"; }
lacks() { ! grep -q -- "$2" "$1"; }
# The installed config is the shipped one but for the two lines install.sh sets.
same_as_shipped() {
    local skip=(-e '^data_dir = ' -e '^api_token_hashes = ')
    diff <(grep -v "${skip[@]}" "$1") <(grep -v "${skip[@]}" "$2") >/dev/null
}
absent() {
    local f
    for f in "$@"; do [[ ! -e $f ]] || return 1; done
}
# run_logged OUT COMMAND...: COMMAND's output to OUT, shown when it fails.
run_logged() {
    local out=$1
    shift
    if "$@" >"$out" 2>&1; then return 0; fi
    sed 's/^/    | /' "$out"
    return 1
}

work="$(mktemp -d -t messenger-chat-test-install.XXXXXX)"
started=$SECONDS
finished=0
# The summary line, also when a step stops the script early.
summary() {
    local status=$?
    rm -rf "$work"
    if ((!finished)); then fail "the test stopped early (exit $status)"; fi
    printf '\ntest-install: %d s\n%d passed, %d failed\n' "$((SECONDS - started))" "$passed" "$failed"
    ((failed == 0)) || exit 1
}
trap summary EXIT

apt_install() {
    step "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "$@" >/dev/null
}
command -v systemd-analyze >/dev/null || apt_install systemd

step "the release binary"
if [[ -n ${TEST_INSTALL_BINARY:-} ]]; then
    bin="$TEST_INSTALL_BINARY"
    echo "using TEST_INSTALL_BINARY=$bin"
else
    rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
    command -v musl-gcc >/dev/null || apt_install musl-tools
    # build.rs links LLVM libc's memory functions into the musl build (as
    # install.sh does, it installs the newest libllvmlibc-NN-dev when missing).
    if [[ -z ${LLVMLIBC_ARCHIVE:-} ]] && ! compgen -G '/usr/lib/llvm-*/lib/libllvmlibc.a' >/dev/null; then
        apt-get update -qq
        apt_install "$(apt-cache search --names-only '^libllvmlibc-[0-9]+-dev$' | awk '{print $1}' | sort -V | tail -1)"
    fi
    t=$SECONDS
    (cd "$ROOT" && timeout 1800 cargo build --release --locked --target "$TARGET" --quiet)
    target_dir="${CARGO_TARGET_DIR:-target}"
    [[ $target_dir == /* ]] || target_dir="$ROOT/$target_dir"
    bin="$target_dir/$TARGET/release/$NAME"
    echo "cargo build --release --target $TARGET: $((SECONDS - t)) s"
fi
[[ -x $bin ]] || {
    echo "no executable binary at $bin" >&2
    exit 1
}
ldd_out="$(LC_ALL=C ldd "$bin" 2>&1 || true)"
check "ldd: the binary is static ($ldd_out)" \
    grep -qE 'not a dynamic executable|statically linked' <<<"$ldd_out"
if command -v file >/dev/null; then
    file_out="$(file -b "$bin")"
    check "file: static (${file_out%%, BuildID*})" grep -qE 'statically linked|static-pie linked' <<<"$file_out"
fi
check "the binary runs: $("$bin" --version 2>&1)" run_logged "$work/version.out" "$bin" --version

step "install.sh options"
check "--help prints the usage" grep -q '^Usage: ./install.sh' <<<"$("${INSTALL[@]}" --help)"
refuses() { ! "$@" >/dev/null 2>&1; }
check "an unknown option is refused" refuses "${INSTALL[@]}" --bogus

user_before="$(getent passwd "$NAME" || true)"

step "first install into DESTDIR"
D="$work/root"
B="$D/usr/local/bin/$NAME"
C="$D/etc/$NAME/config.toml"
U="$D/etc/systemd/system/$NAME.service"
S="$D/var/lib/$NAME"
out1="$work/install1.out"
check "install.sh --no-build succeeds" run_logged "$out1" env DESTDIR="$D" "${INSTALL[@]}" --no-build --binary "$bin"
check "binary installed, same bytes" cmp -s "$bin" "$B"
check "binary mode 0755 (is $(mode_of "$B"))" [ "$(mode_of "$B")" = 755 ]
check "config mode 0640 or stricter (is $(mode_of "$C"))" mode_without "$C" 137
check "config directory mode 0750 (is $(mode_of "$D/etc/$NAME"))" [ "$(mode_of "$D/etc/$NAME")" = 750 ]
check "unit mode 0644 (is $(mode_of "$U"))" [ "$(mode_of "$U")" = 644 ]
check "unit ExecStart names the installed binary and config" \
    has_line "$U" "ExecStart=/usr/local/bin/$NAME --config /etc/$NAME/config.toml serve"
check "config: storage.data_dir is /var/lib/$NAME" has_line "$C" "data_dir = \"/var/lib/$NAME\""
check "config: the rest is the shipped config.toml" \
    same_as_shipped "$C" "$ROOT/config.toml"
token="$(sed -n '/shown once/{n;s/^ *//;p;}' "$out1")"
check "a fresh install prints the API token once" [ -n "$token" ]
hash="$(printf '%s\n' "$token" | "$bin" token hash)" || hash=""
check "the token's hash is the config's api_token_hashes" \
    has_line "$C" "api_token_hashes = [{ hash = \"$hash\", name = \"init\" }]"
check "the installed config validates" run_logged "$work/check-config.out" "$B" --config "$C" check-config
check "no systemctl in a DESTDIR install" grep -q 'staged install' "$out1"

[[ -f $C && -x $B ]] || exit 1

step "the service's data (made by the installed binary, as the service would)"
export MESSENGER_CHAT_STORAGE__DATA_DIR="$S"
check "an administration command creates the database" run_logged "$work/user-put.out" \
    "$B" --config "$C" user put 1 --display-name "Ada Lovelace"
unset MESSENGER_CHAT_STORAGE__DATA_DIR
check "data directory mode 0700 (is $(mode_of "$S"))" [ "$(mode_of "$S")" = 700 ]
check "key file mode 0600 (is $(mode_of "$S/secret.key"))" [ "$(mode_of "$S/secret.key")" = 600 ]
printf '\n# edited by the admin\n' >>"$C"
chmod 0600 "$C"
conf_sum="$(sum_of "$C")"
key_sum="$(sum_of "$S/secret.key")"
db_sum="$(sum_of "$S/$NAME.redb")"

step "second install: an upgrade in place"
printf 'an older binary\n' >"$B"
out2="$work/install2.out"
check "install.sh runs again" run_logged "$out2" env DESTDIR="$D" "${INSTALL[@]}" --no-build --binary "$bin"
check "the binary is replaced by the new one" cmp -s "$bin" "$B"
check "the admin's config is unchanged" [ "$(sum_of "$C")" = "$conf_sum" ]
check "the admin's config mode is unchanged (0600)" [ "$(mode_of "$C")" = 600 ]
check "the install says it kept the config" grep -q 'exists, kept' "$out2"
check "no new token is printed" lacks "$out2" "shown once"
check "the unit is unchanged" grep -q 'unit: .* unchanged' "$out2"
check "the key file is unchanged" [ "$(sum_of "$S/secret.key")" = "$key_sum" ]
check "the database is unchanged" [ "$(sum_of "$S/$NAME.redb")" = "$db_sum" ]

step "the unit"
mkdir -p "$work/verify"
sed "s|^ExecStart=/usr/local/bin/$NAME |ExecStart=$B |" "$U" >"$work/verify/$NAME.service"
verify_out="$(cd "$work/verify" && systemd-analyze verify "$work/verify/$NAME.service" 2>&1)" && verify_rc=0 || verify_rc=$?
[[ -z $verify_out ]] || printf '%s\n' "$verify_out"
check "systemd-analyze verify passes, silently" test "$verify_rc" = 0 -a -z "$verify_out"
security_out="$(cd "$work" && systemd-analyze security --offline=yes "$U" 2>&1)" || true
exposure="$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$security_out")"
check "systemd-analyze security --offline=yes: ${exposure:-no rating} <= $MAX_EXPOSURE" \
    awk -v e="$exposure" -v max="$MAX_EXPOSURE" 'BEGIN { exit !(e != "" && e + 0 <= max + 0) }'
[[ -n $exposure ]] || printf '%s\n' "$security_out"
# shellcheck disable=SC2016 # $MAINPID is systemd's, not the shell's
for key in Type=notify "User=$NAME" "StateDirectory=$NAME" "ConfigurationDirectory=$NAME" Restart=on-failure \
    'ExecReload=/bin/kill -HUP $MAINPID' AmbientCapabilities=CAP_NET_BIND_SERVICE; do
    check "unit sets $key" has_line "$U" "$key"
done
for key in MemoryMax TasksMax LimitNOFILE; do
    check "unit sets $key=" grep -q "^$key=[0-9]" "$U"
done
# One descriptor per connection, two while proxied, plus a reserve (config.toml, [server]).
max_conn="$(sed -n 's/^max_connections = \([0-9]*\)$/\1/p' "$C")"
nofile="$(sed -n 's/^LimitNOFILE=\([0-9]*\)$/\1/p' "$U")"
check "LimitNOFILE=${nofile:-unset} >= 2 x server.max_connections (${max_conn:-unset}) + 256" \
    test -n "$max_conn" -a -n "$nofile" -a "${nofile:-0}" -ge $((2 * ${max_conn:-0} + 256))

step "--prefix /usr"
P="$work/usr-root"
check "install.sh --prefix /usr" \
    run_logged "$work/install3.out" env DESTDIR="$P" "${INSTALL[@]}" --prefix /usr --no-build --binary "$bin"
check "binary in /usr/bin" cmp -s "$bin" "$P/usr/bin/$NAME"
check "unit in /usr/lib/systemd/system, ExecStart=/usr/bin/$NAME" \
    grep -q "^ExecStart=/usr/bin/$NAME " "$P/usr/lib/systemd/system/$NAME.service"

step "--uninstall keeps config and data"
check "install.sh --uninstall" run_logged "$work/uninstall.out" env DESTDIR="$D" "${INSTALL[@]}" --uninstall
check "binary removed" absent "$B"
check "unit removed" absent "$U"
check "config kept, unchanged" [ "$(sum_of "$C")" = "$conf_sum" ]
check "database and key kept" test "$(sum_of "$S/$NAME.redb")" = "$db_sum" -a "$(sum_of "$S/secret.key")" = "$key_sum"

step "--purge removes everything"
check "install.sh runs again after the uninstall" \
    run_logged "$work/install4.out" env DESTDIR="$D" "${INSTALL[@]}" --no-build --binary "$bin"
check "... and keeps the config" [ "$(sum_of "$C")" = "$conf_sum" ]
check "install.sh --purge" run_logged "$work/purge.out" env DESTDIR="$D" "${INSTALL[@]}" --purge
check "binary and unit removed" absent "$B" "$U"
check "config directory removed" absent "$D/etc/$NAME"
check "data directory removed" absent "$S"

check "the system was not touched (user $NAME unchanged)" [ "$(getent passwd "$NAME" || true)" = "$user_before" ]

finished=1
