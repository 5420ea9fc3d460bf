#!/usr/bin/env bash
# Installs what stoker's build, demo and tests need on a Debian machine, only
# when it is missing. Sourced by demo.sh and test.sh.
set -euo pipefail

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# The Python binding's test builds a venv and installs maturin with pip.
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need_apt+=(python3-venv)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
# etcd-client compiles etcd's protobuf definitions at build time.
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
# The cluster's TLS tests make their certificates with the openssl command.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if [ "${STOKER_NEED_FUSE:-0}" = 1 ]; then
  command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
fi
# The cluster tests run a real etcd on 127.0.0.1.
if [ "${STOKER_NEED_ETCD:-0}" = 1 ]; then
  command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
  export STOKER_REQUIRE_ETCD=1
fi
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  need_apt+=(cargo rustc)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"
# Build outputs live outside the clone so a fresh checkout reuses them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/stoker-target}"
mkdir -p "$CARGO_TARGET_DIR"
# The S3 tests run a real S3-compatible server on 127.0.0.1: moto's server
# (pure Python, installs in seconds from PyPI; cached in the user site).
if [ "${STOKER_NEED_S3:-0}" = 1 ]; then
  if ! python3 -c "import moto.server, flask_cors" >/dev/null 2>&1; then
    echo "setup: installing moto[server] for the S3 tests" >&2
    python3 -m pip install -q --disable-pip-version-check 'moto[server]>=5,<6' >&2 \
      || python3 -m pip install -q --disable-pip-version-check --break-system-packages 'moto[server]>=5,<6' >&2
  fi
  # The gateway's tests (cli/tests/gateway.rs) drive it with boto3, the aws
  # CLI (both from PyPI) and rclone (Debian).
  # awscli pins botocore: install it with boto3 so pip picks a pair that agrees.
  py_need=()
  if ! command -v aws >/dev/null 2>&1; then
    py_need+=(awscli boto3)
  elif ! python3 -c "import boto3" >/dev/null 2>&1; then
    py_need+=(boto3)
  fi
  if [ ${#py_need[@]} -gt 0 ]; then
    echo "setup: installing ${py_need[*]} for the gateway tests" >&2
    python3 -m pip install -q --disable-pip-version-check "${py_need[@]}" >&2 \
      || python3 -m pip install -q --disable-pip-version-check --break-system-packages "${py_need[@]}" >&2
  fi
  if ! command -v rclone >/dev/null 2>&1; then
    echo "setup: installing rclone for the gateway tests" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rclone >/dev/null
  fi
  # pip puts scripts (aws) in the user's bin when it is not root.
  export PATH="$PATH:$HOME/.local/bin"
  export STOKER_REQUIRE_S3=1
fi
