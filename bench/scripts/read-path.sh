#!/usr/bin/env bash
# The read-path bench behind docs/BENCHMARKS.md "Read path": cached reads
# through FUSE and shared memory side by side with local ext4 (page cache
# dropped before every pass) and the O_DIRECT device ceiling, in one run.
# Usage: bench/scripts/read-path.sh [WORK_DIR] [STEP...]   (needs a release build)
# Steps: small (32 threads), loader (N worker processes), seq (32 MiB files),
# random (4 KiB and 128 KiB ranges of 1 GiB files), warm (FUSE with the page
# cache warm), cpu (engine and FUSE daemon CPU per GiB), cold (nothing cached,
# 20 ms per under-storage request, vs a direct 32-thread reader). Default: all. Results: WORK_DIR/*.json and a summary on stdout.
set -euo pipefail
W=${1:-/work/rb}; shift || true
STEPS=${*:-small loader seq random warm cpu cold}
B=${STOKER:-target/release/stoker}
FILES=${FILES:-20000}
mkdir -p "$W"
[ -d "$W/small" ] || $B bench gen "$W/small" --files "$FILES" --mean-size 110K
[ -d "$W/mid" ] || $B bench gen "$W/mid" --large --large-files 64 --large-size 32M
[ -d "$W/big" ] || $B bench gen "$W/big" --large --large-files 2 --large-size 1G
[ -f "$W/ceiling.json" ] || $B bench ceiling --ceiling-dir "$W" --json > "$W/ceiling.json"
S=$W/serve.sock
if ! $B stat --socket "$S" >/dev/null 2>&1; then
  $B serve --cache-dir "$W/cache" --socket "$S" --capacity 20G --metadata-sync never \
    --mount "small=file://$W/small" --mount "mid=file://$W/mid" --mount "big=file://$W/big" 2>"$W/serve.log" &
  until $B stat --socket "$S" >/dev/null 2>&1; do sleep 0.2; done
fi
for m in small mid big; do
  mkdir -p "$W/mnt-$m"
  if ! mountpoint -q "$W/mnt-$m"; then
    $B mount "/$m" "$W/mnt-$m" --socket "$S" ${MOUNT_ARGS:-} 2>"$W/mount-$m.log" &
    for _ in $(seq 100); do mountpoint -q "$W/mnt-$m" && break; sleep 0.1; done
  fi
  $B load "/$m" --socket "$S" --skip-cached >/dev/null
