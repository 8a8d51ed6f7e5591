#!/usr/bin/env bash
# Benchmark peer: a stock minimal Debian bookworm (same kernel package, stock
# systemd, getty on the serial line) on ext4, booted through the same GRUB as Keel.
# Output: build/stock.qcow2.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${KEEL_BUILD_DIR:-build}
work=$out/stock-work
sources=${KEEL_APT_SOURCES:-/etc/apt/sources.list.d/debian.sources}
rm -rf "$work"
mkdir -p "$work"
mmdebstrap --variant=minbase --mode=root --quiet \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --include=systemd,systemd-sysv,udev,linux-image-amd64,initramfs-tools \
  --customize-hook='echo "root:debian" | chroot "$1" chpasswd; echo debian >"$1/etc/hostname"' \
  bookworm "$work/root" "$sources"
mkfs.ext4 -q -F -L root -d "$work/root" "$work/root.img" 1200M
KEEL_GRUB_CFG=image/grub/stock.cfg KEEL_SLOT_MIB=1200 KEEL_DISK_MIB=3072 \
  image/make-disk.sh "$work/root.img" "$work/stock.raw"
qemu-img convert -O qcow2 "$work/stock.raw" "$out/stock.qcow2"
rm -rf "$work"
ls -lh "$out/stock.qcow2"
