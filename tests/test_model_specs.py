"""Models named in YAML beyond the zoo: Python factories (with automatic taps) trained by feature
methods, the generic tap fallback, `wdistill inspect`, safetensors export, presets by name."""
import textwrap

import pytest
import torch
import torch.nn as nn

from wdistill import models
from wdistill.cli import main
from wdistill.config import load_config
from wdistill.config.presets import list_presets, preset_path
from wdistill.data import ImageDataset
from wdistill.engine import Trainer
from wdistill.errors import ConfigError
from wdistill.models.taps import FeatureTap, generic_spec

# A user's model file: stages at 16x16 (stem), 8x8 (stage1), 4x4 (stage2). One ReLU module is
# reused everywhere (so it must never be a tap) and stage2 holds a squeeze-excitation gate whose
# 1x1 outputs must not count as a stage. The classifier is `head`.
USER_MODULE = textwrap.dedent('''
    import torch
    import torch.nn as nn


    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Conv2d(c, c, 1)

        def forward(self, x):
            return x * torch.sigmoid(self.fc(self.pool(x)))


    class Net(nn.Module):
        def __init__(self, num_classes=10, in_channels=3, width=8):
            super().__init__()
            self.act = nn.ReLU()
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width))
            self.stage1 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width))
            self.stage2 = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
                                        nn.BatchNorm2d(4 * width), SE(4 * width))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(4 * width, num_classes)

        def forward(self, x):
            x = self.act(self.stem(x))
            x = self.act(self.stage1(x))
            x = self.stage2(x)
            return self.head(self.pool(self.act(x)).flatten(1))


    def make_net(num_classes, in_channels, width=8):
        return Net(num_classes, in_channels, width)


    def no_linear(num_classes):
        return nn.Sequential(nn.Conv2d(3, num_classes, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


    def not_a_module(num_classes):
        return "a string"
''')

EXPECTED_TAPS = (["stem", "stage1", "stage2"], "head:in")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "wd_user_models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys
    sys.modules.pop("wd_user_models", None)
    return importlib.import_module("wd_user_models")


def _data(k=4, n=32, size=16):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n + 8, 3, size, size), dtype=torch.uint8, generator=g)
    full = ImageDataset(images, torch.arange(n + 8) % k, k, (0.5,) * 3, (0.25,) * 3, name="random")
    return full.subset(slice(0, n)), full.subset(slice(n, n + 8))


