# Sourced by run-vm.sh, bench.sh and the QEMU tests' helper: one place that knows how
# Keel is booted under QEMU on these machines.
# shellcheck shell=bash

# TCG unless KVM can really work: /dev/kvm can exist on a paravirtual host whose CPU
# offers no vmx/svm, and there a stock kernel hangs early under -accel kvm.
keel_qemu_accel() {
  if [[ ${KEEL_ACCEL:-} ]]; then
    echo "$KEEL_ACCEL"
  elif [[ -w /dev/kvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    echo kvm
  else
    echo tcg
  fi
}

# keel_qemu_args DISK SERIAL_SPEC HTTPS_PORT HTTP_PORT -> fills array KEEL_QEMU_ARGS
keel_qemu_args() {
  local disk=$1 serial=$2 https=$3 http=$4
  local accel
  accel=$(keel_qemu_accel)
  KEEL_QEMU_ARGS=(
    -machine q35 -accel "$accel" -m "${KEEL_VM_MEM:-1024}" -smp "${KEEL_VM_CPUS:-2}"
    -display none -serial "$serial" -monitor none
    -drive "file=$disk,if=virtio,format=qcow2,discard=unmap"
    -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$https-:443,hostfwd=tcp:127.0.0.1:$http-:80"
    -device virtio-net-pci,netdev=n0
    -device i6300esb -action watchdog=reset
  )
  if [[ ${KEEL_FIRMWARE:-bios} == uefi ]]; then
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
  qemu-img create -q -f qcow2 -b "$(realpath "$base")" -F qcow2 "$overlay" $size
}
