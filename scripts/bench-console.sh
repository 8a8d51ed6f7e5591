#!/usr/bin/env bash
# Bench: the console's HTTPS status API side by side with nginx from Debian serving
# the same answer as a static file, both on this host's loopback, each pinned to the
# same single core (taskset; nginx with worker_processes 1, the console's runtime
# then starts one worker thread), the load generators pinned to another core:
#   keel   - the release keel-console started with its path flags over a fresh
#            data dir, an admin made with the setup code through the API, then
#            GET /appliance/api/v1/status with that session cookie
#   nginx  - the same bytes (one answer of the console, saved) as a static file, the
#            console's own self-signed certificate and key (copied from its data
#            dir), TLS 1.2 + 1.3 like the console, the console's extra headers added
#   health - the console's unauthenticated /appliance/api/v1/health: the same TLS,
#            HTTP and middleware stack without gathering the status (for attribution)
# Modes, the same settings for every target:
#   keepalive - wrk, C connections kept open
#   close     - wrk -H 'Connection: close': a new TCP and TLS connection per request,
#               which wrk opens with session resumption (an abbreviated handshake,
#               what a browser does when it reconnects)
#   full      - ab (apache2-utils) without -k: a new connection and a full TLS
#               handshake per request (ab never resumes; neither wrk nor h2load can be
#               told not to). Its latency includes connect + handshake, wrk's does not.
# The script checks those claims on a logging nginx first (distinct connections,
# resumed or not) and counts TCP connections opened per request for every run.
# Rounds alternate the order; the table shows medians. Loopback only. Root only to
# install missing packages (wrk, nginx-light, apache2-utils).
#
#   scripts/bench-console.sh [ROUNDS] [SECONDS] [CONNECTIONS]   (default 3 10 16)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-10}
conns=${3:-16}

# Peers and load generators from Debian, installed if absent.
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
command -v ab >/dev/null || need+=(apache2-utils)
for t in curl openssl python3 taskset; do
  command -v "$t" >/dev/null || need+=("$([[ $t == taskset ]] && echo util-linux || echo "$t")")
