# Shared by image/build.sh and image/make-test-bundle.sh (sourced, not run): the
# root slot's squashfs options and the choice of the update signing key, so a test
# bundle is made and signed exactly like the image's own.

# keel_mksquashfs TREE OUT: the root slot image.
# GRUB 2.06 reads gzip/xz squashfs but not zstd; gzip decompresses fastest at boot.
# Level 6: the same size as mksquashfs's default 9 here, at a seventh of the CPU time.
# /var is a tmpfs at run time (its content in the image would be dead weight).
keel_mksquashfs() {
  rm -f "$2"
  nice mksquashfs "$1" "$2" -comp gzip -Xcompression-level 6 -noappend -quiet -no-progress \
    -wildcards -e 'var/*' 'boot/System.map-*'
}

# keel_signing_key OUT_DIR KEEL_BUNDLE: sets keel_key_secret and keel_key_public.
# KEEL_SIGNING_KEY (a secret key file, PREFIX.secret) signs when set; its public key
# is KEEL_SIGNING_PUB, default PREFIX.pub beside it. Unset: a development key pair
# OUT_DIR/dev-signing.{secret,pub}, made once with `keel-bundle keygen` and kept, with
# a loud warning on every use.
keel_signing_key() {
  local out=$1 tool=$2
  if [[ -n ${KEEL_SIGNING_KEY:-} ]]; then
    keel_key_secret=$(realpath "$KEEL_SIGNING_KEY")
    keel_key_public=$(realpath "${KEEL_SIGNING_PUB:-${KEEL_SIGNING_KEY%.secret}.pub}")
    [[ -f $keel_key_secret ]] || { echo "KEEL_SIGNING_KEY: $keel_key_secret is not a file" >&2; return 1; }
    [[ -f $keel_key_public ]] ||
      { echo "no public key $keel_key_public for KEEL_SIGNING_KEY (set KEEL_SIGNING_PUB)" >&2; return 1; }
    keel_key_dev=
    echo "signing with $keel_key_secret (public key $keel_key_public)"
    return 0
  fi
  keel_key_secret=$out/dev-signing.secret
  keel_key_public=$out/dev-signing.pub
  keel_key_dev=1
  if [[ ! -f $keel_key_secret || ! -f $keel_key_public ]]; then
    rm -f "$keel_key_secret" "$keel_key_public"
    "$tool" keygen --out "$out/dev-signing" >&2
  fi
  keel_dev_key_warning
}

# keel_dev_key_warning: the loud notice that a development key signs (stderr).
keel_dev_key_warning() {
  cat >&2 <<WARN
################################################################################
##  WARNING: DEVELOPMENT SIGNING KEY
##  KEEL_SIGNING_KEY is not set: signing with $keel_key_secret,
##  a key made on this build machine. Its public key is a trusted update key in
##  the image. Images and bundles of this build are for development only: never
##  ship them. Release builds set KEEL_SIGNING_KEY=/path/to/PREFIX.secret.
################################################################################
WARN
}
