"""`wdistill demo`: method selection, epoch scaling of the recipes, resume/reuse of finished runs."""
import json

import pytest
import yaml

from wdistill import cli
from wdistill.demo import DEMO_METHODS, demo_methods, run_demo
from wdistill.recipes import RECIPES, recipe_for


def test_demo_methods_default_all_and_unknown():
    assert demo_methods(None) == DEMO_METHODS
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


def test_demo_trains_teacher_and_students_then_reuses_them(tmp_path, capsys):
    out = tmp_path / "demo"
    kw = dict(teacher="resnet8", teacher_epochs=1, student_epochs=2, train_subset=96, test_subset=48,
              log=lambda m: None)
    rows = run_demo(str(out), ["vanilla", "kd", "fsp"], **kw)
    assert [r["method"] for r in rows] == ["teacher (resnet8)", "vanilla", "KD", "FSP"]
    assert all(0 <= r["top1"] <= 100 for r in rows)
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
