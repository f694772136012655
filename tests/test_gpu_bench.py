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
from conftest import convolves

from benchtools.gpu import GpuSetup, _fp16_step_is_finite, _rel, no_tf32, parity

ROOT = Path(__file__).resolve().parent.parent


def test_quick_mode_writes_every_section(tmp_path):
    run = subprocess.run([sys.executable, "-m", "benchtools", "gpu", "--device", "cpu", "--quick", "--ddp",
                          "--out", str(tmp_path), "--threads", "1"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert res["environment"]["device"] == "cpu" and res["environment"]["torch"] == torch.__version__
    assert res["errors"] == [] and "## Errors" not in (tmp_path / "gpu.md").read_text()
    assert [r["method"] for r in res["parity"]] == ["vanilla", "kd", "wkd_lf", "crd_kd"]  # vanilla: the reference
    for r in res["parity"]:
        assert r["float32_loss"] == 0.0 and r["float32_grad"] == 0.0  # the same arithmetic on both sides
        assert 0.0 < r["bfloat16_grad"] < 1.0  # autocast engaged, and the gradient still points the same way
    # the OT solvers at small shapes: float32 is the same arithmetic on the CPU, bfloat16 inputs move them a little
    assert len(res["solvers"]) == 5 and all(r["ok"] for r in res["solvers"]), res["solvers"]
    assert all(r["float32_value"] == r["float32_grad"] == 0.0 for r in res["solvers"])
    assert all(0.0 < r["bfloat16_grad"] < 3e-2 for r in res["solvers"]) and "## OT solvers" in \
        (tmp_path / "gpu.md").read_text()
    # checked for host syncs (on the CPU by host_sync's record; the quick mode has one batch size)
    assert [r["sync_free"] for r in res["steps"] if not r["compiled"]] == [True] * 3, res["steps"]
    assert all(r["ratio"] > 0 for r in res["steps"])
    # The backend the run reported: a one-process torchrun trains through DDP on a process group of its own.
    ddp = res["ddp"]
    assert ddp["returncode"] == 0 and ddp["backend"] == "gloo" and ddp["summary"]["world_size"] == 1
    md = (tmp_path / "gpu.md").read_text()
    assert "## Parity" in md and "## Training step against its bound" in md and "| kd | 8 |" in md
    steps = md.split("## Training step against its bound")[1].split("\n## ")[0].split("### What limits")[0]
    assert [line.endswith("| yes |") for line in steps.splitlines() if line.startswith("| kd | 8 |")] == [True]
    assert res["real_run"] == {"steps": 8, "syncs": []} and "each with the fetch of its batch: no host sync." in md
    kd = res["parity"][1]
    excess = f"{kd['bfloat16_grad'] - res['parity'][0]['bfloat16_grad']:+.1e}"
    assert f"| {kd['bfloat16_grad']:.1e} | {excess} | n/a (CPU) |" in md


def test_relative_difference_and_tf32_guard():
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.5])
    assert _rel(a, b) == pytest.approx(0.5 / float(b.norm()))
    with no_tf32():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    row = parity("dkd", GpuSetup(device="cpu", quick=True))
    assert row["float32_loss"] == 0.0 and row["float16_scaler"] is None
    # The GPU's float16 column, here on the CPU: the Trainer's scaler and fused step, three finite steps.
    assert _fp16_step_is_finite("dkd", GpuSetup(device="cpu", quick=True).shapes(), torch.device("cpu"))


