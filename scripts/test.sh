#!/usr/bin/env bash
# The whole test suite: unit, model (proptest), integration tests against a
# real `stoker serve`, crash/restart tests, real FUSE mounts and under
# storage against a real S3-compatible server (moto) on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
STOKER_NEED_FUSE=1 STOKER_NEED_S3=1 STOKER_NEED_ETCD=1 source scripts/setup.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --failure-output final
else
  cargo test --workspace --no-fail-fast
fi
