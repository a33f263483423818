#!/usr/bin/env bash
# Schemathesis (and openapi-spec-validator) for the API fuzz test, pinned, in
# the test command's Python environment (.venv-synapse/, the one
# scripts/synapse.sh makes; SYNAPSE_VENV moves it). Neither shares a
# dependency with Synapse, so the two live side by side.
#
#   scripts/schemathesis.sh install   install at the pins (reused when already there);
#                                     prints SCHEMATHESIS=<path of st>
#
# The test itself is tests/schemathesis.rs (`cargo test --test schemathesis`),
# which scripts/test-with-synapse.sh runs with SCHEMATHESIS exported.
# Reads no stdin; may be repeated.
set -euo pipefail

SCHEMATHESIS_VERSION="4.32.5"
SPEC_VALIDATOR_VERSION="0.9.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SYNAPSE_VENV:-$ROOT/.venv-synapse}"
PY="$VENV/bin/python"

die() { echo "schemathesis.sh: $*" >&2; exit 1; }

version_of() {
    [[ -x "$PY" ]] || return 1
    "$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" 2>/dev/null
}

cmd_install() {
    if [[ "$(version_of schemathesis || true)" == "$SCHEMATHESIS_VERSION" &&
        "$(version_of openapi-spec-validator || true)" == "$SPEC_VALIDATOR_VERSION" ]]; then
        echo "schemathesis.sh: schemathesis $SCHEMATHESIS_VERSION already in $VENV" >&2
    else
        if [[ ! -x "$PY" ]]; then
            python3 -m venv "$VENV"
            "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip </dev/null
        fi
        "$PY" -m pip install --quiet --disable-pip-version-check \
            "schemathesis==$SCHEMATHESIS_VERSION" "openapi-spec-validator==$SPEC_VALIDATOR_VERSION" </dev/null
        echo "schemathesis.sh: installed schemathesis $(version_of schemathesis) in $VENV" >&2
    fi
    [[ -x "$VENV/bin/st" ]] || die "no $VENV/bin/st after the install"
    echo "SCHEMATHESIS=$VENV/bin/st"
}

case "${1:-}" in
    install) cmd_install ;;
    *) die "usage: $0 install" ;;
esac
