"""Benchmarks: results-table math, resumable runs, results/speed files with their stamp, plots."""
import csv
import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import hold_lock

from benchtools import __main__ as bench_cli  # project tooling beside the package (not installed)
from benchtools import accuracy, accuracy_report, diagnostics, kernels, protocol, report, speed, targets, tuning
from benchtools.measure import peak_memory
from benchtools.speed_report import run_speed
from wdistill import cli, losses
from wdistill.engine import make_trainer, rundir
from wdistill.errors import NonFiniteLoss, RunBusy
from wdistill.losses.recipes import LABELS, RECIPES
from wdistill.workflows import plots
from wdistill.workflows import reuse as runs

TINY_DATA = ["data.name=fmnist_sample", "data.options={}", "data.train_subset=64", "data.test_subset=32",
             "data.eval_batch_size=32"]
TINY = protocol.Schedule("tiny", False, 1, "test", (0, 1))


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    """teacher + vanilla + kd, 1 epoch each on 64 bundled images, seeds 0 and 1."""
    mp = pytest.MonkeyPatch()
    mp.setattr(protocol, "TEACHER", "resnet8")
    root = tmp_path_factory.mktemp("bench")
    logs = []
    table = accuracy.run_accuracy(TINY, ["kd"], None, root / "runs", root / "out", preset_dir=root / "presets",
                                  command=["wdistill", "bench", "accuracy", "--tiny"], log=logs.append,
                                  overrides=TINY_DATA, teacher_overrides=TINY_DATA + ["optim.epochs=1"])
    yield root, table
    mp.undo()


def test_mean_std_gain_match_hand_computation():
    assert report.mean_std([2.0]) == (2.0, None)
    m, s = report.mean_std([87.5, 88.0, 88.9])
    assert m == pytest.approx((87.5 + 88.0 + 88.9) / 3)
    assert s == pytest.approx(math.sqrt(((87.5 - m) ** 2 + (88.0 - m) ** 2 + (88.9 - m) ** 2) / 2))
    rows = {"vanilla": [{"final_top1": 87.0, "best_top1": 87.5, "wall_seconds": 10.0},
                        {"final_top1": 88.0, "best_top1": 88.1, "wall_seconds": 14.0}],
            "kd": [{"final_top1": 89.0, "best_top1": 89.2, "wall_seconds": 20.0},
                   {"final_top1": 90.0, "best_top1": 90.4, "wall_seconds": 22.0}]}
    by = {r["method"]: r for r in report.summarise(rows)}
    assert by["kd"]["gain"] == pytest.approx(89.5 - 87.5)
    assert by["kd"]["best_mean"] == pytest.approx(89.8) and by["kd"]["wall_seconds"] == pytest.approx(21.0)
    assert by["vanilla"]["final_std"] == pytest.approx(statistics.stdev([87.0, 88.0]))
    assert by["vanilla"]["gain"] is None
    with pytest.raises(ValueError, match="no values"):
        report.mean_std([])


def test_every_protocol_row_has_a_recipe_that_builds():
    assert list(RECIPES) == list(LABELS)
    for method, terms in RECIPES.items():
        for t in protocol.scale_epoch_params(terms, 12):
            losses.create(t["name"], **{k: v for k, v in t.items() if k not in ("name", "weight")})
    tuning.check_budget()
    for method, cands in tuning.CANDIDATES.items():
        assert cands[0] == {}, f"{method}: the first candidate must be the published recipe"
        for c in cands:
            for t in tuning.apply_candidate(RECIPES[method], c):
                losses.create(t["name"], **{k: v for k, v in t.items() if k not in ("name", "weight")})
    with pytest.raises(ValueError, match="term.param"):
        tuning.apply_candidate(RECIPES["kd"], {"wkd_l.tau": 2})


def test_epoch_settings_scale_with_the_schedule():
    terms = [{"name": "ab", "init_epochs": 30}, {"name": "dkd", "warmup": 20}, {"name": "wkd_l", "tau": 4}]
    assert protocol.scale_epoch_params(terms, 12) == [{"name": "ab", "init_epochs": 2}, {"name": "dkd", "warmup": 1},
                                                      {"name": "wkd_l", "tau": 4}]
    assert protocol.scale_epoch_params(terms, 240)[0]["init_epochs"] == 30
    assert terms[0]["init_epochs"] == 30  # input untouched


