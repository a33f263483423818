#!/usr/bin/env bash
# Automation at scale: adding a member to an organization of 100,000 rooms
# of which 3 are automated, against one of 10 rooms of which 3 are automated
# (target: the same cost, within 20%). On a temporary redb file, no homeserver.
#
#   scripts/bench-automation.sh      (BENCH_BIG=100000, BENCH_SMALL=10, BENCH_ADDS=300)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
echo "bench-automation: building the release example" >&2
(cd "$ROOT" && cargo build --release --quiet --example bench_automation)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
"$TARGET/release/examples/bench_automation" --big "${BENCH_BIG:-100000}" --small "${BENCH_SMALL:-10}" --adds "${BENCH_ADDS:-300}"
