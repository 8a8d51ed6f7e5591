#!/usr/bin/env bash
# Assembles the GPT disk from a root slot image: bios_grub, ESP, root-a, root-b,
# data. No mounts, no loop devices: plain files, sfdisk, mtools, dd.
# Usage: make-disk.sh ROOT.squashfs OUT.raw
# (KEEL_GRUB_CFG and KEEL_SLOT_MIB let the benchmark build its stock-Debian disk the
# same way.)
set -euo pipefail
cd "$(dirname "$0")/.."
squash=$1 out=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mib=$((1024 * 1024))

disk_mib=${KEEL_DISK_MIB:-2048}
esp_mib=32
slot_mib=${KEEL_SLOT_MIB:-512}
data_mib=64
squash_bytes=$(stat -c %s "$squash")
if ((squash_bytes > slot_mib * mib)); then
  echo "root image ($squash_bytes bytes) does not fit a ${slot_mib} MiB slot" >&2
  exit 1
fi

rm -f "$out"
truncate -s "${disk_mib}M" "$out"
sfdisk --quiet "$out" <<EOF_PT
label: gpt
first-lba: 2048
start=1MiB, size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name="bios"
size=${esp_mib}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp"
size=${slot_mib}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root-a"
size=${slot_mib}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root-b"
size=${data_mib}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="data"
EOF_PT
start_of() { sfdisk -J "$out" | python3 -c "import json,sys; print(json.load(sys.stdin)['partitiontable']['partitions'][$1-1]['start'])"; }

# GRUB: one early config and one module list for both firmware types. ext2 lets the
# benchmark's stock disk (ext4 root) boot through the very same images.
modules=(part_gpt fat squash4 gzio xzio ext2 linux normal configfile loadenv search
  search_fs_file test echo regexp serial terminal sleep halt reboot cat ls)
grep -vE '^[[:space:]]*(#|$)' image/grub/early.cfg >"$work/early.cfg"
grub-mkimage -O x86_64-efi -o "$work/BOOTX64.EFI" -c "$work/early.cfg" -p /grub \
  "${modules[@]}" efi_gop efi_uga
grub-mkimage -O i386-pc -o "$work/core.img" -c "$work/early.cfg" -p /grub \
  "${modules[@]}" biosdisk
cp /usr/lib/grub/i386-pc/boot.img "$work/"

# ESP (FAT): loader, config, environment block in its two copies (keel-boot reads
# the backup when the primary is unreadable, grub.cfg too), marker.
grub-editenv "$work/grubenv" create
grub-editenv "$work/grubenv" set keel_good=a
cp "$work/grubenv" "$work/grubenv.bak"
touch "$work/keel-esp.marker"
mkfs.vfat -C -n KEEL-ESP "$work/esp.img" $((esp_mib * 1024)) >/dev/null
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT ::/grub
mcopy -i "$work/esp.img" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
cp "${KEEL_GRUB_CFG:-image/grub/grub.cfg}" "$work/grub.cfg"
mcopy -i "$work/esp.img" "$work/grub.cfg" "$work/grubenv" "$work/grubenv.bak" \
  "$work/keel-esp.marker" ::/grub/

# Data: empty ext4, grown to the disk on first boot.
mkfs.ext4 -q -F -L data -m 0 -E root_owner=0:0 "$work/data.img" "${data_mib}M"

put() { dd if="$1" of="$out" bs=512 seek="$2" conv=notrunc,sparse status=none; }
put "$work/esp.img" "$(start_of 2)"
put "$squash" "$(start_of 3)"
# Slot B starts empty (zeros, sparse): the first update writes it, and GRUB never
# selects it before then (keel_good=a, no trial). A copy of A would double the image
# and buy nothing: the same bits fail the same way, and an update always goes to
# the slot that is not running.
put "$work/data.img" "$(start_of 5)"

# BIOS: boot.img into the MBR and core.img into the bios_grub partition, patched the
# way grub-bios-setup does (it refuses to run on an image file whose build directory
# sits on a disk GRUB cannot name). Offsets are GRUB 2.06's i386-pc boot.S/diskboot.S.
core_lba=$(start_of 1)
python3 - "$out" "$work/boot.img" "$work/core.img" "$core_lba" <<'PY'
import struct, sys
disk, boot_img, core_img, lba = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
boot = bytearray(open(boot_img, "rb").read())
core = bytearray(open(core_img, "rb").read())
with open(disk, "r+b") as d:
    mbr = bytearray(d.read(512))
    boot[0x03:0x5A] = mbr[0x03:0x5A]            # keep the (empty) BPB area
    struct.pack_into("<Q", boot, 0x5C, lba)     # where core.img starts
    boot[0x64] = 0xFF                           # use the drive the BIOS booted from
    boot[0x66:0x68] = b"\x90\x90"               # skip the floppy drive check
    boot[0x1B8:0x1FE] = mbr[0x1B8:0x1FE]        # keep the protective partition table
    # diskboot.img's block list: the rest of core.img follows its first sector.
    struct.pack_into("<Q", core, 0x200 - 12, lba + 1)
    if len(core) > 1024 * 1024:
        sys.exit("core.img does not fit the bios_grub partition")
    d.seek(0); d.write(boot[:512])
    d.seek(lba * 512); d.write(core)
PY
