#!/usr/bin/env bash
# Issue 26's device check, prepared for a session lent a GPU: one command there, about 7 minutes by estimate (it has
# never run on a GPU). Results are written after each section, so a run cut short keeps what it measured.
#
#   here, once:  bash scripts/gpu_session.sh prepare [WKD_CHECKOUT]
#                -> .whl/ (the wheels the GPU image lacks: pydantic and its parts, yacs, pycocotools),
#                   .fmnist/ (Fashion-MNIST's IDX files, for --e2e), .official/ (the official WKD
#                   code, for --official, when a checkout is given); all three git-ignored.
#   there:       the device tool's run, carry [".whl", ".fmnist", ".official"],
#                command "bash scripts/gpu_session.sh run" (writes under $OUT)
#
# The image's python3 holds torch, torchvision, timm and tqdm (the device library's KINDS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
    for d in .whl .fmnist .official; do grep -qx "/$d/" .git/info/exclude || echo "/$d/" >> .git/info/exclude; done
    rm -rf .whl && python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 yacs==0.1.8 \
        pycocotools==2.0.11
    mkdir -p .fmnist && cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .fmnist/
    if [ -n "${2:-}" ]; then rm -rf .official && mkdir .official && git -C "$2" archive HEAD | tar -x -C .official; fi
    du -sh .whl .fmnist .official 2>/dev/null
    ;;
run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" WDISTILL_FMNIST="$PWD/.fmnist"
    out="${OUT:-benchmarks}"
    official=()
    [ -d .official/mdistiller ] && official=(--official .official)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/nvidia-smi.csv"
    # A failing section is recorded in gpu.md/gpu.json and the rest still runs; the exit status says so at the end.
    status=0
    python3 -m benchtools gpu --compile --ddp --e2e "${official[@]}" --detection --out "$out" || status=$?
    python3 -m benchtools.stream_loader --device cuda --workers 8 --repeats 2 --out "$out/stream_loader_cuda.md" \
        || status=$?
    exit "$status"
    ;;
*)
    echo "usage: bash scripts/gpu_session.sh prepare [WKD_CHECKOUT] | run" >&2
    exit 2
    ;;
esac
