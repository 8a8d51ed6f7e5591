#!/usr/bin/env bash
# Builds the Keel disk image from Debian packages, the workspace's release binaries
# and overlay/. Outputs in build/: keel-<version>.{raw,qcow2,vmdk}, root.squashfs.
# The package mirror is the build host's own (its deb822 sources file): no mirror
# is named in this repository.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
version=$(cat VERSION)
bin_dir=${KEEL_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
out=${KEEL_BUILD_DIR:-build}
work=$out/work
sources=${KEEL_APT_SOURCES:-/etc/apt/sources.list.d/debian.sources}

for b in keel-console keelctl; do
  [[ -x $bin_dir/$b ]] || { echo "missing $bin_dir/$b: run 'make build' first" >&2; exit 1; }
done
[[ $(id -u) -eq 0 ]] || { echo "image/build.sh needs root (mmdebstrap --mode=root)" >&2; exit 1; }

rm -rf "$work"
mkdir -p "$work"
root=$work/root
t0=$(date +%s)

packages=(
  systemd systemd-sysv systemd-resolved systemd-timesyncd udev kmod
  linux-image-amd64 initramfs-tools zstd
  e2fsprogs fdisk iproute2 ca-certificates grub-common
)
# Kernel module trees no appliance uses; image/required-modules.txt guards the rest.
drop_modules=(
  sound drivers/gpu drivers/media drivers/net/wireless drivers/bluetooth net/bluetooth
  net/wireless net/mac80211 drivers/staging drivers/isdn drivers/infiniband drivers/iio
  drivers/input/joystick drivers/input/touchscreen drivers/input/tablet drivers/nfc
  drivers/net/can net/can drivers/net/wwan drivers/net/ieee802154 net/ieee802154
  drivers/net/hamradio net/ax25 drivers/firewire drivers/thunderbolt drivers/w1
  drivers/mtd drivers/comedi drivers/gnss drivers/platform/chrome drivers/atm net/atm
  fs/btrfs fs/xfs fs/ocfs2 fs/gfs2 fs/ceph fs/smb fs/nfs fs/nfsd fs/ubifs fs/jfs
  fs/reiserfs fs/nilfs2 fs/f2fs fs/afs fs/coda fs/orangefs fs/dlm
)
dpkgopts=(
  'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*'
  'path-exclude=/usr/share/locale/*' 'path-exclude=/usr/share/lintian/*'
  'path-exclude=/usr/share/bash-completion/*' 'path-exclude=/usr/share/doc/*'
  'path-include=/usr/share/doc/*/copyright'
)
for m in "${drop_modules[@]}"; do
  dpkgopts+=("path-exclude=/lib/modules/*/kernel/$m/*")
done
mm_args=(--variant=minbase --mode=root --quiet
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --include="$(IFS=,; echo "${packages[*]}")")
for o in "${dpkgopts[@]}"; do mm_args+=(--dpkgopt="$o"); done
mm_args+=(--customize-hook="$top/image/customize.sh \"\$1\" $top $bin_dir $version")

mmdebstrap "${mm_args[@]}" bookworm "$root" "$sources"
t1=$(date +%s)

image/check-modules.sh "$root"

# GRUB 2.06 reads gzip/xz squashfs but not zstd; gzip decompresses fastest at boot.
mksquashfs "$root" "$out/root.squashfs" -comp gzip -noappend -quiet -no-progress \
  -e boot/grub
t2=$(date +%s)

image/make-disk.sh "$out/root.squashfs" "$out/keel-$version.raw"
qemu-img convert -O qcow2 "$out/keel-$version.raw" "$out/keel-$version.qcow2"
qemu-img convert -O vmdk -o subformat=streamOptimized "$out/keel-$version.raw" "$out/keel-$version.vmdk"
ln -sf "keel-$version.raw" "$out/keel.raw"
ln -sf "keel-$version.qcow2" "$out/keel.qcow2"
ln -sf "keel-$version.vmdk" "$out/keel.vmdk"
rm -rf "$work"
t3=$(date +%s)
echo "image: packages $((t1 - t0)) s, squashfs $((t2 - t1)) s, disk $((t3 - t2)) s"
ls -lh "$out"/keel-"$version".* "$out/root.squashfs"
