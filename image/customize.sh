#!/usr/bin/env bash
# mmdebstrap customize hook: turns the Debian tree into the Keel root filesystem.
# Arguments: ROOT TOPDIR BIN_DIR VERSION KEYS_DIR [EXTRA_OVERLAY]
set -euo pipefail
root=$1 top=$2 bin_dir=$3 version=$4 keys_dir=$5 extra=${6:-}
cd "$top"

# --- files: overlay, binaries, identity -------------------------------------------
cp -a overlay/. "$root/"
if [[ -n $extra ]]; then
  echo "laying extra overlay $extra (debugging build)"
  cp -a "$extra/." "$root/"
fi
# BIN_DIR holds exactly the binaries to install (build.sh chose them).
install -m 0755 "$bin_dir"/* "$root/usr/bin/"
# The public keys update bundles must be signed with (KEYS_DIR: build.sh chose them;
# keel-update trusts every *.pub here). Without one no update would ever verify.
compgen -G "$keys_dir/*.pub" >/dev/null || { echo "no update key (*.pub) in $keys_dir" >&2; exit 1; }
install -d -m 0755 "$root/usr/share/keel/update-keys"
install -m 0644 "$keys_dir"/*.pub "$root/usr/share/keel/update-keys/"

# SYSEXT_LEVEL: the interface app bundles (systemd-sysext images) are built
# against. systemd-sysext merges an image whose extension-release says ID=keel and
# this level on every base version of the level; without it, only on the exact
# VERSION_ID. Raise it when the base drops something apps may rely on.
sysext_level=1
cat >"$root/usr/lib/os-release" <<OS
PRETTY_NAME="Keel $version"
NAME="Keel"
ID=keel
ID_LIKE=debian
VERSION="$version"
VERSION_ID=$version
VERSION_CODENAME=bookworm
SYSEXT_LEVEL=$sysext_level
OS
ln -sfn ../usr/lib/os-release "$root/etc/os-release"
echo keel >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tkeel\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
  >"$root/etc/hosts"

# The root filesystem is read-only at run time: system users exist from build time on
# (overlay/usr/lib/sysusers.d: keel-console, uid/gid 900).
systemd-sysusers --root="$root"
[[ $(chroot "$root" id -u keel-console) == 900 ]] || { echo "keel-console is not uid 900" >&2; exit 1; }

# Every program a shipped unit runs exists in the tree (units may come and go while
# build.sh chose the binaries).
for u in "$root"/etc/systemd/system/*.service; do
  [[ -f $u && ! -L $u ]] || continue # enable/alias symlinks point at package units
  sed -nE 's/^Exec[A-Za-z]*=[-@:+!]*([^ ]+).*/\1/p' "$u" | while read -r prog; do
    [[ -e $root$prog || -L $root$prog ]] || { echo "$(basename "$u") runs $prog, which is not in the image" >&2; exit 1; }
  done
done

# --- read-only root --------------------------------------------------------------
# /data is the only persistent writable place; the ESP is mounted only while
# keel-boot, keel-reset or keel-update use grubenv (no fstab line: nothing else
# should touch it).
# No boot-time fsck for /data: ext4 replays its journal when mounting, and a
# preen pass on every boot would sit on the console's critical path (~0.7 s under
# TCG) to repair only what it may repair unattended anyway. keel-reset.service runs
# first: a requested factory reset wipes the partition before anything mounts it.
cat >"$root/etc/fstab" <<'FSTAB'
# <what>        <where> <type> <options>                          <dump> <fsck>
PARTLABEL=data  /data   ext4   defaults,noatime,nodev,nosuid,x-systemd.requires=keel-reset.service 0 0
tmpfs           /var    tmpfs  mode=0755,nodev,nosuid,size=25%        0 0
tmpfs           /tmp    tmpfs  mode=1777,nodev,nosuid,size=25%        0 0
FSTAB
mkdir -p "$root/data" "$root/boot/efi"
# Empty machine-id: systemd makes a transient one per boot on the read-only root (an
# empty file, unlike a missing one, does not trigger first-boot units).
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
ln -sfn /run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"

# --- app bundles (systemd-sysext) --------------------------------------------------
# keel-update keeps verified app images in /data/apps (tmpfiles: keel-update.conf)
# and hard-links the active one into /data/apps/extensions, which systemd-sysext
# searches as /etc/extensions: merged at every boot (after local-fs.target, so
# /data is mounted) and re-merged by keel-update with a restart of the unit.
ln -sfn /data/apps/extensions "$root/etc/extensions"
# Loop devices carry the images; kmod-static-nodes is masked, so /dev/loop-control
# exists only once the module is loaded.
install -d -m 0755 "$root/etc/systemd/system/systemd-sysext.service.d"
cat >"$root/etc/systemd/system/systemd-sysext.service.d/keel.conf" <<'UNIT'
# Keel: app images are loop-mounted; /data holds them.
[Unit]
Wants=modprobe@loop.service
After=modprobe@loop.service
RequiresMountsFor=/data
UNIT
chroot "$root" systemctl enable --quiet systemd-sysext.service

