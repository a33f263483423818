#!/usr/bin/env bash
# Installs messenger-chat as a systemd service on x86_64 Linux (Debian and
# friends): builds the static binary (musl), installs it, a documented config
# (only when none is there), the hardened unit and the system user, then
# enables and starts the service when systemd is running.
#
#   sudo ./install.sh                   build, install or upgrade in place, start
#   sudo ./install.sh --no-build        install target/x86_64-unknown-linux-musl/release/messenger-chat as built
#   DESTDIR=/tmp/stage ./install.sh     staged install for packagers and tests: files only
#   sudo ./install.sh --uninstall       remove binary and unit; keep config and data
#   sudo ./install.sh --purge           also remove config, data and the system user
#
# Run again to upgrade: the binary and the unit are replaced and the service
# restarted; /etc/messenger-chat/config.toml and /var/lib/messenger-chat are
# never touched. Reads no standard input; stops at the first failure.
set -Eeuo pipefail
exec </dev/null

readonly NAME=messenger-chat
readonly TARGET=x86_64-unknown-linux-musl
readonly DATA_DIR=/var/lib/messenger-chat
readonly CONF_DIR=/etc/messenger-chat
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly ROOT

step() { printf '== %s\n' "$*"; }
say() { printf '   %s\n' "$*"; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}
trap 'die "command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

usage() {
    cat <<EOF
Usage: ./install.sh [OPTIONS]

Builds messenger-chat as a static x86_64 Linux binary and installs it as a
systemd service. Run it again to upgrade: config and data are kept.

Options:
  --prefix DIR     install the binary to DIR/bin (default: \$PREFIX or /usr/local)
  --destdir DIR    stage every file under DIR (same as DESTDIR=DIR): no user is
                   created and systemctl is not run
  --unitdir DIR    directory of the unit (default: /usr/lib/systemd/system when
                   the prefix is /usr, else /etc/systemd/system)
  --no-build       install the binary already built in
                   target/$TARGET/release/ (or \$CARGO_TARGET_DIR)
  --binary FILE    install FILE instead (implies --no-build); it must be static
  --uninstall      stop and disable the service, remove the binary and the unit;
                   keep $CONF_DIR and $DATA_DIR
  --purge          --uninstall, and also remove $CONF_DIR, $DATA_DIR and the
                   system user $NAME
  -h, --help       this text

Installs:
  PREFIX/bin/$NAME                    the binary (0755)
  $CONF_DIR/config.toml     only when missing: the documented config with a new
                                      API token (printed once) and
                                      storage.data_dir = "$DATA_DIR" (0640, group $NAME)
  UNITDIR/$NAME.service      the unit (0644); local changes go in a drop-in
  system user and group $NAME         unless DESTDIR is set

Building needs Rust (rustup), the $TARGET target, musl-gcc and LLVM's libc
(libllvmlibc.a: its memcpy/memcmp replace musl's slower ones, see build.rs);
install.sh adds the target and Debian's musl-tools and libllvmlibc-NN-dev
itself when they are missing.
EOF
}

readonly ARGS=("$@")
PREFIX="${PREFIX:-/usr/local}"
DESTDIR="${DESTDIR:-}"
UNITDIR=""
action=install
build=1
binary=""

need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }
while (($#)); do
    case $1 in
        --prefix) need_value "$@"; PREFIX=$2; shift ;;
        --prefix=*) PREFIX=${1#*=} ;;
        --destdir) need_value "$@"; DESTDIR=$2; shift ;;
        --destdir=*) DESTDIR=${1#*=} ;;
        --unitdir) need_value "$@"; UNITDIR=$2; shift ;;
        --unitdir=*) UNITDIR=${1#*=} ;;
        --no-build) build=0 ;;
        --binary) need_value "$@"; binary=$2; build=0; shift ;;
        --binary=*) binary=${1#*=}; build=0 ;;
        --uninstall) action=uninstall ;;
        --purge) action=purge ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

