#!/usr/bin/env bash
# Benchmark peer: a stock minimal Debian bookworm (minbase + systemd-sysv + udev + the
# same linux-image-amd64 + initramfs-tools, nothing trimmed or tuned, stock getty on
# the serial line so "login:" marks multi-user) on an ext4 root, booted through the
# same GRUB images and menu timeout as Keel (image/grub/stock.cfg).
# Output: build/stock.qcow2 (root password "debian": a benchmark VM, never shipped).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p "${KEEL_BUILD_DIR:-build}"
out=$(realpath "${KEEL_BUILD_DIR:-build}")
work=$out/stock-work
cache=$out/cache/debs # filled by image/build.sh; only read here
sources=${KEEL_APT_SOURCES:-/etc/apt/sources.list.d/debian.sources}
[[ $(id -u) -eq 0 ]] || { echo "image/build-stock.sh needs root" >&2; exit 1; }
rm -rf "$work"
mkdir -p "$work"
# shellcheck disable=SC2016 # $1 is expanded by mmdebstrap's hook shell
mmdebstrap --variant=minbase --mode=root --quiet \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --include=systemd,systemd-sysv,udev,linux-image-amd64,initramfs-tools \
  --setup-hook="mkdir -p \"\$1/var/cache/apt/archives\"; cp -t \"\$1/var/cache/apt/archives\" $cache/*.deb 2>/dev/null || true" \
  --customize-hook='echo "root:debian" | chroot "$1" chpasswd; echo debian >"$1/etc/hostname"' \
  --customize-hook='printf "/dev/disk/by-partlabel/root-a / ext4 defaults 0 1\n" >"$1/etc/fstab"' \
  bookworm "$work/root" "$sources"
mkfs.ext4 -q -F -L root -d "$work/root" "$work/root.img" 1200M
KEEL_GRUB_CFG=image/grub/stock.cfg KEEL_SLOT_MIB=1200 KEEL_DISK_MIB=3072 \
  image/make-disk.sh "$work/root.img" "$work/stock.raw"
qemu-img convert -O qcow2 "$work/stock.raw" "$out/stock.qcow2"
rm -rf "$work"
ls -lh "$out/stock.qcow2"
