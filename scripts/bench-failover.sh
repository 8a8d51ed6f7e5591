#!/usr/bin/env bash
# keel-failover bench against keepalived (Debian), in network namespaces (needs root):
# nodes A and B and a client/gateway namespace C on one bridge. A TCP service
# listens on every address of A and B; the client in C opens a new connection to
# the shared address every 10 ms. Outage = the primary's death (SIGKILL of the
# daemon and its link down, at once) -> the first successful connection begun
# after it.
#   takeover  medians over N rounds: keel-failover (defaults: 20 ms heartbeats,
#             100 ms window), keepalived at its defaults (VRRPv2, 1 s adverts),
#             VRRPv3 with 100 ms and with 50 ms adverts
#   manual    keel-failover become-primary: request -> address on the backup, and
#             the client outage of the swap
#   soak      both namespaces' CPUs loaded by stress-ng (4 CPU hogs per node on 2
#             cores), nobody dies: takeovers counted for keel-failover and for
#             keepalived at 50 ms adverts (every one is spurious)
# Usage: scripts/bench-failover.sh [rounds] [soak-seconds]   (default 20, 600)
# Quick run: scripts/bench-failover.sh 5 30
set -euo pipefail
[[ -n ${BENCH_TRACE:-} ]] && set -x
cd "$(dirname "$0")/.."
rounds=${1:-20}
soak=${2:-600}
[[ $(id -u) -eq 0 ]] || { echo "bench-failover needs root (network namespaces)" >&2; exit 1; }
for t in ip curl python3; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }; done
if ! command -v keepalived >/dev/null || ! command -v stress-ng >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq keepalived stress-ng >/dev/null
fi

bin=$(scripts/cargo-release.sh --bin-dir)/keel-failover
if [[ ! -x $bin || -n $(find services/keel-failover services/keel-api services/keel-core -newer "$bin" -name '*.rs' | head -1) ]]; then
  scripts/cargo-release.sh -p keel-failover >&2
fi
bin=$(realpath "$bin")

