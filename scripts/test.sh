#!/usr/bin/env bash
# Runs every test of messenger-chat: formatting, lints, unit tests and the
# black-box tests against the real binary, real HTTPS, a real redb file and
# a real Synapse, and schemathesis against the running binary's OpenAPI
# document. Installs what it needs (Synapse and schemathesis from PyPI into
# .venv-synapse/, Debian packages with apt-get) on a fresh machine.
# Reads no standard input; CI (.ci/run) runs exactly this.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*"; }

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if ((${#need_apt[@]})); then
    step "installing ${need_apt[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq "${need_apt[@]}" </dev/null
fi
for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

step "install.sh, the systemd unit, the static release binary"
"$ROOT/scripts/test-install.sh"

step "cargo test --all-targets, against a real Synapse (pinned, in .venv-synapse/)"
exec "$ROOT/scripts/test-with-synapse.sh" --all-targets --no-fail-fast
