#!/usr/bin/env bash
# Makes an update bundle of another version from the built root slot, without a
# full image build (the QEMU update tests use it):
#
#   image/make-test-bundle.sh VERSION OUT [--unhealthy] [--binary FILE]...
#   image/make-test-bundle.sh VERSION OUT --app NAME [--requires REQ]...
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
# --app NAME makes an app bundle instead (needs neither root nor a built slot): a
# tiny systemd-sysext squashfs holding
# usr/lib/extension-release.d/extension-release.NAME (ID=keel, SYSEXT_LEVEL=1, the
# level image/customize.sh gives the base) and usr/share/keel-app-NAME/hello.txt
# ("hello from NAME VERSION"), kind app, each --requires as given (e.g.
# 'base >= 0.1.3').
#
# Environment: KEEL_BIN_DIR, KEEL_BUILD_DIR as for image/build.sh.
set -euo pipefail
usage() {
  echo "usage: $0 VERSION OUT [--unhealthy] [--binary FILE]... | --app NAME [--requires REQ]..." >&2
  exit 2
}
(($# >= 2)) || usage
version=$1 dest=$2 unhealthy= app=
binaries=() requires=()
shift 2
while (($#)); do
  case $1 in
    --unhealthy) unhealthy=1 ;;
    --binary)
      (($# >= 2)) || usage
      [[ -x $2 && -f $2 ]] || { echo "--binary $2: not an executable file" >&2; exit 2; }
      binaries+=("$(realpath "$2")")
      shift ;;
    --app)
      (($# >= 2)) || usage
      [[ $2 =~ ^[a-z][a-z0-9-]{0,62}$ ]] || { echo "--app $2: lowercase letters, digits, -" >&2; exit 2; }
      app=$2
      shift ;;
    --requires)
      (($# >= 2)) || usage
      requires+=(--requires "$2")
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
bin_dir=$(realpath "${KEEL_BIN_DIR:-$(scripts/cargo-release.sh --bin-dir)}")
out=$(realpath "${KEEL_BUILD_DIR:-build}")
slot=$out/root.squashfs
tool=$bin_dir/keel-bundle
if [[ -n $app ]]; then
  [[ -z $unhealthy && ${#binaries[@]} -eq 0 ]] || { echo "--app takes no --unhealthy or --binary" >&2; exit 2; }
  [[ -x $tool ]] || { echo "missing $tool (run 'make build')" >&2; exit 1; }
  keel_signing_key "$out" "$tool"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  t=$tmp/tree
  install -d -m 0755 "$t/usr/lib/extension-release.d" "$t/usr/share/keel-app-$app"
  printf 'ID=keel\nSYSEXT_LEVEL=1\n' >"$t/usr/lib/extension-release.d/extension-release.$app"
  echo "hello from $app $version" >"$t/usr/share/keel-app-$app/hello.txt"
  mksquashfs "$t" "$tmp/app.raw" -all-root -noappend -quiet -no-progress >/dev/null
  rm -f "$dest"
  "$tool" build --key "$keel_key_secret" --product keel --version "$version" --kind app \
    --name "$app" "${requires[@]}" --expires-days "${KEEL_BUNDLE_EXPIRES_DAYS:-365}" \
    --payload "$tmp/app.raw" --out "$dest"
  "$tool" verify --key "$keel_key_public" "$dest" >/dev/null
  echo "$dest: app $app $version${requires[*]:+ (${requires[*]})}, $(stat -c %s "$dest") bytes"
  [[ -z $keel_key_dev ]] || keel_dev_key_warning
  exit 0
fi
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
