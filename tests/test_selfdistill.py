"""Self-distillation: `wdistill distill CONFIG --generations N`, a chain that resumes after a kill."""
import json

import pytest
import torch
import yaml
from builders import random_teacher, small_run

from wdistill import cli
from wdistill.config import load_config
from wdistill.errors import ConfigError
from wdistill.workflows.selfdistill import run_generations


def _cfg(tmp_path, **over):
    return small_run(tmp_path, seed=0, name="chain", schedule="constant", extra_train={"max_steps": 2},
                     loss=[{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9}], **over)


@pytest.fixture
def teacher_ckpt(tmp_path):
    return random_teacher(tmp_path / "teacher.pt", "resnet14")


def test_chain_of_three_resumes_after_a_kill_in_generation_two(tmp_path, teacher_ckpt):
    cfg = load_config(_cfg(tmp_path, teacher={"model": "resnet14", "checkpoint": teacher_ckpt}))
    said = []

    def killed_in_gen2(msg):
        said.append(msg)
        if msg.startswith("epoch 1/2") and any(m.startswith("generation 2/3") for m in said):
            raise KeyboardInterrupt  # after generation 2 saved its first epoch

    with pytest.raises(KeyboardInterrupt):
        run_generations(cfg, 3, log=killed_in_gen2)
    root = tmp_path / "runs" / "chain"
    assert (root / "gen1" / "summary.json").is_file() and (root / "gen2" / "last.pt").is_file()
    assert not (root / "gen2" / "summary.json").exists() and not (root / "gen3").exists()
    with pytest.raises(ConfigError, match="--resume"):  # without --resume the chain refuses to clobber
        run_generations(cfg, 3, log=lambda m: None)
    said.clear()
    summaries = run_generations(cfg, 3, resume=True, log=said.append)
    assert any("generation 1/3: finished earlier" in m for m in said)
    assert any(m.startswith("resuming") and "gen2" in m and "after epoch 1" in m for m in said)
    assert [s["run"] for s in summaries] == ["chain/gen1", "chain/gen2", "chain/gen3"]
    teachers = [yaml.safe_load((root / f"gen{k}" / "config.yaml").read_text())["teacher"] for k in (1, 2, 3)]
    assert teachers[0]["model"] == "resnet14" and teachers[0]["checkpoint"] == teacher_ckpt
    for k in (2, 3):
        assert teachers[k - 1]["model"] == "resnet8"
        assert teachers[k - 1]["checkpoint"] == str(root / f"gen{k - 1}" / "student.pt")
        # the teacher really is the previous generation's student: the same weights score the same
        assert summaries[k - 1]["teacher_top1"] == pytest.approx(summaries[k - 2]["final_top1"])
    rows = [json.loads(l) for l in (root / "gen2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert json.loads((root / "generations.json").read_text()) == json.loads(json.dumps(summaries))


def test_chain_without_a_teacher_starts_with_a_cross_entropy_generation(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_cfg(tmp_path, optim={"epochs": 1, "lr": 0.05, "schedule": "constant"})))
    assert cli.main(["distill", str(path), "--generations", "2"]) == 0
    root = tmp_path / "runs" / "chain"
    g1 = yaml.safe_load((root / "gen1" / "config.yaml").read_text())
    g2 = yaml.safe_load((root / "gen2" / "config.yaml").read_text())
    assert g1["teacher"] is None and [t["name"] for t in g1["loss"]] == ["ce"]
    assert [t["name"] for t in g2["loss"]] == ["ce", "kd"] and g2["teacher"]["checkpoint"].endswith("gen1/student.pt")
    with pytest.raises(SystemExit):
        cli.main(["distill", str(path), "--generations", "0"])


def test_chain_resumes_after_sigkill(tmp_path, teacher_ckpt):
    """The real thing: the CLI process is SIGKILLed in generation 2 (after it saved an epoch);
    `--resume` skips generation 1, continues generation 2 from last.pt and trains generation 3."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = _cfg(tmp_path, teacher={"model": "resnet14", "checkpoint": teacher_ckpt},
               optim={"epochs": 6, "lr": 0.05, "schedule": "constant"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    root = tmp_path / "runs" / "chain"
    cmd = [sys.executable, "-m", "wdistill.cli", "distill", str(path), "--generations", "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (root / "gen2" / "last.pt").exists():
            assert proc.poll() is None and time.time() < deadline, "the chain stopped before generation 2"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (root / "gen2" / "summary.json").exists(), "generation 2 finished before the kill"
    epochs_before = torch.load(root / "gen2" / "last.pt", weights_only=True)["epoch"]
    assert 1 <= epochs_before < 6
    out = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "generation 1/3: finished earlier" in out.stdout
    assert f"after epoch {epochs_before}" in out.stdout
    summaries = json.loads((root / "generations.json").read_text())
    assert [s["run"] for s in summaries] == ["chain/gen1", "chain/gen2", "chain/gen3"]
    rows = [json.loads(l) for l in (root / "gen2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
