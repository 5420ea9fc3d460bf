#!/usr/bin/env bash
# The full bench behind docs/BENCHMARKS.md "bench and tune": datasets, the
# device ceiling, every workload against every target, and the tuned config
# against the default on the epoch workload, interleaved in one run.
# Usage: bench/scripts/full-bench.sh [WORK_DIR]   (needs a release build)
set -euo pipefail
W=${1:-/work/stoker-bench}
B=${STOKER:-target/release/stoker}
FILES=${FILES:-20000}; LARGE_SIZE=${LARGE_SIZE:-1G}; TUNE_BUDGET=${TUNE_BUDGET:-5m}
LOG=${LOG:-info}   # engine log level: the serve logs are kept in WORK_DIR for post-mortems
FAILED=()
# A workload that fails is reported and skipped; the rest of the run goes on.
step() { local name=$1; shift; "$@" || { echo "STEP FAILED: $name (exit $?); see $W/serve-*.log" >&2; FAILED+=("$name"); }; }
run_to() { local out=$1; shift; "$@" > "$out"; }
mkdir -p "$W"
[ -f "$W/small.done" ] || { $B bench gen "$W/small" --files "$FILES" --mean-size 110K; touch "$W/small.done"; }
[ -f "$W/big.done" ] || { $B bench gen "$W/big" --large --large-files 4 --large-size "$LARGE_SIZE"; touch "$W/big.done"; }
echo "load before: $(cat /proc/loadavg)"
$B bench ceiling --ceiling-dir "$W" --json > "$W/ceiling.json"
C=(--ceiling-json "$W/ceiling.json")

S=$W/default.sock
rm -rf "$W/cache-default"
$B serve --log-level "$LOG" --cache-dir "$W/cache-default" --socket "$S" --capacity 20G --metadata-sync never \
  --mount "small=file://$W/small" --mount "big=file://$W/big" 2>"$W/serve-default.log" &
SERVE=$!
trap 'kill ${MOUNT:-} 2>/dev/null; sleep 1; kill $SERVE 2>/dev/null || true' EXIT
until $B stat --socket "$S" >/dev/null 2>&1; do sleep 0.2; done
# FUSE target: a mount of the same engine's /small (skipped if FUSE is unavailable).
MP=$W/mnt; mkdir -p "$MP"; FUSE=""
$B mount /small "$MP" --socket "$S" 2>"$W/mount.log" &
MOUNT=$!
for _ in $(seq 100); do if mountpoint -q "$MP"; then FUSE=",$MP"; break; fi; sleep 0.1; done
[ -n "$FUSE" ] || echo "FUSE mount did not come up (see $W/mount.log): FUSE target skipped"
R=(--socket "$S" "${C[@]}")
# epoch: stoker's pass 1 is cold (fills the cache), pass 2 warm.
step epoch run_to "$W/epoch.json" $B bench epoch --source "$W/small" --prefix /small --targets "local,direct:2ms,stoker$FUSE" --passes 2 "${R[@]}" --json
step stat run_to "$W/stat.json" $B bench stat --source "$W/small" --prefix /small --targets "local,stoker$FUSE" "${R[@]}" --json
step random run_to "$W/random.json" $B bench random --source "$W/big" --prefix /big --targets local,stoker --passes 2 --ops 20000 --range-size 128K "${R[@]}" --json
step seq run_to "$W/seq.json" $B bench seq --source "$W/big" --prefix /big --targets local,stoker --passes 2 "${R[@]}" --json
echo "load after workloads: $(cat /proc/loadavg)"

# tune, then default vs tuned, interleaved passes in one run.
$B tune --work-dir "$W/tune" --out "$W/tuned.toml" --budget "$TUNE_BUDGET" ${TUNE_ARGS:-}
READERS=$(sed -n 's/^readers = //p' "$W/tuned.toml")
T=$W/tuned.sock
rm -rf "$W/cache-tuned"
$B serve --log-level "$LOG" --config "$W/tuned.toml" --cache-dir "$W/cache-tuned" --socket "$T" --capacity 20G --metadata-sync never \
  --mount "small=file://$W/small" 2>"$W/serve-tuned.log" &
TUNED=$!
trap 'kill ${MOUNT:-} 2>/dev/null; sleep 1; kill $SERVE $TUNED 2>/dev/null || true' EXIT
until $B stat --socket "$T" >/dev/null 2>&1; do sleep 0.2; done
$B bench epoch --source "$W/small" --prefix /small --targets stoker --socket "$T" --threads "$READERS" --json > /dev/null  # fill
for i in 1 2 3; do
  $B bench epoch --source "$W/small" --prefix /small --targets stoker --socket "$S" --threads 32 --seed $((10+i)) --json > "$W/ab-default-$i.json"
  $B bench epoch --source "$W/small" --prefix /small --targets stoker --socket "$T" --threads "$READERS" --seed $((10+i)) --json > "$W/ab-tuned-$i.json"
done
echo "load after: $(cat /proc/loadavg)"
[ ${#FAILED[@]} -eq 0 ] || echo "failed steps: ${FAILED[*]}"
python3 - "$W" <<'PY'
import json, sys, glob
w = sys.argv[1]
rows = []
for n in ["epoch", "stat", "random", "seq"]:
    try:
        rows += [r for r in json.load(open(f"{w}/{n}.json")) if r["workload"] != "ceiling"]
    except (OSError, ValueError) as e:
        print(f"({n}: no result: {e})")
c = json.load(open(f"{w}/ceiling.json"))
rows += c["points"]
print("| workload | target | pass | files | ops/s | files/s | MiB/s | p50 ms | p90 ms | p99 ms | p99.9 ms | CPU s | of ceiling |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    f = r.get("ceiling_fraction"); f = "—" if f is None else f"{f*100:.0f}%"
    print(f"| {r['workload']} | {r['target']} | {r['pass']} | {r['files']} | {r['ops_per_s']:.0f} | {r['files_per_s']:.0f} | {r['mib_per_s']:.1f} | {r['p50_us']/1e3:.3f} | {r['p90_us']/1e3:.3f} | {r['p99_us']/1e3:.3f} | {r['p999_us']/1e3:.3f} | {r['cpu_secs']:.2f} | {f} |")
print(f"\nceiling: seq 1M {c['seq_mib_per_s']:.0f} MiB/s (qd{c['seq_queue_depth']}), rand 128K {c['rand128k_mib_per_s']:.0f} MiB/s (qd{c['rand128k_queue_depth']}), rand 4K {c['rand4k_iops']:.0f} IOPS (qd{c['rand4k_queue_depth']})\n")
print("| pair | default files/s | tuned files/s | tuned/default |\n|---|---:|---:|---:|")
ratios = []
for i in (1, 2, 3):
    d = json.load(open(f"{w}/ab-default-{i}.json"))[0]["files_per_s"]; t = json.load(open(f"{w}/ab-tuned-{i}.json"))[0]["files_per_s"]
    ratios.append(t / d); print(f"| {i} | {d:.0f} | {t:.0f} | {t/d:.2f} |")
ratios.sort(); print(f"\nmedian tuned/default: {ratios[1]:.2f}")
PY
