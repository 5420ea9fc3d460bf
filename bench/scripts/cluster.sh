#!/usr/bin/env bash
# The cluster bench behind docs/BENCHMARKS.md "Cluster": one etcd and three
# `stoker serve` nodes on 127.0.0.1 (one shard each, all sharing this box's
# cores), the dataset behind --ufs-latency 20ms.
#  1. three lone nodes read the dataset at once (32 threads each): under-storage bytes, files/s;
#  2. the same three nodes as one cluster: under-storage bytes, files/s;
#  3. warm: an epoch through a lone node (every block local) vs through a
#     cluster node (two thirds of the blocks on its peers), at 32 threads and
#     at one (a hit's latency on its own: local vs remote);
#  4. remote hits alone: node 1 rejoins with a 64 MiB cache, so placement
#     (weighted by capacity) gives it almost no blocks, and a one-reader warm
#     epoch through it is answered by nodes 2 and 3.
# MODES="1" runs phase 2 and 3 for the cluster only (phase 4 needs it first).
# Usage: bench/scripts/cluster.sh [WORK_DIR]   (needs a release build and etcd)
set -euo pipefail
W=${1:-/work/cb}
B=${STOKER:-/var/tmp/stoker-target/release/stoker}
FILES=${FILES:-20000}
mkdir -p "$W"
[ -d "$W/data" ] || $B bench gen "$W/data" --files "$FILES" --mean-size 110K >/dev/null
stop_all() {
  pkill -f "serve --cache-dir $W/cache-" 2>/dev/null || true
  for _ in $(seq 50); do pgrep -f "serve --cache-dir $W/cache-" >/dev/null || break; sleep 0.1; done
}
trap 'stop_all; pkill -f "etcd --name cb" 2>/dev/null || true' EXIT
stop_all
pkill -f "etcd --name cb" 2>/dev/null || true
rm -rf "$W"/cache-* "$W/etcd" "$W"/*.sock
P=$((20000 + RANDOM % 20000))
etcd --name cb --data-dir "$W/etcd" --listen-client-urls "http://127.0.0.1:$P" --advertise-client-urls "http://127.0.0.1:$P" \
  --listen-peer-urls "http://127.0.0.1:$((P + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((P + 1))" \
  --initial-cluster "cb=http://127.0.0.1:$((P + 1))" --log-level error >"$W/etcd.log" 2>&1 &
head -c 24 /dev/urandom | base64 >"$W/token"
node() { # ID CLUSTERED(0|1); CAP=SIZE overrides the 4G cache
  local id=$1 extra=()
  if [ "$2" = 1 ]; then
    extra=(--cluster "etcd://127.0.0.1:$P" --node-id "$id" --peer-listen "127.0.0.1:$((P + 10 + ${id#n}))" --cluster-token-file "$W/token")
  fi
  $B serve --cache-dir "$W/cache-$2-$id" --socket "$W/$id.sock" --shards 1 --capacity "${CAP:-4G}" --metadata-sync never \
    --ufs-latency 20ms --mount "d=file://$W/data" "${extra[@]}" 2>"$W/$id-$2.log" &
  until $B stat --socket "$W/$id.sock" >/dev/null 2>&1; do sleep 0.2; done
}
field() { $B stat --socket "$W/$1.sock" --json | python3 -c "import json,sys; print(json.load(sys.stdin)$2)"; }
epoch() { $B bench epoch --source "$W/data" --prefix /d --targets stoker --threads 32 --socket "$W/$1.sock" --json >"$W/$2.json"; }
summary() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1].rsplit("/",1)[1], json.dumps(r)[:400])' "$1"; }
total=$(du -sb "$W/data" | cut -f1)
echo "dataset: $FILES files, $total bytes"
for mode in ${MODES:-0 1}; do
  for id in n1 n2 n3; do node $id $mode; done
  if [ $mode = 1 ]; then
    until [ "$(field n1 "['cluster']['members'].__len__()")" = 3 ]; do sleep 0.2; done
  fi
  sync; echo 3 >/proc/sys/vm/drop_caches
  epoch n1 "cold-$mode-n1" & e1=$!; epoch n2 "cold-$mode-n2" & e2=$!; epoch n3 "cold-$mode-n3" & e3=$!
  wait $e1 $e2 $e3  # not a bare wait: the nodes and etcd are children too
  ufs=0; for id in n1 n2 n3; do ufs=$((ufs + $(field $id "['ufs_bytes_read']"))); done
  echo "mode $mode (0 lone, 1 cluster): under storage read $ufs bytes = $(python3 -c "print(round($ufs/$total, 2))")x the dataset"
  for id in n1 n2 n3; do summary "$W/cold-$mode-$id.json"; done
  sync; echo 3 >/proc/sys/vm/drop_caches
  epoch n1 "warm-$mode-n1"; summary "$W/warm-$mode-n1.json"
  # A hit's latency on its own: one reader, warm, every file once.
  $B bench epoch --source "$W/data" --prefix /d --targets stoker --threads 1 --socket "$W/n1.sock" --json >"$W/lat-$mode-n1.json"
  summary "$W/lat-$mode-n1.json"
  [ $mode = 1 ] && field n1 "['cluster']['asked']"
  stop_all
done
# 4. Remote hits alone (needs phase 2's cluster caches).
CAP=64M node n1 1; node n2 1; node n3 1
until [ "$(field n1 "['cluster']['members'].__len__()")" = 3 ]; do sleep 0.2; done
epoch n1 remote-fill; summary "$W/remote-fill.json"
$B bench epoch --source "$W/data" --prefix /d --targets stoker --threads 1 --socket "$W/n1.sock" --json >"$W/lat-remote-n1.json"
summary "$W/lat-remote-n1.json"
field n1 "['cluster']['asked']"; field n1 "['shards'][0]['hits']"
stop_all
