#!/usr/bin/env bash
# Build a separate venv holding torchvision + timm + pycocotools, then run only the modules that need them
# (tests/test_timm_torchvision.py, tests/test_detection_data_models.py, tests/test_detection_engine.py,
# tests/test_detection_formats.py, tests/test_bench_detection.py) in it.
#
# Why a separate venv: the project venv has the CPU torch 2.13.0, whose only matching torchvision
# wheel is a CUDA build that fails to import there. torch 2.14.1 + torchvision 0.29.1 (CUDA builds,
# they run on CPU) are a matching pair. Everything is installed with --no-index from the local
# wheel directories, so pip cannot fetch anything (least of all another torch) from the network.
#
#   scripts/tv_venv.sh            # build the venv if missing, then run the test module
#   TV_VENV=/path scripts/tv_venv.sh
#   WHEEL_DIRS="/dir1 /dir2" scripts/tv_venv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TV_VENV:-$PWD/.venv-tv}
WHEEL_DIRS=${WHEEL_DIRS:-"/opt/pypi-more/files /opt/pypi/files /opt/wheels"}
PY=${PYTHON:-python3.11}
links=()
for d in $WHEEL_DIRS; do links+=(--find-links "$d"); done
pipi() { PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_EXTRA_INDEX_URL= "$VENV/bin/pip" install -q --no-index "${links[@]}" "$@"; }

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import timm, torchvision, matplotlib" 2>/dev/null; then
  start=$(date +%s)
  "$PY" -m venv "$VENV"
  # First what torch/torchvision/timm need: the CUDA runtime libraries libtorch links against (the
  # cuda-toolkit/nvidia wheels) and the pure-Python dependencies.
  pipi "cuda-toolkit[cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,nvrtc,nvtx]==13.0.3" \
    "nvidia-cudnn-cu13==9.24.0.43" "nvidia-cusparselt-cu13==0.8.1" "nvidia-nccl-cu13==2.30.7" \
    "nvidia-nvshmem-cu13==3.4.5" filelock "typing-extensions>=4.10" "setuptools>=77.0.3" "sympy>=1.13.3" \
    "networkx>=2.5.1" jinja2 "fsspec>=0.8.5" pillow
  pipi "safetensors==0.8.0" "huggingface_hub==1.33.0" pyyaml numpy "pydantic>=2" tqdm pytest matplotlib
  # Then the three without their dependency lists: cuda-bindings (a torch 2.14.1 requirement) has no
  # local wheel, triton (only for torch.compile on GPUs) is left out, and pip must never resolve torch
  # for timm. Installed last, pip's dependency check finds every other requirement met and stays quiet.
  pipi --no-deps "torch==2.14.1" "torchvision==0.29.1" "timm==1.0.29"
  echo "tv venv built in $(( $(date +%s) - start )) s, size $(du -sh "$VENV" | cut -f1)"
fi
# Separately, so that a venv built before detection (or before xdist) gains them without a rebuild.
if ! "$VENV/bin/python" -c "import pycocotools.cocoeval, xdist" 2>/dev/null; then
  pipi "pycocotools==2.0.11" "pytest-xdist==3.8.0"
fi
PYTHONPATH=$PWD OMP_NUM_THREADS=1 WDISTILL_REQUIRE_TV=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  -n auto --maxprocesses 4 \
  tests/test_timm_torchvision.py tests/test_detection_data_models.py tests/test_detection_engine.py \
  tests/test_detection_formats.py tests/test_bench_detection.py "$@"
