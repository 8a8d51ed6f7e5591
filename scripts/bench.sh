#!/usr/bin/env bash
# Keel's first benchmark, side by side with a stock minimal Debian in the same run
# and under the same QEMU settings (scripts/qemu-lib.sh):
#   - image sizes: raw (allocated, as du counts it), qcow2, root slot squashfs;
#   - boot time, QEMU start -> first HTTPS answer of the console (Keel) vs
#     QEMU start -> `login:` on the serial line (stock), booted alternately;
#   - idle RSS of the keel processes after setup (from /status);
#   - factory reset: API request -> console in setup mode again (Keel only).
# Prints a table and writes build/bench.json. The work is done by the keel-bench
# binary of qemu-tests/ (one VM at a time; each its own overlay disk and ports).
#
#   scripts/bench.sh [--runs N] [--idle-seconds S]      (KEEL_BENCH_RUNS, default 3)
# Environment as for scripts/qemu-lib.sh (KEEL_VM_CPUS, KEEL_VM_MEM, KEEL_ACCEL).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -f build/stock.qcow2 ]] || image/build-stock.sh
cargo build --locked -q -p keel-qemu-tests --bin keel-bench
exec "${CARGO_TARGET_DIR:-target}/debug/keel-bench" --runs "${KEEL_BENCH_RUNS:-3}" \
  --json build/bench.json "$@"
