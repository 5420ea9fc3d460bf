#!/usr/bin/env bash
# Issue 11's fio and large-file rows, side by side in one run: a 1 GiB file
# cached in stoker read through FUSE against the same file on local ext4.
#   1. fio, NUMJOBS jobs, 4 KiB random reads (O_DIRECT on both, so neither
#      is served from the page cache), RUNTIME seconds;
#   2. the whole file read sequentially with dd (1 MiB reads), page cache
#      dropped first.
# Usage: bench/scripts/fio.sh [WORK_DIR]   (release build, root, /dev/fuse, fio)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
W=${1:-/work/fiob}
B=${STOKER:-/var/tmp/stoker-target/release/stoker}
NUMJOBS=${NUMJOBS:-4}
RUNTIME=${RUNTIME:-20}
gen_large "$W/big" 1 1024
cleanup() {
  umount -l "$W/mnt" 2>/dev/null || true
  pkill -f "serve --cache-dir $W/cache" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
rm -rf "$W/cache" && mkdir -p "$W/mnt"
$B serve --cache-dir "$W/cache" --socket "$W/s.sock" --capacity 4G --metadata-sync never \
  --mount "big=file://$W/big" 2>"$W/serve.log" &
until $B stat --socket "$W/s.sock" >/dev/null 2>&1; do sleep 0.2; done
$B mount /big "$W/mnt" --socket "$W/s.sock" 2>"$W/mount.log" &
until mountpoint -q "$W/mnt"; do sleep 0.2; done
$B load /big --socket "$W/s.sock" >/dev/null
iops() {
  fio --name=r --filename="$1" --rw=randread --bs=4k --direct=1 --numjobs="$NUMJOBS" --runtime="$RUNTIME" \
    --time_based --group_reporting --output-format=json 2>/dev/null \
    | python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]['read']; print(f\"{j['iops']:.0f} IOPS, p50 {j['clat_ns']['percentile']['50.000000']/1e3:.0f} us, p99 {j['clat_ns']['percentile']['99.000000']/1e3:.0f} us\")"
}
sync; echo 3 >/proc/sys/vm/drop_caches
echo "fio 4 KiB random, $NUMJOBS jobs, O_DIRECT, ext4: $(iops "$W/big/big-1.bin")"
sync; echo 3 >/proc/sys/vm/drop_caches
echo "fio 4 KiB random, $NUMJOBS jobs, O_DIRECT, stoker FUSE (cached): $(iops "$W/mnt/big-1.bin")"
seqread() {
  sync; echo 3 >/proc/sys/vm/drop_caches
  local t0 t1
  t0=$(secs); dd if="$1" of=/dev/null bs=1M status=none; t1=$(secs)
  python3 -c "import sys; t=float(sys.argv[2])-float(sys.argv[1]); print(f'{t:.2f} s, {1024/t:.0f} MiB/s')" "$t0" "$t1"
}
echo "1 GiB sequential (dd bs=1M, page cache dropped), ext4: $(seqread "$W/big/big-1.bin")"
echo "1 GiB sequential (dd bs=1M, page cache dropped), stoker FUSE (cached): $(seqread "$W/mnt/big-1.bin")"
$B stat --socket "$W/s.sock" --json | python3 -c "import json,sys; s=json.load(sys.stdin); print('engine: device_bytes_read', s.get('device_bytes_read'), 'bytes_served', s.get('bytes_served'))"