def test_accuracy_files_and_table(bench_dir):
    root, table = bench_dir
    md = (root / "out" / "tiny.md").read_text()
    assert "commit `" in md and f"torch {torch.__version__}" in md and "Command: `wdistill bench accuracy --tiny`" in md
    assert "| KD |" in md and "| teacher |" in md and "## Targets" in md
    assert (root / "out" / "tiny.png").read_bytes()[:4] == b"\x89PNG"
    lines = (root / "out" / "tiny.csv").read_text().splitlines()
    assert any(line.startswith("# commit:") for line in lines)
    rows = {r["method"]: r for r in csv.DictReader(line for line in lines if not line.startswith("#"))}
    finals = [json.loads((root / "runs" / "tiny" / "kd" / f"seed{s}" / "summary.json").read_text())["final_top1"]
              for s in (0, 1)]
    assert float(rows["kd"]["final_top1_mean"]) == pytest.approx(np.mean(finals), abs=1e-3)
    assert float(rows["kd"]["final_top1_std"]) == pytest.approx(np.std(finals, ddof=1), abs=1e-3)
    van = [json.loads((root / "runs" / "tiny" / "vanilla" / f"seed{s}" / "summary.json").read_text())["final_top1"]
           for s in (0, 1)]
    assert float(rows["kd"]["gain_vs_vanilla"]) == pytest.approx(np.mean(finals) - np.mean(van), abs=1e-3)
    assert rows["teacher"]["runs"] == "1" and {r["method"] for r in table} == {"teacher", "vanilla", "kd"}


def test_report_only_trains_nothing_and_lists_missing_rows(bench_dir, monkeypatch, tmp_path):
    root, table = bench_dir
    monkeypatch.setattr(protocol, "TEACHER", "resnet8")
    monkeypatch.setattr(runs, "make_trainer", None)  # any training attempt would fail
    again = accuracy.run_accuracy(TINY, ["kd", "dkd"], None, root / "runs", tmp_path, preset_dir=root / "presets",
                                  overrides=TINY_DATA, teacher_overrides=TINY_DATA + ["optim.epochs=1"], train=False)
    assert again == table
    md = (tmp_path / "tiny.md").read_text()
    assert "without --report-only trains them, skipping finished runs): dkd seed 0, dkd seed 1" in md


def test_finished_runs_are_skipped_and_interrupted_ones_resume(bench_dir, monkeypatch):
    root, _ = bench_dir
    monkeypatch.setattr(protocol, "TEACHER", "resnet8")
    cfg = protocol.student_config("kd", RECIPES["kd"], TINY, 0, root / "runs", overrides=TINY_DATA)
    done = json.loads((runs.run_dir_of(cfg) / "summary.json").read_text())
    calls = []

    def spy(cfg, **kw):
        calls.append(kw)
        return make_trainer(cfg, **kw)

    monkeypatch.setattr(runs, "make_trainer", spy)
    assert runs.run_or_load(cfg)["final_top1"] == done["final_top1"] and calls == []
    # the same directory reached through another spelling of run.out_dir (found when a benchmark given
    # an absolute --runs retrained a finished 80-minute teacher written with a relative one)
    moved = dict(cfg, run=dict(cfg["run"], out_dir=os.path.relpath(cfg["run"]["out_dir"])))
    assert moved["run"]["out_dir"] != cfg["run"]["out_dir"]
    assert runs.run_or_load(moved)["final_top1"] == done["final_top1"] and calls == []
    (runs.run_dir_of(cfg) / "summary.json").unlink()  # as if killed after the last checkpoint
    again = runs.run_or_load(cfg, log=lambda m: None)
    assert calls[-1]["resume"] is True and again["final_top1"] == done["final_top1"]
    changed = protocol.student_config("kd", tuning.apply_candidate(RECIPES["kd"], {"kd.T": 2}), TINY, 0,
                                      root / "runs", overrides=TINY_DATA)
    runs.run_or_load(changed, log=lambda m: None)  # another config in the same directory: started again
    assert calls[-1]["resume"] is False and calls[-1]["overwrite"] is True


def test_a_setting_added_since_does_not_orphan_finished_runs(bench_dir, monkeypatch, tmp_path):
    """A config.yaml written before a defaulted setting existed still matches; a changed value does not."""
    import shutil

    import yaml

    root, _ = bench_dir
    monkeypatch.setattr(protocol, "TEACHER", "resnet8")
    cfg = protocol.student_config("kd", RECIPES["kd"], TINY, 1, root / "runs", overrides=TINY_DATA)
    old = tmp_path / "kd" / "seed1"
    shutil.copytree(runs.run_dir_of(cfg), old)
    cfg["run"]["out_dir"] = str(tmp_path)
    saved = yaml.safe_load((old / "config.yaml").read_text())
    assert saved["data"].pop("random_resized_crop", "absent") is None  # as written before that setting
    saved["run"]["out_dir"] = str(tmp_path)
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    assert runs.load_finished(cfg) is not None
    saved["data"]["flip"] = not saved["data"]["flip"]
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    assert runs.load_finished(cfg) is None
    (old / "config.yaml").write_text("data: {no_such_key: 1}\n")  # a schema that no longer validates
    assert runs.load_finished(cfg) is None


