#!/usr/bin/env bash
# Sets up a fresh clone: the Debian Fashion-MNIST package (when missing), a virtual environment in .venv,
# and the zoo installed into it with every extra (the leaderboard's plots, the mnist_5k digits). `--dev` adds the test
# and lint tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "setup: installing the Debian package dataset-fashion-mnist"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
extra="[all]"; [ "${1:-}" = "--dev" ] && extra="[dev]"  # dev includes all
# torch/torchvision pinned to the builds this machine's pip serves from local disk (see README).
.venv/bin/pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" -e ".${extra}"
echo "setup: ready (.venv)"
