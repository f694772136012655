"""Issue 15 points 4 and 6: the generated configuration reference, `wdistill config show|check`,
`wdistill list`, and presets moved to another data set."""
from pathlib import Path

import pytest
import torch
import yaml

from wdistill import cli, losses, models
from wdistill.config.load import load_config
from wdistill.config.reference import DOC_PATH, reference_markdown
from wdistill.config.schema import RunConfig
from wdistill.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs" / "fmnist").glob("*.yaml"))


def test_docs_config_md_is_up_to_date():
    committed = (ROOT / DOC_PATH).read_text()
    assert committed == reference_markdown(), \
        "docs/config.md is stale: regenerate it with `wdistill config reference -o docs/config.md`"


def test_every_config_key_is_documented():
    from wdistill.config.reference import _section_model
    sections = {RunConfig} | {_section_model(f.annotation) for f in RunConfig.model_fields.values()} - {None}
    undocumented = [f"{m.__name__}.{k}" for m in sections for k, f in m.model_fields.items() if not f.description]
    assert not undocumented, f"add Field(description=...) to {undocumented}"
    text = (ROOT / DOC_PATH).read_text()
    for m in sections:
        for k in m.model_fields:
            assert f"| `{k}` |" in text, k
    for name in losses.available():
        if losses.get(name).__module__.startswith("wdistill."):  # not terms other tests register
            assert f"| `{name}` |" in text, name


def _write(tmp_path, cfg):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_config_show_prints_the_resolved_config_with_defaults(tmp_path, capsys):
    p = _write(tmp_path, {"student": {"model": "resnet8"}, "optim": {"epochs": 3}})
    assert cli.main(["config", "show", str(p), "optim.lr=0.2", "train.eval_every=2"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["optim"] == {**shown["optim"], "epochs": 3, "lr": 0.2, "momentum": 0.9, "schedule": "multistep"}
    assert shown["train"]["precision"] == "auto" and shown["data"]["name"] == "fmnist_sample"
    # term parameters resolved with their defaults (typed by the term signature)
    assert (
        shown["loss"] == [{"name": "ce", "id": "ce", "weight": 1.0, "label_smoothing": 0.0}]
        and shown["train"]["eval_every"] == 2
    )
    assert load_config(shown).model_dump() == load_config(str(p), ["optim.lr=0.2", "train.eval_every=2"]).model_dump()


def test_config_check_accepts_a_valid_config_and_names_each_problem(tmp_path, capsys):
    teacher = tmp_path / "t.pt"
    torch.save({"model": models.create("resnet8", 10, 1).state_dict()}, teacher)
    good = {
        "student": {"model": "resnet8"},
        "teacher": {"model": "resnet8", "checkpoint": str(teacher)},
        "loss": [{"name": "ce"}, {"name": "kd", "T": 2}],
    }
    assert cli.main(["config", "check", str(_write(tmp_path, good))]) == 0
    assert capsys.readouterr().out.startswith("ok:")
    bad = [
        ({"optim": {"lr": -1}}, "optim.lr"),
        ({"optim": {"lrate": 0.1}}, "unknown key"),
        ({"student": {"model": "resnet9"}}, "student.model: unknown model 'resnet9'. Did you mean resnet8"),
        ({"teacher": {"model": "resnet8"}}, "teacher 'resnet8' has no checkpoint"),
        ({"loss": [{"name": "kd", "tau": 2}]}, "no parameter"),
        ({"loss": [{"name": "kdd"}]}, "unknown method"),
        ({"teacher": {"model": "resnet8", "checkpoint": str(tmp_path / "none.pt")}}, "does not exist"),
        ({"data": {"name": "cifar1000"}}, "unknown data set"),
    ]
    for change, message in bad:
        assert cli.main(["config", "check", str(_write(tmp_path, {**good, **change}))]) == 2, change
        assert message in capsys.readouterr().err, change


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_fmnist_presets_on_another_data_set_name_the_options_and_the_fix(preset, tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(preset, ["data.name=mnist"])
    msg = str(e.value)
    assert "eval_split, protocol, quick" in msg and "'mnist'" in msg and "data.options={}" in msg
    cfg = load_config(preset, ["data.name=mnist", "data.options={}"])  # the fix the message gives works
    assert cfg.data.name == "mnist" and cfg.data.options == {}


def test_list_shows_data_sets_with_options_and_methods_with_defaults(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "fashion_mnist: download=false, protocol=official, quick=false, eval_split=test" in out
    assert "cifar100: download=false, labels=fine" in out
    lines = {line.split(":")[0].strip(): line for line in out.splitlines()}
    for name in losses.available():
        assert name in lines, name
    assert "lambda_l=600.0" in lines["wkd_l"] and "tau=8.0" in lines["wkd_l"] and "T=4.0" in lines["kd"]
    assert all(m in out for m in models.available())
    assert cli.main(["list", "--methods"]) == 0
    only = capsys.readouterr().out
    assert "wkd_l:" in only and "models:" not in only and "fashion_mnist" not in only


def test_missing_teacher_message_points_to_where_the_teacher_comes_from(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the preset's teacher path is relative: never the checkout's own runs/
    out = str(tmp_path / "runs")
    assert cli.main(["config", "check", str(PRESETS[0])]) == 2
    err = capsys.readouterr().err
    assert "`python -m benchtools accuracy`" in err and "cifar100" not in err  # a Fashion-MNIST preset
    assert cli.main(["distill", str(PRESETS[0]), f"run.out_dir={out}"]) == 2
    assert "`python -m benchtools accuracy`" in capsys.readouterr().err
    plain = _write(
        tmp_path,
        {
            "student": {"model": "resnet8"},
            "teacher": {"model": "resnet8", "checkpoint": str(tmp_path / "mine.pt")},
            "loss": [{"name": "kd"}],
        },
    )
    assert cli.main(["config", "check", str(plain)]) == 2
    assert "wdistill train CONFIG" in capsys.readouterr().err