def test_generic_fallback_finds_known_stages(user_module):
    torch.manual_seed(0)
    m = user_module.Net(num_classes=5, width=4).eval()
    x = torch.randn(3, 3, 16, 16)
    spec = generic_spec(m, x)
    assert (spec.feats, spec.embed) == EXPECTED_TAPS
    with torch.no_grad():
        out = FeatureTap(m)(x)  # no spec: found automatically on the first call
        stem = m.stem(x)
        s1 = m.stage1(m.act(stem))
        s2 = m.stage2(m.act(s1))
        embed = m.act(s2).mean((2, 3))
    for got, want in zip(out["feats"], [stem, s1, s2], strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(out["embed"], embed)
    torch.testing.assert_close(out["logits"], m.head(embed))


def test_logit_only_model_runs_kd_and_feature_terms_say_why(user_module):
    tap = FeatureTap(user_module.no_linear(5))
    out = tap(torch.randn(2, 3, 8, 8))
    assert out["logits"].shape == (2, 5)
    with pytest.raises(ValueError, match="needs the model's 'feats'.*no nn.Linear.*taps"):
        out["feats"]


def _cfg(tmp_path, loss, teacher_ckpt, name):
    return load_config({
        "run": {"name": name, "out_dir": str(tmp_path / "runs"), "seed": 0},
        # CRD runs on the streaming path (DataLoader workers, labels from the dataset), WKD-F in memory
        "data": {"batch_size": 8, "eval_batch_size": 8, "crop_padding": 0, "flip": False,
                 "loader": "stream" if name == "crd" else "memory", "workers": 1},
        "student": {"model": "wd_user_models:make_net", "kwargs": {"width": 4}},
        "teacher": {"model": "wd_user_models:make_net", "kwargs": {"width": 8}, "checkpoint": str(teacher_ckpt)},
        "loss": loss,
        "optim": {"epochs": 1, "lr": 0.05, "weight_decay": 0.0, "schedule": "constant"},
        "train": {"progress": False},
    })


# WKD-F without its decay: in a 1-epoch run the official schedule weighs the only epoch 0.
@pytest.mark.parametrize("term", [{"name": "wkd_f", "weight": 1.0, "decay_start_frac": None},
                                  {"name": "crd", "weight": 1.0, "feat_dim": 8, "num_negatives": 16}])
def test_factory_models_with_automatic_taps_train_by_feature_methods(tmp_path, user_module, term):
    torch.manual_seed(1)
    teacher_ckpt = tmp_path / "teacher.pt"
    torch.save({"model": user_module.make_net(4, 3, width=8).state_dict()}, teacher_ckpt)
    # The feature term alone (no CE, no weight decay): the student's stages can only move through
    # the automatic taps, and its classifier must not move at all.
    said = []
    tr = Trainer(_cfg(tmp_path, [term], teacher_ckpt, term["name"]), data=_data(), log=said.append)
    assert any(("stream path" if term["name"] == "crd" else "memory path") in m for m in said), said
    before = {k: v.clone() for k, v in tr.student.state_dict().items()}
    summary = tr.fit()
    spec = tr.distiller.student_tap.spec
    assert (spec.feats, spec.embed) == EXPECTED_TAPS
    t_spec = tr.distiller.teacher_taps[0].spec
    assert (t_spec.feats, t_spec.embed) == EXPECTED_TAPS
    after = tr.student.state_dict()
    assert torch.equal(after["head.weight"], before["head.weight"])
    assert not torch.equal(after["stage1.0.weight"], before["stage1.0.weight"])
    value = tr.history[-1][f"train_{term['name']}"]
    assert value == value and value != 0.0  # finite (not NaN) and a real loss
    assert summary["final_top1"] is not None
    # student.safetensors beside student.pt: a fresh model built from its metadata gives the same logits.
    st = tmp_path / "runs" / term["name"] / "student.safetensors"
    ck = models.read_checkpoint(st)
    assert (ck["arch"], ck["num_classes"], ck["in_channels"], ck["kwargs"]) == ("wd_user_models:make_net", 4, 3,
                                                                                {"width": 4})
    fresh = models.create(ck["arch"], ck["num_classes"], ck["in_channels"], **ck["kwargs"])
    models.load_checkpoint(fresh, st)
    x = torch.randn(4, 3, 16, 16)
    tr.close()
    torch.testing.assert_close(fresh.eval()(x), tr.student.eval()(x), rtol=0, atol=0)


def test_safetensors_round_trip_of_a_zoo_model(tmp_path):
    torch.manual_seed(0)
    m = models.create("resnet8", num_classes=7, in_channels=1)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so buffers must travel too
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
    path = models.save_student_safetensors(m.state_dict(), tmp_path / "s.safetensors",
                                           {"arch": "resnet8", "num_classes": 7, "in_channels": 1})
    assert not list(tmp_path.glob("*.tmp"))
    ck = models.read_checkpoint(path)
    fresh = models.create(ck["arch"], ck["num_classes"], ck["in_channels"])
    models.load_checkpoint(fresh, path)
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(fresh.eval()(x), m.eval()(x), rtol=0, atol=0)
    other = models.create("resnet14", num_classes=7, in_channels=1)
    with pytest.raises(ValueError, match="does not fit"):
        models.load_checkpoint(other, path)


def test_model_spec_errors_name_the_fix(tmp_path, user_module):
    data = _data()

    def build(model, **extra):
        cfg = load_config({"run": {"out_dir": str(tmp_path)}, "data": {"batch_size": 8},
                           "student": {"model": model, **extra}})
        return Trainer(cfg, data=data)

    with pytest.raises(ConfigError, match="cannot import module 'no_such_pkg_xyz.models'.*Install the package"):
        build("no_such_pkg_xyz.models:net")
    with pytest.raises(ConfigError, match="has no callable 'missing'.*make_net"):
        build("wd_user_models:missing")
    with pytest.raises(ConfigError, match="returned str, not a torch.nn.Module"):
        build("wd_user_models:not_a_module")
    with pytest.raises(ConfigError, match="calling make_net.*unexpected keyword.*fix model kwargs"):
        build("wd_user_models:make_net", kwargs={"depth": 3})
    with pytest.raises(ConfigError, match="pretrained weights .* do not exist"):
        build("wd_user_models:make_net", pretrained=str(tmp_path / "none.pth"))
    for lib in ("timm", "torchvision"):
        try:
            __import__(lib)
        except Exception:
            with pytest.raises(ConfigError, match=rf"needs the {lib} package|importing {lib} failed"):
                build(f"{lib}:resnet18")


def test_pretrained_file_keeps_backbone_and_resets_other_class_count(tmp_path, user_module):
    torch.manual_seed(0)
    src = user_module.make_net(1000, 3, width=4)
    models.save_student_safetensors(src.state_dict(), tmp_path / "in1k.safetensors", {"arch": "x"})
    m = models.create("wd_user_models:make_net", 5, 3, width=4, pretrained=str(tmp_path / "in1k.safetensors"))
    assert torch.equal(m.stage2[0].weight, src.stage2[0].weight)
    assert m.head.weight.shape == (5, 16)


def test_inspect_prints_paths_shapes_and_taps(user_module, capsys):
    assert main(["inspect", "wd_user_models:make_net", "--input-size", "3,16,16", "--num-classes", "6",
                 "--kwargs", "{width: 2}"]) == 0
    out = capsys.readouterr().out
    m = user_module.make_net(6, 3, width=2).eval()
    x = torch.zeros(1, 3, 16, 16)
    with torch.no_grad():
        s1 = m.stage1(m.act(m.stem(x)))
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line and not line.startswith(" ")}
    assert rows["stage1"][1:] == ["Sequential", "x".join(map(str, s1.shape))]
    assert rows["head"][1:] == ["Linear", "1x6"]
    assert "act" in rows and "called 3x" in " ".join(rows["act"])
    assert "feats: ['stem', 'stage1', 'stage2']" in out and "embed: head:in" in out


