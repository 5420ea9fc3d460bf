#!/usr/bin/env bash
# The write bench behind docs/BENCHMARKS.md "Writes": FILES files of ~110 KiB
# written with one `cp` through a FUSE mount of a `write=async` mount, against
# the same copy to local ext4 and straight into the under-storage directory.
# Reports files/s to close (readable: the files are readable by every client
# once cp has closed them) and the time until `stoker sync` says all is
# persisted to under storage (behind --ufs-latency, default 20ms).
# Usage: bench/scripts/write.sh [WORK_DIR]   (needs a release build, root, /dev/fuse)
set -euo pipefail
W=${1:-/work/wb}
B=${STOKER:-/var/tmp/stoker-target/release/stoker}
FILES=${FILES:-20000}
LAT=${LAT:-20ms}
mkdir -p "$W"
[ -d "$W/src" ] || $B bench gen "$W/src" --files "$FILES" --mean-size 110K >/dev/null
cleanup() {
  umount -l "$W/mnt" 2>/dev/null || true
  pkill -f "serve --cache-dir $W/cache" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
rm -rf "$W/cache" "$W/ufs" "$W/ext4" "$W/ext4-fsync" "$W/direct" "$W/mnt" "$W/s.sock"
mkdir -p "$W/ufs" "$W/mnt"
bytes=$(du -sb "$W/src" | cut -f1)
echo "dataset: $FILES files, $bytes bytes"
secs() { python3 -c "import time; print(time.monotonic())"; }
rate() { python3 -c "import sys; t=float(sys.argv[2])-float(sys.argv[1]); print(f'{t:.1f} s, {$FILES/t:.0f} files/s, {$bytes/t/2**20:.1f} MiB/s')" "$1" "$2"; }

sync; echo 3 >/proc/sys/vm/drop_caches; cat "$W"/src/*/* >/dev/null 2>&1 || find "$W/src" -type f -exec cat {} + >/dev/null
t0=$(secs); cp -r "$W/src" "$W/ext4"; sync; t1=$(secs)
echo "ext4 (cp -r, then sync): $(rate "$t0" "$t1")"
# The same durability as a stoker close: each file fsynced before the next.
t0=$(secs)
python3 - "$W/src" "$W/ext4-fsync" <<'PY'
import os, sys
src, dst = sys.argv[1], sys.argv[2]
for root, _, files in os.walk(src):
    out = os.path.join(dst, os.path.relpath(root, src))
    os.makedirs(out, exist_ok=True)
    for f in files:
        data = open(os.path.join(root, f), 'rb').read()
        fd = os.open(os.path.join(out, f), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
PY
t1=$(secs)
echo "ext4, fsync at each close: $(rate "$t0" "$t1")"
t0=$(secs); cp -r "$W/src" "$W/direct"; sync; t1=$(secs)
echo "under-storage dir directly (cp -r, then sync; no latency): $(rate "$t0" "$t1")"

$B serve --cache-dir "$W/cache" --socket "$W/s.sock" --shards 1 --capacity 8G --ufs-latency "$LAT" \
  --mount "w=file://$W/ufs" --mount-opt w:write=async 2>"$W/serve.log" &
until $B stat --socket "$W/s.sock" >/dev/null 2>&1; do sleep 0.2; done
$B mount --socket "$W/s.sock" /w "$W/mnt" 2>"$W/mount.log" &
until mountpoint -q "$W/mnt"; do sleep 0.2; done
t0=$(secs); cp -r "$W/src" "$W/mnt/data"; t1=$(secs)
echo "stoker FUSE write=async (cp -r; every file durable at its close): $(rate "$t0" "$t1")"
$B stat --socket "$W/s.sock" --json | python3 -c "import json,sys; s=json.load(sys.stdin); print('pending after cp:', s['persist_pending_files'], 'files,', s['persist_pending_bytes'], 'bytes')"
$B sync --socket "$W/s.sock" /w; t2=$(secs)
echo "until persisted (stoker sync /w returned, under storage at $LAT per request): $(rate "$t0" "$t2")"
cmp <(cd "$W/src" && find . -type f -exec md5sum {} + | sort) <(cd "$W/ufs/data" && find . -type f -exec md5sum {} + | sort) && echo "under storage holds every file byte for byte"
