"""The GPU benchmark's quick CPU mode (issue 26): the script a GPU session runs in one go cannot rot.
On the CPU the parity is CPU against CPU (exactly equal in float32) and bfloat16 autocast must really
engage (a nonzero difference); every section must produce its rows, and torchrun must pass through
the DDP wrapper."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchtools.gpu import GpuSetup, _rel, no_tf32, parity

ROOT = Path(__file__).resolve().parent.parent


def test_quick_mode_writes_every_section(tmp_path):
    run = subprocess.run([sys.executable, "-m", "benchtools", "gpu", "--device", "cpu", "--quick", "--ddp",
                          "--out", str(tmp_path), "--threads", "1"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert res["environment"]["device"] == "cpu" and res["environment"]["torch"] == torch.__version__
    assert {r["method"] for r in res["parity"]} == {"kd", "wkd_lf", "crd_kd"}
    for r in res["parity"]:
        assert r["float32_loss"] == 0.0 and r["float32_grad"] == 0.0  # the same arithmetic on both sides
        assert 0.0 < r["bfloat16_grad"] < 1.0  # autocast engaged, and the gradient still points the same way
    assert all(r["ratio"] > 0 and r["sync_free"] is None for r in res["steps"])
    assert res["ddp"]["returncode"] == 0 and res["ddp"]["backend"] == "gloo"
    md = (tmp_path / "gpu.md").read_text()
    assert "## Parity" in md and "## Training step against its bound" in md and "| kd | 8 |" in md


def test_relative_difference_and_tf32_guard():
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.5])
    assert _rel(a, b) == pytest.approx(0.5 / float(b.norm()))
    with no_tf32():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    row = parity("dkd", GpuSetup(device="cpu", quick=True))
    assert row["float32_loss"] == 0.0 and row["float16_scaler"] is None