# --- kernel and initrd -------------------------------------------------------------
# image/initramfs/ was in place before the kernel package came (essential hook), so
# the initrd was built once with MODULES=list and zstd; make sure it really was.
kver=$(basename "$(ls -d "$root"/usr/lib/modules/*)")
initrd=$root/boot/initrd.img-$kver
if [[ ! -f $initrd ]] || (($(stat -c %s "$initrd") > 24 * 1024 * 1024)); then
  echo "initrd missing or too large: regenerating" >&2
  chroot "$root" update-initramfs -c -k "$kver"
fi
grep -q 'kernel/fs/squashfs/squashfs.ko' <(chroot "$root" lsinitramfs "/boot/initrd.img-$kver") ||
  { echo "initrd lacks squashfs.ko" >&2; exit 1; }
echo "initrd: $(($(stat -c %s "$initrd") / 1024)) KiB"
# GRUB loads the kernel and initrd from the slot by these fixed names.
ln -sfn "boot/vmlinuz-$kver" "$root/vmlinuz"
ln -sfn "boot/initrd.img-$kver" "$root/initrd.img"

# Required modules and everything they depend on survived the trim.
image/check-modules.sh "$root"

# --- services ------------------------------------------------------------------
# Every unit the overlay ships with an [Install] section is enabled.
mapfile -t units < <(cd overlay && grep -l '^\[Install\]' etc/systemd/system/*.service \
  etc/systemd/system/*.path etc/systemd/system/*.timer etc/systemd/system/*.socket \
  usr/lib/systemd/system/* 2>/dev/null | xargs -rn1 basename)
if [[ -n $extra ]]; then
  mapfile -t -O "${#units[@]}" units < <(cd "$extra" && grep -ls '^\[Install\]' \
    etc/systemd/system/* usr/lib/systemd/system/* 2>/dev/null | xargs -rn1 basename)
fi
echo "enabling: ${units[*]}"
chroot "$root" systemctl enable --quiet systemd-networkd "${units[@]}"

# resolved and timesyncd order themselves before sysinit.target, i.e. before every
# ordinary service, the console included; neither is needed for the console to
# answer. Their units, derived from the packages' own at build time, join
# multi-user.target instead and start beside the console. (A drop-in cannot remove
# an ordering.)
for u in systemd-resolved.service systemd-timesyncd.service; do
  chroot "$root" systemctl disable --quiet "$u"
  sed -E -e '/^Before=/s/ ?sysinit\.target//' -e 's/^WantedBy=sysinit\.target/WantedBy=multi-user.target/' \
    "$root/usr/lib/systemd/system/$u" >"$root/etc/systemd/system/$u"
  ! grep -q sysinit "$root/etc/systemd/system/$u" || { echo "$u still names sysinit" >&2; exit 1; }
  chroot "$root" systemctl enable --quiet "$u"
done

# Off, because on a read-only appliance without logins they do nothing useful and
# under TCG every process costs boot time:
masked=(
  # logins: a later local menu replaces getty; no sessions, so no logind or utmp
  getty@tty1.service serial-getty@ttyS0.service systemd-logind.service
  systemd-user-sessions.service systemd-update-utmp.service
  systemd-update-utmp-runlevel.service
  # waiting for the network: the console starts without it
  systemd-networkd-wait-online.service systemd-network-generator.service
  # state that /var on tmpfs would lose anyway: journal flush, random seed, pstore
  systemd-journal-flush.service systemd-random-seed.service systemd-pstore.service
  # pseudo filesystems and module preloads nothing here uses
  dev-hugepages.mount dev-mqueue.mount sys-kernel-debug.mount sys-kernel-tracing.mount
  sys-kernel-config.mount sys-fs-fuse-connections.mount proc-sys-fs-binfmt_misc.automount
  systemd-binfmt.service kmod-static-nodes.service systemd-repart.service
  # maintenance timers of a writable Debian system
  e2scrub_all.timer e2scrub_reap.service fstrim.timer apt-daily.timer
  apt-daily-upgrade.timer dpkg-db-backup.timer
)
chroot "$root" systemctl mask --quiet "${masked[@]}"
chroot "$root" systemctl set-default multi-user.target >/dev/null

# What is inside, for audits: the image's own package list.
mkdir -p "$root/usr/share/keel"
# shellcheck disable=SC2016 # dpkg-query's format, not shell
chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' >"$root/usr/share/keel/packages"
echo "$version" >"$root/usr/share/keel/version"

rm -rf "${root:?}"/var/log/* "$root"/var/lib/apt/lists/*
