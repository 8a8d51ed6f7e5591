#!/usr/bin/env bash
# check-modules.sh ROOT.squashfs|ROOTDIR [LIST]
# Fails, naming each one, when a kernel module of LIST (default
# image/required-modules.txt) is neither a module file in the root image nor built
# into its kernel (modules.builtin). Given a directory, it also follows each
# module's dependencies (modinfo's depends=, recorded when the kernel was built) and
# fails when one of those was trimmed away. Trimming the module tree can never
# silently drop hardware support.
set -euo pipefail
target=${1:?usage: check-modules.sh ROOT.squashfs|ROOTDIR [LIST]}
list=${2:-$(dirname "$0")/required-modules.txt}

if [[ -d $target ]]; then
  files=$(cd "$target" && find -L usr/lib/modules -type f)
  builtin=$(cat "$target"/usr/lib/modules/*/modules.builtin)
else
  # -l lists without extracting; the tree's module paths are under usr/ (merged /usr).
  files=$(unsquashfs -l -d '' "$target" usr/lib/modules)
  kver=$(sed -nE 's|^/?usr/lib/modules/([^/]+)/modules\.builtin$|\1|p' <<<"$files" | head -1)
  [[ -n $kver ]] || { echo "no usr/lib/modules/*/modules.builtin in $target" >&2; exit 1; }
  builtin=$(unsquashfs -cat "$target" "usr/lib/modules/$kver/modules.builtin")
fi
# Module names use _ and - interchangeably: compare in one spelling.
present=$( {
  grep -oE '[^/]+\.ko(\.(xz|zst|gz))?$' <<<"$files" | sed -E 's/\.ko(\..*)?$//'
  grep -oE '[^/]+\.ko$' <<<"$builtin" | sed 's/\.ko$//'
} | tr - _ | sort -u)
[[ -n $present ]] || { echo "no kernel modules found in $target" >&2; exit 1; }

missing=()
while read -r m; do
  [[ -z $m || $m == \#* ]] && continue
  grep -qxF "${m//-/_}" <<<"$present" || missing+=("$m")
done <"$list"
if ((${#missing[@]})); then
  echo "missing kernel modules in $target: ${missing[*]}" >&2
  exit 1
fi

if [[ -d $target ]]; then
  kver=$(find "$target/usr/lib/modules" -mindepth 1 -maxdepth 1 -printf "%f\n" | head -1)
  todo=$(grep -vE '^(#|$)' "$list")
  seen=" "
  broken=()
  while [[ -n $todo ]]; do
    next=""
    for m in $todo; do
      [[ $seen == *" ${m//-/_} "* ]] && continue
      seen+="${m//-/_} "
      grep -qxF "${m//-/_}" <<<"$present" || { broken+=("$m"); continue; }
      # Built-in modules have no depends= to read (and need nothing).
      deps=$(modinfo -b "$target" -k "$kver" -F depends "$m" 2>/dev/null || true)
      next+=" ${deps//,/ }"
    done
    todo=$(xargs -n1 <<<"$next" | sort -u)
  done
  if ((${#broken[@]})); then
    echo "dependencies of required kernel modules missing in $target: ${broken[*]}" >&2
    exit 1
  fi
fi
echo "all $(grep -cvE '^(#|$)' "$list") required kernel modules present${seen:+ with their dependencies} ($(wc -l <<<"$present") in the image)"
