"""`wdistill demo`: method selection, epoch scaling of the recipes, resume/reuse of finished runs,
the shipped teacher, and what `make demo` installs."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from wdistill import cli
from wdistill.config.presets import recipe_for
from wdistill.data import BatchLoader, bundled_sample
from wdistill.engine import evaluate
from wdistill.losses.recipes import RECIPES
from wdistill.models import create, load_checkpoint
from wdistill.workflows import demo
from wdistill.workflows.demo import DEMO_METHODS, QUICK_METHODS, SHIPPED_TEACHER, demo_methods, run_demo

ROOT = Path(__file__).resolve().parents[1]


def test_demo_methods_default_all_and_unknown():
    assert demo_methods(None) == QUICK_METHODS == ["vanilla", "kd", "wkd_l", "wkd_lf", "wcord_kd"]
    assert demo_methods(None, full=True) == DEMO_METHODS
    assert {"kd", "dkd", "crd_kd", "wkd_l", "wkd_lf", "wcord_kd"} <= set(DEMO_METHODS)
    assert demo_methods("all") == list(RECIPES)
    assert demo_methods("kd, wkd_l") == ["kd", "wkd_l"]
    with pytest.raises(ValueError, match="bogus.*choose from"):
        demo_methods("kd,bogus")


def test_recipe_epoch_settings_fit_the_demo_schedule():
    fsp = next(t for t in recipe_for("fsp", 8) if t["name"] == "fsp")
    dkd = next(t for t in recipe_for("dkd", 8) if t["name"] == "dkd")
    assert fsp["init_epochs"] == 1 and dkd["warmup"] == 1  # 30/240 and 20/240 of 8 epochs, at least 1
    assert next(t for t in recipe_for("ab", 240) if t["name"] == "ab")["init_epochs"] == 30


def test_shipped_teacher_is_small_weights_only_and_scores_what_it_records():
    assert SHIPPED_TEACHER.is_file() and SHIPPED_TEACHER.stat().st_size < 1_000_000
    meta = torch.load(SHIPPED_TEACHER, map_location="cpu", weights_only=True)  # plain data + tensors only
    assert meta["arch"] == demo.TEACHER_ARCH and meta["made_by"] == "wdistill demo --make-teacher"
    assert meta["data"] == demo.DATA  # the demo's students train on the data the teacher was made on
    model = load_checkpoint(create(meta["arch"], num_classes=10, in_channels=1), str(SHIPPED_TEACHER))
    top1 = evaluate(model, BatchLoader(bundled_sample("test"), 500, False))["top1"]
    assert top1 == pytest.approx(meta["top1"]) and top1 > 85


def test_quick_demo_uses_the_shipped_teacher(tmp_path):
    rows = run_demo(str(tmp_path), ["kd"], teacher_epochs=None, student_epochs=1, train_subset=64,
                    test_subset=32, log=lambda m: None)
    assert rows[0]["method"].startswith("teacher (resnet20, shipped)")
    cfg = yaml.safe_load((tmp_path / "student_kd" / "config.yaml").read_text())
    assert Path(cfg["teacher"]["checkpoint"]) == SHIPPED_TEACHER
    assert not (tmp_path / "teacher").exists()  # nothing trained for the teacher


def test_demo_trains_teacher_and_students_then_reuses_them(tmp_path, capsys):
    out = tmp_path / "demo"
    kw = dict(teacher="resnet8", teacher_epochs=1, student_epochs=2, train_subset=96, test_subset=48,
              log=lambda m: None)
    rows = run_demo(str(out), ["vanilla", "kd", "fsp"], **kw)
    assert [r["method"] for r in rows] == ["teacher (resnet8)", "vanilla", "KD", "FSP"]
    for row, name in zip(rows[1:], ["vanilla", "kd", "fsp"]):  # the table reports each run's own result
        assert row["top1"] == json.loads((out / f"student_{name}" / "summary.json").read_text())["final_top1"]
    fsp_cfg = yaml.safe_load((out / "student_fsp" / "config.yaml").read_text())
    assert next(t for t in fsp_cfg["loss"] if t["name"] == "fsp")["init_epochs"] == 1
    stamp = (out / "student_kd" / "summary.json").stat().st_mtime_ns
    again = run_demo(str(out), ["vanilla", "kd", "fsp"], **kw)
    assert again == rows and (out / "student_kd" / "summary.json").stat().st_mtime_ns == stamp
    summary = json.loads((out / "student_kd" / "summary.json").read_text())
    assert summary["final_top1"] == rows[2]["top1"]


def test_demo_cli_rejects_an_unknown_method(tmp_path, capsys):
    rc = cli.main(["demo", "--out", str(tmp_path), "--methods", "kd,nope"])
    assert rc != 0
    assert "nope" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_demo_installs_no_test_data_and_make_test_does():
    def recipe(target):
        return subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    demo_cmds, test_cmds = recipe("demo"), recipe("test")
    assert "scripts/setup.sh\n" in demo_cmds and "--test" not in demo_cmds and "wdistill demo" in demo_cmds
    assert "scripts/setup.sh --test" in test_cmds and "pytest" in test_cmds
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    # the apt-get of the test data set and the test extras happen only under --test
    apt = setup.index("apt-get install")
    guard = [line for line in setup[:apt].splitlines() if line.startswith("if ")][-1]
    assert '"$TEST" = 1' in guard
    assert '-e ".[test]"' in setup and setup.index('-e ".[test]"') > setup.index('if [ "$TEST" = 1 ]; then\n  .venv')