def test_presets_by_name(capsys):
    name = "cifar100/resnet32x4-resnet8x4/wkd_l"
    cfg = load_config(name, ["optim.epochs=3"])
    assert cfg == load_config(str(preset_path(name)), ["optim.epochs=3"])
    assert cfg.optim.epochs == 3 and cfg.teacher.model == "resnet32x4"
    with pytest.raises(ConfigError, match="Did you mean cifar100/resnet32x4-resnet8x4/wkd_l"):
        load_config("cifar100/resnet32x4-resnet8x4/wkd_ll")
    with pytest.raises(ConfigError, match="does not exist: it is neither a file nor a shipped preset"):
        load_config("imagenet/no_such_pair/kd")
    assert main(["list", "--presets"]) == 0
    printed = [line.strip() for line in capsys.readouterr().out.splitlines()[1:-1]]  # header, names, count
    on_disk = list(preset_path(name).parents[2].rglob("*.yaml"))
    assert name in printed and len(printed) == len(list_presets()) == len(on_disk)


def test_eval_command_reads_safetensors(tmp_path, capsys):
    from wdistill.data import BatchLoader, load_dataset
    from wdistill.engine import evaluate

    torch.manual_seed(0)
    m = models.create("resnet8", num_classes=10, in_channels=1).eval()
    path = models.save_student_safetensors(
        m.state_dict(), tmp_path / "student.safetensors", {"arch": "resnet8", "num_classes": 10, "in_channels": 1}
    )
    assert main(["eval", str(path), "--data", "fmnist_sample", "--subset", "64"]) == 0
    import json

    got = json.loads(capsys.readouterr().out)
    _, test = load_dataset("fmnist_sample")
    want = evaluate(m, BatchLoader(test.subset(slice(0, 64)), 256, False, torch.device("cpu")))
    assert got["arch"] == "resnet8" and got["top1"] == want["top1"] and got["loss"] == pytest.approx(want["loss"])


def test_logit_only_student_without_linear_trains_with_kd(tmp_path, user_module):
    torch.manual_seed(1)
    teacher_ckpt = tmp_path / "teacher.pt"
    torch.save({"model": user_module.make_net(4, 3, width=8).state_dict()}, teacher_ckpt)
    cfg = _cfg(tmp_path, [{"name": "kd", "weight": 1.0, "T": 4}], teacher_ckpt, "kd")
    cfg.student.model, cfg.student.kwargs = "wd_user_models:no_linear", {}
    tr = Trainer(cfg, data=_data(), log=lambda *_: None)
    before = tr.student[0].weight.clone()
    tr.fit()
    assert tr.distiller.student_tap.spec is None  # no taps could be found, and none were needed
    assert not torch.equal(tr.student[0].weight, before)
    assert tr.history[-1]["train_kd"] > 0
