"""`python -m benchtools detection` end to end at toy size (protocol D's code path: the canvases, the
teacher, the queue of rows, the calibration, the overhead timing and the results files). Needs
torchvision and pycocotools: runs in the venv of `scripts/tv_venv.sh` (WDISTILL_REQUIRE_TV=1 fails
instead of skipping when they are missing)."""
import csv
import os

import pytest
import yaml
from conftest import FMNIST_DIR, require_importable

require_importable("torchvision")
require_importable("pycocotools")

from benchtools import det_protocol as P  # noqa: E402
from benchtools import detection as D  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def toy(monkeypatch):
    """The protocol at toy size: 64-px canvases, a two-step teacher, one-step students of batch 2."""
    monkeypatch.setattr(P, "DATA_ARGS", {"size": 64, "train": 8, "val": 2, "test": 2})
    monkeypatch.setattr(P, "DETECTOR", dict(P.DETECTOR, min_size=64, max_size=64, rois_per_image=8,
                                            anchor_sizes=[[8], [16], [32], [64], [128]]))
    for name, value in (("TEACHER_EPOCHS", 1), ("TEACHER_STEPS", 2), ("TEACHER_MILESTONES", [1]),
                        ("STUDENT_EPOCHS", 1), ("STUDENT_STEPS", 1), ("STUDENT_MILESTONES", [1]), ("BATCH", 2)):
        monkeypatch.setattr(P, name, value)
    root = os.environ.get("WDISTILL_FMNIST", FMNIST_DIR)
    if not os.path.isdir(root):
        pytest.fail(f"Fashion-MNIST is not at {root}: apt-get install dataset-fashion-mnist", pytrace=False)
    return root


def test_the_detection_benchmark_writes_its_results_from_ordinary_runs(toy, tmp_path, monkeypatch):
    runs, out = tmp_path / "runs", tmp_path / "out"
    ratios = D.calibrate(runs, out, toy, methods=["kd"], batches=1, log=lambda *_: None)
    assert set(ratios) == {"kd"} and ratios["kd"]["kd"] > 0
    assert "| KD | kd |" in (out / "fmnist-det-v1-calibration.md").read_text()
    table = D.run_detection(runs, out, toy, seeds=[0], methods=["vanilla", "kd"], command=["toy"],
                            log=lambda *_: None)
    assert [r["method"] for r in table] == ["vanilla", "kd"] and table[0]["overhead"] == 1.0
    assert table[1]["overhead"] > 0 and all(0 <= r["AP"] <= 100 for r in table)
    for run in (P.NAME + "/teacher", P.REPORT + "/vanilla/seed0", P.REPORT + "/kd/seed0"):  # ordinary run directories
        assert (runs / run / "summary.json").is_file() and (runs / run / "config.yaml").is_file()
    md = (out / f"{P.REPORT}.md").read_text()
    assert "Command: `toy`" in md and "| KD |" in md and "The WKD rows against KD and DKD" in md
    rows = list(csv.DictReader(line for line in (out / f"{P.REPORT}.csv").read_text().splitlines()
                               if not line.startswith("#")))
    assert [r["method"] for r in rows] == ["teacher", "vanilla", "kd"] and float(rows[1]["step_vs_vanilla"]) == 1.0
    assert rows[1]["seeds"] == "0" and rows[0]["settings"].startswith("val AP ")
    assert (out / f"{P.REPORT}.png").stat().st_size > 10_000
    again = D.run_detection(runs, out, toy, seeds=[0], methods=["vanilla", "kd"], train=False, log=lambda *_: None)
    assert [r["AP"] for r in again] == [r["AP"] for r in table]  # --report-only reads the same runs
    monkeypatch.setattr(P, "DIAGNOSTICS", {"kd-half": ("kd", {"weight": 0.5}, "KD at half weight")})
    diag = D.run_detection_diagnostics(runs, out, toy, seeds=[0, 1], command=["toy"])  # kd-half trained, rows read
    assert not (runs / P.REPORT / "kd/seed1").exists()  # a row's missing seed is the protocol's to run, not this
    assert [r["name"] for r in diag] == ["vanilla", "kd", "kd-half"] and diag[1]["AP"] == table[1]["AP"]
    assert (runs / P.REPORT / "diag/kd-half/seed0/summary.json").is_file() and diag[2]["seeds"] == [0, 1]
    assert diag[2]["paired_n"] == 1 and diag[2]["paired_gain"] == pytest.approx(diag[2]["per_seed"][0] - table[0]["AP"])
    assert "| kd-half | KD at half weight |" in (out / f"{P.REPORT}-diagnostics.md").read_text()
    with pytest.raises(ValueError, match="unknown diagnostic run"):
        D.run_detection_diagnostics(runs, out, toy, seeds=[0], only=["kd-double"])


def test_a_diverging_run_is_reported_and_the_queue_goes_on(monkeypatch):
    """One run's non-finite loss must not stop the runs queued after it (it did: WKD-L at its
    calibrated weight stopped both queue processes)."""
    from benchtools import runs
    from wdistill.errors import NonFiniteLoss

    def fake(cfg, log=print, **kw):
        if cfg["run"]["name"] == "bad":
            raise NonFiniteLoss("loss became non-finite in epoch 1, step 40")
        return {"final_AP": 0.5}
    monkeypatch.setattr(runs.reuse, "run_or_load", fake)
    logs = []
    assert runs.run_or_report({"run": {"name": "bad"}}, log=logs.append) == {
        "diverged": "loss became non-finite in epoch 1, step 40"}
    assert "bad: diverged, marked in the table and left out of its means" in logs[0]
    assert runs.run_or_report({"run": {"name": "good"}}, log=logs.append) == {"final_AP": 0.5}


