#!/usr/bin/env bash
# Bench: keel-timed's check side by side with `chronyd -Q` (Debian's chrony; Debian
# has no separate `sntp` in bookworm's default set) against the same local servers:
# three real chronyd servers on loopback plus one dead server (a socket that never
# answers), i.e. 4 servers with one dead. Reports the time to a verdict and the
# offset each measured, and the ratios. Loopback only; needs root (chronyd).
#
#   scripts/bench-time.sh [ROUNDS]      (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}

[[ $(id -u) -eq 0 ]] || { echo "needs root (chronyd)" >&2; exit 1; }
command -v chronyd >/dev/null || [[ -x /usr/sbin/chronyd ]] ||
  { echo "no chronyd: run scripts/deps.sh" >&2; exit 1; }
chronyd=$(command -v chronyd || echo /usr/sbin/chronyd)

scripts/cargo-release.sh -q -p keel-timed
timed=$(scripts/cargo-release.sh --bin-dir)/keel-timed

work=$(mktemp -d /tmp/keel-bench-time.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Three servers serving this host's clock (-x: they never touch it).
servers=()
for i in 1 2 3; do
  port=$(free_port)
  d=$work/chrony$i
  mkdir -p "$d"
  cat >"$d/chrony.conf" <<EOF
port $port
bindaddress 127.0.0.1
local stratum 8
allow 127.0.0.1
cmdport 0
bindcmdaddress /
pidfile $d/chronyd.pid
EOF
  "$chronyd" -f "$d/chrony.conf" -d -x -u root 2>"$d/log" &
  pids+=($!)
  servers+=("127.0.0.1:$port")
done
# The dead one: the port is open (no ICMP refusal), nothing ever answers.
dead_port=$(free_port)
python3 -c "import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', $dead_port)); time.sleep(3600)" &
pids+=($!)
servers+=("127.0.0.1:$dead_port")

server_args=()
chrony_args=()
for s in "${servers[@]}"; do
  server_args+=(--server "$s")
  chrony_args+=("server ${s%:*} port ${s##*:} iburst")
done

# Wait until all three live servers answer with synchronized time.
for _ in $(seq 50); do
  ok=$("$timed" --timeout-ms 200 --samples 1 once "${server_args[@]:0:6}" 2>/dev/null |
    python3 -c 'import json,sys; v=json.load(sys.stdin); print(sum(s["state"]=="ok" for s in v["servers"]))' || true)
  [[ $ok == 3 ]] && break
  sleep 0.2
done
[[ ${ok:-0} == 3 ]] || { echo "local chronyd servers did not come up" >&2; cat "$work"/chrony*/log >&2; exit 1; }

now() { date +%s.%N; }

# keel-timed once with extra flags → "seconds offset state"
run_keel() {
  local t0 t1 json
  t0=$(now)
  json=$("$timed" "$@" once "${server_args[@]}" 2>/dev/null || true)
  t1=$(now)
  python3 -c 'import json, sys
t0, t1, v = float(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
off = v.get("offset_seconds") or 0.0
print("%.3f %.9f %s" % (t1 - t0, off, v["state"]))' "$t0" "$t1" "$json"
}

# chronyd -Q: measures, prints "System clock wrong by X seconds (ignored)", exits.
run_chrony() {
  local t0 t1 out
  t0=$(now)
  out=$("$chronyd" -Q -u root -t 30 "pidfile $work/q.pid" "cmdport 0" "bindcmdaddress /" \
    "${chrony_args[@]}" 2>&1 || true)
  t1=$(now)
  python3 -c 'import re, sys
t0, t1 = float(sys.argv[1]), float(sys.argv[2])
m = re.search(r"wrong by (\S+) seconds", sys.argv[3])
off, state = (float(m.group(1)), "measured") if m else (float("nan"), "no-result")
print("%.3f %.9f %s" % (t1 - t0, off, state))' "$t0" "$t1" "$out"
}

echo "servers: ${servers[*]} (the last one is dead)"
echo "keel-default: 4 samples max, 2 s apart, 1 s timeout, stop when two agree within 1 ms"
echo "keel-all4:    the same, always all 4 samples (--settle-ms 0)"
echo "keel-fast:    LAN settings: 100 ms apart, 500 ms timeout"
echo "chronyd-Q:    chronyd -Q with 'server ... iburst' for each of the 4"
echo "rounds:  $rounds"
results=$work/results
: >"$results"
for r in $(seq "$rounds"); do
  {
    echo "keel-default $(run_keel)"
    echo "keel-all4 $(run_keel --settle-ms 0)"
    echo "keel-fast $(run_keel --sample-interval-ms 100 --timeout-ms 500)"
    echo "chronyd-Q $(run_chrony)"
  } >>"$results"
  echo "  round $r done"
done

python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, secs, off, state = line.split()
    rows.setdefault(name, []).append((float(secs), float(off), state))

def med(xs):
    return statistics.median(xs)

print()
print(f"{'client':<14}{'verdict s (median)':>20}{'min':>8}{'max':>8}{'offset (median)':>18}  states")
for name in ("keel-default", "keel-all4", "keel-fast", "chronyd-Q"):
    r = rows[name]
    secs = [x[0] for x in r]
    offs = [x[1] for x in r]
    states = ",".join(sorted({x[2] for x in r}))
    print(f"{name:<14}{med(secs):>20.3f}{min(secs):>8.3f}{max(secs):>8.3f}{med(offs):>+18.9f}  {states}")
c = rows["chronyd-Q"]
print()
for name in ("keel-default", "keel-all4", "keel-fast"):
    k = rows[name]
    ratio = med([x[0] for x in c]) / med([x[0] for x in k])
    diffs = [abs(a[1] - b[1]) for a, b in zip(k, c)]
    print(f"{name}: {ratio:.2f}x the speed of chronyd -Q to a verdict "
          f"(chronyd -Q time / keel time); offset difference |keel - chrony| "
          f"median {med(diffs) * 1e6:.1f} us, max {max(diffs) * 1e6:.1f} us")
PY