def test_tuning_picks_by_validation_and_writes_preset(bench_dir, monkeypatch, tmp_path):
    root, _ = bench_dir
    monkeypatch.setattr(protocol, "TEACHER", "resnet8")
    monkeypatch.setattr(protocol, "TUNE", protocol.Schedule("tiny-tune", False, 1, "val", (0,)))
    monkeypatch.setattr(accuracy, "TUNE", protocol.TUNE)
    # CANDIDATES is generated from the published recipes (read-only): give the runner a patched copy
    monkeypatch.setattr(accuracy, "CANDIDATES", {**tuning.CANDIDATES, "kd": [{}, {"kd.T": 2}, {"kd.T": 8}]})
    seen = []

    def fake_run(cfg, log=print, data=None):  # val top-1 from the candidate: T=2 wins; T=8 diverges
        seen.append(cfg["data"]["options"])
        if cfg["run"]["name"].startswith("vanilla"):
            return {"final_top1": 44.0, "best_top1": 45.0}
        t = next(x for x in cfg["loss"] if x["name"] == "kd")["T"]
        if t == 8:
            raise NonFiniteLoss("loss became non-finite in epoch 1, step 3")
        return {"final_top1": 50.0 + (10 if t == 2 else 0), "best_top1": 61.0}

    monkeypatch.setattr(accuracy, "run_or_load", fake_run)
    monkeypatch.setattr(runs, "run_or_load", fake_run)  # the candidates' runs (benchtools.runs.run_or_report)
    monkeypatch.setattr(accuracy, "ensure_teacher", lambda *a, **k: {})
    choices = accuracy.run_tuning(["kd"], root / "runs", tmp_path, preset_dir=tmp_path / "presets")
    assert choices["kd"]["candidate"] == 1
    # vanilla (the reference) + 3 candidates, all on the validation split, never the test split
    assert seen == [{"protocol": "kd_v1", "quick": False, "eval_split": "val"}] * 4
    preset = (tmp_path / "presets" / "kd.yaml").read_text()
    assert "T: 2" in preset and "*" in preset and "T=8: diverged" in preset  # a diverged candidate is never kept
    assert "| vanilla (reference) | CE only | 44.00 | 45.00 |" in (tmp_path / "fmnist-kd-v1-tuning.md").read_text()
    # the tuning report reads the candidates' run directories: a diverged.json counts as done, and says so
    tree = tmp_path / "tree"
    for i, res in enumerate([{"final_top1": 50.0, "best_top1": 51.0}, {"final_top1": 60.0, "best_top1": 61.0}]):
        (tree / "tiny-tune/kd" / f"cand{i}/seed0").mkdir(parents=True)
        (tree / "tiny-tune/kd" / f"cand{i}/seed0/summary.json").write_text(json.dumps(res))
    assert "kd" not in accuracy.collect_tuning(tree)  # candidate 2 not run yet
    (tree / "tiny-tune/kd/cand2/seed0").mkdir(parents=True)
    (tree / "tiny-tune/kd/cand2/seed0/diverged.json").write_text(json.dumps({"error": "non-finite"}))
    collected = accuracy.collect_tuning(tree)
    assert collected["kd"]["candidate"] == 1
    accuracy.write_tuning_report(collected, tmp_path / "t.md")
    assert "T=8 | diverged |  |  |" in (tmp_path / "t.md").read_text()
    with pytest.raises(ValueError, match="every tuning candidate of kd diverged"):
        accuracy.choose("kd", [({}, {"diverged": "x"})])


