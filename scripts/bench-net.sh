#!/usr/bin/env bash
# keel-netd bench, in a network namespace of its own (needs root, iproute2, curl):
#   apply  - API call (PUT /config on netd's socket) until the new address is live
#            in the kernel, as `ip` sees it
#   cancel - POST /cancel until the old address is back (revert on demand)
#   expiry - an unconfirmed change with a 1 s window: from the deadline until the
#            old address is back (revert by itself)
# side by side with the same change made by `ip` (del old + add new in one
# `ip -batch`, what an admin would type), as a ratio of medians. Every step of both
# is timed the same way: the command, then one `ip` check that must already see it
# (netd answers only after the kernel acknowledged).
# Usage: scripts/bench-net.sh [iterations]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20}
[[ $(id -u) -eq 0 ]] || { echo "bench-net needs root (network namespaces)" >&2; exit 1; }
for t in ip curl; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }; done

bin=$(scripts/cargo-release.sh --bin-dir)/keel-netd
if [[ ! -x $bin || -n $(find services/keel-netd services/keel-api services/keel-core -newer "$bin" -name '*.rs' | head -1) ]]; then
  scripts/cargo-release.sh -p keel-netd >&2
fi

ns=keel-bench-net-$$
work=$(mktemp -d)
pid=
cleanup() {
  [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add eth0 type veth peer name peer0
ip -n "$ns" link set peer0 up

sock=$work/run/api.sock
mkdir -p "$work/data/net"
config() { # ADDRESS -> a NetConfig with that one static address on eth0
  printf '{"interfaces":[{"name":"eth0","mode":"static","addresses":["%s"]}]}' "$1"
}
config 10.0.0.2/24 >"$work/data/net/config.json"
KEEL_LOG=warn "$bin" --netns "$ns" --data-dir "$work/data" --run-dir "$work/run" --socket "$sock" \
  --networkd-dir none --resolved-dropin none --reconcile-seconds 0 &
pid=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
[[ -S $sock ]] || { echo "keel-netd did not start" >&2; exit 1; }

api() { # METHOD PATH [BODY]
  curl -sf --unix-socket "$sock" -X "$1" -H 'content-type: application/json' \
    ${3:+--data "$3"} "http://localhost$2" >/dev/null
}
live() { # ADDRESS -> succeeds when eth0 has it
  ip -n "$ns" -br addr show dev eth0 | grep -q " $1\( \|$\)"
}
now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f", m/1000}'; }

apply_us=() cancel_us=() ip_us=() iprev_us=() expiry_us=()
for _ in $(seq "$n"); do
  t0=$(now_us)
  api PUT /config "{\"config\":$(config 10.0.0.3/24),\"owner\":\"bench\",\"confirm_seconds\":60}"
  live 10.0.0.3/24 || { echo "netd: address not live after the call" >&2; exit 1; }
  t1=$(now_us); apply_us+=($((t1 - t0)))
  api POST /cancel '{"owner":"bench"}'
  live 10.0.0.2/24 || { echo "netd: not reverted after cancel" >&2; exit 1; }
  t2=$(now_us); cancel_us+=($((t2 - t1)))
done

# The peer: the same change with ip, netd stopped so nothing else acts on eth0.
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
for _ in $(seq "$n"); do
  t0=$(now_us)
  printf 'addr del 10.0.0.2/24 dev eth0\naddr add 10.0.0.3/24 dev eth0\n' | ip -n "$ns" -batch -
  live 10.0.0.3/24 || exit 1
  t1=$(now_us); ip_us+=($((t1 - t0)))
  printf 'addr del 10.0.0.3/24 dev eth0\naddr add 10.0.0.2/24 dev eth0\n' | ip -n "$ns" -batch -
  live 10.0.0.2/24 || exit 1
  t2=$(now_us); iprev_us+=($((t2 - t1)))
done

# Revert by itself: 1 s windows, a few times (each takes a second).
config 10.0.0.2/24 >"$work/data/net/config.json"
KEEL_LOG=warn "$bin" --netns "$ns" --data-dir "$work/data" --run-dir "$work/run" --socket "$sock" \
  --networkd-dir none --resolved-dropin none --reconcile-seconds 0 &
pid=$!
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
for _ in $(seq 5); do
  t0=$(now_us)
  api PUT /config "{\"config\":$(config 10.0.0.3/24),\"owner\":\"bench\",\"confirm_seconds\":1}"
  until live 10.0.0.2/24 && ! live 10.0.0.3/24; do :; done
  t1=$(now_us); expiry_us+=($((t1 - t0 - 1000000)))
done

a=$(printf '%s\n' "${apply_us[@]}" | median)
c=$(printf '%s\n' "${cancel_us[@]}" | median)
p=$(printf '%s\n' "${ip_us[@]}" | median)
pr=$(printf '%s\n' "${iprev_us[@]}" | median)
e=$(printf '%s\n' "${expiry_us[@]}" | median)
ratio() { awk -v x="$1" -v y="$2" 'BEGIN {printf "%.2f", x / y}'; }
echo "keel-netd bench ($n iterations, medians, ms; each step includes one ip check of ~the same cost)"
printf '%-34s %8s %8s %7s\n' "step" "netd" "ip" "ratio"
printf '%-34s %8s %8s %7s\n' "apply: call -> address live" "$a" "$p" "$(ratio "$a" "$p")"
printf '%-34s %8s %8s %7s\n' "revert on cancel -> old live" "$c" "$pr" "$(ratio "$c" "$pr")"
printf '%-34s %8s %8s %7s\n' "revert after window, past deadline" "$e" "-" "-"
