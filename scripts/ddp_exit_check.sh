#!/usr/bin/env bash
# Does a finished torchrun worker exit cleanly? Left to interpreter shutdown, a gloo process group's destructor can
# abort a worker that has done its work ("terminate called without an active exception", exit -6), and torchrun then
# fails the job. wdistill's command line leaves its group first (wdistill.engine.ddp.leave). This runs the same
# two-rank job RUNS times (default 40) in each way and counts the jobs torchrun failed:
#   exit   the worker joins, reduces on the default group and on a second one (as the stop-signal vote does), exits
#   leave  the same, then ddp.leave()
#   cli    the same, then the command line's own exit (wdistill.cli.main, which leaves)
#   twin   the same, then a gloo twin of the default group made as CRD's and WCoRD's banks make it under NCCL
#          (kept by wdistill for the whole job), then ddp.leave(), which must drop it before the destroy
#   api        a Python caller's script: a Trainer (wdistill joins the group), fit(), the script ends with the
#              trainer alive and without ddp.leave() (wdistill leaves at the interpreter's exit)
#   api-leave  the same, ending with ddp.leave() while the trainer is alive
# and two ways with a peer lost, counting the jobs whose surviving rank 0 aborted instead of exiting with its own
# code 1. These start the two ranks by hand (torchrun's environment, without its agent): torchrun would SIGTERM the
# survivor as soon as it saw rank 1 die, and that race would decide what is measured.
#   lost-exit   after the reduces rank 1 kills itself (SIGKILL); rank 0's next reduce fails and it exits
#   lost-leave  the same, with ddp.leave() on the way out (as the command line does on every way out)
#
#   bash scripts/ddp_exit_check.sh [RUNS [WAY ...]]     (from a checkout whose .venv has the package: make setup)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-40}
shift || true
ways=${*:-exit leave cli twin api api-leave lost-exit lost-leave}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/worker.py" <<'EOF'
import os
import signal
import sys

import torch
import torch.distributed as dist

from wdistill import cli
from wdistill.engine import ddp

if sys.argv[1].startswith("api"):
    from wdistill.config import load_config
    from wdistill.engine import Trainer
    trainer = Trainer(load_config({
        "run": {"out_dir": os.environ["API_RUNS"], "name": "api", "device": "cpu"},
        "data": {"name": "fmnist_sample", "train_subset": 64, "test_subset": 32, "batch_size": 32},
        "student": {"model": "resnet8"}, "optim": {"epochs": 1}, "train": {"progress": False}}), overwrite=True)
    trainer.fit()
    if sys.argv[1] == "api-leave":
        ddp.leave()
    sys.exit(0)
ddp.init_distributed()
x = torch.tensor([float(os.environ["RANK"]) + 1.0])
dist.all_reduce(x)
dist.all_reduce(x, group=dist.new_group(backend="gloo"))
if sys.argv[1].startswith("lost-"):
    if os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        dist.all_reduce(x)
    except RuntimeError:
        if sys.argv[1] == "lost-leave":
            ddp.leave()
        sys.exit(1)
    sys.exit("the reduce with the killed peer succeeded")
if sys.argv[1] == "twin":
    from wdistill.losses._shared import distributed as ddist
    backend, dist.get_backend = dist.get_backend, lambda *a: "nccl"  # the banks' path under NCCL, on gloo
    ddist.gather_rows(x.repeat(int(os.environ["RANK"]) + 1, 3))  # row counts, then the rows, on the twin
    dist.get_backend = backend
    ddp.leave()
elif sys.argv[1] == "leave":
    ddp.leave()
elif sys.argv[1] == "cli":
    sys.exit(cli.main(["list"]))
EOF
echo "torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'), $runs two-rank jobs per way (gloo, CPU)"
pair() {  # the two ranks of one job without torchrun's agent; prints rank 0's exit status
    local port=$((29500 + RANDOM % 1000)) r pid0 rc=0
    for r in 1 0; do
        RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
            OMP_NUM_THREADS=1 PYTHONPATH="$PWD" timeout 120 .venv/bin/python "$work/worker.py" "$1" \
            > "$work/log$r" 2>&1 &
        pid0=$!
    done
    wait "$pid0" || rc=$?
    wait || true
    echo "$rc"
}
for way in $ways; do
    [[ $way == lost-* ]] && continue
    failed=0
    for i in $(seq "$runs"); do
        if ! OMP_NUM_THREADS=1 PYTHONPATH="$PWD" API_RUNS="$work/runs" .venv/bin/torchrun --nproc_per_node=2 \
                --master_port=$((29500 + RANDOM % 1000)) "$work/worker.py" "$way" > "$work/log" 2>&1 \
                || grep -q "terminate called" "$work/log"; then
            failed=$((failed + 1))
            grep -q "terminate called" "$work/log" || { echo "$way: a job failed without an abort:"; tail -5 "$work/log"; }
        fi
    done
    echo "$way: torchrun failed $failed of $runs jobs"
done
for way in $ways; do
    [[ $way == lost-* ]] || continue
    aborted=0
    for i in $(seq "$runs"); do
        rc=$(pair "$way")
        [ "$rc" = 1 ] || aborted=$((aborted + 1))
        [ "$rc" = 1 ] || [ "$rc" = 134 ] || { echo "$way: rank 0 exited $rc (expected 1, or 134 for an abort):"; cat "$work/log0"; exit 1; }
    done
    echo "$way: rank 0 aborted (SIGABRT, exit 134) in $aborted of $runs jobs"
done
