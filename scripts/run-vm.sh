#!/usr/bin/env bash
# Boots the built Keel image under QEMU, prints the console URL and the setup code,
# and keeps the VM in the foreground until Ctrl-C. State lives in build/run/ and
# survives between runs; delete it for a factory-fresh appliance.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/qemu-lib.sh

image=${KEEL_IMAGE:-build/keel.qcow2}
https=${KEEL_HTTPS_PORT:-8443}
http=${KEEL_HTTP_PORT:-8080}
state=build/run
mkdir -p "$state"
[[ -f $image ]] || { echo "no image at $image: run 'make image'" >&2; exit 1; }
[[ -f $state/disk.qcow2 ]] || keel_qemu_overlay "$image" "$state/disk.qcow2"
log=$state/serial.log
: >"$log"

keel_qemu_args "$state/disk.qcow2" "file:$log" "$https" "$http"
qemu-system-x86_64 "${KEEL_QEMU_ARGS[@]}" </dev/null &
qemu=$!
trap 'kill $qemu 2>/dev/null; wait $qemu 2>/dev/null' INT TERM EXIT
echo "booting Keel (serial log: $log) ..."

# Event-driven: the banner prints KEEL-READY on the serial line once the console is up.
for _ in $(seq 1 300); do
  grep -q KEEL-READY "$log" && break
  kill -0 $qemu 2>/dev/null || { echo "QEMU exited; see $log" >&2; exit 1; }
  sleep 1
done
grep -q KEEL-READY "$log" || { echo "no console after 300 s; see $log" >&2; exit 1; }
echo
echo "Keel console: https://127.0.0.1:$https/appliance"
grep -a -o 'Setup code: [A-Z0-9-]*' "$log" | tail -1 || echo "(already set up: log in with the admin password)"
echo "Ctrl-C stops the VM."
wait $qemu
