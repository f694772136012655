"""`python -m benchtools settings` (docs/benchmarks.md, protocol C) end to end on tiny overrides: the plan each setting
trains, the results files, and reuse of finished runs."""
import csv
import json

import pytest
import yaml

from benchtools import protocol, settings, settings_presets, settings_report, settings_spec
from wdistill.engine import rundir

TINY = ["data.name=fmnist_sample", "data.options={}", "data.train_subset=64", "data.test_subset=32",
        "data.eval_batch_size=32", "optim.epochs=1", "train.max_steps=1", "train.channels_last=false"]


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(protocol, "TEACHER", "resnet8")


def _csv(path):
    rows = [r for r in csv.DictReader(l for l in path.read_text().splitlines() if not l.startswith("#"))]
    return {r["row"]: r for r in rows}


def _cfg(run_dir):
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_ensemble_plan_and_results(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(settings_spec, "ENSEMBLE_METHODS", ("kd", "crd"))
    monkeypatch.setattr(settings_spec, "ENSEMBLE_SIZES", (1, 2))
    runs, out = tmp_path / "runs", tmp_path / "out"
    table = settings.run_settings("ensemble", [0], runs, out, overrides=TINY, teacher_overrides=TINY,
                                  log=lambda m: None)
    rows = _csv(out / "fmnist-settings-v1-ensemble.csv")
    assert set(rows) == {"teacher seed0", "teacher seed1", "vanilla", "kd n=1", "kd n=2", "crd n=1", "crd n=2"}
    assert (out / "fmnist-settings-v1-ensemble.png").stat().st_size > 1000
    run = runs / "fmnist-settings-v1" / "ensemble" / "crd" / "n2" / "seed0"
    cfg = _cfg(run)
    assert [t["checkpoint"] for t in cfg["teachers"]] == [
        str(runs / "fmnist-kd-v1" / f"teacher/seed{s}" / "student.pt") for s in (0, 1)]
    summary = json.loads((run / "summary.json").read_text())
    assert float(rows["crd n=2"]["final_top1_mean"]) == pytest.approx(summary["final_top1"], abs=1e-4)
    assert {"train_crd@t0", "train_crd@t1"} <= set(json.loads((run / "metrics.jsonl").read_text().splitlines()[0]))
    # one teacher is A's job: its run directory, so a finished A student is not trained again
    assert (runs / "fmnist-kd-v1" / "kd" / "seed0" / "summary.json").is_file()
    assert not (runs / "fmnist-settings-v1" / "ensemble" / "kd" / "n1").exists()
    # so is the vanilla row (no teacher): A's vanilla job, the baseline of the gains
    vanilla = json.loads((runs / "fmnist-kd-v1" / "vanilla" / "seed0" / "summary.json").read_text())
    assert float(rows["vanilla"]["final_top1_mean"]) == pytest.approx(vanilla["final_top1"], abs=1e-4)
    gain = next(r["gain"] for r in table if r["method"] == "crd n=2")
    assert gain == pytest.approx(summary["final_top1"] - vanilla["final_top1"], abs=1e-6)
    md = (out / "fmnist-settings-v1-ensemble.md").read_text()
    assert "More teachers help CRD more than KD (CRD Figure 4): not resolved: one paired seed (0)" in md
    # the teachers' own top-1 per count, as each student's run measured it
    assert "with 2." in md.split("The teachers' test top-1 (mean logits of the ensemble): ")[1].split("\n")[0]
    assert f"{summary['teacher_top1']:.2f} with 2." in md
    assert len(table) == 7


def _ens_row(method, by_seed):
    return {"method": method, "by_seed": by_seed, "final_mean": sum(by_seed.values()) / len(by_seed)}


@pytest.mark.parametrize("crd4, verdict", [
    # KD gains 0.5, 0.3, 0.3. CRD gains 1.0, 1.0, 1.2: differences 0.5, 0.7, 0.9, mean 0.7, std 0.2,
    # se 0.1155, t = 6.06 > 4.303 (2 degrees of freedom)
    ({0: 87.0, 1: 87.4, 2: 87.4}, "yes (CRD's gain minus KD's, paired over seeds 0, 1, 2: +0.70, standard error 0.12"),
    # CRD gains 0.0, 1.2, 0.5: differences -0.5, 0.9, 0.2, mean 0.2, se 0.40 -> within noise
    ({0: 86.0, 1: 87.6, 2: 86.7}, "not resolved, within noise (CRD's gain minus KD's, paired over seeds 0, 1, 2: "
                                  "+0.20, standard error 0.40"),
    # CRD gains -0.5, -0.3, -0.5: differences -1.0, -0.6, -0.8, mean -0.8, se 0.1155
    ({0: 85.5, 1: 86.1, 2: 85.7}, "NO, the opposite (CRD's gain minus KD's, paired over seeds 0, 1, 2: -0.80"),
    # two seeds, differences -0.18, -0.08: mean -0.13, se 0.05, 2.6 standard errors. Two standard
    # errors would call it; with 1 degree of freedom the t quantile is 12.7, so it is not resolved
    ({0: 86.32, 1: 86.62}, "not resolved, within noise (CRD's gain minus KD's, paired over seeds 0, 1: -0.13, "
                           "standard error 0.05; a paired t-test at 95% needs |mean| > 12.71 standard errors)"),
])
def test_ensemble_findings_pair_seeds_and_test_the_difference(crd4, verdict):
    from scipy import stats
    kd1, kd4 = {0: 89.0, 1: 89.2, 2: 89.1, 3: 95.0}, {0: 89.5, 1: 89.5, 2: 89.4}
    crd1 = {0: 86.0, 1: 86.4, 2: 86.2}
    table = [_ens_row("kd n=1", kd1), _ens_row("kd n=4", kd4), _ens_row("crd n=1", crd1), _ens_row("crd n=4", crd4)]
    notes = settings_report.findings("ensemble", table)
    assert not notes[0].startswith("The teachers'")  # no teacher_top1 in these rows
    # seed 3 has no 4-teacher run: it is left out, not averaged into the 1-teacher side
    assert notes[0] == "KD: 4 teachers against 1, paired by seed: +0.37 ± 0.12 (seeds 0, 1, 2)."
    assert notes[-1].startswith("More teachers help CRD more than KD (CRD Figure 4): " + verdict)
    # the verdict agrees with scipy's paired t-test at 5%
    diffs = [(crd4[s] - crd1[s]) - (kd4[s] - kd1[s]) for s in crd4]
    assert (stats.ttest_1samp(diffs, 0.0).pvalue < 0.05) == (not verdict.startswith("not resolved"))


@pytest.mark.parametrize("setting", ["crossmodal", "privileged"])
def test_view_settings_train_probe_and_reuse(tmp_path, tiny, monkeypatch, setting):
    monkeypatch.setattr(settings_spec, "VIEW_METHODS", ("vanilla", "kd", "crd"))
    runs, out = tmp_path / "runs", tmp_path / "out"
    settings.run_settings(setting, [0], runs, out, overrides=TINY, teacher_overrides=TINY, log=lambda m: None,
                          finetune_epochs=1)
    root = runs / "fmnist-settings-v1" / setting
    t_view, s_view = settings_spec.VIEWS[setting]
    teacher_dir = runs / "fmnist-kd-v1" / ("teacher-lowpass/seed0" if t_view else "teacher/seed0")
    assert (_cfg(teacher_dir)["student"]["view"] or {}).get("name") == (t_view or {}).get("name")
    crd = _cfg(root / "crd" / "seed0")
    assert crd["student"]["view"]["name"] == s_view["name"]
    assert crd["teacher"]["checkpoint"] == str(teacher_dir / "student.pt")
    assert (crd["teacher"].get("view") or {}).get("name") == (t_view or {}).get("name")
    rows = _csv(out / f"fmnist-settings-v1-{setting}.csv")
    probe = json.loads((root / "crd" / "seed0" / "probe.json").read_text())["linear"]
    assert float(rows["crd"]["probe_top1_mean"]) == pytest.approx(probe["top1"], abs=1e-4)
    assert rows["teacher"]["probe_top1_mean"] == "" and rows["teacher"]["finetune_top1_mean"] == ""
    ft = json.loads((root / "crd" / "seed0" / "finetune" / "summary.json").read_text())
    assert float(rows["crd"]["finetune_top1_mean"]) == pytest.approx(ft["final_top1"], abs=1e-4)
    # a second call trains and probes nothing: the same files from the finished runs
    monkeypatch.setattr("wdistill.workflows.probe.linear_probe", lambda *a, **k: pytest.fail("probed again"))
    monkeypatch.setattr("wdistill.workflows.probe.finetune", lambda *a, **k: pytest.fail("fine-tuned again"))
    before = (out / f"fmnist-settings-v1-{setting}.csv").read_text().split("\nrow,", 1)[1]
    settings.run_settings(setting, [0], runs, out, overrides=TINY, teacher_overrides=TINY, log=lambda m: None,
                          finetune_epochs=1)
    assert (out / f"fmnist-settings-v1-{setting}.csv").read_text().split("\nrow,", 1)[1] == before
    settings.run_settings(setting, [0], runs, out, overrides=TINY, teacher_overrides=TINY, train=False,
                          finetune_epochs=1)
    assert (out / f"fmnist-settings-v1-{setting}.csv").read_text().split("\nrow,", 1)[1] == before


def test_a_second_shell_defers_a_students_probe_and_fine_tune_while_another_holds_it(tmp_path, tiny, monkeypatch,
                                                                                    capsys):
    """Probe and fine-tune run under the job's bench lock: a shell that meets them held by another
    process goes on with the other jobs, comes back, waits, and then reads the other's results
    (before, it stopped with "run directory ... is in use")."""
    import functools
    import signal
    import threading

    from builders import hold_lock

    from wdistill.workflows import reuse as bench_runs

    monkeypatch.setattr(settings_spec, "VIEW_METHODS", ("vanilla", "kd"))
    monkeypatch.setattr(settings, "run_lock", functools.partial(bench_runs.run_lock, poll=0.05))
    runs, out = tmp_path / "runs", tmp_path / "out"
    settings.run_settings("privileged", [0], runs, out, overrides=TINY, teacher_overrides=TINY, log=lambda m: None)
    kd_dir = runs / "fmnist-settings-v1" / "privileged" / "kd" / "seed0"
    assert (kd_dir / "student.pt").is_file() and not (kd_dir / "finetune").exists()
    holder = hold_lock(kd_dir / rundir.LOCK)  # "the other shell" is busy with kd's post-processing
    real_finetune = settings.finetune_or_load
    finetuned = []

    def finetune(run_dir, epochs, lr=0.01):
        finetuned.append(("kd", holder.poll() is not None) if run_dir == kd_dir else (run_dir.parent.name, None))
        return real_finetune(run_dir, epochs, lr)

    monkeypatch.setattr(settings, "finetune_or_load", finetune)
    release = threading.Timer(0.5, lambda: (holder.send_signal(signal.SIGKILL), holder.wait()))
    real_run_or_load = bench_runs.run_or_load

    def run_or_load(cfg, log=print, wait=True):
        # the other process lets go only once the queue has deferred kd and come back to wait for it,
        # however long the other jobs take on a loaded machine
        if wait and bench_runs.run_dir_of(cfg) == kd_dir and not release.is_alive() and holder.poll() is None:
            release.start()
        return real_run_or_load(cfg, log=log, wait=wait)

    monkeypatch.setattr(bench_runs, "run_or_load", run_or_load)  # what benchtools.runs.run_or_report calls
    try:
        settings.run_settings("privileged", [0], runs, out, overrides=TINY, teacher_overrides=TINY, log=lambda m: None,
                              finetune_epochs=1)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert finetuned[-1] == ("kd", True)  # started only after the other process let go
    printed = capsys.readouterr()  # the queue reports through its progress bar
    assert f"{kd_dir}: process {holder.pid} is running this job; coming back to it later" in printed.out + printed.err
    assert (kd_dir / "finetune" / "summary.json").is_file()
    rows = _csv(out / "fmnist-settings-v1-privileged.csv")
    assert rows["kd"]["finetune_top1_mean"] != "" and rows["vanilla"]["finetune_top1_mean"] != ""


def test_selfdistill_generations_chain(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(settings_spec, "SELF_METHODS", ("kd",))
    runs, out = tmp_path / "runs", tmp_path / "out"
    settings.run_settings("selfdistill", [0], runs, out, overrides=TINY, teacher_overrides=TINY, log=lambda m: None)
    root = runs / "fmnist-settings-v1" / "selfdistill"
    vanilla = runs / "fmnist-kd-v1" / "vanilla" / "seed0"  # generation 0 is A's vanilla run, reused
    assert _cfg(root / "kd/seed0/gen1")["teacher"]["checkpoint"] == str(vanilla / "student.pt")
    assert (vanilla / "summary.json").is_file()
    for k in (2, 3):
        t = _cfg(root / f"kd/seed0/gen{k}")["teacher"]
        assert t["model"] == "resnet8" and t["checkpoint"] == str(root / f"kd/seed0/gen{k - 1}/student.pt")
    assert set(_csv(out / "fmnist-settings-v1-selfdistill.csv")) == {"teacher (resnet8, CE)", "kd gen1", "kd gen2",
                                                                    "kd gen3"}


def test_shipped_example_configs_are_what_the_driver_writes():
    from wdistill.config.load import load_config
    from wdistill.config.presets import PRESETS_DIR, list_presets
    files = settings_presets.preset_files()
    on_disk = {p.relative_to(PRESETS_DIR).as_posix() for p in (PRESETS_DIR / "fmnist" / "settings").glob("*.yaml")}
    assert on_disk == set(files), "run `python -m benchtools.settings_presets` to rewrite configs/fmnist/settings"
    assert all((PRESETS_DIR / rel).read_text() == text for rel, text in files.items())
    assert {"fmnist/settings/ensemble_crd", "fmnist/settings/privileged_crd", "fmnist/settings/crossmodal_crd",
            "fmnist/settings/selfdistill_kd"} <= set(list_presets())
    cfg = load_config("fmnist/settings/crossmodal_crd")
    assert (cfg.teacher.view.name, cfg.student.view.name) == ("lowpass", "highpass")
    assert len(load_config("fmnist/settings/ensemble_crd").teachers) == 4


def test_hand_notes_survive_regeneration(tmp_path):
    """A settings report keeps the notes file written beside it by hand, below the computed findings."""
    table = [{"method": m, "n": 3, "final_mean": v, "final_std": 0.1, "gain": None if m == "vanilla" else v - 87.0}
             for m, v in (("vanilla", 87.0), ("kd", 88.0))]
    (tmp_path / "fmnist-settings-v1-privileged.notes.md").write_text("**Why:** the student view is easy.\n")
    for _ in range(2):  # regenerated twice: the notes appear once
        settings_report.write_results("privileged", table, tmp_path, {}, [0, 1, 2], ["wdistill"], [])
    md = (tmp_path / "fmnist-settings-v1-privileged.md").read_text()
    assert md.count("**Why:** the student view is easy.") == 1
    assert md.index("## Findings") < md.index("**Why:**")


def test_t_quantiles_are_students():
    from scipy import stats
    for df, t in enumerate(settings_report.T975, start=1):
        assert t == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)


def test_a_diverging_job_is_listed_and_the_settings_queue_goes_on(tmp_path, tiny, monkeypatch):
    """A student whose loss becomes non-finite is listed as diverged (out of the table) and the other jobs still
    run; the same command again reads its diverged.json and trains nothing (before, it stopped the queue each
    time, so the setting could never be reported)."""
    from wdistill.losses.kd import KD
    from wdistill.workflows import reuse

    real_kd = KD.forward
    monkeypatch.setattr(KD, "forward", lambda self, s, t, b: real_kd(self, s, t, b) * float("nan"))
    monkeypatch.setattr(settings_spec, "ENSEMBLE_METHODS", ("kd", "crd"))
    monkeypatch.setattr(settings_spec, "ENSEMBLE_SIZES", (2,))
    runs, out = tmp_path / "runs", tmp_path / "out"
    settings.run_settings("ensemble", [0], runs, out, overrides=TINY, teacher_overrides=TINY, log=lambda m: None)
    rows = _csv(out / "fmnist-settings-v1-ensemble.csv")
    assert "kd n=2" not in rows and "crd n=2" in rows  # the queue went on past the diverged job
    md = (out / "fmnist-settings-v1-ensemble.md").read_text()
    assert "Diverged (the loss became non-finite; not in the table" in md and "): kd n=2 seed 0." in md
    assert "# diverged: kd n=2 seed 0\n" in (out / "fmnist-settings-v1-ensemble.csv").read_text()
    assert (runs / "fmnist-settings-v1" / "ensemble" / "kd" / "n2" / "seed0" / rundir.DIVERGED).is_file()
    trained = []
    real = reuse.make_trainer
    monkeypatch.setattr(reuse, "make_trainer", lambda cfg, **kw: trained.append(cfg.run.name) or real(cfg, **kw))
    settings.run_settings("ensemble", [0], runs, out, overrides=TINY, teacher_overrides=TINY, log=lambda m: None)
    assert trained == [] and "): kd n=2 seed 0." in (out / "fmnist-settings-v1-ensemble.md").read_text()


def test_a_student_of_a_diverged_teacher_is_marked_not_trained(tmp_path, monkeypatch):
    """Protocol C trains its teachers in the queue: a student whose teacher diverged (a run directory with
    diverged.json and no checkpoint) is marked diverged without training, instead of stopping the queue on the
    missing checkpoint; a teacher that finished, or a checkpoint from elsewhere, trains the student as usual."""
    from benchtools import runs
    from wdistill.workflows import reuse

    trained = []
    monkeypatch.setattr(reuse, "run_or_load", lambda cfg, log=print, **kw: trained.append(cfg) or {"final_top1": 1.0})
    for name in ("t0", "t1"):
        (tmp_path / name).mkdir()
    (tmp_path / "t0" / "student.pt").write_bytes(b"x")
    (tmp_path / "t1" / rundir.DIVERGED).write_text(json.dumps({"error": "non-finite"}))
    cfg = {"run": {"name": "student"},
           "teachers": [{"model": "resnet8", "checkpoint": str(tmp_path / f"{t}/student.pt")} for t in ("t0", "t1")]}
    logs = []
    assert runs.run_or_report(cfg, log=logs.append) == {"diverged": f"its teacher {tmp_path / 't1'} diverged"}
    assert trained == [] and "student: not trained, its teacher" in logs[0]
    one = {"run": {"name": "student"}, "teacher": {"model": "resnet8", "checkpoint": "cache:teachers/x.pth"}}
    assert runs.run_or_report(one) == {"final_top1": 1.0} and trained == [one]
    (tmp_path / "t1" / rundir.DIVERGED).unlink()  # retried: the teacher's checkpoint will exist before its student
    assert runs.run_or_report(cfg) == {"final_top1": 1.0}
