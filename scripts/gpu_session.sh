#!/usr/bin/env bash
# Issue 26's device check, prepared for a session lent a GPU (15 minutes of device time, the machine's start
# included). Each call of `run` starts nothing new after GPU_BUDGET_S seconds (default 210: about 5 minutes, more
# when the item then running is long, a compilation or a teacher's training, hence timeout_s 560), and what it leaves
# is finished by the next call, given the first one's files: the benchmark
# resumes (--resume), keeping every figure measured and retrying what failed. Results are written after each item,
# so a call cut short keeps what it measured.
#
#   here, once:  bash scripts/gpu_session.sh prepare [WKD_CHECKOUT]
#                -> .whl/ (the wheels the GPU image lacks: pydantic and its parts, yacs, pycocotools),
#                   .fmnist/ (Fashion-MNIST's IDX files, for --e2e), .official/ (the official WKD
#                   code, for --official, when a checkout is given); all three git-ignored. A committed
#                   benchmarks/gpu.json with items left or failed (an earlier session ran out of device time)
#                   seeds .gpu-prev/, so the first call goes on from it.
#   there:       the device tool's run, kind "nvidia-h200" (issue 26 asks for an H200 run, and a resume refuses
#                figures from another GPU), carry [".whl", ".fmnist", ".official", ".gpu-prev"], timeout_s 560,
#                command "bash scripts/gpu_session.sh run" (writes under $OUT; exit status 3: items left)
#   here, after: bash scripts/gpu_session.sh keep FILES_AT
#                -> the call's files into benchmarks/ and into .gpu-prev/ (git-ignored), which the next call's
#                   run resumes from; after the last call, `rm -rf .gpu-prev`.
#
# The image's python3 holds torch, torchvision, timm and tqdm (the device library's KINDS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
    for d in .whl .fmnist .official .gpu-prev; do grep -qx "/$d/" .git/info/exclude || echo "/$d/" >> .git/info/exclude; done
    rm -rf .whl && python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 yacs==0.1.8 \
        pycocotools==2.0.11 typing-extensions==4.16.0  # pydantic 2.14 needs typing-extensions >= 4.16
    mkdir -p .fmnist && cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .fmnist/
    if [ -n "${2:-}" ]; then rm -rf .official && mkdir .official && git -C "$2" archive HEAD | tar -x -C .official; fi
    # A committed benchmarks/gpu.json with items left (an earlier session's device time ran out) or failed: the first
    # call resumes from it instead of measuring everything again (a resume on another GPU or software starts afresh).
    if [ -f benchmarks/gpu.json ] && python3 -c "import json, sys; r = json.load(open(sys.argv[1])); \
sys.exit(0 if r.get('pending') or r.get('errors') else 1)" benchmarks/gpu.json; then
        rm -rf .gpu-prev && mkdir .gpu-prev && cp benchmarks/gpu.json benchmarks/gpu.md .gpu-prev/
        [ -f benchmarks/stream_loader_cuda.md ] && cp benchmarks/stream_loader_cuda.md .gpu-prev/
        echo "benchmarks/gpu.json has items left or failed: the first run resumes from it (.gpu-prev)"
    fi
    du -sh .whl .fmnist .official .gpu-prev 2>/dev/null
    ;;
run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" WDISTILL_FMNIST="$PWD/.fmnist"
    out="${OUT:-benchmarks}"
    official=()
    [ -d .official/mdistiller ] && official=(--official .official)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/nvidia-smi.csv"
    # A failing item is recorded in gpu.md/gpu.json and the rest still runs; the exit status says so at the end.
    status=0
    bench=(python3 -m benchtools gpu --compile --ddp --e2e "${official[@]}" --detection --out "$out"
           --budget-s "${GPU_BUDGET_S:-210}")
    if [ -f .gpu-prev/gpu.json ]; then
        "${bench[@]}" --resume .gpu-prev || status=$?
        if [ "$status" -eq 2 ]; then  # refused (another GPU, torch or CUDA; said above): measure afresh
            echo "the earlier figures cannot be resumed here: measuring afresh" >&2
            rm -f .gpu-prev/stream_loader_cuda.md
            status=0
            "${bench[@]}" || status=$?
        fi
    else
        "${bench[@]}" || status=$?
    fi
    if [ -f .gpu-prev/stream_loader_cuda.md ]; then
        cp .gpu-prev/stream_loader_cuda.md "$out/"
    elif [ "$status" -ne 3 ]; then  # the streaming loader once the benchmark is through
        python3 -m benchtools.stream_loader --device cuda --workers 8 --repeats 2 --out "$out/stream_loader_cuda.md" \
            || status=$?
    fi
    exit "$status"
    ;;
keep)
    [ -f "${2:-}/gpu.json" ] || { echo "keep: give the folder a run's files came back to (its files_at)" >&2; exit 2; }
    # The tool hands the files over read-only: the copies are made writable (the next keep replaces them).
    rm -rf .gpu-prev && mkdir .gpu-prev && cp --no-preserve=mode "$2"/* .gpu-prev/
    cp --no-preserve=mode "$2"/gpu.md "$2"/gpu.json benchmarks/
    [ -f "$2/stream_loader_cuda.md" ] && cp --no-preserve=mode "$2/stream_loader_cuda.md" benchmarks/
    python3 -c "import json, sys; r = json.load(open(sys.argv[1])); p = r.get('pending', []); \
print(f'{len(p)} items left' + (': run again (it resumes from .gpu-prev)' if p else '; errors: ' + str(len(r['errors']))))" \
        .gpu-prev/gpu.json
    ;;
*)
    echo "usage: bash scripts/gpu_session.sh prepare [WKD_CHECKOUT] | run | keep FILES_AT" >&2
    exit 2
    ;;
esac