def test_a_failing_method_or_section_is_recorded_and_the_rest_still_runs(tmp_path, monkeypatch):
    """A device session is one short try: a method that raises must not cost the other methods' figures,
    and what was measured is on disk after each section, even if a later one kills the process."""
    from benchtools import gpu_report as G
    from benchtools.gpu_e2e import ROWS as E2E_ROWS

    def parity(m, setup):
        if m == "wkd_lf":
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")
        return {"method": m, "float32_loss": 0.0, "float32_grad": 0.0, "float16_scaler": None, "ok": True}

    def e2e_row(setup, row):
        so_far = json.loads((tmp_path / "gpu.json").read_text())
        assert so_far["kernels"] and "ddp" in so_far, "every section before e2e is on disk when it starts"
        if row == "kd":
            raise KeyboardInterrupt  # not an Exception: stops the run, as a killed session would
        assert [r["row"] for r in so_far["e2e"]] == list(E2E_ROWS[:E2E_ROWS.index(row)])  # each on disk once done
        return {"row": row, "top1": 90.0, "seconds": 1.0}
    monkeypatch.setattr(G, "parity", parity)
    monkeypatch.setattr(G, "step_time", lambda m, b, setup, sync: {"method": m, "batch": b, "sync_free": None,
                                                                   "step_s": 0.002, "bound_s": 0.001, "ratio": 2.0})
    monkeypatch.setattr(G, "wkd_l_kernel", lambda B, C, setup, v, off: (_ for _ in ()).throw(ValueError("no kernel")))
    monkeypatch.setattr(G, "torchrun_one_process", lambda device: 1 / 0)
    monkeypatch.setattr(G, "e2e_row", e2e_row)
    with pytest.raises(KeyboardInterrupt):
        G.run_gpu(GpuSetup(device="cpu", quick=True, batches=(8,)), tmp_path, ddp=True, e2e=True)
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert [r["method"] for r in res["parity"]] == ["vanilla", "kd", "wkd_lf", "crd_kd"]
    assert res["parity"][2]["ok"] is False and "illegal memory access" in res["parity"][2]["error"]
    assert [r["ratio"] for r in res["steps"]] == [2.0, 2.0, 2.0]
    assert [e["what"] for e in res["errors"]] == ["parity wkd_lf", "WKD-L kernel B=8 C=10 eager", "ddp"]
    assert "ZeroDivisionError" in res["ddp"]["error"] and "Traceback" in res["errors"][2]["traceback"]
    md = (tmp_path / "gpu.md").read_text()
    assert "| wkd_lf | failed: parity wkd_lf: RuntimeError: CUDA error: an illegal memory access was encountered |" \
        in md
    assert "Section `ddp` failed: ddp: ZeroDivisionError" in md and "## Errors" in md
    # end to end a row at a time: the rows finished before the session was killed are kept
    assert [r["row"] for r in res["e2e"]] == ["teacher", "vanilla"] and "| vanilla | 90.00 |" in md


