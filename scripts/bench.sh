#!/usr/bin/env bash
# Keel's first benchmark, side by side with a stock minimal Debian in the same run:
# image sizes, boot to console-ready vs boot to multi-user, idle RSS of keel processes.
# Prints a table and writes build/bench.json.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/qemu-lib.sh
runs=${KEEL_BENCH_RUNS:-3}
image=build/keel.qcow2
[[ -f build/stock.qcow2 ]] || image/build-stock.sh >/dev/null
tmp=$(mktemp -d)
trap 'pkill -P $$ qemu-system 2>/dev/null || true; rm -rf "$tmp"' EXIT

now() { date +%s.%N; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# boot_keel -> seconds from QEMU start to the first HTTPS answer of the console.
boot_keel() {
  local disk=$tmp/keel.qcow2 https http t0 t
  rm -f "$disk"; keel_qemu_overlay "$image" "$disk"
  https=$(port); http=$(port)
  keel_qemu_args "$disk" "file:$tmp/keel.log" "$https" "$http"
  t0=$(now)
  qemu-system-x86_64 "${KEEL_QEMU_ARGS[@]}" </dev/null &
  local pid=$!
  until curl -skf -m 2 "https://127.0.0.1:$https/appliance/api/v1/health" >/dev/null; do
    sleep 0.1
    (( $(echo "$(now) - $t0 > 300" | bc) )) && { echo "keel boot timed out" >&2; exit 1; }
  done
  t=$(echo "$(now) - $t0" | bc)
  if [[ ${1:-} == rss ]]; then idle_rss "$https" "$tmp/keel.log" >"$tmp/rss"; fi
  kill $pid; wait $pid 2>/dev/null || true
  echo "$t"
}

# After setup, let the box idle, then sum the RSS of every keel process.
idle_rss() {
  local https=$1 log=$2 code jar=$tmp/jar
  until grep -q KEEL-READY "$log"; do sleep 0.2; done
  code=$(grep -a -o 'Setup code: [A-Z0-9-]*' "$log" | tail -1 | cut -d' ' -f3)
  curl -sk -c "$jar" -H 'content-type: application/json' \
    -d "{\"setup_code\":\"$code\",\"password\":\"bench password\"}" \
    "https://127.0.0.1:$https/appliance/api/v1/setup" >/dev/null
  sleep 10
  curl -sk -b "$jar" "https://127.0.0.1:$https/appliance/api/v1/status" |
    python3 -c 'import json,sys; p=json.load(sys.stdin)["processes"]; print(sum(x["rss_kib"] for x in p), " ".join(f"{x["name"]}={x["rss_kib"]}" for x in p))'
}

# boot_stock -> seconds from QEMU start to the serial login prompt (multi-user).
boot_stock() {
  local disk=$tmp/stock-ov.qcow2 t0 t
  rm -f "$disk"; keel_qemu_overlay build/stock.qcow2 "$disk"
  : >"$tmp/stock.log"
  keel_qemu_args "$disk" "file:$tmp/stock.log" "$(port)" "$(port)"
  t0=$(now)
  qemu-system-x86_64 "${KEEL_QEMU_ARGS[@]}" </dev/null &
  local pid=$!
  until grep -qa 'login:' "$tmp/stock.log"; do
    sleep 0.1
    (( $(echo "$(now) - $t0 > 300" | bc) )) && { echo "stock boot timed out" >&2; exit 1; }
  done
  t=$(echo "$(now) - $t0" | bc)
  kill $pid; wait $pid 2>/dev/null || true
  echo "$t"
}

keel_times=() stock_times=()
for i in $(seq 1 "$runs"); do
  keel_times+=("$(boot_keel $([[ $i == 1 ]] && echo rss))")
  stock_times+=("$(boot_stock)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
keel_med=$(median "${keel_times[@]}")
stock_med=$(median "${stock_times[@]}")
ratio=$(echo "scale=2; $keel_med / $stock_med" | bc)
read -r rss_total rss_detail <"$tmp/rss"

raw_alloc=$(du -k --apparent-size=no "$(readlink -f build/keel.raw)" | cut -f1)
qcow=$(stat -c %s "$(readlink -f build/keel.qcow2)")
squash=$(stat -c %s build/root.squashfs)
stock_qcow=$(stat -c %s build/stock.qcow2)
mib() { echo "scale=1; $1 / 1048576" | bc; }

printf '\n%-44s %12s %12s %8s\n' "measure (median of $runs, TCG, -smp 2 -m 1024)" Keel "stock Debian" ratio
printf '%-44s %11ss %11ss %8s\n' "boot: QEMU start -> console HTTPS / login:" "$keel_med" "$stock_med" "$ratio"
printf '%-44s %10s MiB %10s MiB %8s\n' "qcow2 image" "$(mib "$qcow")" "$(mib "$stock_qcow")" \
  "$(echo "scale=2; $qcow / $stock_qcow" | bc)"
printf '%-44s %10s MiB\n' "raw image, allocated" "$(mib $((raw_alloc * 1024)))"
printf '%-44s %10s MiB\n' "root slot (squashfs)" "$(mib "$squash")"
printf '%-44s %10s KiB   (%s)\n' "idle RSS, all keel processes" "$rss_total" "$rss_detail"
printf 'raw boot times: keel %s | stock %s\n' "${keel_times[*]}" "${stock_times[*]}"

python3 - "$keel_med" "$stock_med" "$qcow" "$squash" "$raw_alloc" "$rss_total" <<'PY' >build/bench.json
import json, sys
k, s, q, sq, raw, rss = sys.argv[1:]
print(json.dumps({"boot_keel_s": float(k), "boot_stock_s": float(s),
  "boot_ratio": round(float(k) / float(s), 3), "qcow2_bytes": int(q),
  "squashfs_bytes": int(sq), "raw_allocated_kib": int(raw), "idle_rss_kib": int(rss)}, indent=1))
PY