def test_a_diverging_student_is_listed_and_the_accuracy_queue_goes_on(monkeypatch, tmp_path):
    """A student whose loss becomes non-finite no longer stops the protocol's queue (and, remembered by its
    diverged.json, every later run of the command at that job): it is listed as diverged, out of the means."""
    monkeypatch.setattr(protocol, "TEACHER", "resnet8")
    trained = []

    def fake_run(cfg, log=print, **kw):
        name = cfg["run"]["name"]
        trained.append(name)
        if name.startswith("kd/") and cfg["run"]["seed"] == 1:
            raise NonFiniteLoss("loss became non-finite in epoch 1, step 3")
        return {"final_top1": 80.0 + cfg["run"]["seed"], "best_top1": 81.0, "wall_seconds": 1.0}

    monkeypatch.setattr(accuracy, "run_or_load", fake_run)
    monkeypatch.setattr(runs, "run_or_load", fake_run)
    table = accuracy.run_accuracy(TINY, ["kd", "at"], None, tmp_path / "runs", tmp_path / "out",
                                  preset_dir=tmp_path / "presets", log=lambda m: None, overrides=TINY_DATA)
    by = {r["method"]: r for r in table}
    assert by["kd"]["n"] == 1 and by["kd"]["final_mean"] == 80.0 and by["at"]["n"] == 2  # the queue went on
    assert len(trained) == 1 + 3 * 2
    md = (tmp_path / "out" / "tiny.md").read_text()
    assert "**Diverged:** the loss became non-finite" in md and "diverged.json: delete it to retry): kd seed 1." in md
    assert "Incomplete" not in md
    # the results CSV says which seed diverged, so a merge with another seed's file knows which of kd's ran
    accuracy.run_accuracy(TINY, ["kd", "at"], [2], tmp_path / "runs", tmp_path / "out2",
                          preset_dir=tmp_path / "presets", log=lambda m: None, overrides=TINY_DATA)
    merged = {r["method"]: r for r in accuracy_report.merge_results(
        [tmp_path / "out" / "tiny.csv", tmp_path / "out2" / "tiny.csv"], TINY, tmp_path / "m")}
    assert merged["kd"]["seeds"] == [0, 2] and merged["kd"]["final_mean"] == pytest.approx(81.0)
    md = (tmp_path / "m" / "tiny.md").read_text()
    assert "delete it to retry): kd seed 1." in md and "Incomplete" not in md


def test_speed_ratio_is_step_over_its_interleaved_bound(monkeypatch):
    timings = {"kd": {"step_s": 0.5, "student_ce_step": 0.1, "teacher_forward": 0.3},
               "crd": {"step_s": 0.55, "student_ce_step": 0.2, "teacher_forward": 0.3},
               "at": {"step_s": 1.0, "student_ce_step": 0.4, "teacher_forward": 0.6}}
    monkeypatch.setattr(speed, "SyntheticTask", lambda setup: None)
    monkeypatch.setattr(speed, "measure_method", lambda task, m, steps, warmup: dict(timings[m]))
    bound, rows = speed.step_table(["kd", "crd", "at"])
    kd, crd, at = rows
    assert kd["ratio"] == pytest.approx(0.5 / 0.4) and kd["target"] == 1.10 and not kd["met"]
    assert crd["ratio"] == pytest.approx(1.1) and crd["target"] == 1.25 and crd["met"]
    assert bound["lower_bound"] == pytest.approx(0.5) and (bound["min"], bound["max"]) == pytest.approx((0.4, 1.0))
    assert bound["teacher_forward"] == pytest.approx(0.3) and bound["student_ce_step"] == pytest.approx(0.2)


def test_interleaved_measurement_times_every_part(monkeypatch):
    setup = speed.SpeedSetup(teacher="resnet8", student="resnet8", batch=2, image=8, channels=1, classes=4,
                             num_samples=20, steps=2, warmup=1)
    task = speed.SyntheticTask(setup)
    r = speed.measure_method(task, "kd", 2, 1)
    assert set(r) == {"step_s", "student_ce_step", "teacher_forward", "flop_ratio"} and all(v > 0 for v in r.values())
    assert r["flop_ratio"] == 1.0  # KD adds no matrix product to the step
    assert not task.teacher._forward_hooks  # no hooks left on the shared teacher


def test_flop_ratio_adds_fitnets_regressor_by_hand():
    """FitNet's only extra matrix work is its 1x1 regressor on the hint map: 2*B*C_in*C_out*HW
    FLOPs forward, twice that backward (input and weight gradients)."""
    setup = speed.SpeedSetup(teacher="resnet8", student="resnet8", batch=2, image=8, channels=1, classes=4,
                             num_samples=20, steps=1, warmup=0)
    task = speed.SyntheticTask(setup)
    ce_step, teacher_fwd = speed._bound_fns(task)
    bound = speed.flops(ce_step) + speed.flops(teacher_fwd)
    assert bound > 0
    d = task.distiller("fitnet")
    with torch.no_grad():
        hint = d.student_tap(task.batch["image"])["feats"][2]  # the hint layer: 32 channels at 4x4 here
    for tap in [d.student_tap, *d.teacher_taps]:
        tap.remove()
    c, hw = hint.shape[1], hint.shape[2] * hint.shape[3]
    extra = 3 * 2 * setup.batch * c * c * hw
    assert speed.measure_method(task, "fitnet", 1, 0)["flop_ratio"] == pytest.approx(1 + extra / bound, rel=1e-9)


