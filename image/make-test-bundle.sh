#!/usr/bin/env bash
# Makes an update bundle of another version from the built root slot, without a
# full image build (the QEMU update tests use it):
#
#   image/make-test-bundle.sh VERSION OUT [--unhealthy] [--binary FILE]...
#
# Unpacks build/root.squashfs (as root, ownership kept), sets VERSION, VERSION_ID
# and PRETTY_NAME in usr/lib/os-release (and usr/share/keel/version), packs it with
# the image's squashfs options and signs it with the key image/build.sh signs with
# (KEEL_SIGNING_KEY, else the development key in build/: image/lib.sh). With
# --unhealthy the slot's keel-console fails at once (a drop-in replaces its
# ExecStart with /bin/false and lands it in `failed` after one retry): the health
# gate must reject it and GRUB fall back. --binary FILE puts FILE in the slot as
# /usr/bin/<its name> (e.g. a keel-netd built with the format-next feature, for the
# test of an update and a rollback across a data format change).
#
# Environment: KEEL_BIN_DIR, KEEL_BUILD_DIR as for image/build.sh.
set -euo pipefail
usage() { echo "usage: $0 VERSION OUT [--unhealthy] [--binary FILE]..." >&2; exit 2; }
(($# >= 2)) || usage
version=$1 dest=$2 unhealthy=
binaries=()
shift 2
while (($#)); do
  case $1 in
    --unhealthy) unhealthy=1 ;;
    --binary)
      (($# >= 2)) || usage
      [[ -x $2 && -f $2 ]] || { echo "--binary $2: not an executable file" >&2; exit 2; }
      binaries+=("$(realpath "$2")")
      shift ;;
    *) usage ;;
  esac
  shift
done
[[ $version =~ ^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$ ]] ||
  { echo "VERSION must be x.y.z, not $version" >&2; exit 2; }
dest=$(realpath "$dest")
cd "$(dirname "$0")/.."
# shellcheck source=image/lib.sh
. image/lib.sh
bin_dir=$(realpath "${KEEL_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}")
out=$(realpath "${KEEL_BUILD_DIR:-build}")
slot=$out/root.squashfs
tool=$bin_dir/keel-bundle
[[ $(id -u) -eq 0 ]] || { echo "$0 needs root (unsquashfs keeping ownership)" >&2; exit 1; }
[[ -f $slot ]] || { echo "no $slot: run 'make image' first" >&2; exit 1; }
[[ -x $tool ]] || { echo "missing $tool (run 'make build')" >&2; exit 1; }
t0=$(date +%s.%N)

keel_signing_key "$out" "$tool"
tmp=$(mktemp -d "$out/test-bundle.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
unsquashfs -quiet -no-progress -dest "$tmp/root" "$slot" >/dev/null

r=$tmp/root
trusted=
for k in "$r"/usr/share/keel/update-keys/*.pub; do cmp -s "$k" "$keel_key_public" && trusted=1; done
[[ -n $trusted ]] || echo "WARNING: $keel_key_public is not among the slot's update keys:" \
  "an appliance of this build will refuse the bundle (UnknownKey)" >&2
sed -i -E -e "s/^VERSION=.*/VERSION=\"$version\"/" -e "s/^VERSION_ID=.*/VERSION_ID=$version/" \
  -e "s/^PRETTY_NAME=.*/PRETTY_NAME=\"Keel $version\"/" "$r/usr/lib/os-release"
grep -qx "VERSION_ID=$version" "$r/usr/lib/os-release" ||
  { echo "usr/lib/os-release has no VERSION_ID line" >&2; exit 1; }
echo "$version" >"$r/usr/share/keel/version"
for b in "${binaries[@]}"; do
  [[ -f $r/usr/bin/${b##*/} ]] || { echo "--binary ${b##*/}: the slot has no /usr/bin/${b##*/}" >&2; exit 2; }
  install -m 0755 "$b" "$r/usr/bin/${b##*/}"
done
if [[ -n $unhealthy ]]; then
  install -d -m 0755 "$r/etc/systemd/system/keel-console.service.d"
  cat >"$r/etc/systemd/system/keel-console.service.d/unhealthy.conf" <<'UNIT'
# make-test-bundle.sh --unhealthy: this slot's console never comes up.
[Unit]
StartLimitIntervalSec=60
StartLimitBurst=2
[Service]
ExecStart=
ExecStart=/bin/false
UNIT
fi

keel_mksquashfs "$r" "$tmp/root.squashfs"
rm -f "$dest"
"$tool" build --key "$keel_key_secret" --product keel --version "$version" --kind base \
  --payload "$tmp/root.squashfs" --installs-over '>=0.0.0' \
  --expires-days "${KEEL_BUNDLE_EXPIRES_DAYS:-365}" --out "$dest"
"$tool" verify --key "$keel_key_public" "$dest" >/dev/null
rm -rf "$tmp"
t1=$(date +%s.%N)
printf '%s: Keel %s%s, %s MiB, made in %.1f s\n' "$dest" "$version" \
  "${unhealthy:+ (unhealthy: keel-console fails)}${binaries[*]:+ (with ${binaries[*]##*/})}" "$(($(stat -c %s "$dest") / 1048576))" \
  "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
[[ -z $keel_key_dev ]] || keel_dev_key_warning