def test_the_gpu_benchmarks_detection_section_runs_each_row_on_the_device(tmp_path, monkeypatch):
    """`python -m benchtools gpu --detection` in its CPU quick mode: the canvases, the teacher and the students
    are ordinary run directories trained in the engine's automatic precision on the given device, and each row
    reports its step time against vanilla's. With ``--ddp``, a detector also trains under a one-process torchrun,
    through DDP on a process group (gloo here, NCCL on a GPU)."""
    from benchtools.gpu import GpuSetup
    from benchtools.gpu_detection import detection_lines, detection_row, detection_torchrun, row_names, torchrun_lines
    from wdistill.engine.rundir import read_history

    monkeypatch.chdir(tmp_path)
    setup = GpuSetup(device="cpu", quick=True)
    names = row_names(quick=True)
    assert names == ["teacher", "vanilla", "wkd_lf", "wkd_lf channels_last"]
    # a row at a time, each its own item: a student first (a resumed session on a fresh machine) makes the canvases
    # and trains the teacher before it
    first = detection_row(setup, "vanilla")
    assert (tmp_path / "runs/gpu-bench-det/cpu" / P.NAME / "teacher" / "student.pt").is_file()
    rows = [detection_row(setup, "teacher"), first, *[detection_row(setup, n) for n in names[2:]]]
    assert [r["row"] for r in rows] == names
    lines = detection_lines(rows)
    assert f"| vanilla | {rows[1]['step_s']:.4f} | x1.00 |" in "\n".join(lines)
    assert f"| wkd_lf | {rows[2]['step_s']:.4f} | x{rows[2]['step_s'] / rows[1]['step_s']:.2f} |" in "\n".join(lines)
    cfg = yaml.safe_load((tmp_path / "runs/gpu-bench-det/cpu" / P.REPORT / "wkd_lf/seed0/config.yaml").read_text())
    assert cfg["run"]["device"] == "cpu" and cfg["train"]["precision"] == "auto" and cfg["train"]["max_steps"] == 2
    # three epochs, only the last evaluated, no gradient-share pass: the second epoch's time is the step time
    assert (cfg["optim"]["epochs"], cfg["train"]["eval_every"], cfg["train"]["grad_share"]) == (3, 3, False)
    history = read_history(tmp_path / "runs/gpu-bench-det/cpu" / P.REPORT / "wkd_lf/seed0")
    assert [("test_AP" in r) for r in history] == [False, False, True]
    assert rows[2]["step_s"] == pytest.approx(history[1]["seconds"] / 2)
    teacher = read_history(tmp_path / "runs/gpu-bench-det/cpu" / P.NAME / "teacher")
    assert [("test_AP" in r) for r in teacher] == [False, False, True]  # its timed epoch has no evaluation either
    assert rows[0]["step_s"] == pytest.approx(teacher[1]["seconds"] / 1)
    assert not cfg["train"].get("channels_last")
    cl = yaml.safe_load((tmp_path / "runs/gpu-bench-det/cpu" / P.REPORT / "wkd_lf/seed0-channels_last/config.yaml")
                        .read_text())
    assert cl["train"]["channels_last"] and {k: v for k, v in cl.items() if k not in ("run", "train")} == {
        k: v for k, v in cfg.items() if k not in ("run", "train")}
    # On the device, also the compiled row: the same config with train.compile on (a valid one).
    from benchtools.gpu_detection import variants
    from wdistill.config import load_config
    assert variants(quick=False) == {"wkd_lf channels_last": "train.channels_last",
                                     "wkd_lf train.compile": "train.compile"}
    compiled = P.student_config("wkd_lf", 0, "runs/gpu-bench-det/cpu", overrides=["train.compile=true"])
    assert load_config(compiled).train.compile

    ddp = detection_torchrun(GpuSetup(device="cpu", quick=True))
    assert ddp["backend"] == "gloo" and ddp["summary"]["world_size"] == 1 and ddp["summary"]["task"] == "detection"
    assert 0 <= ddp["AP"] <= 100
    assert "through DDP (gloo): 2 steps, exit 0" in torchrun_lines(ddp)[1]

    # A row that fails raises (the benchmark records it as an error of the run, and the other rows still run); the
    # report then gives the other rows no ratio to vanilla.
    from benchtools import gpu_detection as G
    from wdistill.errors import NonFiniteLoss
    real = G.run_or_load

    def run_or_load(cfg, log):
        if cfg["run"]["name"].startswith("vanilla"):
            raise NonFiniteLoss("loss is nan at step 1")
        return real(cfg, log=log)  # finished above: loaded, not trained again
    monkeypatch.setattr(G, "run_or_load", run_or_load)
    with pytest.raises(NonFiniteLoss):
        detection_row(setup, "vanilla")
    again = detection_row(setup, "wkd_lf")
    assert again == rows[2]
    lines = detection_lines([rows[0], {"row": "vanilla", "error": "detection vanilla: NonFiniteLoss: loss is nan"},
                             again])
    assert lines[-2] == "| vanilla | failed: detection vanilla: NonFiniteLoss: loss is nan | | | |"
    assert lines[-1].startswith(f"| wkd_lf | {again['step_s']:.4f} |  | ")
