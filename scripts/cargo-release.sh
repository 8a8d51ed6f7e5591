#!/usr/bin/env bash
# The one way the appliance's release binaries are built (make build, the QEMU
# tests' variant builds, the benches): `cargo build --release` statically linked
# against glibc's libc.a. A keel process then maps only the libc code it uses, not
# all of the shared libc, libm and loader: 1.4 MiB less RSS per process, measured
# on a paired keel-failover (9.4 -> 8.0 MiB). glibc resolves "files" and "dns" of
# nsswitch.conf itself, without loading NSS modules. --target keeps the flag off
# build scripts and proc macros (rustc makes no proc macro with crt-static), and
# so puts the binaries in a directory of their own.
#
#   scripts/cargo-release.sh [CARGO BUILD ARGS...]   build
#   scripts/cargo-release.sh --bin-dir               print where the binaries are
set -euo pipefail
triple=x86_64-unknown-linux-gnu
if [[ ${1:-} == --bin-dir ]]; then
  echo "${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}/$triple/release"
  exit 0
fi
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
exec "${CARGO:-cargo}" build --release --locked --target "$triple" "$@"
