#!/usr/bin/env bash
# The large-file half of docs/BENCHMARKS.md "Writes": COUNT files of SIZE
# (default 4 x 1 GiB) written one after another through a FUSE mount of a
# `write=async` mount, against the same files written to local ext4 with an
# fsync at each close and copied straight into the under-storage directory.
# Reports MiB/s to close (every file durable and readable at its close) and
# the time until `stoker sync` says all is persisted (under storage behind
# --ufs-latency, default 20ms). Each target's copy is removed before the
# next, so the disk needs about three times COUNT x SIZE free.
# Usage: bench/scripts/write_large.sh [WORK_DIR]   (release build, root, /dev/fuse)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
W=${1:-/work/wl}
B=${STOKER:-/var/tmp/stoker-target/release/stoker}
COUNT=${COUNT:-4}
SIZE_MIB=${SIZE_MIB:-1024}
LAT=${LAT:-20ms}
cleanup() {
  umount -l "$W/mnt" 2>/dev/null || true
  pkill -f "serve --cache-dir $W/cache" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
gen_large "$W/src" "$COUNT" "$SIZE_MIB"
bytes=$((COUNT * (SIZE_MIB << 20)))
echo "dataset: $COUNT files of $SIZE_MIB MiB"
rate() { python3 -c "import sys; t=float(sys.argv[2])-float(sys.argv[1]); print(f'{t:.1f} s, {$bytes/t/2**20:.0f} MiB/s')" "$1" "$2"; }
warm() { cat "$W"/src/* >/dev/null; }

rm -rf "$W/ext4" && mkdir -p "$W/ext4" && warm
t0=$(secs)
python3 - "$W/src" "$W/ext4" <<'PY'
import os, sys
src, dst = sys.argv[1], sys.argv[2]
for f in sorted(os.listdir(src)):
    fi = open(os.path.join(src, f), 'rb')
    fd = os.open(os.path.join(dst, f), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    while chunk := fi.read(1 << 20):
        os.write(fd, chunk)
    os.fsync(fd)
    os.close(fd)
PY
t1=$(secs); rm -rf "$W/ext4"
echo "ext4, fsync at each close: $(rate "$t0" "$t1")"
rm -rf "$W/direct" && mkdir -p "$W/direct" && warm
t0=$(secs); cp "$W"/src/* "$W/direct/"; sync; t1=$(secs); rm -rf "$W/direct"
echo "under-storage dir directly (cp, then sync; no latency): $(rate "$t0" "$t1")"

rm -rf "$W/cache" "$W/ufs" "$W/mnt" "$W/s.sock" && mkdir -p "$W/ufs" "$W/mnt"
$B serve --cache-dir "$W/cache" --socket "$W/s.sock" --capacity 16G --ufs-latency "$LAT" \
  --mount "w=file://$W/ufs" --mount-opt w:write=async 2>"$W/serve.log" &
until $B stat --socket "$W/s.sock" >/dev/null 2>&1; do sleep 0.2; done
$B mount --socket "$W/s.sock" /w "$W/mnt" 2>"$W/mount.log" &
until mountpoint -q "$W/mnt"; do sleep 0.2; done
warm
t0=$(secs); cp "$W"/src/* "$W/mnt/"; t1=$(secs)
echo "stoker FUSE write=async (cp; every file durable and readable at its close): $(rate "$t0" "$t1")"
$B sync --socket "$W/s.sock" /w >/dev/null; t2=$(secs)
echo "until persisted (stoker sync /w returned, under storage at $LAT per request): $(rate "$t0" "$t2")"
for f in "$W"/src/*; do cmp "$f" "$W/ufs/$(basename "$f")"; done && echo "under storage holds every file byte for byte"
