#!/usr/bin/env bash
# Builds the Keel disk image from Debian packages, the workspace's release binaries
# and overlay/. Outputs in build/: keel-<version>.{raw,qcow2,vmdk}, root.squashfs (the
# slot image), keel-<version>.bundle (that slot as a signed update bundle),
# keel-<version>.packages (what is inside), and stable symlinks
# keel.{raw,qcow2,vmdk}. The package mirror is the build host's own (its deb822
# sources file): no mirror is named in this repository.
#
# Environment (all optional):
#   KEEL_BIN_DIR        where the release binaries are (default: where
#                       scripts/cargo-release.sh puts them)
#   KEEL_BUILD_DIR      output directory (default build)
#   KEEL_OVERLAY_EXTRA  a second overlay laid over overlay/ (debugging only)
#   KEEL_APT_SOURCES    deb822 sources file (default the host's debian.sources)
#   KEEL_KEEP_WORK=1    keep build/work/root (the unpacked tree) for inspection
#   KEEL_SIGNING_KEY    secret update key (PREFIX.secret from `keel-bundle keygen`) that
#                       signs the bundle; its public key (KEEL_SIGNING_PUB, default
#                       PREFIX.pub) goes into the image. Unset: a development key pair
#                       build/dev-signing.{secret,pub}, made once and kept (warns loudly)
#   KEEL_TRUSTED_KEYS_DIR  more public keys (*.pub) the image trusts (key rotation)
#   KEEL_BUNDLE_EXPIRES_DAYS  validity of the bundle's signature (default 365)
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
# shellcheck source=image/lib.sh
. image/lib.sh
version=$(<VERSION)
bin_dir=$(realpath "${KEEL_BIN_DIR:-$(scripts/cargo-release.sh --bin-dir)}")
mkdir -p "${KEEL_BUILD_DIR:-build}"
out=$(realpath "${KEEL_BUILD_DIR:-build}")
extra=${KEEL_OVERLAY_EXTRA:+$(realpath "$KEEL_OVERLAY_EXTRA")}
sources=${KEEL_APT_SOURCES:-/etc/apt/sources.list.d/debian.sources}
work=$out/work
root=$work/root
# Downloaded .debs, kept between builds (only inside build/, pruned to this build's set).
cache=$out/cache/debs

