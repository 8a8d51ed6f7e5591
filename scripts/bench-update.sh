#!/usr/bin/env bash
# Bench: installing an update into the inactive root slot, side by side with the
# peers an admin would pick, in the same run (alternating, median of ROUNDS each):
#   dd     - `dd bs=4M oflag=direct conv=fsync` of the root slot image: the raw write
#            alone, no verification (the floor)
#   keel   - keel-update installing the signed bundle through its local socket
#            (POST /install with curl, wall clock from the request to the answer:
#            signature + policy, stream-write and hash, read-back + compare, fsync,
#            arm trial)
#   rauc   - `rauc install` of an equivalent `plain` bundle (same squashfs, signed
#            with a self-made CA) into a `type=raw` slot, through a `rauc service`
#            on a private D-Bus; wall clock of the client (the work is in the
#            service). RAUC verifies the signature but does not read back.
# Payload: build/root.squashfs, bundle: build/keel-<VERSION>.bundle (`make image`).
# Slot: one loop device over a sparse 512 MiB file, the same for all three,
# discarded (zeroed) before every run. Needs root (loop devices).
#
#   scripts/bench-update.sh [ROUNDS]      (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}

[[ $(id -u) -eq 0 ]] || { echo "bench-update needs root (loop devices)" >&2; exit 1; }
version=$(cat VERSION)
payload=build/root.squashfs
bundle=build/keel-$version.bundle
pub=build/dev-signing.pub
for f in "$payload" "$bundle" "$pub"; do
  [[ -f $f ]] || { echo "missing $f: run 'make image'" >&2; exit 1; }
done

