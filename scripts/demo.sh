#!/usr/bin/env bash
# The demo: builds stoker, makes a synthetic dataset (2,000 files of ~110 KiB)
# in a local directory standing in for remote storage with 20 ms of injected
# latency per request, serves it, reads it directly, then twice through
# stoker (cold, warm), and prints the table. Extra arguments go to
# `stoker demo` (see `stoker demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release -q -p stoker
exec "$CARGO_TARGET_DIR/release/stoker" demo "$@"
