"""timm: and torchvision: models from YAML, their automatic taps and local pretrained weights.

Needs timm and torchvision importable (with a torch they were built for). The project venv cannot
have them (its CPU torch has no matching torchvision), so these tests run in a separate venv:
`scripts/tv_venv.sh` builds it from local wheels and runs this module with WDISTILL_REQUIRE_TV=1,
which turns a missing package into a failure instead of a skip.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import require_importable

tv = require_importable("torchvision")
timm = require_importable("timm")

from wdistill import models  # noqa: E402
from wdistill.cli import main  # noqa: E402
from wdistill.config import load_config  # noqa: E402
from wdistill.data import ImageDataset  # noqa: E402
from wdistill.engine import Trainer  # noqa: E402
from wdistill.errors import ConfigError  # noqa: E402
from wdistill.models.taps import FeatureTap  # noqa: E402


def _randomize_bn(m):
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2)
    return m.eval()


def test_torchvision_resnet_taps_are_its_stages():
    torch.manual_seed(0)
    m = _randomize_bn(models.create("torchvision:resnet18", num_classes=10))
    assert isinstance(m, tv.models.ResNet) and m.fc.out_features == 10
    x = torch.randn(2, 3, 64, 64)
    tap = FeatureTap(m)
    with torch.no_grad():
        out = tap(x)
        assert (tap.spec.feats, tap.spec.embed) == (["relu", "layer1", "layer2", "layer3", "layer4"], "fc:in")
        tap.remove()
        stem = m.relu(m.bn1(m.conv1(x)))
        f1 = m.layer1(m.maxpool(stem))
        f2 = m.layer2(f1)
        f3 = m.layer3(f2)
        f4 = m.layer4(f3)
    for got, want in zip(out["feats"], [stem, f1, f2, f3, f4], strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(out["embed"], f4.mean((2, 3)))


def test_torchvision_mobilenet_taps_end_each_resolution():
    m = models.create("torchvision:mobilenet_v2", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    tap = FeatureTap(m)
    with torch.no_grad():
        out = tap(x)
        # independent: run the feature blocks one by one and keep the last block at each size
        h, last = x, {}
        for i, block in enumerate(m.features):
            h = block(h)
            last[tuple(h.shape[2:])] = (f"features.{i}", h)
    assert tap.spec.feats == [name for name, _ in last.values()]
    for got, (_, want) in zip(out["feats"], last.values(), strict=True):
        torch.testing.assert_close(got, want)
    assert tap.spec.embed == "classifier.1:in"
    torch.testing.assert_close(out["embed"], F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_timm_taps_come_from_feature_info_and_in_chans_adapts():
    m = models.create("timm:resnet18", num_classes=7, in_channels=1).eval()
    tap = FeatureTap(m)
    with torch.no_grad():
        out = tap(torch.randn(2, 1, 64, 64))
    assert tap.spec.feats == [d["module"] for d in m.feature_info] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert tap.spec.embed == "fc:in" and out["logits"].shape == (2, 7)
    assert [f.shape[1] for f in out["feats"]] == [d["num_chs"] for d in m.feature_info]
    assert [64 // f.shape[-1] for f in out["feats"]] == [d["reduction"] for d in m.feature_info]


def test_timm_own_in_chans_spelling_is_accepted_and_checked(tmp_path):
    """`kwargs: {in_chans: 1}` (timm's spelling) builds the model instead of failing with 'multiple
    values for keyword argument'; a value that contradicts the data is one clear error."""
    m = models.create("timm:resnet18", num_classes=7, in_channels=1, in_chans=1)
    assert m.conv1.in_channels == 1 and m.fc.out_features == 7
    with pytest.raises(ValueError, match="in_chans=3 but the data have 1 channels: drop in_chans"):
        models.create("timm:resnet18", num_classes=7, in_channels=1, in_chans=3)
    cfg = load_config({"run": {"out_dir": str(tmp_path)}, "data": {"name": "fmnist_sample", "train_subset": 64,
                                                                   "test_subset": 16},
                       "student": {"model": "timm:resnet18", "kwargs": {"in_chans": 3}}})
    with pytest.raises(ConfigError, match="in_chans=3 but the data have 1 channels"):
        Trainer(cfg)


def test_library_model_names_are_checked_before_the_data_loads(tmp_path, monkeypatch):
    """A timm: or torchvision: name that the library lacks is refused, with the closest names, before the
    data loads (a large image folder in memory takes minutes to decode)."""
    def no_data(*args, **kwargs):
        raise AssertionError("the data loaded before the config's models were checked")

    monkeypatch.setattr("wdistill.engine.trainer.build_loaders", no_data)
    for spec, message in (("timm:resnet19", "timm has no model 'resnet19'"),
                          ("torchvision:resnet19", "torchvision has no classification model 'resnet19'.*resnet18")):
        cfg = load_config({"run": {"out_dir": str(tmp_path)}, "student": {"model": spec}})
        with pytest.raises(ConfigError, match=f"student.model: {message}"):
            Trainer(cfg)


def test_a_library_checkpoint_of_another_architecture_is_refused_before_the_data_loads(tmp_path, monkeypatch):
    """A timm: or torchvision: teacher given another architecture's weights (other parameter names) is refused
    before the data loads; the right weights, trained for 4 classes, pass on to the data."""
    def no_data(*args, **kwargs):
        raise AssertionError("the data loaded before the config's models were checked")

    monkeypatch.setattr("wdistill.engine.trainer.build_loaders", no_data)
    torch.save({"model": tv.models.resnet34(num_classes=4).state_dict()}, tmp_path / "tv34.pt")
    torch.save(timm.create_model("resnet34", num_classes=4).state_dict(), tmp_path / "timm34.pt")
    for spec, file in (("torchvision:resnet18", "tv34.pt"), ("timm:resnet18", "timm34.pt")):
        teacher = {"model": spec, "checkpoint": str(tmp_path / file)}
        cfg = load_config({"run": {"out_dir": str(tmp_path / "runs")}, "student": {"model": "resnet8"},
                           "teacher": teacher, "loss": [{"name": "kd"}]})
        with pytest.raises(ConfigError, match=rf"teacher.checkpoint: checkpoint does not fit {spec} .*unexpected "
                                              r"keys \(e.g. layer1.2"):
            Trainer(cfg)
    for spec, model in (("torchvision:resnet34", "tv34.pt"), ("timm:resnet34", "timm34.pt")):
        cfg = load_config({"run": {"out_dir": str(tmp_path / "runs")}, "student": {"model": "resnet8"},
                           "teacher": {"model": spec, "checkpoint": str(tmp_path / model)}, "loss": [{"name": "kd"}]})
        with pytest.raises(AssertionError, match="the data loaded"):
            Trainer(cfg)


def test_local_pretrained_file_and_cache(tmp_path, monkeypatch):
    torch.manual_seed(0)
    in1k = tv.models.resnet18(num_classes=1000)
    torch.save(in1k.state_dict(), tmp_path / "r18.pth")
    m = models.create("torchvision:resnet18", num_classes=10, pretrained=str(tmp_path / "r18.pth"))
    assert torch.equal(m.layer4[1].conv2.weight, in1k.layer4[1].conv2.weight)
    assert m.fc.weight.shape == (10, 512)
    monkeypatch.setenv("WDISTILL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"pretrained/torchvision/resnet18.safetensors"):
        models.create("torchvision:resnet18", num_classes=10, pretrained=True)
    t = timm.create_model("resnet18", num_classes=1000)
    (tmp_path / "cache" / "pretrained" / "timm").mkdir(parents=True)
    models.save_student_safetensors(
        t.state_dict(), tmp_path / "cache" / "pretrained" / "timm" / "resnet18.safetensors", {}
    )
    m2 = models.create("timm:resnet18", num_classes=10, pretrained=True)
    assert torch.equal(m2.layer1[0].conv1.weight, t.layer1[0].conv1.weight)


def test_yaml_timm_student_torchvision_teacher_wkd_f(tmp_path):
    torch.manual_seed(0)
    teacher = tv.models.resnet18(num_classes=4)
    torch.save({"model": teacher.state_dict()}, tmp_path / "t.pt")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8, generator=g)  # last map 2x2
    full = ImageDataset(images, torch.arange(16) % 4, 4, (0.5,) * 3, (0.25,) * 3, name="random")
    cfg = load_config(
        {
            "run": {"name": "tv", "out_dir": str(tmp_path / "runs")},
            "data": {"batch_size": 4, "eval_batch_size": 4, "crop_padding": 0, "flip": False},
            "student": {"model": "timm:resnet18"},
            "teacher": {"model": "torchvision:resnet18", "checkpoint": str(tmp_path / "t.pt")},
            # no decay: in a 1-epoch run the official WKD schedule weighs the only epoch 0
            "loss": [{"name": "wkd_f", "weight": 1.0, "decay_start_frac": None}],
            "optim": {"epochs": 1, "weight_decay": 0.0, "schedule": "constant"},
            "train": {"progress": False},
        }
    )
    tr = Trainer(cfg, data=(full.subset(slice(0, 8)), full.subset(slice(8, 16))), log=lambda *_: None)
    before = {k: v.clone() for k, v in tr.student.state_dict().items()}
    tr.fit()
    after = tr.student.state_dict()
    assert torch.equal(after["fc.weight"], before["fc.weight"])  # a feature term never reaches the head
    assert not torch.equal(after["layer4.1.conv2.weight"], before["layer4.1.conv2.weight"])
    ck = models.read_checkpoint(tmp_path / "runs" / "tv" / "student.safetensors")
    assert ck["arch"] == "timm:resnet18" and ck["num_classes"] == 4


def test_inspect_torchvision(capsys):
    assert main(["inspect", "torchvision:resnet18", "--input-size", "3,64,64", "--num-classes", "5"]) == 0
    out = capsys.readouterr().out
    assert "layer3 " in out and "1x256x4x4" in out and "fc " in out and "1x5" in out
    assert "feats: ['relu', 'layer1', 'layer2', 'layer3', 'layer4']" in out