tag=kfb$$
A=$tag-a B=$tag-b C=$tag-c
SHARED=10.88.0.100
work=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for f in "$work"/*.pid; do [[ -f $f ]] && kill -9 "$(cat "$f")" 2>/dev/null || true; done
  for n in $A $B $C; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

for n in $A $B $C; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip -n $C link add br0 type bridge mcast_snooping 0
ip -n $C link set br0 up
ip -n $C addr add 10.88.0.1/24 dev br0
declare -A addr=([$A]=10.88.0.2 [$B]=10.88.0.3)
for n in $A $B; do
  p=p${n##*-}
  ip -n $C link add "$p" type veth peer name eth0 netns "$n"
  ip -n $C link set "$p" master br0 up
  ip -n "$n" link set eth0 up
  ip -n "$n" addr add "${addr[$n]}/24" dev eth0
  ip -n "$n" route add default via 10.88.0.1
done

# The service: accepts and closes, on every address of the node.
for n in $A $B; do
  ip netns exec "$n" python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(512)
while True:
    c, _ = s.accept(); c.close()' &
  pids+=($!)
done

# The client: one new connection every 10 ms (non-blocking, each with a 1 s
# deadline); runs CMD after 0.5 s of service and prints the outage in ms.
cat >"$work/round.py" <<'EOF'
import selectors, socket, subprocess, sys, time
target = (sys.argv[1], 8080)
cmd = sys.argv[2]
sel = selectors.DefaultSelector()
start = time.monotonic()
t_event = None
next_launch = start
served_before = False
while True:
    now = time.monotonic()
    if now >= next_launch:
        s = socket.socket(); s.setblocking(False)
        try:
            s.connect(target)
        except BlockingIOError:
            pass
        except OSError:
            s.close(); s = None
        if s:
            sel.register(s, selectors.EVENT_WRITE, now)
        next_launch = max(next_launch + 0.01, now)
    if t_event is None and now - start >= 0.5:
        if not served_before:
            sys.exit("the shared address did not answer before the event")
        t_event = time.monotonic()
        subprocess.run(cmd, shell=True, check=True)
    if t_event is not None and now - t_event > 30:
        sys.exit("no connection within 30 s of the event")
    for key, _ in sel.select(timeout=max(0.0, next_launch - time.monotonic())):
        s, began = key.fileobj, key.data
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        sel.unregister(s); s.close()
        if err == 0:
            if t_event is None:
                served_before = True
            elif began >= t_event:
                print("%.1f" % ((time.monotonic() - t_event) * 1000)); sys.exit(0)
    for key in list(sel.get_map().values()):
        if time.monotonic() - key.data > 1.0:
            sel.unregister(key.fileobj); key.fileobj.close()
EOF

holds() { ip -n "$1" -br addr show dev eth0 | grep -q " $SHARED/"; }
wait_holds() { # NS: until it holds the shared address (30 s at most)
  for _ in $(seq 3000); do holds "$1" && return 0; sleep 0.01; done
  echo "$1 never took $SHARED" >&2; return 1
}
flush() { # NS: as after a reboot: no shared address, link up
  ip -n "$1" link set eth0 up
  ip -n "$1" addr del "$SHARED/24" dev eth0 2>/dev/null || true
  # The link going down took the default route with it.
  ip -n "$1" route replace default via 10.88.0.1
}
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f", m}'; }

head -c 32 /dev/urandom | base64 >"$work/psk"
chmod 600 "$work/psk"
kf_config() { # NS PEER-NS ID ROLE
  cat >"$work/$3.json" <<EOF
{"node_id":"$3","interface":"eth0","shared_addresses":["$SHARED/24"],
 "local":"${addr[$1]}:7946","peer":"${addr[$2]}:7946","psk_file":"$work/psk",
 "check_address":"10.88.0.1",
 "initial_role":"$4"}
EOF
}
kf_config $A $B a primary
kf_config $B $A b backup
kf_start() { # NS ID -> daemon in the background, pid in $work/ID.pid
  rm -f "$work/$2.sock"
  KEEL_LOG=warn ip netns exec "$1" "$bin" --config "$work/$2.json" --data-dir "$work/data-$2" \
    --socket "$work/$2.sock" 2>>"$work/$2.log" &
  echo $! >"$work/$2.pid"
}
kf_status() { curl -sf --unix-socket "$work/$1.sock" http://localhost/status; }
kf_pair() { # fresh pair, A primary, B a backup hearing it
  kf_stop
  rm -rf "$work/data-a" "$work/data-b"
  flush $A; flush $B
  kf_start $A a; kf_start $B b
  for _ in $(seq 3000); do
    kf_status b 2>/dev/null | grep -q '"peer_holding":true' && holds $A && return 0
    sleep 0.01
  done
  echo "keel-failover pair did not settle" >&2; return 1
}

kf_stop() { # both daemons, waited for (their heartbeat ports are free after)
  local id p
  for id in a b; do
    if [[ -f $work/$id.pid ]]; then
      p=$(cat "$work/$id.pid"); rm -f "$work/$id.pid"
      kill -9 "$p" 2>/dev/null || true
      wait "$p" 2>/dev/null || true
    fi
  done
}
ka_config() { # NS ID STATE PRIORITY VERSION ADVERT
  cat >"$work/ka-$2.conf" <<EOF
global_defs {
  router_id $2
  vrrp_version $5
}
vrrp_instance bench {
  state $3
  interface eth0
  virtual_router_id 88
  priority $4
  advert_int $6
  virtual_ipaddress {
    $SHARED/24
  }
}
EOF
}
ka_start() { # NS ID
  ip netns exec "$1" keepalived --vrrp --dont-fork --log-console --log-detail \
    -f "$work/ka-$2.conf" --pid="$work/ka-$2.main.pid" --vrrp_pid="$work/ka-$2.vrrp.pid" \
    >>"$work/ka-$2.log" 2>&1 &
  echo $! >"$work/ka-$2.pid"
}
ka_stop() { # ID
  local f
  local p=
  [[ -f $work/ka-$1.pid ]] && p=$(cat "$work/ka-$1.pid")
  for f in "$work/ka-$1.vrrp.pid" "$work/ka-$1.pid" "$work/ka-$1.main.pid"; do
    if [[ -f $f ]]; then kill -9 "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; fi
  done
  if [[ -n $p ]]; then wait "$p" 2>/dev/null || true; fi
}
ka_pair() { # VERSION ADVERT: fresh pair, A master
  ka_stop a; ka_stop b; flush $A; flush $B
  ka_config $A a MASTER 200 "$1" "$2"
  ka_config $B b BACKUP 100 "$1" "$2"
  ka_start $A a; wait_holds $A
  ka_start $B b
  # The backup has heard the master once it has been up for a few adverts.
  sleep "$(awk -v a="$2" 'BEGIN { print (a * 4 < 1 ? 1 : a * 4) }')"
  if holds $B; then echo "keepalived: both nodes master" >&2; return 1; fi
}
# The VRRP child first: killed after its parent, it would get the parent-death
# signal and leave gracefully (a priority-0 advert), which is not a crash.
ka_kill_a() { echo "for f in $work/ka-a.vrrp.pid $work/ka-a.pid $work/ka-a.main.pid; do kill -9 \$(cat \$f) 2>/dev/null; done; ip -n $A link set eth0 down"; }

client() { ip netns exec $C python3 "$work/round.py" $SHARED "$1"; }

declare -A med fails
run_rounds() { # NAME SETUP-FN [ARGS...]: kills A each round
  local name=$1; shift
  local out=$work/rounds-$name
  : >"$out"
  for _ in $(seq "$rounds"); do
    "$@"
    local kill
    if [[ $name == keel-failover ]]; then
      kill="kill -9 $(cat "$work/a.pid"); ip -n $A link set eth0 down"
    else
      kill=$(ka_kill_a)
    fi
    # A round whose client never got through again is reported, not averaged.
    if ! client "$kill" >>"$out"; then
      echo "$name: a round without recovery within 30 s" >&2
      fails[$name]=$(( ${fails[$name]:-0} + 1 ))
    fi
    if [[ $name == keel-failover ]]; then wait "$(cat "$work/a.pid")" 2>/dev/null || true; rm -f "$work/a.pid"; fi
  done
  med[$name]=$(median <"$out")
  printf '%-26s median %8s ms  (min %s, max %s, %s rounds, %s without recovery)\n' "$name" \
    "${med[$name]}" "$(sort -n "$out" | head -1)" "$(sort -n "$out" | tail -1)" "$rounds" \
    "${fails[$name]:-0}"
}

echo "== takeover after the primary's death (client outage)"
run_rounds keel-failover kf_pair
kf_stop
run_rounds keepalived-v2-1s ka_pair 2 1
run_rounds keepalived-v3-100ms ka_pair 3 0.1
run_rounds keepalived-v3-50ms ka_pair 3 0.05
for k in keepalived-v2-1s keepalived-v3-100ms keepalived-v3-50ms; do
  awk -v a="${med[$k]}" -v b="${med[keel-failover]}" -v k="$k" \
    'BEGIN { printf "ratio %s / keel-failover: %.1fx\n", k, a / b }'
done
ka_stop a; ka_stop b

echo "== become-primary (backup takes over from a live primary)"
: >"$work/manual-req"; : >"$work/manual-out"
for _ in $(seq "$rounds"); do
  kf_pair
  t0=${EPOCHREALTIME/./}
  curl -sf --unix-socket "$work/b.sock" -X POST http://localhost/become-primary >/dev/null
  wait_holds $B
  t1=${EPOCHREALTIME/./}
  echo $(( (t1 - t0) / 1000 )).$(( (t1 - t0) % 1000 / 100 )) >>"$work/manual-req"
  kf_pair
  client "curl -sf --unix-socket $work/b.sock -X POST http://localhost/become-primary >/dev/null" >>"$work/manual-out"
done
kf_stop
printf 'become-primary: request -> address on the backup: median %s ms; client outage median %s ms (max %s)\n' \
  "$(median <"$work/manual-req")" "$(median <"$work/manual-out")" "$(sort -n "$work/manual-out" | tail -1)"

echo "== soak: ${soak} s each, CPUs loaded by stress-ng in both namespaces"
monitor_adds() { # NS FILE: the kernel's address events in NS, for the soak
  ip -n "$1" monitor address >"$2" &
  pids+=($!)
}
adds() { grep -v '^Deleted' "$1" | grep -c " $SHARED/" || true; }
load() {
  local n
  for n in $A $B; do
    ip netns exec "$n" stress-ng --cpu 4 --timeout "${soak}s" --quiet &
    pids+=($!)
  done
}
kf_pair
monitor_adds $B "$work/soak-kf-b"
load; sleep "$soak"; sleep 1
kf_b=$(kf_status b | python3 -c 'import json,sys; c=json.load(sys.stdin)["engine"]["counters"]; print(c["takeovers"], c["held_off_address_answered"])')
read -r kf_takeovers kf_held <<<"$kf_b"
kf_adds=$(adds "$work/soak-kf-b")
holds $A || echo "warning: A no longer holds after the soak" >&2
kf_stop
ka_pair 3 0.05
ka_before=$(grep -c "Entering MASTER STATE" "$work/ka-b.log" || true)
monitor_adds $B "$work/soak-ka-b"
load; sleep "$soak"; sleep 1
ka_adds=$(adds "$work/soak-ka-b")
ka_trans=$(( $(grep -c "Entering MASTER STATE" "$work/ka-b.log" || true) - ka_before ))
ka_stop a; ka_stop b
printf 'soak %s s under load: keel-failover spurious takeovers %s (address appeared on the backup %s times; takeovers held off by the ARP check %s)\n' \
  "$soak" "$kf_takeovers" "$kf_adds" "$kf_held"
printf 'soak %s s under load: keepalived VRRPv3 50 ms spurious takeovers %s (address appeared on the backup %s times)\n' \
  "$soak" "$ka_trans" "$ka_adds"
