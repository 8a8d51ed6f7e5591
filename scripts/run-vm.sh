#!/usr/bin/env bash
# run-vm.sh [OVERLAY.qcow2]
# Boots the built Keel image under QEMU (TCG unless KVM works, see qemu-lib.sh),
# waits for the appliance to print KEEL-READY on its serial line, prints the console
# URL and the setup code, and keeps QEMU in the foreground until Ctrl-C.
#
# The VM writes to a copy-on-write overlay, never to the built image: OVERLAY if
# given (created when missing, kept afterwards: the appliance's state survives
# between runs), else a temporary one (a factory-fresh appliance every run).
#
# Environment:
#   KEEL_IMAGE           image to boot (default build/keel.qcow2)
#   KEEL_HTTPS_PORT      host port forwarded to the VM's 443 (default 8443)
#   KEEL_HTTP_PORT       host port forwarded to the VM's 80 (default 8080)
#   KEEL_SERIAL_LOG      serial line to this file only. Unset, on a terminal: the
#                        serial console is on this terminal (and logged to
#                        build/run/serial.log); unset, not on a terminal: that file.
#   KEEL_FIRMWARE        bios (SeaBIOS, default) or uefi (OVMF)
#   KEEL_READY_TIMEOUT   seconds to wait for KEEL-READY (default 180)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/qemu-lib.sh
source scripts/qemu-lib.sh

image=${KEEL_IMAGE:-build/keel.qcow2}
https=${KEEL_HTTPS_PORT:-8443}
http=${KEEL_HTTP_PORT:-8080}
ceiling=${KEEL_READY_TIMEOUT:-180}
[[ -f $image ]] || { echo "no image at $image: run 'make image'" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "no qemu-system-x86_64: run scripts/deps.sh" >&2; exit 1; }

tmp=$(mktemp -d)
cleanup() {
  if [[ -n ${qemu:-} ]]; then kill "$qemu" 2>/dev/null || true; wait "$qemu" 2>/dev/null || true; fi
  if [[ -n ${watcher:-} ]]; then kill "$watcher" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ $# -ge 1 ]]; then
  disk=$1
  [[ -f $disk ]] || keel_qemu_overlay "$image" "$disk"
else
  disk=$tmp/disk.qcow2
  keel_qemu_overlay "$image" "$disk"
fi

interactive=0
if [[ -n ${KEEL_SERIAL_LOG:-} ]]; then
  log=$KEEL_SERIAL_LOG
elif [[ -t 0 && -t 1 ]]; then
  interactive=1
  mkdir -p build/run
  log=build/run/serial.log
else
  mkdir -p build/run
  log=build/run/serial.log
fi
: >"$log"

if ((interactive)); then
  # The serial console on this terminal (the GRUB menu, the banner, later the local
  # menu), copied to the log that the readiness watcher reads. Ctrl-C stops QEMU.
  keel_qemu_args "$disk" chardev:s0 "$https" "$http"
  KEEL_QEMU_ARGS+=(-chardev "stdio,id=s0,signal=on,logfile=$log,logappend=on")
else
  keel_qemu_args "$disk" "file:$log" "$https" "$http"
fi

# say LINE...: to the user. The terminal is in raw mode while QEMU owns it: \r\n.
say() {
  if ((interactive)); then printf '\r\n%s' "$@" >/dev/tty; printf '\r\n' >/dev/tty
  else printf '%s\n' "$@"; fi
}

# Event-driven wait: poll the serial log for the banner's KEEL-READY line.
announce() {
  local waited=0
  until grep -qa KEEL-READY "$log" 2>/dev/null; do
    kill -0 "$1" 2>/dev/null || return 0
    if ((waited >= ceiling * 2)); then
      say "no KEEL-READY after ${ceiling} s; see $log"
      return 1
    fi
    sleep 0.5
    waited=$((waited + 1))
  done
  local code
  code=$(grep -a -o 'Setup code: [A-Z0-9-]*' "$log" | tail -1 || true)
  say "Keel console: https://127.0.0.1:$https/appliance" \
    "${code:-(already set up: log in as admin)}" "Ctrl-C stops the VM."
}

echo "booting $image ($(keel_qemu_accel), ${KEEL_FIRMWARE:-bios}; serial log: $log) ..."
if ((interactive)); then
  # QEMU in the foreground owns the terminal; the watcher prints beside it.
  announce $$ &
  watcher=$!
  qemu-system-x86_64 "${KEEL_QEMU_ARGS[@]}" || true
else
  qemu-system-x86_64 "${KEEL_QEMU_ARGS[@]}" </dev/null &
  qemu=$!
  announce "$qemu" || exit 1
  kill -0 "$qemu" 2>/dev/null || { echo "QEMU exited; see $log" >&2; exit 1; }
  wait "$qemu" || true
fi
