#!/usr/bin/env bash
# Creates .venv with wdistill. `setup.sh` installs what the demo needs (the package: torch CPU,
# numpy, pyyaml, pydantic, tqdm, matplotlib); `setup.sh --test` adds the test dependencies and,
# when running as root and it is missing, Debian's Fashion-MNIST (the real-data tests use it).
# Safe to run again: it only does what is not done yet.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TEST=0
[ "${1:-}" = "--test" ] && TEST=1
if [ "$TEST" = 1 ] && [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[setup] installing Debian package dataset-fashion-mnist (test data)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # 2.13.0 is the CPU build; an unpinned torch would pull a multi-GB CUDA build.
  .venv/bin/pip install -q torch==2.13.0
fi
if [ "$TEST" = 1 ]; then
  .venv/bin/pip install -q -e ".[test]"
else
  .venv/bin/pip install -q -e .
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, wdistill; print("torch", torch.__version__, "wdistill", wdistill.__version__)')"
