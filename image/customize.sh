#!/usr/bin/env bash
# mmdebstrap customize hook: turns the Debian tree into the Keel root filesystem.
# Arguments: ROOT TOPDIR BIN_DIR VERSION
set -euo pipefail
root=$1 top=$2 bin_dir=$3 version=$4
cd "$top"

cp -a overlay/. "$root/"
install -m 0755 "$bin_dir/keel-console" "$bin_dir/keelctl" "$root/usr/bin/"

cat >"$root/usr/lib/os-release" <<OS
PRETTY_NAME="Keel $version"
NAME="Keel"
ID=keel
ID_LIKE=debian
VERSION="$version"
VERSION_ID=$version
HOME_URL="https://keel.invalid/"
OS
ln -sf ../usr/lib/os-release "$root/etc/os-release"
echo keel >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tkeel\n::1\tlocalhost ip6-localhost\n' >"$root/etc/hosts"

# The root filesystem is read-only at run time: users exist from build time on.
systemd-sysusers --root="$root"

cat >"$root/etc/fstab" <<'FSTAB'
PARTLABEL=data  /data  ext4   defaults,noatime,nodev,nosuid  0 2
tmpfs           /var   tmpfs  mode=0755,nodev,nosuid,size=25%  0 0
tmpfs           /tmp   tmpfs  mode=1777,nodev,nosuid,size=25%  0 0
FSTAB
mkdir -p "$root/data" "$root/boot/efi"
# Empty machine-id: systemd makes a transient one on the read-only root.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
ln -sf /run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"

# Small initrd: only what finds and mounts the root slot.
cat >"$root/etc/initramfs-tools/conf.d/keel.conf" <<'IRD'
MODULES=list
COMPRESS=zstd
IRD
cat >"$root/etc/initramfs-tools/modules" <<'MODS'
virtio_pci
virtio_blk
virtio_scsi
sd_mod
ahci
nvme
megaraid_sas
mpt3sas
vmw_pvscsi
hv_storvsc
xen-blkfront
squashfs
MODS
chroot "$root" update-initramfs -u -k all >/dev/null
# GRUB loads the kernel and initrd from the slot by these fixed names.
kernel=$(cd "$root/boot" && ls vmlinuz-* | sort -V | tail -1)
initrd=$(cd "$root/boot" && ls initrd.img-* | sort -V | tail -1)
ln -sf "boot/$kernel" "$root/vmlinuz"
ln -sf "boot/$initrd" "$root/initrd.img"

# Services: what runs, and what an appliance does not want at boot.
chroot "$root" systemctl enable --quiet systemd-networkd systemd-resolved \
  keel-console keel-banner keel-boot-ok keel-grow-data keel-power-request.path
chroot "$root" systemctl mask --quiet systemd-networkd-wait-online.service \
  getty@tty1.service serial-getty@ttyS0.service e2scrub_all.timer e2scrub_reap.service \
  apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer 2>/dev/null || true
chroot "$root" systemctl set-default multi-user.target >/dev/null

# Nothing of the package manager's caches belongs in a read-only image.
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/log/*