def test_a_failed_torchrun_is_an_error_not_a_quiet_row(tmp_path, monkeypatch):
    """NCCL that does not start exits torchrun nonzero: that must reach the report's Errors and the exit status."""
    from benchtools import gpu_report as G

    monkeypatch.chdir(tmp_path)
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="...\nNCCL error: unhandled system error\n")
    monkeypatch.setattr(G.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(RuntimeError, match="torchrun exited 1: .*NCCL error: unhandled system error"):
        G.torchrun_one_process(torch.device("cpu"))


def test_the_compiled_step_runs_the_student_through_dynamo_as_train_compile_does(dynamo_graphs):
    """`--compile`'s KD row: the student compiled as the Trainer's train.compile does it (a recording backend here;
    inductor on the GPU), timed against the same eager bound, and marked in the table."""
    from benchtools.gpu import step_time
    from benchtools.gpu_report import _step_lines
    row = step_time("kd", 8, GpuSetup(device="cpu", quick=True, steps=2, warmup=1), compiled=True)
    assert dynamo_graphs and all(convolves(gm) for gm in dynamo_graphs)
    assert row["compiled"] and row["step_s"] > 0 and row["bound_s"] > 0
    traced = len(dynamo_graphs)
    eager = step_time("kd", 8, GpuSetup(device="cpu", quick=True, steps=2, warmup=1))
    assert not eager["compiled"] and len(dynamo_graphs) == traced  # the eager row compiles nothing
    lines = _step_lines({"steps": [eager | {"target": 1.1}, row | {"target": 1.1}]})
    assert lines[-2].startswith("| kd | 8 | ") and lines[-1].startswith("| kd, train.compile | 8 | ")


def test_wkd_l_kernel_rows_time_its_compiled_forms_inside_its_step(dynamo_graphs):
    """`--compile`'s WKD-L rows: the step with the term's ``kernel`` option on (the loss compiled, the student eager),
    at every batch size in both forms, named in the table; the kernel table says which of the term's forms was
    fastest (the official kernel is no form of the term's)."""
    from benchtools.gpu import step_time
    from benchtools.gpu_kernel import kernel_lines
    from benchtools.gpu_report import _items, _step_lines
    from wdistill.losses.wkd.wkd_l import compiled_parts

    compiled_parts.cache_clear()  # a wrapper made before the recording backend was swapped in would not record
    try:
        row = step_time("wkd_l", 8, GpuSetup(device="cpu", quick=True, steps=2, warmup=1), kernel="compiled")
    finally:
        compiled_parts.cache_clear()
    code = [gm.print_readable(print_output=False) for gm in dynamo_graphs]
    assert code and any("addmm" in c for c in code) and not any("conv2d" in c for c in code)
    assert row["kernel"] == "compiled" and not row["compiled"] and row["step_s"] > 0
    assert _step_lines({"steps": [row | {"target": 1.1}]})[-1].startswith("| wkd_l, kernel compiled | 8 | ")
    setup = GpuSetup(device="cpu", quick=True, batches=(8, 16))
    keys = [it.key for it in _items(setup, torch.device("cpu"), True, False, False, None, 2, False)]
    assert [k for k in keys if "kernel=" in k] == [f"step wkd_l B={b} kernel={k}" for b in (8, 16)
                                                  for k in ("compiled", "cuda_graph")]
    assert not any("kernel=" in it.key for it in _items(setup, torch.device("cpu"), False, False, False, None,
                                                        2, False))
    timed = [{"B": 8, "C": 10, "variant": v, "us": us, "peak_mib": None}
             for v, us in (("eager", 10.0), ("compiled", 5.0), ("official", 3.0))]
    assert kernel_lines(timed)[-1] == ("Fastest of the term's `kernel` forms at B=8, C=10: compiled (eager 10 us, "
                                       "compiled 5 us).")


def test_a_step_over_its_target_is_profiled_against_its_bound(monkeypatch):
    """What limits a step (issue 26: name what limits any row above its target): its operations and busy time
    against its bound's, host-bound when its device idles, and where the added time goes."""
    import benchtools.gpu as gpu
    from benchtools.gpu_limits import limit_lines, limits

    x, y = torch.randn(8, 8), torch.randn(96, 96)  # the bound: one larger product; the step adds 50 small sums

    def bound():
        y @ y

    def step():
        y @ y
        for _ in range(50):
            x.add(1.0)
    fast = limits(step, bound, 1e-9, torch.device("cpu"))  # a wall time under the busy time: nothing idles
    assert fast["ops"] == fast["ops_bound"] + 50 and fast["busy_ms"] > fast["busy_bound_ms"]
    assert fast["added"][0][0] == "aten::add" and fast["verdict"].startswith("device-bound: +")
    slow = limits(step, bound, 10.0, torch.device("cpu"))  # ten seconds of wall time: the device idles
    assert slow["idle"] > 0.99 and slow["verdict"].startswith("host-bound: the device is idle 100% of the step, "
                                                              "which launches +50 operations over its bound")
    # the added time is the step's less the bound's, name by name (fixed profiles: the discarded pass, step, bound)
    from collections import Counter

    import benchtools.gpu_limits as L
    profiles = iter([None, (3, 9.0, Counter(mm=5.0, add=4.0)), (1, 5.0, Counter(mm=5.0))])
    monkeypatch.setattr(L, "_profile", lambda fn, device: next(profiles))
    assert limits(step, bound, 9e-3, torch.device("cpu"))["added"] == [("add", 4.0)]
    monkeypatch.undo()
    # in the benchmark: every row over its target (all of them, with the targets at 0) carries its profile
    monkeypatch.setattr(gpu, "ratio_target", lambda method: 0.0)
    row = gpu.step_time("wkd_lf", 8, GpuSetup(device="cpu", quick=True, steps=2, warmup=1))
    assert row["limits"]["ops"] > row["limits"]["ops_bound"]  # the loss terms' operators on top of the bound's
    lines = limit_lines([row, {"method": "kd", "batch": 8}, {"method": "dkd", "batch": 8, "limits": {"error": "x"}}])
    assert lines[-2].startswith("| wkd_lf | 8 | ") and lines[-1] == "| dkd | 8 | | | | not profiled: x |"
    assert limit_lines([{"method": "kd", "batch": 8}]) == []  # no row missed: no section


def _main(monkeypatch):
    """``python -m benchtools ARGV``, in this process (the results record sys.argv as the command)."""
    from benchtools.__main__ import main

    def run(argv):
        monkeypatch.setattr(sys, "argv", ["benchtools", *argv])
        return main(argv)
    return run


def _fake_core(G, monkeypatch, calls, fail_once=()):
    """The benchmark's measuring functions replaced by instant ones that count their calls; the parity of each
    method in ``fail_once`` raises on its first call."""
    def parity(m, setup):
        calls.append(m)
        if m in fail_once and calls.count(m) == 1:
            raise RuntimeError(f"{m} broke")
        return {"method": m, "float32_loss": 0.0, "float32_grad": 0.0, "float16_scaler": None, "ok": True}
    monkeypatch.setattr(G, "parity", parity)
    monkeypatch.setattr(G, "step_time", lambda m, b, setup, sync: {"method": m, "batch": b, "sync_free": None,
                                                                   "step_s": 0.002, "bound_s": 0.001, "ratio": 2.0})
    monkeypatch.setattr(G, "real_run_syncs", lambda device, work: {"steps": 8, "syncs": []})
    monkeypatch.setattr(G, "solver_parity", lambda kind, label, shape, setup: {"solver": label, "ok": True,
                                                                               "float32_value": 0.0,
                                                                               "float32_grad": 0.0})
    monkeypatch.setattr(G, "wkd_l_kernel", lambda B, C, setup, v, off: {"B": B, "C": C, "variant": v, "us": 1.0,
                                                                    "peak_mib": None})


def test_a_run_stops_at_its_budget_and_a_resumed_run_measures_only_what_is_missing_or_failed(tmp_path, monkeypatch):
    """A device session is 15 minutes: the run starts nothing after its budget, says what is left, and the same
    command with --resume (on a fresh machine, given the gpu.json) keeps the figures in and reruns the rest."""
    from benchtools import gpu_items
    from benchtools import gpu_report as G

    main = _main(monkeypatch)
    calls = []
    _fake_core(G, monkeypatch, calls, fail_once=("kd",))
    clock = iter(range(1000))  # each reading of the clock one second later
    monkeypatch.setattr(gpu_items.time, "monotonic", lambda: next(clock))
    out = tmp_path / "first"
    code = main(["gpu", "--device", "cpu", "--quick", "--out", str(out), "--budget-s", "2.5"])
    res = json.loads((out / "gpu.json").read_text())
    assert code == 3 and calls == ["vanilla", "kd"]  # read at 1 s and 2 s: two items; at 3 s none starts
    assert res["pending"][0] == "parity wkd_lf" and res["pending"][-1] == "WKD-L kernel B=8 C=10 eager"
    assert [e["what"] for e in res["errors"]] == ["parity kd"]
    assert "Stopped at its time budget; not measured yet:** parity wkd_lf, parity crd_kd, solver WKD-L, B=8" in \
        (out / "gpu.md").read_text()

    second = tmp_path / "second"
    code = main(["gpu", "--device", "cpu", "--quick", "--out", str(second), "--resume", str(out)])
    res = json.loads((second / "gpu.json").read_text())
    assert code == 0 and calls[2:] == ["kd", "wkd_lf", "crd_kd"]  # vanilla kept, kd retried, the rest new
    assert [r["method"] for r in res["parity"]] == ["vanilla", "kd", "wkd_lf", "crd_kd"]  # kd's row in its place
    assert all(r["ok"] for r in res["parity"]) and res["errors"] == [] and "pending" not in res
    assert len(res["steps"]) == 3 and res["real_run"]["syncs"] == [] and len(res["kernels"]) == 1
    assert res["command"].endswith("--budget-s 2.5") and res["resumed"][0]["command"].endswith(f"--resume {out}")
    md = (second / "gpu.md").read_text()
    assert "Resumed (" in md and "Stopped at its time budget" not in md

    code = main(["gpu", "--device", "cpu", "--quick", "--out", str(tmp_path / "third"), "--resume", str(second)])
    assert code == 0 and len(calls) == 5  # nothing left to measure


def test_resume_refuses_results_from_another_setup_or_machine(tmp_path, monkeypatch, capsys):
    from benchtools import gpu_report as G

    main = _main(monkeypatch)
    _fake_core(G, monkeypatch, [])
    assert main(["gpu", "--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    assert main(["gpu", "--device", "cpu", "--quick", "--steps", "2", "--out", str(tmp_path / "b"), "--resume",
                 str(tmp_path)]) == 2
    assert "was measured with another setup" in capsys.readouterr().err
    res = json.loads((tmp_path / "gpu.json").read_text())
    res["environment"]["torch"] = "2.11.0+cu128"
    (tmp_path / "gpu.json").write_text(json.dumps(res))
    assert main(["gpu", "--device", "cpu", "--quick", "--out", str(tmp_path / "b"), "--resume", str(tmp_path)]) == 2
    assert "measured elsewhere (torch 2.11.0+cu128 there" in capsys.readouterr().err
    assert main(["gpu", "--device", "cpu", "--quick", "--out", str(tmp_path / "b"), "--resume",
                 str(tmp_path / "nothing")]) == 2
    assert "no gpu.json there" in capsys.readouterr().err


def test_the_device_students_are_held_to_the_cpu_tables_seed_spread():
    """--e2e's students against benchmarks/fmnist-kd-v1.csv: KD there is 88.9533 +- 0.4594 over 3 seeds, so within
    2 std is [88.0345, 89.8721]; the teacher is one run, compared but given no verdict."""
    from benchtools.gpu_e2e import cpu_reference, e2e_lines
    assert cpu_reference("kd", 88.1) == {"cpu_mean": 88.9533, "cpu_std": 0.4594, "cpu_runs": 3, "within": True}
    assert cpu_reference("kd", 88.0)["within"] is False and cpu_reference("kd", 89.85)["within"] is True
    assert cpu_reference("kd", 89.9)["within"] is False
    teacher = cpu_reference("teacher", 90.0)
    assert teacher["cpu_runs"] == 1 and teacher["within"] is None
    lines = e2e_lines([{"row": "teacher", "top1": 90.0, "seconds": 9} | teacher,
                       {"row": "kd", "top1": 88.0, "seconds": 5} | cpu_reference("kd", 88.0),
                       {"row": "wkd_l", "error": "e2e wkd_l: NonFiniteLoss: loss is nan"}])
    assert lines[-3] == "| teacher | 90.00 | 91.37 (1 run) |  | 9 |"
    assert lines[-2] == "| kd | 88.00 | 88.95 ± 0.46 | NO | 5 |"
    assert lines[-1] == "| wkd_l | failed: e2e wkd_l: NonFiniteLoss: loss is nan | | | |"
    assert e2e_lines([]) == []


def test_an_e2e_student_row_on_a_fresh_machine_trains_its_teacher_first(tmp_path, monkeypatch):
    """--e2e a row at a time: a resumed session on a fresh machine may start at a student, whose teacher is then
    trained first; the teacher's own row afterwards loads that run (nothing trained twice), and each row's seconds
    are its own run's, not the item's."""
    import yaml

    from benchtools.gpu_e2e import e2e_row
    monkeypatch.chdir(tmp_path)
    setup = GpuSetup(device="cpu", quick=True)
    kd = e2e_row(setup, "kd")
    root = tmp_path / "runs/gpu-bench/cpu/fmnist-kd-v1"
    assert (root / "teacher/seed0/student.pt").is_file()
    cfg = yaml.safe_load((root / "kd/seed0/config.yaml").read_text())
    assert cfg["teacher"]["checkpoint"] == "runs/gpu-bench/cpu/fmnist-kd-v1/teacher/seed0/student.pt"
    assert (cfg["run"]["device"], cfg["optim"]["epochs"], cfg["data"]["name"]) == ("cpu", 1, "fmnist_sample")
    walls = {r: json.loads((root / f"{r}/seed0/wall.json").read_text())["wall_seconds"] for r in ("teacher", "kd")}
    teacher = e2e_row(setup, "teacher")
    assert teacher["row"] == "teacher" and 0 <= teacher["top1"] <= 100 and 0 <= kd["top1"] <= 100
    # each row's own run: the kd item also trained the teacher, which its seconds leave out; the teacher's row
    # loaded the finished run (its seconds are that run's, no new session added to them)
    assert kd["seconds"] == pytest.approx(walls["kd"]) and teacher["seconds"] == pytest.approx(walls["teacher"])
