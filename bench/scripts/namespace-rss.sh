#!/usr/bin/env bash
# Engine memory per listed file (docs/BENCHMARKS.md "Memory per listed file"):
# FILES empty files (TOP top directories of DIRS directories each, empty
# files cache nothing, so this is the namespace alone), an engine with
# --metadata-sync never, every file listed once by `stoker load --skip-cached`
# (one load per top directory: a walk answers at most 1,000,000 files), then
# the engine restarted (attrs.log replayed). Prints RSS after start, after
# the walk, the peak, and after the restart.
# Usage: bench/scripts/namespace-rss.sh [WORK_DIR] [FILES]   (release build)
set -euo pipefail
W=${1:-/work/rss}; FILES=${2:-1000000}
B=${STOKER:-/var/tmp/stoker-target/release/stoker}
TOP=$(( (FILES + 999999) / 1000000 ))
PER_DIR=1000
if [ ! -f "$W/src.done.$FILES" ]; then
  rm -rf "$W/src"; mkdir -p "$W/src"
  python3 - "$W/src" "$FILES" "$TOP" "$PER_DIR" <<'PY'
import os, sys
root, files, top, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
made = 0
for d in range((files + per - 1) // per):
    p = os.path.join(root, f"t{d % top:02d}", f"d{d:05d}")
    os.makedirs(p, exist_ok=True)
    for f in range(min(per, files - made)):
        os.close(os.open(os.path.join(p, f"f{f:04d}"), os.O_CREAT | os.O_WRONLY, 0o644))
    made += min(per, files - made)
PY
  touch "$W/src.done.$FILES"
fi
S=$W/s.sock
serve() {
  $B serve --cache-dir "$W/cache" --socket "$S" --capacity 1G --metadata-sync never \
    --mount "m=file://$W/src" >>"$W/serve.log" 2>&1 &
  until $B stat --socket "$S" >/dev/null 2>&1; do sleep 0.2; done
  pgrep -f "serve --cache-dir $W/cache" | head -1
}
rss() { awk '/VmRSS/ {printf "%.0f\n", $2 * 1024}' "/proc/$1/status"; }
hwm() { awk '/VmHWM/ {printf "%.0f\n", $2 * 1024}' "/proc/$1/status"; }
stop() { kill "$1"; while kill -0 "$1" 2>/dev/null; do sleep 0.2; done; }
rm -rf "$W/cache" "$W/serve.log"
P=$(serve)
start=$(rss "$P")
t0=$(date +%s.%N)
for t in $(ls "$W/src"); do $B load "/m/$t" --skip-cached --socket "$S" >/dev/null 2>&1; done
t1=$(date +%s.%N)
walked=$(rss "$P"); peak=$(hwm "$P")
stop "$P"
P=$(serve)
restarted=$(rss "$P"); rpeak=$(hwm "$P")
stop "$P"
python3 -c "import sys; f=int(sys.argv[1]); s,w,p,r,rp=map(int,sys.argv[2:7]); mb=lambda b: f'{b/1e6:,.0f} MB'; print(f'{f:,} listed files: RSS after start {mb(s)}, after the walk {mb(w)} ({(w-s)/f:.0f} B/file), peak {mb(p)}, after a restart {mb(r)} ({(r-s)/f:.0f} B/file, peak {mb(rp)}); walk {float(sys.argv[7]):.0f} s')" \
  "$FILES" "$start" "$walked" "$peak" "$restarted" "$rpeak" "$(echo "$t1 - $t0" | bc)"
