#!/usr/bin/env bash
# Bench: downtime of an update vs a plain reboot, on one VM in one run
# (scripts/qemu-lib.sh settings): a reboot through the API, an install of the next
# version with reboot (made from build/root.squashfs by image/make-test-bundle.sh),
# a reboot of the new version. Each is timed from the last HTTPS answer of the
# console before the outage to the first after it (GET /health every 100 ms; the
# install itself streams while the old version keeps answering). Prints a table
# and writes build/bench-update-downtime.json. The work is done by
# `keel-bench --update-downtime` (qemu-tests/). Needs root (make-test-bundle.sh).
#
#   scripts/bench-update-downtime.sh
# Environment as for scripts/qemu-lib.sh (KEEL_VM_CPUS, KEEL_VM_MEM, KEEL_ACCEL).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "bench-update-downtime needs root (image/make-test-bundle.sh)" >&2; exit 1; }
for f in build/keel.qcow2 build/root.squashfs; do
  [[ -e $f ]] || { echo "missing $f: run 'make image'" >&2; exit 1; }
done
target=${CARGO_TARGET_DIR:-target}
[[ -x $(scripts/cargo-release.sh --bin-dir)/keel-bundle ]] || scripts/cargo-release.sh -q -p keel-bundle
cargo build --locked -q -p keel-qemu-tests --bin keel-bench
exec "$target/debug/keel-bench" --update-downtime --json build/bench-update-downtime.json "$@"