done
if ((${#need[@]})); then
  [[ $(id -u) -eq 0 ]] || { echo "missing: ${need[*]}; run as root to install them" >&2; exit 1; }
  echo "installing: ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2
fi
nginx=$(command -v nginx || echo /usr/sbin/nginx)

# Under `make bench` the Makefile's package set: the same feature unification as the
# image's build, so nothing is rebuilt.
read -ra packages <<<"${KEEL_BUILD_PACKAGES:-keel-console}"
scripts/cargo-release.sh -q "${packages[@]/#/--package=}"
work=$(mktemp -d /tmp/keel-bench-console.XXXXXX)
# A copy: other builds may replace the release binaries while the bench runs.
console=$work/keel-console
cp "$(scripts/cargo-release.sh --bin-dir)/keel-console" "$console"

console_pid=
nginx_pid=
probe_pid=
stop() { # PID: stop and reap, quietly
  [[ -n $1 ]] || return 0
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  stop "$console_pid"
  stop "$nginx_pid"
  stop "$probe_pid"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Servers on the last core, load generators on the first (one core for both on a
# single-core machine, which then measures little).
ncpu=$(nproc)
srv_cpu=$((ncpu - 1))
cli_cpu=0
((ncpu > 1)) || echo "warning: one CPU: servers and load generators share it" >&2

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_https() { # URL: until it answers at all
  for _ in $(seq 200); do
    curl -sk -o /dev/null "$1" && return 0
    sleep 0.05
  done
  return 1
}

# --- the console, outside the image, with its path flags --------------------------
keel_port=$(free_port)
keel=https://127.0.0.1:$keel_port
KEEL_LOG=warn taskset -c "$srv_cpu" "$console" --data-dir "$work/console" \
  --https "127.0.0.1:$keel_port" --http none --socket "$work/console.sock" \
  --requests-dir "$work/requests" --boot-state "$work/boot-state" \
  --timed-socket "$work/absent.sock" --netd-socket "$work/absent.sock" \
  --failover-socket "$work/absent.sock" --first-boot-address-wait 0 \
  2>"$work/console.log" &
console_pid=$!
wait_https "$keel/appliance/api/v1/health" ||
  { echo "keel-console did not answer" >&2; cat "$work/console.log" >&2; exit 1; }

# An admin through the API, with the setup code the console wrote.
password="bench $(openssl rand -hex 12)"
body=$(python3 -c 'import json, sys; print(json.dumps({"setup_code": sys.argv[1], "password": sys.argv[2]}))' \
  "$(cat "$work/console/setup-code")" "$password")
code=$(curl -sk -o "$work/setup.out" -w '%{http_code}' -c "$work/jar" \
  -H 'content-type: application/json' --data "$body" "$keel/appliance/api/v1/setup")
[[ $code == 200 ]] || { echo "setup: HTTP $code: $(cat "$work/setup.out")" >&2; exit 1; }
session=$(awk '$6 == "keel_session" {print $7}' "$work/jar")
[[ -n $session ]] || { echo "setup: no session cookie" >&2; exit 1; }
cookie="Cookie: keel_session=$session"

# One answer of the status API: nginx serves these bytes, with the console's headers.
code=$(curl -sk -o "$work/status.json" -D "$work/status.headers" -w '%{http_code}' \
  -H "$cookie" "$keel/appliance/api/v1/status")
[[ $code == 200 ]] || { echo "status: HTTP $code" >&2; exit 1; }
status_bytes=$(stat -c %s "$work/status.json")

# --- nginx: the same answer, certificate and key, one worker on the same core -------
ng=$work/nginx
mkdir -p "$ng/www/appliance/api/v1" "$ng/tmp"
cp "$work/status.json" "$ng/www/appliance/api/v1/status"
install -m 0600 "$work/console/tls/default.crt" "$ng/cert.pem"
install -m 0600 "$work/console/tls/default.key" "$ng/key.pem"
# Run as root, nginx's worker drops to nobody and must read the file.
chmod 0755 "$work" "$ng"
chmod -R a+rX "$ng/www"
add_headers=$(python3 - "$work/status.headers" <<'PY'
import sys
skip = {"content-type", "content-length", "date", "set-cookie", "connection"}
for line in open(sys.argv[1], encoding="latin-1").read().splitlines()[1:]:
    name, sep, value = line.partition(":")
    if sep and name.strip().lower() not in skip:
        value = value.strip().replace("\\", "\\\\").replace('"', '\\"')
        print(f'    add_header {name.strip()} "{value}" always;')
PY
)
ng_port=$(free_port)
probe_port=$(free_port)
nginx_conf() { # PORT ACCESS_LOG
  cat <<EOF
daemon off;
worker_processes 1;
pid $ng/nginx-$1.pid;
error_log $ng/error-$1.log warn;
events { worker_connections 1024; }
http {
  log_format probe '\$connection \$connection_requests \$ssl_protocol \$ssl_session_reused \$status';
  access_log $2;
  client_body_temp_path $ng/tmp; proxy_temp_path $ng/tmp; fastcgi_temp_path $ng/tmp;
  uwsgi_temp_path $ng/tmp; scgi_temp_path $ng/tmp;
  server_tokens off;
  etag off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$1 ssl;
    ssl_certificate $ng/cert.pem;
    ssl_certificate_key $ng/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    root $ng/www;
    location / {
      default_type application/json;
$add_headers
    }
  }
}
EOF
}
nginx_conf "$ng_port" off >"$ng/bench.conf"
nginx_conf "$probe_port" "$ng/probe.log probe" >"$ng/probe.conf"
start_nginx() { # CONF PORT -> pid in $started
  taskset -c "$srv_cpu" "$nginx" -p "$ng" -c "$1" 2>>"$ng/stderr.log" &
  started=$!
  wait_https "https://127.0.0.1:$2/appliance/api/v1/status" ||
    { echo "nginx did not answer" >&2; cat "$ng"/stderr.log "$ng"/error-*.log >&2; exit 1; }
}
start_nginx "$ng/bench.conf" "$ng_port"
nginx_pid=$started
ngx=https://127.0.0.1:$ng_port

# --- load generators ---------------------------------------------------------------
url_of() { # TARGET
  case $1 in
    keel) echo "$keel/appliance/api/v1/status" ;;
    health) echo "$keel/appliance/api/v1/health" ;;
    nginx) echo "$ngx/appliance/api/v1/status" ;;
    probe) echo "https://127.0.0.1:$probe_port/appliance/api/v1/status" ;;
  esac
}
load() { # MODE URL SECONDS OUT
  case $1 in
    keepalive) taskset -c "$cli_cpu" wrk -t1 -c"$conns" -d"$3"s --latency -H "$cookie" "$2" >"$4" ;;
    close) taskset -c "$cli_cpu" wrk -t1 -c"$conns" -d"$3"s --latency -H "$cookie" \
      -H 'Connection: close' "$2" >"$4" ;;
    # -l: the status answer's length varies (time, uptime); -e: percentiles in ms;
    # -n after -t: a cap above any rate reachable here (ab allocates a record per request).
    full) taskset -c "$cli_cpu" ab -q -l -c "$conns" -t "$3" -n $(($3 * 20000)) -H "$cookie" \
      -e "$4.csv" "$2" >"$4" 2>&1 ;;
  esac
}