done
R=(--socket "$S" --ceiling-json "$W/ceiling.json" --json)
stat_json() { $B stat --socket "$S" --json; }
# CPU seconds (user + system) of the engine and of the FUSE daemons so far.
cpu_of() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
ENGINE=$(pgrep -f "serve --cache-dir $W/cache" | head -1)
FUSED=$(pgrep -f "mount /(small|mid|big) $W/mnt-" | tr '\n' ' ')
# device_bytes_read / bytes_served, and engine / FUSE daemon CPU, over one command.
amp() {
  local before after e0 f0 e1 f1; before=$(stat_json); e0=$(cpu_of $ENGINE); f0=$(cpu_of $FUSED); "$@"; after=$(stat_json)
  e1=$(cpu_of $ENGINE); f1=$(cpu_of $FUSED)
  python3 -c 'import json,sys; b=json.loads(sys.argv[1]); a=json.loads(sys.argv[2]); d=a["device_bytes_read"]-b["device_bytes_read"]; s=a["bytes_served"]-b["bytes_served"]; tck=100.0; e=int(sys.argv[4])/tck; f=int(sys.argv[5])/tck; print(f"{sys.argv[3]}: device_bytes_read {d} / bytes_served {s} = {d/max(s,1):.3f}; engine {e:.1f} CPU-s, FUSE daemons {f:.1f} CPU-s over this step", file=sys.stderr)' "$before" "$after" "$step" $((e1 - e0)) $((f1 - f0))
}
for step in $STEPS; do
  case $step in
    small) amp $B bench epoch --source "$W/small" --prefix /small --targets "local,stoker,$W/mnt-small" --threads 32 --cold "${R[@]}" > "$W/small.json" ;;
    loader) amp $B bench loader --source "$W/small" --prefix /small --targets "local,stoker,$W/mnt-small" --procs 1,4,8 --cold "${R[@]}" > "$W/loader.json" ;;
    seq) amp $B bench seq --source "$W/mid" --prefix /mid --targets "local,stoker,$W/mnt-mid" --threads 2 --chunk 1M --cold "${R[@]}" > "$W/seq.json" ;;
    random)
      amp $B bench random --source "$W/big" --prefix /big --targets "local,stoker,$W/mnt-big" --threads 4 --ops 20000 --range-size 4K --cold "${R[@]}" > "$W/random4k.json"
      amp $B bench random --source "$W/big" --prefix /big --targets "local,stoker,$W/mnt-big" --threads 4 --ops 20000 --range-size 128K --cold "${R[@]}" > "$W/random128k.json" ;;
    warm) amp $B bench epoch --source "$W/small" --prefix /small --targets "local,$W/mnt-small" --threads 32 --passes 2 "${R[@]}" > "$W/warm.json" ;;
    cpu) # CPU per GiB served, one target per command (cached in stoker, page cache dropped).
      amp $B bench epoch --source "$W/small" --prefix /small --targets "$W/mnt-small" --threads 32 --cold "${R[@]}" > "$W/cpu-fuse.json"
      amp $B bench epoch --source "$W/small" --prefix /small --targets stoker --threads 32 --cold "${R[@]}" > "$W/cpu-shm.json" ;;
    cold) # Nothing cached, 20 ms per under-storage request: a fresh engine per target.
      C=$W/cold.sock; rm -f "$W/cold.json"
      for t in direct fuse stoker; do
        rm -rf "$W/cache-cold"
        $B serve --cache-dir "$W/cache-cold" --socket "$C" --capacity 20G --metadata-sync never --ufs-latency 20ms \
          --mount "small=file://$W/small" 2>"$W/serve-cold.log" &
        CS=$!
        until $B stat --socket "$C" >/dev/null 2>&1; do sleep 0.2; done
        case $t in
          direct) tgt="direct:20ms" ;;
          stoker) tgt=stoker ;;
          fuse) mkdir -p "$W/mnt-cold"; $B mount /small "$W/mnt-cold" --socket "$C" ${MOUNT_ARGS:-} 2>"$W/mount-cold.log" &
                for _ in $(seq 100); do mountpoint -q "$W/mnt-cold" && break; sleep 0.1; done
                ls -R "$W/mnt-cold" >/dev/null; tgt="$W/mnt-cold" ;;
        esac
        $B bench epoch --source "$W/small" --prefix /small --targets "$tgt" --threads 32 --cold --socket "$C" --json > "$W/cold-$t.json"
        [ $t = fuse ] && $B umount "$W/mnt-cold"
        kill $CS; wait $CS 2>/dev/null || true
      done
      python3 -c 'import json,sys; w=sys.argv[1]; json.dump([r for t in ("direct","fuse","stoker") for r in json.load(open(f"{w}/cold-{t}.json"))], open(f"{w}/cold.json","w"))' "$W" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
python3 - "$W" $STEPS <<'PY'
import json, sys
w = sys.argv[1]
print("| step | workload | target | pass | files/s | MiB/s | p50 ms | p99 ms | CPU s | of ceiling |")
print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
for step in sys.argv[2:]:
    names = {"random": ["random4k", "random128k"], "cpu": ["cpu-fuse", "cpu-shm"]}.get(step, [step])
    for n in names:
        try:
            rows = json.load(open(f"{w}/{n}.json"))
        except (OSError, ValueError):
            continue
        for r in rows:
            f = r.get("ceiling_fraction"); f = "—" if f is None else f"{f*100:.0f}%"
            print(f"| {n} | {r['workload']} | {r['target']} | {r['pass']} | {r['files_per_s']:.0f} | {r['mib_per_s']:.1f} | {r['p50_us']/1e3:.3f} | {r['p99_us']/1e3:.3f} | {r['cpu_secs']:.2f} | {f} |")
PY