def test_interleaved_medians_alternate_calls_and_extend_short_kernels():
    from benchtools.measure import interleaved_medians
    calls = []
    out = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, 1)
    assert calls == ["a", "b"] * 4 and set(out) == {"a", "b"}  # 1 warm-up round + 3 timed rounds, alternating
    calls.clear()
    interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2, 0, block=3)
    assert calls == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3  # blocks of 3, first of each untimed
    calls.clear()
    interleaved_medians({"slow": lambda: (calls.append(1), time.sleep(0.01))}, steps=1, warmup=0, min_seconds=0.05)
    assert len(calls) >= 5  # each call sleeps 10 ms: 50 ms of rounds need at least 5
    with pytest.raises(ValueError, match="min_seconds"):
        interleaved_medians({"a": calls.clear}, 1, 0, min_seconds=-1)


def test_speed_bench_runs_on_tiny_shapes(tmp_path):
    setup = speed.SpeedSetup(teacher="resnet8", student="resnet8", batch=4, image=16, channels=1, classes=10,
                             num_samples=300, steps=1, warmup=0)
    shapes = {"wkd_l": [(4, 10)], "lckt": (8, 16), "wkd_f": (4, 8, 4), "crd": (4, 64, 300), "aug": (8, 32),
              "aug_imagenet": (4, 40, 32), "steps": 1}
    with pytest.warns(UserWarning, match="fewer than num_negatives"):  # K=16384 of 300 samples
        res = run_speed(tmp_path, ["kd", "crd", "wkd_l"], setup, shapes, command=["wdistill", "bench", "speed"])
    for r in res["rows"]:
        assert r["ratio"] == pytest.approx(r["step_s"] / (r["student_ce_step"] + r["teacher_forward"]))
    wkd = [x for x in res["kernels"] if x["kernel"].startswith("WKD-L")]
    assert wkd[0]["value"] == pytest.approx(wkd[1]["value"], rel=1e-5)  # ours == per-sample reference
    crd = [x for x in res["kernels"] if x["kernel"].startswith("CRD")]
    assert crd[0]["value"] == pytest.approx(crd[1]["value"], rel=1e-5)  # matmul == gather scoring
    _, full_ours, full_pot = [x for x in res["kernels"] if x["kernel"].startswith("WKD-F")]
    assert full_ours["value"] == pytest.approx(full_pot["value"], rel=1e-3)  # ours == POT Bures-Wasserstein
    md = (tmp_path / "speed.md").read_text()
    assert "commit `" in md and "Command: `wdistill bench speed`" in md and "## Targets missed" in md
    assert "images/s" in md and (tmp_path / "speed.csv").read_text().startswith("# date:")
    a = res["augment_imagenet"]
    assert a["share"] == pytest.approx(a["batch_s"] / a["step_s"]) and "ImageNet augmentation" in md


def test_peak_memory_counts_a_known_allocation():
    peak = peak_memory(lambda: torch.ones(1_000_000, dtype=torch.float32) * 2)
    # ones (4 MB) and the product (4 MB) are alive together
    assert 8_000_000 <= peak < 8_200_000


