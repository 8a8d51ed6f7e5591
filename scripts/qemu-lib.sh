# Sourced by run-vm.sh, bench.sh and the QEMU tests' helper: the one place that
# knows how Keel is booted under QEMU on these machines.
#   keel_qemu_args DISK SERIAL HTTPS_PORT HTTP_PORT   -> fills array KEEL_QEMU_ARGS
#   keel_qemu_overlay BASE OVERLAY [SIZE]             -> copy-on-write disk over BASE
#   keel_qemu_accel                                   -> prints kvm or tcg
# Environment: KEEL_FIRMWARE=bios|uefi (default bios), KEEL_ACCEL=tcg|kvm (skips the
# probe), KEEL_VM_MEM (MiB, default 1024), KEEL_VM_CPUS (default 2),
# KEEL_SECOND_HTTPS_PORT (a second NIC on its own user network, 10.0.3.0/24, with
# that host port forwarded to its 443: the console sees its clients as 10.0.3.2, a
# second source address beside the first NIC's 10.0.2.2), KEEL_GUESTFWD (extra
# options for the first NIC, e.g. guestfwd=tcp:10.0.2.100:3128-cmd:SCRIPT: a host
# service the guest may reach despite restrict=on), KEEL_SEGMENT_NETDEV and
# KEEL_SEGMENT_MAC (one more NIC on a private L2 segment: the -netdev backend without
# its id, e.g. tap,fd=3 for a tap the caller opened, and the NIC's MAC, which must
# differ between the VMs of one segment).
# shellcheck shell=bash

# TCG unless KVM really works. /dev/kvm can exist on a paravirtual host whose CPU
# offers no vmx/svm; there `-cpu host` aborts and a stock kernel hangs early under
# KVM. The probe starts a KVM guest for 2 s (a working one is still running when
# `timeout` ends it); the answer is remembered in KEEL_ACCEL for later calls.
keel_qemu_accel() {
  if [[ -z ${KEEL_ACCEL:-} ]]; then
    KEEL_ACCEL=tcg
    if [[ -w /dev/kvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
      local rc=0
      timeout 2 qemu-system-x86_64 -accel kvm -cpu host -machine q35 -m 64 -nodefaults \
        -display none -monitor none -serial none -no-reboot </dev/null >/dev/null 2>&1 || rc=$?
      [[ $rc -eq 124 ]] && KEEL_ACCEL=kvm
    fi
    export KEEL_ACCEL
  fi
  echo "$KEEL_ACCEL"
}

# keel_qemu_args DISK SERIAL HTTPS_PORT HTTP_PORT
# SERIAL is a QEMU -serial spec: file:LOG, stdio, chardev:ID (with the -chardev
# added by the caller) ...
keel_qemu_args() {
  local disk=$1 serial=$2 https=$3 http=$4
  local accel
  keel_qemu_accel >/dev/null # in this shell, not a subshell: the answer is kept
  accel=$KEEL_ACCEL
  # shellcheck disable=SC2054 # commas inside QEMU option values
  KEEL_QEMU_ARGS=(
    -machine q35 -accel "$accel" -m "${KEEL_VM_MEM:-1024}" -smp "${KEEL_VM_CPUS:-2}"
    -display none -serial "$serial" -monitor none
    -drive "file=$disk,if=virtio,format=qcow2,discard=unmap"
    -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$https-:443,hostfwd=tcp:127.0.0.1:$http-:80${KEEL_GUESTFWD:+,$KEEL_GUESTFWD}"
    -device virtio-net-pci,netdev=n0
    # Entropy from the host: key generation on first boot does not wait for the
    # guest's own pool (TCG offers no RDRAND).
    -device virtio-rng-pci
    # The appliance's watchdog (systemd RuntimeWatchdogSec) resets a hung guest.
    -device i6300esb -action watchdog=reset
  )
  if [[ -n ${KEEL_SECOND_HTTPS_PORT:-} ]]; then
    # shellcheck disable=SC2054
    KEEL_QEMU_ARGS+=(
      -netdev "user,id=n1,net=10.0.3.0/24,restrict=on,hostfwd=tcp:127.0.0.1:$KEEL_SECOND_HTTPS_PORT-:443"
      -device virtio-net-pci,netdev=n1
    )
  fi
  if [[ -n ${KEEL_SEGMENT_NETDEV:-} ]]; then
    # shellcheck disable=SC2054
    KEEL_QEMU_ARGS+=(
      -netdev "$KEEL_SEGMENT_NETDEV,id=seg"
      -device "virtio-net-pci,netdev=seg${KEEL_SEGMENT_MAC:+,mac=$KEEL_SEGMENT_MAC}"
    )
  fi
  if [[ $accel == kvm ]]; then
    KEEL_QEMU_ARGS+=(-cpu host)
  fi
  if [[ ${KEEL_FIRMWARE:-bios} == uefi ]]; then
    # OVMF's variable store is per VM and writable: a copy beside the disk.
    local vars
    vars=$(dirname "$disk")/OVMF_VARS.fd
    [[ -f $vars ]] || cp /usr/share/OVMF/OVMF_VARS_4M.fd "$vars"
    KEEL_QEMU_ARGS+=(
      -drive "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
      -drive "if=pflash,format=raw,unit=1,file=$vars"
    )
  fi
}

# A throwaway copy-on-write disk on top of the built image: the build stays pristine.
keel_qemu_overlay() {
  local base=$1 overlay=$2 size=${3:-}
  qemu-img create -q -f qcow2 -b "$(realpath "$base")" -F qcow2 "$overlay" ${size:+"$size"}
}