# What each mode really does, seen from a logging nginx: per request, which
# connection carried it and whether its TLS session was resumed.
start_nginx "$ng/probe.conf" "$probe_port"
probe_pid=$started
echo "client check on a logging nginx (1 s each): requests, distinct connections, resumed TLS sessions"
for m in keepalive close full; do
  : >"$ng/probe.log"
  load "$m" "$(url_of probe)" 1 "$work/probe.$m"
  sleep 0.2 # the log line of the last request
  # Fails when a mode does not do what its name says (e.g. another wrk version).
  awk -v m="$m" -v conns="$conns" '{n++; c[$1]; if ($4 == "r") r++; if ($5 != 200) bad++; p[$3]}
    END {printf "  %-9s %6d requests, %6d connections, %6d resumed, TLS %s%s\n", m, n, length(c), r,
      (length(p) == 1 ? $3 : "mixed"), (bad ? ", " bad " not 200" : "")
      ok = n > 0 && !bad && (m == "keepalive" ? length(c) <= conns : length(c) == n)
      if (m == "full" && r) ok = 0
      if (!ok) { print "  " m ": not what this mode should measure" > "/dev/stderr"; exit 1 }
    }' "$ng/probe.log"
done
stop "$probe_pid"
probe_pid=
resumes() { # HOST:PORT -> yes/no: does the server resume a saved TLS session
  local s=$work/session.pem
  rm -f "$s"
  printf 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' |
    openssl s_client -quiet -connect "$1" -sess_out "$s" >/dev/null 2>&1 || true
  printf 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' |
    openssl s_client -connect "$1" -sess_in "$s" 2>/dev/null | grep -q '^Reused' && echo yes || echo no
}
echo "TLS session resumption offered: keel-console $(resumes "127.0.0.1:$keel_port"), nginx $(resumes "127.0.0.1:$ng_port")"

# CPU seconds (user + system) of a process and its children's threads so far.
cpu_ticks() { # PID...
  local t=0 p
  for p in "$@"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
server_pids() { # TARGET
  case $1 in
    keel | health) echo "$console_pid" ;;
    nginx) echo "$nginx_pid" $(pgrep -P "$nginx_pid") ;;
  esac
}
tcp_opens() { awk '/^Tcp:/ && !h {h = 1; next} /^Tcp:/ {print $6}' /proc/net/snmp; }
hz=$(getconf CLK_TCK)
now_ns() { date +%s%N; }

