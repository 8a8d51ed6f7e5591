#!/usr/bin/env bash
# Fails, naming each one, when a module of image/required-modules.txt is not in the
# root image (a squashfs file or a directory tree). Built-in modules count as present.
set -euo pipefail
target=${1:?usage: check-modules.sh ROOT.squashfs|ROOTDIR}
list=${2:-$(dirname "$0")/required-modules.txt}

if [[ -d $target ]]; then
  listing=$(cd "$target" && find usr/lib/modules lib/modules -type f 2>/dev/null || true)
else
  listing=$(unsquashfs -l "$target" 'usr/lib/modules' 'lib/modules' 2>/dev/null || true)
fi
# modules.builtin lists what is compiled into the kernel.
builtin=""
if [[ -d $target ]]; then
  builtin=$(cat "$target"/usr/lib/modules/*/modules.builtin 2>/dev/null || true)
else
  tmp=$(mktemp -d)
  unsquashfs -q -d "$tmp/x" "$target" 'usr/lib/modules/*/modules.builtin' >/dev/null 2>&1 || true
  builtin=$(cat "$tmp"/x/usr/lib/modules/*/modules.builtin 2>/dev/null || true)
  rm -rf "$tmp"
fi
# Module names use _ and - interchangeably; compare in one spelling.
norm() { tr '-' '_'; }
present=$( { printf '%s\n' "$listing" | grep -oE '[^/]+\.ko(\.(xz|zst|gz))?$' | sed -E 's/\.ko(\..*)?$//'
             printf '%s\n' "$builtin" | grep -oE '[^/]+\.ko$' | sed 's/\.ko$//'; } | norm | sort -u)
missing=0
while read -r m; do
  [[ -z $m || $m == \#* ]] && continue
  if ! grep -qx "$(printf '%s' "$m" | norm)" <<<"$present"; then
    echo "missing kernel module: $m" >&2
    missing=1
  fi
done <"$list"
if ((missing)); then
  exit 1
fi
echo "all $(grep -cvE '^(#|$)' "$list") required kernel modules present"
