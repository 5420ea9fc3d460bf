#!/usr/bin/env bash
# The gateway half of docs/BENCHMARKS.md "Writes": the same aws CLI
# commands against stoker's S3 gateway (`stoker serve --s3`, a write=async
# mount whose under storage is a bucket of a local s3s-fs) and straight
# against that s3s-fs. Measures:
#   1. PUT of FILES files of ~110 KiB (`aws s3 cp --recursive`, the CLI's
#      10 requests in flight): files/s until the last PUT was answered
#      (readable then), and until `stoker sync` says all is persisted;
#   2. PUT of COUNT files of SIZE_MIB (multipart, 8 MiB parts);
#   3. GET of the small files back (cached in stoker) vs from s3s-fs.
# Usage: bench/scripts/gateway.sh [WORK_DIR]   (release build; s3s-fs:
#   cargo install s3s-fs@0.14.1 --locked --features binary; aws CLI)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
W=${1:-/work/gwb}
B=${STOKER:-/var/tmp/stoker-target/release/stoker}
FILES=${FILES:-20000}
COUNT=${COUNT:-4}
SIZE_MIB=${SIZE_MIB:-1024}
S3PORT=${S3PORT:-19500}
GWPORT=${GWPORT:-19501}
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_DEFAULT_REGION=us-east-1
unset AWS_CA_BUNDLE || true
mkdir -p "$W"
cleanup() {
  pkill -f "serve --cache-dir $W/cache" 2>/dev/null || true
  pkill -f "s3s-fs --host 127.0.0.1 --port $S3PORT" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
[ -d "$W/small" ] || $B bench gen "$W/small" --files "$FILES" --mean-size 110K >/dev/null
gen_large "$W/large" "$COUNT" "$SIZE_MIB"
small_bytes=$(du -sb "$W/small" | cut -f1)
large_bytes=$((COUNT * (SIZE_MIB << 20)))
rate() { python3 -c "import sys; t=float(sys.argv[2])-float(sys.argv[1]); n=int(sys.argv[3]); b=int(sys.argv[4]); print(f'{t:.1f} s, {n/t:.0f} files/s, {b/t/2**20:.0f} MiB/s')" "$@"; }

rm -rf "$W/s3root" "$W/cache" "$W/out" && mkdir -p "$W/s3root/direct" "$W/s3root/under"
s3s-fs --host 127.0.0.1 --port "$S3PORT" --access-key bench --secret-key bench-secret "$W/s3root" >"$W/s3s.log" 2>&1 &
until curl -s -o /dev/null "http://127.0.0.1:$S3PORT/"; do sleep 0.2; done
printf 'bench:bench-secret\n' >"$W/keys"
$B serve --cache-dir "$W/cache" --socket "$W/s.sock" --capacity 16G \
  --mount "w=s3://under/" --mount-opt "w:endpoint=http://127.0.0.1:$S3PORT" \
  --mount-opt w:access_key_id=bench --mount-opt w:secret_access_key=bench-secret --mount-opt w:write=async \
  --s3 "127.0.0.1:$GWPORT" --s3-credentials "$W/keys" 2>"$W/serve.log" &
until $B stat --socket "$W/s.sock" >/dev/null 2>&1; do sleep 0.2; done
GW="aws --endpoint-url http://127.0.0.1:$GWPORT s3"
S3="aws --endpoint-url http://127.0.0.1:$S3PORT s3"
cat "$W"/small/*/* >/dev/null

# PUT one tree straight to s3s-fs, then through the gateway (answered, and
# until persisted). Usage: put NAME FILES BYTES
put() {
  local t0 t1 t2
  t0=$(secs); $S3 cp --recursive --quiet "$W/$1" "s3://direct/$1"; t1=$(secs)
  echo "PUT $1, direct to s3s-fs: $(rate "$t0" "$t1" "$2" "$3")"
  t0=$(secs); $GW cp --recursive --quiet "$W/$1" "s3://w/$1"; t1=$(secs)
  echo "PUT $1, stoker gateway (answered = durable and readable): $(rate "$t0" "$t1" "$2" "$3")"
  $B sync --socket "$W/s.sock" /w >/dev/null; t2=$(secs)
  echo "PUT $1, stoker gateway until persisted (stoker sync): $(rate "$t0" "$t2" "$2" "$3")"
}
put small "$FILES" "$small_bytes"
cat "$W"/large/* >/dev/null
put large "$COUNT" "$large_bytes"
rm -rf "$W/s3root/direct/large"

# GET: the small files, cached in stoker (read once to be sure), vs s3s-fs.
$B load --socket "$W/s.sock" /w/small >/dev/null 2>&1 || true
sync; echo 3 >/proc/sys/vm/drop_caches
t0=$(secs); $S3 cp --recursive --quiet s3://direct/small "$W/out/direct"; t1=$(secs)
echo "GET small, direct from s3s-fs (page cache dropped): $(rate "$t0" "$t1" "$FILES" "$small_bytes")"
sync; echo 3 >/proc/sys/vm/drop_caches
t0=$(secs); $GW cp --recursive --quiet s3://w/small "$W/out/gw"; t1=$(secs)
echo "GET small, stoker gateway, cached (page cache dropped): $(rate "$t0" "$t1" "$FILES" "$small_bytes")"
diff -rq "$W/small" "$W/out/gw" >/dev/null && echo "gateway GETs byte-exact"
diff -rq "$W/small" "$W/s3root/under/small" >/dev/null && echo "under storage holds every small file byte for byte"
for f in "$W"/large/*; do cmp "$f" "$W/s3root/under/large/$(basename "$f")"; done && echo "under storage holds every large file byte for byte"
rm -rf "$W/out"