runs=$work/runs
mkdir -p "$runs"
results=$work/results
: >"$results"
targets=(keel nginx health)
modes=(keepalive close full)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo
echo "keel:    $console (pinned to CPU $srv_cpu), $(url_of keel), $status_bytes bytes of JSON"
echo "nginx:   $("$nginx" -v 2>&1 | sed 's/^nginx version: //'), worker_processes 1, pinned to CPU $srv_cpu, the same $status_bytes bytes"
echo "clients: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), ab $(ab -V | sed -n 's/.*Version \([^ ]*\).*/\1/p'); pinned to CPU $cli_cpu; $conns connections, $secs s per run"
echo "rounds:  $rounds (order rotates each round); load average before: $load_before"
for i in $(seq "$rounds"); do
  for m in "${modes[@]}"; do
    for j in 0 1 2; do
      t=${targets[$(((i + j) % 3))]}
      out=$runs/$t.$m.$i
      mapfile -t pids < <(server_pids "$t" | tr ' ' '\n')
      c0=$(cpu_ticks "${pids[@]}") o0=$(tcp_opens) w0=$(now_ns)
      load "$m" "$(url_of "$t")" "$secs" "$out"
      c1=$(cpu_ticks "${pids[@]}") o1=$(tcp_opens) w1=$(now_ns)
      echo "$t $m $i $out $(((c1 - c0) * 1000000000 / hz)) $((w1 - w0)) $((o1 - o0)) $(cut -d' ' -f1 /proc/loadavg)" >>"$results"
    done
  done
  echo "  round $i done (load $(cut -d' ' -f1-3 /proc/loadavg))"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$results" "$load_before" "$load_after" <<'PY'
import re, statistics, sys

def wrk(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    v, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
    p99 = float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    n = int(re.search(r"(\d+) requests in", text).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    err = re.search(r"Socket errors: (.*)", text)
    problems = []
    if bad:
        problems.append(f"{bad.group(1)} non-2xx")
    if err and any(int(x) for x in re.findall(r"\d+", err.group(1))):
        problems.append("socket errors " + err.group(1).strip())
    return rps, p99, n, problems

def ab(path):
    text = open(path).read()
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", text).group(1))
    n = int(re.search(r"Complete requests:\s+(\d+)", text).group(1))
    p99 = next(float(t) for p, t in (l.strip().split(",") for l in open(path + ".csv").readlines()[1:]) if p == "99")
    problems = []
    for key in ("Non-2xx responses", "Failed requests"):
        m = re.search(key + r":\s+(\d+)", text)
        if m and int(m.group(1)):
            problems.append(f"{m.group(1)} {key.lower()}")
    return rps, p99, n, problems

rows = {}
problems = []
for line in open(sys.argv[1]):
    t, m, i, out, cpu_ns, wall_ns, opens, load = line.split()
    rps, p99, n, bad = (ab if m == "full" else wrk)(out)
    problems += [f"{t} {m} round {i}: {b}" for b in bad]
    rows.setdefault((t, m), []).append(
        dict(rps=rps, p99=p99, cpu=int(cpu_ns) / int(wall_ns), conn=int(opens) / max(n, 1), load=float(load)))

med = lambda k, xs: statistics.median(x[k] for x in xs)
label = {"keel": "keel /status", "nginx": "nginx static", "health": "keel /health"}
mode = {"keepalive": "keep-alive (wrk)", "close": "close, resumed (wrk)", "full": "close, full TLS (ab)"}
print()
print(f"{'mode':<22}{'server':<14}{'req/s':>9}{'min':>9}{'max':>9}{'p99 ms':>9}{'server CPU':>12}{'conn/req':>10}")
for m in mode:
    for t in ("keel", "nginx", "health"):
        r = rows[(t, m)]
        rps = [x["rps"] for x in r]
        print(f"{mode[m]:<22}{label[t]:<14}{med('rps', r):>9.0f}{min(rps):>9.0f}{max(rps):>9.0f}"
              f"{med('p99', r):>9.2f}{med('cpu', r) * 100:>11.0f}%{med('conn', r):>10.2f}")
print()
for m in mode:
    k, n, h = rows[("keel", m)], rows[("nginx", m)], rows[("health", m)]
    print(f"{mode[m]}: keel/nginx requests/s {med('rps', k) / med('rps', n):.2f}x (goal >= 0.8x), "
          f"p99 {med('p99', k) / med('p99', n):.2f}x nginx's; "
          f"/health {med('rps', h) / med('rps', n):.2f}x nginx")
print()
print("medians of the rounds; p99 of wrk from the request write (connect and handshake not")
print("included), of ab from connect; server CPU = the server's CPU time / wall time (100% = its")
print("core saturated); conn/req = TCP connections opened on the host per request (all processes).")
print(f"load average before: {sys.argv[2]}, after: {sys.argv[3]}")
if problems:
    print("PROBLEMS:\n  " + "\n  ".join(problems))
    sys.exit(1)
PY