def test_plot_writes_png_and_rejects_non_runs(bench_dir, tmp_path):
    root, _ = bench_dir
    run_dir = root / "runs" / "tiny" / "vanilla" / "seed0"
    assert cli.main(["plot", str(run_dir), "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plots.plot_run(tmp_path)


def test_logit_correlation_matches_numpy_and_diagnostics_write(bench_dir, tmp_path):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 6, generator=g, dtype=torch.float64)
    assert np.allclose(diagnostics.logit_correlation(z).numpy(), np.corrcoef(z.numpy().T))
    assert diagnostics.correlation_difference(z, z).abs().max() == 0
    with pytest.raises(ValueError, match="constant"):
        diagnostics.logit_correlation(torch.ones(5, 3))
    root, _ = bench_dir
    t = root / "runs" / "fmnist-kd-v1" / "teacher" / "seed0" / "student.pt"
    s = root / "runs" / "tiny" / "kd" / "seed0" / "student.pt"
    paths = diagnostics.run_diagnostics(t, s, tmp_path, data="fmnist_sample", subset=200)
    assert [p.read_bytes()[:4] for p in paths] == [b"\x89PNG"] * 2


def test_kernel_rows_agree_with_independent_solvers():
    rows = kernels.lckt_rows(B=6, d=5, steps=1, warmup=0)
    assert rows[0]["value"] == pytest.approx(rows[1]["value"], abs=2e-2)  # IPOT 50 it. vs exact EMD


def test_run_lock_waits_for_a_live_owner_and_takes_over_a_dead_ones(tmp_path):
    import os
    import signal
    import threading

    lock = tmp_path / rundir.LOCK
    holder = hold_lock(lock)
    holder.send_signal(signal.SIGKILL)  # died holding the job: its PID is still in the file
    holder.wait()
    assert lock.read_text() == str(holder.pid)
    with runs.run_lock(tmp_path, log=lambda m: None, poll=0.05):
        assert lock.read_text() == str(os.getpid())
    assert lock.read_text() == ""  # released
    holder = hold_lock(lock)  # alive: must wait until it lets go, which it does once we say we wait
    timer = threading.Timer(0.3, lambda: (holder.send_signal(signal.SIGKILL), holder.wait()))
    said = []
    with runs.run_lock(tmp_path, log=lambda m: (said.append(m), timer.start()), poll=0.05):
        assert said and f"process {holder.pid} is running this job; waiting" in said[0]
        assert holder.poll() is not None  # taken only after the owner died
    timer.join()


def test_busy_run_is_deferred_to_the_back_of_the_queue(bench_dir, monkeypatch, tmp_path):
    """A run held by another live process is skipped once (RunBusy), trained after the others."""
    root, _ = bench_dir
    holder = hold_lock(tmp_path / rundir.LOCK)
    try:
        with pytest.raises(RunBusy, match=f"process {holder.pid} is running this job"):
            with runs.run_lock(tmp_path, wait=False):
                pass
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.setattr(protocol, "TEACHER", "resnet8")
    busy_dir = root / "runs" / TINY.name / "kd" / "seed1"
    order = []
    real = runs.run_or_load

    def fake(cfg, log=print, data=None, wait=True):
        name = cfg["run"]["name"]
        order.append((name, wait))
        if name == "kd/seed1" and not wait:
            raise RunBusy(f"{busy_dir}: busy")
        return real(cfg, log, data, wait)

    monkeypatch.setattr(runs, "run_or_load", fake)  # the students' runs (benchtools.runs.run_or_report)
    table = accuracy.run_accuracy(TINY, ["kd"], None, root / "runs", tmp_path / "out", preset_dir=root / "presets",
                                  log=lambda m: None, overrides=TINY_DATA,
                                  teacher_overrides=TINY_DATA + ["optim.epochs=1"])
    students = [o for o in order if not o[0].startswith("teacher")]
    assert students == [("vanilla/seed0", False), ("vanilla/seed1", False), ("kd/seed0", False),
                        ("kd/seed1", False), ("kd/seed1", True)]
    assert [r["method"] for r in table] == ["teacher", "vanilla", "kd"]
    assert next(r for r in table if r["method"] == "kd")["seeds"] == [0, 1]


def test_shared_queue_fetches_a_jobs_teacher_before_it_even_when_another_shell_has_it():
    """Two shells on one settings plan: the teacher is busy in the other shell, so it is deferred,
    but the student that reads its checkpoint waits for it first instead of training without it."""
    calls, busy_once = [], {"T"}

    def get(cfg, log=print, wait=True):
        calls.append((cfg["name"], wait))
        if cfg["name"] in busy_once and not wait:
            busy_once.discard(cfg["name"])
            raise RunBusy(f"{cfg['name']}: busy")
        return {"name": cfg["name"]}

    teacher = {"name": "T"}
    jobs = [("T", lambda: teacher, []), ("S1", lambda: {"name": "S1"}, [teacher]), ("S2", lambda: {"name": "S2"}, [])]

    class Bar:
        def write(self, msg): pass
        def set_postfix_str(self, msg): pass
        def update(self): pass

    done = [key for key, summary in runs.shared_queue(jobs, get, Bar()) if summary]
    assert calls == [("T", False), ("T", True), ("S1", False), ("S2", False), ("T", True)]
    assert done == ["S1", "S2", "T"]


def test_findings_check_the_issue_targets_on_a_hand_made_table():
    def row(m, v):
        return {"method": m, "final_mean": v}

    table = [row("teacher", 91.0), row("vanilla", 87.0), row("kd", 88.5), row("at", 86.9), row("wkd_lf", 89.0),
             row("wcord", 87.5), row("fitnet", 88.0)]
    notes = "\n".join(targets.findings(table))
    assert "NO — below vanilla: AT." in notes
    assert "Best row >= vanilla + 1.5: yes (WKD-L+WKD-F 89.00, gain +2.00)" in notes
    assert "A Wasserstein method >= KD: yes (WKD-L+WKD-F 89.00 vs KD 88.50)" in notes
    # 5 distillers: top third = ranks 1-2; WKD-L+WKD-F is #1, WCoRD #4
    assert "top third (ranks 1-2 of 5 distillers): 1 of 2 (WKD-L+WKD-F #1, WCoRD #4)" in notes


def _results_part(tmp_path, name, per_seed, seeds, settings):
    rows = {m: [v[s] for s in seeds if s in v] for m, v in per_seed.items()}
    table = report.summarise({m: r for m, r in rows.items() if r})
    accuracy_report.write_results(table, TINY, seeds, tmp_path / name, settings, ["wdistill", "bench", name])
    return tmp_path / name / "tiny.csv"


def test_merge_pools_disjoint_seed_files_as_if_from_the_raw_runs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    per_seed = {"teacher": {0: {"final_top1": 91.0, "best_top1": 91.2, "wall_seconds": 500.0}}}
    for m in ("vanilla", "kd", "dkd"):
        per_seed[m] = {s: {"final_top1": 85 + 5 * rng.random(), "best_top1": 86 + 5 * rng.random(),
                           "wall_seconds": 100 * rng.random()} for s in range(4)}
    del per_seed["dkd"][3]  # dkd seed 3 never ran
    settings = {"teacher": "t", "vanilla": "CE only", "kd": "kd w=1", "dkd": "dkd w=1"}
    a = _results_part(tmp_path, "a", per_seed, [0], settings)
    b = _results_part(tmp_path, "b", per_seed, [1, 2, 3], settings)
    merged = {r["method"]: r for r in accuracy_report.merge_results([a, b], TINY, tmp_path / "m", ["wdistill", "m"])}
    # independent: the same statistics computed directly from every raw run
    direct = {r["method"]: r for r in report.summarise({m: list(v.values()) for m, v in per_seed.items()})}
    for m in per_seed:
        for key in ("n", "final_mean", "final_std", "best_mean", "wall_seconds", "gain"):
            want, got = direct[m][key], merged[m][key]
            tol = 0.06 if key == "wall_seconds" else 2e-4  # the CSV keeps 0.1 s and 1e-4 points
            assert (got is None) == (want is None) and (want is None or got == pytest.approx(want, abs=tol)), (m, key)
    assert merged["dkd"]["n"] == 3 and merged["kd"]["seeds"] == [0, 1, 2, 3] and merged["teacher"]["n"] == 1
    md = (tmp_path / "m" / "tiny.md").read_text()
    assert "Pooled from" in md and md.count("- `tiny.csv` (") == 2 and "dkd: 2 of seeds 1,2,3 in" in md
    stamp, table, _ = report.read_results_csv(tmp_path / "m" / "tiny.csv")
    assert stamp["seeds"] == "0,1,2,3" and len(table) == 4

    with pytest.raises(ValueError, match="seed 0 is in both"):
        accuracy_report.merge_results([a, a], TINY, tmp_path / "x")
    other = _results_part(tmp_path, "c", per_seed, [1], settings | {"kd": "kd w=2"})
    with pytest.raises(ValueError, match="kd has different settings"):
        accuracy_report.merge_results([a, other], TINY, tmp_path / "x")
    assert bench_cli.main(["accuracy", "--merge", str(a), str(tmp_path / "nope.csv"), "--out", str(tmp_path)]) == 2
    assert "no such results file" in capsys.readouterr().err
    (tmp_path / "junk.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a results CSV"):
        accuracy_report.merge_results([tmp_path / "junk.csv"], TINY, tmp_path / "x")


def test_a_rerun_replaces_its_methods_rows(tmp_path, capsys):
    rng = np.random.default_rng(1)
    per_seed = {"teacher": {0: {"final_top1": 91.0, "best_top1": 91.2, "wall_seconds": 500.0}}}
    for m in ("vanilla", "kd", "crd"):
        per_seed[m] = {s: {"final_top1": 85 + 5 * rng.random(), "best_top1": 86 + 5 * rng.random(),
                           "wall_seconds": 100 * rng.random()} for s in range(3)}
    settings = {"teacher": "t", "vanilla": "CE only", "kd": "kd w=1", "crd": "crd w=1"}
    a = _results_part(tmp_path, "a", per_seed, [0], settings)
    b = _results_part(tmp_path, "b", per_seed, [1, 2], settings)
    rerun = {"teacher": per_seed["teacher"], "crd": {s: {"final_top1": 80.0 + s, "best_top1": 81.0 + s,
                                                          "wall_seconds": 10.0} for s in range(3)}}
    r = _results_part(tmp_path, "r", rerun, [0, 1, 2], {"teacher": "t", "crd": "crd w=2 replacement=False"})
    merged = {x["method"]: x for x in accuracy_report.merge_results([a, b], TINY, tmp_path / "m", ["m"], replace=[r])}
    assert merged["crd"]["final_mean"] == pytest.approx(81.0) and merged["crd"]["final_std"] == pytest.approx(1.0)
    assert merged["crd"]["gain"] == pytest.approx(81.0 - merged["vanilla"]["final_mean"])
    plain = {x["method"]: x for x in accuracy_report.merge_results([a, b], TINY, tmp_path / "p")}
    assert merged["kd"] == plain["kd"] and merged["vanilla"] == plain["vanilla"]
    md = (tmp_path / "m" / "tiny.md").read_text()
    assert "crd w=2 replacement=False" in md and "replaces its methods' rows" in md
    other = {"teacher": {0: {"final_top1": 90.0, "best_top1": 90.0, "wall_seconds": 1.0}}, "crd": rerun["crd"]}
    r2 = _results_part(tmp_path, "r2", other, [0, 1, 2], {"teacher": "t", "crd": "crd w=2"})
    with pytest.raises(ValueError, match="another teacher"):
        accuracy_report.merge_results([a, b], TINY, tmp_path / "x", replace=[r2])


def committed_parts(bench):
    """(parts of disjoint seeds, re-runs that replace their methods' rows) in benchmarks/parts/."""
    files = sorted((bench / "parts").glob("fmnist-kd-v1.*.csv"))
    return [f for f in files if ".rerun" not in f.name], [f for f in files if ".rerun" in f.name]


def test_committed_leaderboard_is_the_merge_of_the_committed_parts(tmp_path):
    """benchmarks/fmnist-kd-v1.csv must be what `--merge` (with `--replace` for re-runs) makes of
    benchmarks/parts/ (older files name their seeds only through their command)."""
    from pathlib import Path
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    parts, reruns = committed_parts(bench)
    if not parts:
        pytest.skip("no results parts in this checkout")
    merged = accuracy_report.merge_results(parts, protocol.FULL, tmp_path, replace=reruns)
    _, committed, _ = report.read_results_csv(bench / "fmnist-kd-v1.csv")
    assert [r["method"] for r in merged] == [r["method"] for r in committed]
    for got, want in zip(merged, committed):
        assert got["n"] == want["n"] and got["final_mean"] == pytest.approx(want["final_mean"], abs=1e-4)
        assert (got["final_std"] is None) == (want["final_std"] is None)
        if want["final_std"] is not None:
            assert got["final_std"] == pytest.approx(want["final_std"], abs=1e-4)


def test_committed_rerun_covers_every_changed_row_with_three_seeds_and_one_teacher():
    """Issue 13's re-run: every row it changed (and the reference rows) has 3 seeds, against one
    teacher; its markdown says it supersedes the main table for those rows."""
    from pathlib import Path
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    _, rows, _ = report.read_results_csv(bench / "rerun-2026-12-02" / "fmnist-kd-v1.csv")
    by = {r["method"]: r for r in rows}
    assert by["teacher"]["n"] == 1
    for m in ("vanilla", "kd", "wkd_f", "crd", "crd_kd", "wcord", "wcord_kd"):
        assert by[m]["n"] == 3 and by[m]["final_std"] is not None, m
    _, main_rows, _ = report.read_results_csv(bench / "fmnist-kd-v1.csv")
    main_teacher = next(r for r in main_rows if r["method"] == "teacher")
    assert main_teacher["final_mean"] != by["teacher"]["final_mean"]  # why the rows were re-run, not merged
    assert "rerun-2026-12-02/fmnist-kd-v1.md" in (bench / "fmnist-kd-v1.md").read_text()


def test_benchtools_is_not_installed_with_the_package():
    assert targets.ratio_target("kd") == 1.10 and targets.ratio_target("crd") == 1.25
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert 'include = ["wdistill*"]' in pyproject  # benchtools/ is not a package of the wheel