for dir in "$PREFIX" ${UNITDIR:+"$UNITDIR"}; do
    [[ $dir == /* ]] || die "$dir: the prefix and the unit directory must be absolute paths"
    [[ $dir != *[[:space:]\|\\]* ]] || die "$dir: spaces, '|' and '\\' are not supported in install paths"
done
PREFIX=${PREFIX%/}
[[ -n $PREFIX ]] || PREFIX=/
if [[ -z $UNITDIR ]]; then
    if [[ $PREFIX == /usr ]]; then UNITDIR=/usr/lib/systemd/system; else UNITDIR=/etc/systemd/system; fi
fi
if [[ -n $binary ]]; then
    [[ -f $binary ]] || die "--binary $binary: no such file"
    binary="$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")"
fi
if [[ -n $DESTDIR ]]; then
    mkdir -p "$DESTDIR"
    DESTDIR="$(cd "$DESTDIR" && pwd)"
    [[ $DESTDIR != / ]] || DESTDIR=""
fi

BIN_PATH="${PREFIX%/}/bin/$NAME"
UNIT_PATH="$UNITDIR/$NAME.service"
CONF_PATH="$CONF_DIR/config.toml"
is_root() { [[ $(id -u) -eq 0 ]]; }
systemd_live() { [[ -z $DESTDIR && -d /run/systemd/system ]]; }
group_exists() { getent group "$NAME" >/dev/null; }

if [[ -z $DESTDIR ]] && ! is_root; then
    die "installing into the system needs root: run sudo $0 ${ARGS[*]} (or stage it with DESTDIR=DIR)"
fi

work="$(mktemp -d -t messenger-chat-install.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# Runs the binary with no MESSENGER_CHAT_* variable of the caller's
# environment, from an empty directory (so no ./config.toml is picked up).
run_clean() {
    local unset=() v
    for v in $(compgen -e); do
        [[ $v == MESSENGER_CHAT_* ]] && unset+=(-u "$v")
    done
    (cd "$work" && env "${unset[@]}" "$@")
}

apt_install() {
    command -v apt-get >/dev/null || die "please install $* (no apt-get here)"
    is_root || die "please install $* (apt-get needs root), or run install.sh with sudo"
    say "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "$@" >/dev/null
}

# The newest libllvmlibc-NN-dev the package lists know (Debian 12 has
# libllvmlibc-19-dev).
llvmlibc_package() {
    local pkg
    command -v apt-cache >/dev/null || die "please install LLVM's libc (libllvmlibc.a), or set LLVMLIBC_ARCHIVE to it"
    pkg="$(apt-cache search --names-only '^libllvmlibc-[0-9]+-dev$' 2>/dev/null | awk '{print $1}' | sort -V | tail -1)"
    if [[ -z $pkg ]] && is_root; then
        apt-get update -qq
        pkg="$(apt-cache search --names-only '^libllvmlibc-[0-9]+-dev$' | awk '{print $1}' | sort -V | tail -1)"
    fi
    [[ -n $pkg ]] || die "no libllvmlibc-NN-dev package found; install LLVM's libc and set LLVMLIBC_ARCHIVE to its libllvmlibc.a"
    printf '%s' "$pkg"
}

is_static() {
    local out
    out="$(LC_ALL=C ldd "$1" 2>&1 || true)"
    [[ $out == *"not a dynamic executable"* || $out == *"statically linked"* ]]
}

build_binary() {
    step "building the static binary (cargo build --release --target $TARGET)"
    if ! command -v cargo >/dev/null && [[ -x $HOME/.cargo/bin/cargo ]]; then
        PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null || die "Rust is not installed. Install it with rustup (https://rustup.rs):
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh
then run install.sh again; or build elsewhere and use --binary FILE"
    command -v rustup >/dev/null || die "the $TARGET target needs rustup (https://rustup.rs); cargo alone cannot add it"
    if ! rustup target list --installed | grep -qx "$TARGET"; then
        say "adding the Rust target $TARGET"
        rustup target add "$TARGET"
    fi
    local pkgs=()
    command -v musl-gcc >/dev/null || pkgs+=(musl-tools)
    command -v cc >/dev/null || pkgs+=(gcc)
    ((${#pkgs[@]} == 0)) || apt_install "${pkgs[@]}"
    # build.rs links LLVM libc's memcpy/memmove/memset/memcmp/bcmp instead of
    # musl's (several times faster on the copies a request makes) and stops
    # when it finds no libllvmlibc.a; LLVMLIBC_ARCHIVE names another one.
    if [[ -z ${LLVMLIBC_ARCHIVE:-} ]] && ! compgen -G '/usr/lib/llvm-*/lib/libllvmlibc.a' >/dev/null; then
        apt_install "$(llvmlibc_package)"
    fi
    local started=$SECONDS
    (cd "$ROOT" && cargo build --release --locked --target "$TARGET")
    say "built in $((SECONDS - started)) s"
}

# Writes the unit for this prefix to $1.
render_unit() {
    local src="$ROOT/systemd/$NAME.service"
    [[ -f $src ]] || die "$src is missing"
    sed "s|/usr/local/bin/$NAME|$BIN_PATH|g" "$src" >"$1"
    grep -q "^ExecStart=$BIN_PATH " "$1" || die "$src has no ExecStart=/usr/local/bin/$NAME line"
}

# Writes a fresh config with a new API token to $1; prints the token.
fresh_config() {
    local bin=$1 out=$2 log="$work/init.out" token
    run_clean "$bin" init --out "$out" >"$log" || die "$bin init failed: $(cat "$log")"
    token="$(sed -n 's/^API token (shown once, keep it now): //p' "$log")"
    [[ -n $token ]] || die "$bin init printed no API token: $(cat "$log")"
    grep -q '^data_dir = ' "$out" || die "the config template has no data_dir line"
    sed -i "s|^data_dir = .*|data_dir = \"$DATA_DIR\"|" "$out"
    run_clean "$bin" --config "$out" check-config >/dev/null || die "the new config does not validate"
    printf '%s' "$token"
}

ensure_user() {
    if [[ -n $DESTDIR ]]; then
        say "system user $NAME: skipped (DESTDIR install)"
    elif getent passwd "$NAME" >/dev/null; then
        say "system user $NAME: exists"
    else
        local group_opt=(--user-group)
        group_exists && group_opt=(--gid "$NAME")
        useradd --system "${group_opt[@]}" --home-dir "$DATA_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "messenger-chat service" "$NAME"
        say "system user $NAME: created"
    fi
}

# Owner options for install(1): root and the service group when they can be set.
owner_opts() {
    if is_root && group_exists; then
        printf '%s\n' -o root -g "$NAME"
    fi
}

do_install() {
    local bin="$binary"
    if ((build)); then
        build_binary
    fi
    if [[ -z $bin ]]; then
        local target_dir="${CARGO_TARGET_DIR:-target}"
        [[ $target_dir == /* ]] || target_dir="$ROOT/$target_dir"
        bin="$target_dir/$TARGET/release/$NAME"
    fi
    [[ -f $bin && -x $bin ]] || die "$bin is not an executable file: build it first (without --no-build), or pass --binary FILE"
    is_static "$bin" || die "$bin is dynamically linked (ldd lists shared libraries): install.sh installs the static build for $TARGET"
    local version
    version="$(run_clean "$bin" --version)" || die "$bin --version failed: is it a messenger-chat binary for this machine?"

    step "installing $version${DESTDIR:+ under DESTDIR=$DESTDIR}"
    ensure_user

    local dst="$DESTDIR$BIN_PATH" bin_changed=1
    install -d -m 0755 "$(dirname "$dst")"
    if [[ -f $dst ]] && cmp -s "$bin" "$dst"; then
        bin_changed=0
        chmod 0755 "$dst"
        say "binary: $dst unchanged"
    else
        # A new file renamed over the old one: a running service keeps its inode.
        install -m 0755 "$bin" "$dst.new"
        mv -f "$dst.new" "$dst"
        say "binary: $dst"
    fi

    local owner=()
    mapfile -t owner < <(owner_opts)
    local conf="$DESTDIR$CONF_PATH" token=""
    install -d -m 0750 "${owner[@]}" "$DESTDIR$CONF_DIR"
    if [[ -e $conf ]]; then
        say "config: $conf exists, kept as it is"
        local mode
        mode="$(stat -c %a "$conf")"
        if ((8#$mode & 8#007)); then
            say "warning: $conf is open to every user (mode $mode): chmod 0640 it"
        fi
    else
        token="$(fresh_config "$dst" "$work/config.toml")" || exit 1
        install -m 0640 "${owner[@]}" "$work/config.toml" "$conf"
        say "config: $conf written (storage.data_dir = \"$DATA_DIR\", one new API token)"
    fi

    local unit="$DESTDIR$UNIT_PATH" unit_changed=1
    render_unit "$work/$NAME.service"
    install -d -m 0755 "$(dirname "$unit")"
    if [[ -f $unit ]] && cmp -s "$work/$NAME.service" "$unit"; then
        unit_changed=0
        say "unit: $unit unchanged"
    else
        install -m 0644 "$work/$NAME.service" "$unit"
        say "unit: $unit"
    fi

    if systemd_live; then
        step "starting the service"
        ((unit_changed)) && systemctl daemon-reload
        systemctl enable --quiet "$NAME.service"
        if ((bin_changed || unit_changed)) || ! systemctl --quiet is-active "$NAME.service"; then
            # restart starts a stopped service and moves a running one to the new binary.
            systemctl restart "$NAME.service" ||
                die "$NAME did not start: see journalctl -u $NAME -n 50; check the config with $BIN_PATH --config $CONF_PATH check-config"
        fi
        say "$NAME is $(systemctl is-active "$NAME.service" || true); logs: journalctl -u $NAME"
    elif [[ -n $DESTDIR ]]; then
        say "staged install: systemctl not run"
    else
        say "systemd is not running here: start it later with systemctl enable --now $NAME"
    fi

    step "done"
    if [[ -n $token ]]; then
        cat <<EOF
API token for your app's backend (shown once; only its hash is in the config):
    $token
Next: point $CONF_PATH at your homeserver ([matrix] homeserver_url,
server_name, registration_shared_secret_file) and TLS ([tls]), then
    systemctl restart $NAME
EOF
    fi
}

do_uninstall() {
    step "uninstalling $NAME${DESTDIR:+ under DESTDIR=$DESTDIR}"
    local unit="$DESTDIR$UNIT_PATH" bin="$DESTDIR$BIN_PATH"
    if systemd_live && [[ -f $unit ]]; then
        systemctl disable --now --quiet "$NAME.service" || die "cannot stop $NAME: see systemctl status $NAME"
        say "service stopped and disabled"
    fi
    local f
    for f in "$bin" "$bin.new" "$unit"; do
        if [[ -e $f ]]; then
            rm -f "$f"
            say "removed $f"
        fi
    done
    if systemd_live; then
        systemctl daemon-reload
    fi
    if [[ $action == purge ]]; then
        for f in "$DESTDIR$CONF_DIR" "$DESTDIR$DATA_DIR"; do
            if [[ -e $f ]]; then
                rm -rf "$f"
                say "purged $f"
            fi
        done
        if [[ -z $DESTDIR ]] && getent passwd "$NAME" >/dev/null; then
            userdel "$NAME"
            say "removed the system user $NAME"
        fi
        if [[ -z $DESTDIR ]] && group_exists; then
            groupdel "$NAME"
        fi
    else
        say "kept $DESTDIR$CONF_DIR and $DESTDIR$DATA_DIR (--purge removes them)"
    fi
    step "done"
}

case $action in
    install) do_install ;;
    uninstall | purge) do_uninstall ;;
esac
