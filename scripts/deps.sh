#!/usr/bin/env bash
# Installs every host package that building, running and testing Keel needs.
# Idempotent: on a machine that has everything it costs one dpkg-query (~0.1 s) and
# touches neither apt nor the network. As non-root it prints the command and exits 1.
set -euo pipefail

packages=(
  # release binaries, statically linked (scripts/cargo-release.sh): glibc's libc.a
  libc6-dev
  # image build
  mmdebstrap squashfs-tools grub-pc-bin grub-efi-amd64-bin grub-common
  dosfstools mtools fdisk e2fsprogs zstd xz-utils kmod
  # VMs, tests, bench
  qemu-utils ovmf openssl iproute2 curl python3 bc chrony dnsmasq
  # failover tests: one-way and heartbeat-only loss (the kernel has no netem)
  nftables
  # keel-update's online tests: a real forwarding proxy (HTTP CONNECT, basic auth)
  tinyproxy
  # keel-failover's DNS swing tests: a real DNS client
  bind9-dnsutils
  # the console's end-to-end test: headless Chromium over WebDriver (Latin fonts, or
  # the renderer dies); every run passes --host-resolver-rules and
  # --disable-background-networking, so Chromium resolves no outside name
  chromium chromium-driver fonts-dejavu-core
  # the example playbook's test (examples/ansible): ansible.builtin.uri with a token
  ansible-core
)
# bookworm's own qemu-system (7.2) refuses to install beside the backported
# qemu-utils these machines carry: take qemu-system from bookworm-backports.
backports=(qemu-system-x86 qemu-system-common qemu-system-data)

# missing PKG... -> the names dpkg does not report as installed, one a line.
missing() {
  local installed
  # dpkg-query exits 1 when it knows a name not at all: that is an answer here.
  installed=$({ dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null || true; } |
    awk '$2 == "installed" {print $1}')
  local p
  for p in "$@"; do
    grep -qxF "$p" <<<"$installed" || echo "$p"
  done
}

if ! command -v dpkg-query >/dev/null; then
  echo "not a Debian host: install the equivalents of: ${packages[*]} ${backports[*]}" >&2
  exit 1
fi
mapfile -t need < <(missing "${packages[@]}")
mapfile -t need_bpo < <(missing "${backports[@]}")

# The host's deb822 sources plus a bookworm-backports stanza cloned from its bookworm
# stanza (same URIs, same key): no mirror is named in this repository.
derive_sources() {
  awk 'BEGIN { RS = ""; ORS = "\n\n" }
       { print }
       /(^|\n)Suites:[^\n]*bookworm([ \t]|\n|$)/ && !/bookworm-security/ && !bpo {
         gsub(/(^|\n)Suites:[^\n]*/, "\nSuites: bookworm-backports"); sub(/^\n/, "")
         bpo = $0
       }
       END { if (bpo) print bpo }' "$1"
}

if ((${#need[@]} + ${#need_bpo[@]} > 0)); then
  src=/etc/apt/sources.list.d/debian.sources
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing host packages: ${need[*]} ${need_bpo[*]}" >&2
    echo "run as root:  sudo $0" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ((${#need[@]})); then
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if ((${#need_bpo[@]})); then
    [[ -f $src ]] || { echo "no $src to derive bookworm-backports from" >&2; exit 1; }
    bpo_sources=$(mktemp --suffix=.sources)
    trap 'rm -f "$bpo_sources"' EXIT
    derive_sources "$src" >"$bpo_sources"
    grep -q '^Suites: bookworm-backports' "$bpo_sources" ||
      { echo "no bookworm stanza in $src to derive bookworm-backports from" >&2; exit 1; }
    # List-Cleanup=0: the lists of the host's own sources stay as they are.
    apt_bpo=(-o "Dir::Etc::sourcelist=$bpo_sources" -o Dir::Etc::sourceparts=-
      -o APT::Get::List-Cleanup=0)
    apt-get "${apt_bpo[@]}" update -qq
    apt-get "${apt_bpo[@]}" install -y -qq -t bookworm-backports "${need_bpo[@]}" >/dev/null
  fi
  echo "installed: ${need[*]} ${need_bpo[*]}"
fi

# The Rust side's lint tools, only when a rustup toolchain is there and lacks them.
if command -v rustup >/dev/null; then
  installed=$(rustup component list --installed 2>/dev/null || true)
  for c in rustfmt clippy; do
    grep -q "^$c" <<<"$installed" || rustup component add "$c"
  done
fi
