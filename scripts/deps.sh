#!/usr/bin/env bash
# Installs every host package that building, running and testing Keel needs.
# Idempotent and quick when everything is there (one dpkg-query).
set -euo pipefail

packages=(
  # image build
  mmdebstrap squashfs-tools grub-pc-bin grub-efi-amd64-bin grub-common
  dosfstools mtools fdisk e2fsprogs zstd xz-utils
  # VMs and tests
  qemu-utils ovmf openssl iproute2 curl python3 bc chrony dnsmasq
)
# bookworm's own qemu-system (7.2) conflicts with the backported qemu-utils that
# these machines carry; take qemu-system from bookworm-backports.
backports=(qemu-system-x86 qemu-system-common qemu-system-data)

missing() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${db:Status-Status}\n' "$p" 2>/dev/null | grep -qx installed || echo "$p"
  done
}

need=($(missing "${packages[@]}"))
need_bpo=($(missing "${backports[@]}"))

if ((${#need[@]} + ${#need_bpo[@]} > 0)); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing packages: ${need[*]} ${need_bpo[*]}" >&2
    echo "run as root: sudo $0" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Backports come from the same mirror as the host's own sources: derive a
  # sources file from it rather than naming any mirror here.
  src=/etc/apt/sources.list.d/debian.sources
  bpo_list=$(mktemp --suffix=.sources)
  trap 'rm -f "$bpo_list"' EXIT
  if [[ -f $src ]]; then
    awk 'BEGIN{RS="";ORS="\n\n"} /Suites:[^\n]*bookworm( |$|\n)/ && !/security/' "$src" |
      sed -E 's/^Suites:.*/Suites: bookworm bookworm-backports/' >"$bpo_list"
  fi
  apt_opts=(-o "Dir::Etc::sourcelist=$bpo_list" -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0)
  apt-get update -qq
  if ((${#need_bpo[@]})); then
    apt-get "${apt_opts[@]}" update -qq
    apt-get "${apt_opts[@]}" install -y -qq -t bookworm-backports "${need_bpo[@]}" >/dev/null
  fi
  if ((${#need[@]})); then
    apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

# Tools the Rust side needs (rustup toolchain on the host).
if command -v rustup >/dev/null; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi
