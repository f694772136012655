#!/usr/bin/env bash
# Does a finished torchrun worker exit cleanly? Left to interpreter shutdown, a gloo process group's destructor can
# abort a worker that has done its work ("terminate called without an active exception", exit -6), and torchrun then
# fails the job. wdistill's command line leaves its group first (wdistill.engine.ddp.leave). This runs the same
# two-rank job RUNS times (default 40) in three ways and counts the jobs torchrun failed:
#   exit   the worker joins, reduces on the default group and on a second one (as the stop-signal vote does), exits
#   leave  the same, then ddp.leave()
#   cli    the same, then the command line's own exit (wdistill.cli.main, which leaves)
#
#   bash scripts/ddp_exit_check.sh [RUNS]      (from a checkout whose .venv has the package: make setup)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-40}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/worker.py" <<'EOF'
import os
import sys

import torch
import torch.distributed as dist

from wdistill import cli
from wdistill.engine import ddp

ddp.init_distributed()
x = torch.tensor([float(os.environ["RANK"]) + 1.0])
dist.all_reduce(x)
dist.all_reduce(x, group=dist.new_group(backend="gloo"))
if sys.argv[1] == "leave":
    ddp.leave()
elif sys.argv[1] == "cli":
    sys.exit(cli.main(["list"]))
EOF
echo "torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'), $runs two-rank jobs per way (gloo, CPU)"
for way in exit leave cli; do
    failed=0
    for i in $(seq "$runs"); do
        if ! OMP_NUM_THREADS=1 PYTHONPATH="$PWD" .venv/bin/torchrun --nproc_per_node=2 \
                --master_port=$((29500 + RANDOM % 1000)) "$work/worker.py" "$way" > "$work/log" 2>&1 \
                || grep -q "terminate called" "$work/log"; then
            failed=$((failed + 1))
        fi
    done
    echo "$way: torchrun failed $failed of $runs jobs"
done