# Binaries: keel-console and keelctl always (docs/interfaces.md), plus every
# /usr/bin/keel* that a unit in the overlay runs: an image never ships a unit whose
# program is missing.
mapfile -t bins < <({
  printf '%s\n' keel-console keelctl
  find overlay ${extra:+"$extra"} -path '*/systemd/system/*' -type f -print0 |
    xargs -0r sed -nE 's|^Exec[A-Za-z]*=[-@:+!]*/usr/bin/(keel[A-Za-z0-9_-]*).*|\1|p'
} | sort -u)
missing=()
for b in "${bins[@]}"; do [[ -x $bin_dir/$b ]] || missing+=("$b"); done
if ((${#missing[@]})); then
  echo "missing in $bin_dir: ${missing[*]} (run 'make build'; the overlay's units run them)" >&2
  exit 1
fi
# A unit is enabled by a symlink in a .wants/ directory; systemd ignores a regular
# file there (a checkout or copy that lost the link leaves the unit off).
mapfile -t not_links < <(find overlay ${extra:+"$extra"} -path '*/systemd/system/*.wants/*' ! -type l)
if ((${#not_links[@]})); then
  echo "not symlinks (the units they name would not start): ${not_links[*]}" >&2
  exit 1
fi
[[ $(id -u) -eq 0 ]] || { echo "image/build.sh needs root (mmdebstrap --mode=root, chroot)" >&2; exit 1; }
for t in mmdebstrap mksquashfs unsquashfs sfdisk mkfs.vfat mcopy mkfs.ext4 grub-mkimage qemu-img depmod; do
  command -v "$t" >/dev/null || { echo "missing $t: run scripts/deps.sh" >&2; exit 1; }
done
# The vendor tool signs the bundle; it is not installed into the image.
bundle_tool=$bin_dir/keel-bundle
[[ -x $bundle_tool ]] || { echo "missing $bundle_tool (run 'make build')" >&2; exit 1; }

rm -rf "$work"
mkdir -p "$work/bin" "$work/update-keys" "$cache"
t0=$(date +%s)
for b in "${bins[@]}"; do cp "$bin_dir/$b" "$work/bin/"; done

# Update keys: the signing key's public half, plus any in KEEL_TRUSTED_KEYS_DIR, go
# into the image (/usr/share/keel/update-keys/) before the squashfs is made.
keel_signing_key "$out" "$bundle_tool"
cp "$keel_key_public" "$work/update-keys/"
if [[ -n ${KEEL_TRUSTED_KEYS_DIR:-} ]]; then
  for k in "$KEEL_TRUSTED_KEYS_DIR"/*.pub; do
    [[ -f $k ]] || { echo "KEEL_TRUSTED_KEYS_DIR: no *.pub in $KEEL_TRUSTED_KEYS_DIR" >&2; exit 1; }
    dest=$work/update-keys/$(basename "$k")
    if [[ -e $dest ]] && ! cmp -s "$k" "$dest"; then
      echo "KEEL_TRUSTED_KEYS_DIR: $(basename "$k") differs from the signing key's file of that name" >&2
      exit 1
    fi
    cp "$k" "$dest"
  done
fi
echo "trusted update keys: $(cd "$work/update-keys" && echo *)"

# Keep it minimal: no ssh, no shell login (a later menu replaces getty), no dbus.
packages=(
  systemd systemd-sysv systemd-resolved systemd-timesyncd udev kmod
  linux-image-amd64 initramfs-tools zstd
  e2fsprogs fdisk iproute2 ca-certificates
  grub-common # grub-editenv only: marks the booted slot good (see the filters below)
  squashfs-tools # unsquashfs -cat: keel-update reads an app image's extension-release
)

# Kernel module trees an appliance never uses. image/required-modules.txt guards what
# must stay; customize.sh fails when a required module lost a dependency here.
# No DRM drivers either: Debian builds vgacon, vesafb, efifb and fbcon into the
# kernel, so tty1 works on any BIOS or UEFI screen without modesetting modules
# (which would also slow TCG boots by switching the console to a DRM framebuffer).
drop_modules=(
  sound drivers/gpu drivers/media drivers/staging drivers/iio drivers/comedi
  drivers/net/wireless drivers/bluetooth net/bluetooth net/wireless net/mac80211
  drivers/nfc net/nfc drivers/net/can net/can drivers/net/wwan
  drivers/net/ieee802154 net/ieee802154 net/mac802154 drivers/net/hamradio net/ax25
  net/netrom net/rose drivers/net/arcnet drivers/net/fddi drivers/net/plip
  drivers/net/dsa net/dsa drivers/isdn drivers/atm net/atm
  drivers/infiniband drivers/firewire drivers/thunderbolt drivers/w1 drivers/mtd
  drivers/gnss drivers/parport drivers/pcmcia drivers/memstick drivers/fpga
  drivers/counter drivers/most drivers/soundwire drivers/video/fbdev
  drivers/input/joystick drivers/input/touchscreen drivers/input/tablet
  drivers/platform/chrome drivers/platform/surface drivers/usb/gadget
  drivers/target drivers/nvme/target drivers/vhost drivers/vfio arch/x86/kvm
  # Fibre Channel / iSCSI offload HBAs: an appliance boots from local disks.
  drivers/scsi/lpfc drivers/scsi/qla2xxx drivers/scsi/qla4xxx drivers/scsi/qedf
  drivers/scsi/qedi drivers/scsi/bnx2fc drivers/scsi/bnx2i drivers/scsi/be2iscsi
  drivers/scsi/csiostor drivers/scsi/cxgbi drivers/scsi/bfa drivers/scsi/fnic
  # network and cluster filesystems, and ones nobody formats an appliance disk with
  fs/btrfs fs/xfs fs/ocfs2 fs/gfs2 fs/ceph net/ceph fs/smb fs/nfs fs/nfsd
  fs/lockd fs/nfs_common net/sunrpc fs/9p net/9p fs/ubifs fs/jfs fs/reiserfs
  fs/nilfs2 fs/f2fs fs/afs fs/coda fs/orangefs fs/dlm fs/hfs fs/hfsplus fs/ufs
  fs/minix fs/omfs fs/qnx4 fs/qnx6 fs/sysv fs/befs fs/adfs fs/affs fs/bfs fs/efs
  fs/freevxfs fs/hpfs fs/romfs fs/cramfs fs/gfs2
)
# dpkg filters: the last matching one decides, so includes follow their excludes.
# Kernel patterns must start with /lib/modules: that is the path in the package.
dpkgopts=(
  'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*'
  'path-exclude=/usr/share/locale/*' 'path-exclude=/usr/share/lintian/*'
  'path-exclude=/usr/share/bash-completion/*' 'path-exclude=/usr/share/zsh/*'
  'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright'
  # grub-common: 18 MB of tools and fonts, of which the image needs grub-editenv.
  'path-exclude=/usr/bin/grub-*' 'path-exclude=/usr/sbin/grub-*'
  'path-exclude=/usr/share/grub/*' 'path-exclude=/etc/grub.d/*'
  'path-include=/usr/bin/grub-editenv'
)
for m in "${drop_modules[@]}"; do
  dpkgopts+=("path-exclude=/lib/modules/*/kernel/$m/*")
done

mm_args=(--variant=minbase --mode=root --quiet
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --include="$(IFS=,; echo "${packages[*]}")"
  # Keep every downloaded .deb in the tree's apt cache: collected into $cache below.
  --skip=essential/unlink --skip=cleanup/apt/cache
  --setup-hook="mkdir -p \"\$1/var/cache/apt/archives\" && cp -l -t \"\$1/var/cache/apt/archives\" $cache/*.deb 2>/dev/null || cp -t \"\$1/var/cache/apt/archives\" $cache/*.deb 2>/dev/null || true"
  # The initrd config is in place before the kernel is installed: one small initrd.
  --essential-hook="mkdir -p \"\$1/etc/initramfs-tools\" && cp -r $top/image/initramfs/. \"\$1/etc/initramfs-tools/\""
  --customize-hook="$top/image/customize.sh \"\$1\" $top $work/bin $version $work/update-keys ${extra:-}"
)
for o in "${dpkgopts[@]}"; do mm_args+=(--dpkgopt="$o"); done

echo "== packages (mmdebstrap)"
mmdebstrap "${mm_args[@]}" bookworm "$root" "$sources"
t1=$(date +%s)

# Cache exactly this build's .debs for the next build (epochs are %3a in file names).
keep=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Package}_${Version}_${Architecture}.deb\n' |
  sed 's/:/%3a/')
rm -f "$cache"/*.deb
while read -r f; do
  [[ -f $root/var/cache/apt/archives/$f ]] && mv "$root/var/cache/apt/archives/$f" "$cache/"
done <<<"$keep"
dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Package} ${Version}\n' >"$out/keel-$version.packages"

echo "== root slot (squashfs)"
# Options in image/lib.sh (gzip: GRUB 2.06 cannot read zstd). /var is left out; the
# package list above records what dpkg's database would have said.
keel_mksquashfs "$root" "$out/root.squashfs"
image/check-modules.sh "$out/root.squashfs"

echo "== update bundle"
# Installs over any version: the appliance refuses downgrades and replays separately.
rm -f "$out/keel-$version.bundle"
"$bundle_tool" build --key "$keel_key_secret" --product keel --version "$version" --kind base \
  --payload "$out/root.squashfs" --installs-over '>=0.0.0' \
  --expires-days "${KEEL_BUNDLE_EXPIRES_DAYS:-365}" --out "$out/keel-$version.bundle"
# Build check: the appliance's own verifier, with the signing key alone and with the
# image's whole key set.
"$bundle_tool" verify --key "$keel_key_public" "$out/keel-$version.bundle"
trusted=()
for k in "$work"/update-keys/*.pub; do trusted+=(--key "$k"); done
"$bundle_tool" verify "${trusted[@]}" "$out/keel-$version.bundle" >/dev/null
t2=$(date +%s)

echo "== disk"
image/make-disk.sh "$out/root.squashfs" "$out/keel-$version.raw"
qemu-img convert -O qcow2 "$out/keel-$version.raw" "$out/keel-$version.qcow2"
# streamOptimized: the variant VMware/VirtualBox import (and an OVA carries).
nice qemu-img convert -O vmdk -o subformat=streamOptimized "$out/keel-$version.raw" \
  "$out/keel-$version.vmdk"
for f in raw qcow2 vmdk; do ln -sfn "keel-$version.$f" "$out/keel.$f"; done
[[ ${KEEL_KEEP_WORK:-} == 1 ]] || rm -rf "$work"
t3=$(date +%s)

echo "image $version built in $((t3 - t0)) s: packages $((t1 - t0)) s, squashfs+bundle $((t2 - t1)) s, disk $((t3 - t2)) s"
printf '%-28s %6s MiB allocated, %6s MiB apparent\n' \
  "$(basename "$out/keel-$version.raw")" \
  "$(($(stat -c '%b*%B' "$out/keel-$version.raw") / 1048576))" \
  "$(($(stat -c %s "$out/keel-$version.raw") / 1048576))"
for f in "keel-$version.qcow2" "keel-$version.vmdk" root.squashfs "keel-$version.bundle"; do
  printf '%-28s %6s MiB\n' "$f" "$(($(stat -c %s "$out/$f") / 1048576))"
done
[[ -z $keel_key_dev ]] || keel_dev_key_warning