# Peers from Debian, installed if absent.
need=()
command -v rauc >/dev/null || need+=(rauc)
command -v dbus-daemon >/dev/null || need+=(dbus)
for t in losetup blkdiscard; do command -v "$t" >/dev/null || need+=(util-linux); done
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v grub-editenv >/dev/null || need+=(grub-common)
if ((${#need[@]})); then
  echo "installing: ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2
fi

upd=$(scripts/cargo-release.sh --bin-dir)/keel-update
if [[ ! -x $upd ]]; then
  scripts/cargo-release.sh -p keel-update -p keelctl >&2
fi

work=$(mktemp -d /tmp/keel-bench-update.XXXXXX)
loop=
dbus_pid=
rauc_pid=
upd_pid=
stop() { # PID: kill and reap, quietly
  [[ -n $1 ]] || return 0
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  stop "$upd_pid"
  stop "$rauc_pid"
  [[ -n $dbus_pid ]] && kill "$dbus_pid" 2>/dev/null
  [[ -n $loop ]] && losetup -d "$loop" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

size=$(stat -c %s "$payload")

# The slot: a sparse 512 MiB file behind a loop device.
truncate -s 512M "$work/slot.img"
loop=$(losetup -f --show "$work/slot.img")

# Every run starts from a discarded slot; the first MiB must read back as zeros.
fresh_slot() {
  blkdiscard -f "$loop" 2>/dev/null # -f warns "data will be lost"; the check below tells
  dd if="$loop" bs=1M count=1 iflag=direct status=none | cmp -s - <(head -c 1048576 /dev/zero) ||
    { echo "$loop is not zero after blkdiscard" >&2; exit 1; }
  sync
}
# After every run: the slot holds exactly the payload.
check_slot() { # NAME
  cmp -s -n "$size" "$payload" "$loop" || { echo "$1: the slot does not hold the payload" >&2; exit 1; }
}
now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }
us= # each run_* sets it: microseconds, wall clock

# --- RAUC: CA, keyring, plain bundle, system.conf, private bus, service ---
r=$work/rauc
mkdir -p "$r/content" "$r/data" "$r/mnt"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$r/ca.key" -out "$r/ca.pem" -days 30 \
  -subj "/CN=keel bench CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$r/sign.key" -out "$r/sign.csr" \
  -subj "/CN=keel bench signer" 2>/dev/null
openssl x509 -req -in "$r/sign.csr" -CA "$r/ca.pem" -CAkey "$r/ca.key" -CAcreateserial \
  -out "$r/sign.pem" -days 30 2>/dev/null
cp "$payload" "$r/content/root.squashfs"
cat >"$r/content/manifest.raucm" <<EOF
[update]
compatible=keel-bench
version=$version

[bundle]
format=plain

[image.rootfs]
filename=root.squashfs
EOF
rauc bundle --cert="$r/sign.pem" --key="$r/sign.key" "$r/content" "$r/keel.raucb" >"$r/bundle.log" 2>&1 ||
  { cat "$r/bundle.log" >&2; exit 1; }
rm -rf "$r/content"
truncate -s 512M "$r/slot-a.img" # the "running" slot: never written
cat >"$r/system.conf" <<EOF
[system]
compatible=keel-bench
bootloader=noop
mountprefix=$r/mnt
data-directory=$r/data

[keyring]
path=$r/ca.pem

[slot.rootfs.0]
device=$r/slot-a.img
type=raw
bootname=A

[slot.rootfs.1]
device=$loop
type=raw
bootname=B
EOF
dbus_pid=$(dbus-daemon --session --address="unix:path=$r/bus" --fork --print-pid)
export DBUS_STARTER_BUS_TYPE=session DBUS_SESSION_BUS_ADDRESS="unix:path=$r/bus"
rauc -c "$r/system.conf" --override-boot-slot=A service >"$r/service.log" 2>&1 &
rauc_pid=$!
for _ in $(seq 100); do rauc status >/dev/null 2>&1 && break; sleep 0.1; done
rauc status >/dev/null 2>&1 || { echo "rauc service did not come up" >&2; cat "$r/service.log" >&2; exit 1; }

# --- keel-update: a fresh state dir and ESP per run ---
k=$work/keel
mkdir -p "$k/keys"
cp "$pub" "$k/keys/"
echo 'NAME=Keel
ID=keel
VERSION_ID=0.0.1' >"$k/os-release" # older than the bundle: an upgrade
echo 'keel.slot=a' >"$k/cmdline"
cat /proc/sys/kernel/random/uuid >"$k/boot_id"
truncate -s 512M "$k/root-a" # the running slot: a file keel-update must never open
ln -s "$loop" "$k/root-b"

run_keel() {
  local d=$k/run$1
  mkdir -p "$d/esp/grub"
  grub-editenv "$d/esp/grub/grubenv" create
  grub-editenv "$d/esp/grub/grubenv" set keel_good=a
  cp "$d/esp/grub/grubenv" "$d/esp/grub/grubenv.bak"
  KEEL_LOG=warn "$upd" --state-dir "$d/state" --socket "$d/update.sock" --keys-dir "$k/keys" \
    --os-release "$k/os-release" --cmdline "$k/cmdline" --slot-device "$k/root-{slot}" \
    --esp-dir "$d/esp" --boot-state-file none --no-clock-gate --reboot-command none \
    --boot-id-file "$k/boot_id" 2>"$d/log" &
  upd_pid=$!
  for _ in $(seq 100); do
    curl -sf --unix-socket "$d/update.sock" http://localhost/status >/dev/null 2>&1 && break
    sleep 0.05
  done
  local t0 t1 code
  t0=$(now_us)
  # -T streams the file (--data-binary would read it all first); no Expect: wait.
  code=$(curl -s --unix-socket "$d/update.sock" -X POST -T "$bundle" \
    -H 'content-type: application/octet-stream' -H 'Expect:' \
    -o "$d/answer" -w '%{http_code}' http://localhost/install || true)
  t1=$(now_us)
  if [[ $code != 200 ]] || ! grep -q '"slot":"b"' "$d/answer"; then
    echo "keel-update install failed (HTTP $code): $(cat "$d/answer" 2>/dev/null)" >&2
    cat "$d/log" >&2
    exit 1
  fi
  for e in grubenv grubenv.bak; do
    grub-editenv "$d/esp/grub/$e" list | grep -qx 'keel_try=b' ||
      { echo "keel-update: no trial of b armed in $e" >&2; exit 1; }
  done
  # keel-update's own CPU (user + system, its exited threads included): steadier
  # than wall time on a shared host, and what the install costs the box.
  keel_cpu_ticks=$(awk '{print $14 + $15}' "/proc/$upd_pid/stat")
  stop "$upd_pid"; upd_pid=
  us=$((t1 - t0))
}

run_dd() {
  local t0 t1
  t0=$(now_us)
  dd if="$payload" of="$loop" bs=4M oflag=direct conv=fsync status=none
  t1=$(now_us)
  us=$((t1 - t0))
}

run_rauc() {
  local t0 t1
  t0=$(now_us)
  rauc install "$r/keel.raucb" >"$r/install.log" 2>&1 ||
    { echo "rauc install failed" >&2; cat "$r/install.log" "$r/service.log" >&2; exit 1; }
  t1=$(now_us)
  us=$((t1 - t0))
}

# Sources in the page cache for all three alike.
cat "$payload" "$bundle" "$r/keel.raucb" >/dev/null

echo "payload: $payload ($size bytes), slot: $loop (sparse 512 MiB file on $(df --output=fstype "$work" | tail -1))"
echo "keel:    $bundle via POST /install on keel-update's socket ($upd)"
echo "rauc:    $(rauc --version | head -1), plain bundle $(stat -c %s "$r/keel.raucb") bytes"
echo "rounds:  $rounds (order rotates each round); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
results=$work/results
: >"$results"
peers=(dd keel rauc)
for i in $(seq "$rounds"); do
  for j in 0 1 2; do
    p=${peers[$(((i + j) % 3))]}
    fresh_slot
    case $p in
      dd) run_dd ;;
      keel) run_keel "$i" ;;
      rauc) run_rauc ;;
    esac
    check_slot "$p"
    echo "$p $us" >>"$results"
    if [[ $p == keel ]]; then echo "keel_cpu $((keel_cpu_ticks * 1000000 / $(getconf CLK_TCK)))" >>"$results"; fi
  done
  echo "  round $i done"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$results" "$size" "$load_after" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, us = line.split()
    rows.setdefault(name, []).append(int(us) / 1e6)
size = int(sys.argv[2])
med = {n: statistics.median(v) for n, v in rows.items()}
label = {"dd": "dd (raw write only)", "keel": "keel-update install", "rauc": "rauc install"}
print()
print(f"{'peer':<22}{'s (median)':>11}{'min':>8}{'max':>8}{'MB/s':>9}")
for n in ("dd", "keel", "rauc"):
    v = rows[n]
    print(f"{label[n]:<22}{med[n]:>11.3f}{min(v):>8.3f}{max(v):>8.3f}{size / med[n] / 1e6:>9.0f}")
cpu = rows["keel_cpu"]
print(f"{'keel-update CPU':<22}{statistics.median(cpu):>11.3f}{min(cpu):>8.3f}{max(cpu):>8.3f}"
      "   (its own user + system time per install)")
print()
print(f"keel-update / dd throughput: {med['dd'] / med['keel']:.2f}x (goal >= 0.8x)")
r = med["rauc"] / med["keel"]
verdict = "faster" if r >= 1 else "slower"
print(f"keel-update vs rauc install time: {med['keel']:.3f} s vs {med['rauc']:.3f} s, "
      f"{r:.2f}x ({verdict}; goal: no slower)")
print("keel-update's figure includes reading the slot back from the device and comparing it; "
      "rauc does not read back; dd verifies nothing.")
print(f"MB = 10^6 bytes; load average after: {sys.argv[3]}")
PY
