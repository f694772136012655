"""Every shipped WKD preset against the official WKD settings, typed in below independently of
scripts/make_presets.py. Source of every row: the official WKD repository (github.com/JiamingLv/WKD,
commit 214cf88), the file named in the row; ImageNet values its configs leave out come from its
mdistiller/engine/cfg.py defaults (COSINE_DECAY_EPOCH 0, SPATIAL_GRID 4, PROJECTOR bottleneck).
"""
from pathlib import Path

import pytest
import yaml

from wdistill.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "wdistill" / "config" / "presets"

# (setting, part) -> (source file in the official repository, official values)
OFFICIAL = {
    ("c100-res32x4-res8x4", "wkd_l"): ("configs/cifar100/wkd_l/res32x4_res8x4.yaml",
                                       {"wkd_l": dict(lambda_l=600, tau=8, kappa=1, decay_start=150)}),
    ("c100-res32x4-res8x4", "wkd_f"): ("configs/cifar100/wkd_f/res32x4_res8x4.yaml",
                                       {"wkd_f": dict(lambda_f=0.08, gamma=4, grid=1, decay_start=150)}),
    ("c100-res32x4-res8x4", "wkd_lf"): ("configs/cifar100/wkd_lf/res32x4_res8x4.yaml",
                                        {"wkd_l": dict(lambda_l=200, tau=8, kappa=1, decay_start=150),
                                         "wkd_f": dict(lambda_f=0.08, gamma=8, grid=1, decay_start=150)}),
    ("c100-wrn40_2-shuv1", "wkd_l"): ("configs/cifar100/wkd_l/wrn40_2_shuv1.yaml",
                                      {"wkd_l": dict(lambda_l=200, tau=6, kappa=1, decay_start=150)}),
    ("c100-wrn40_2-shuv1", "wkd_f"): ("configs/cifar100/wkd_f/wrn40_2_shuv1.yaml",
                                      {"wkd_f": dict(lambda_f=0.3, gamma=3, grid=4, decay_start=150)}),
    ("c100-wrn40_2-shuv1", "wkd_lf"): ("configs/cifar100/wkd_lf/wrn40_2_shuv1.yaml",
                                       {"wkd_l": dict(lambda_l=60, tau=4, kappa=1, decay_start=150),
                                        "wkd_f": dict(lambda_f=0.5, gamma=3, grid=4, decay_start=150)}),
    ("in-r34-r18", "wkd_l"): ("configs/imagenet/r34_r18/wkd_l.yaml",
                              {"wkd_l": dict(lambda_l=30, tau=2, kappa=1, decay_start=0)}),
    ("in-r34-r18", "wkd_f"): ("configs/imagenet/r34_r18/wkd_f.yaml",
                              {"wkd_f": dict(lambda_f=0.02, gamma=2, grid=4, decay_start=0)}),
    ("in-r34-r18", "wkd_lf"): ("configs/imagenet/r34_r18/wkd_lf.yaml",
                               {"wkd_l": dict(lambda_l=10, tau=2, kappa=1, decay_start=0),
                                "wkd_f": dict(lambda_f=1.0, gamma=2, grid=4, decay_start=0)}),
    ("in-r50-mv1", "wkd_l"): ("configs/imagenet/r50_mv1/wkd_l.yaml",
                              {"wkd_l": dict(lambda_l=25, tau=2, kappa=2, decay_start=0)}),
    ("in-r50-mv1", "wkd_f"): ("configs/imagenet/r50_mv1/wkd_f.yaml",
                              {"wkd_f": dict(lambda_f=0.005, gamma=2, grid=4, decay_start=30)}),
    ("in-r50-mv1", "wkd_lf"): ("configs/imagenet/r50_mv1/wkd_lf.yaml",
                               {"wkd_l": dict(lambda_l=25, tau=2, kappa=2, decay_start=0),
                                "wkd_f": dict(lambda_f=0.005, gamma=2, grid=4, decay_start=0)}),
}
# Sinkhorn (SINKHORN.LAMBDA 0.05, ITER 10) and the CKA source of every WKD-L setting: the official
# generate_cost_matrix.sh builds both CIFAR-100 teachers' costs from the last-stage feature map
# (--feature_type feature); the ImageNet costs are logit_linear_cka.pth.
SINKHORN = dict(reg=0.05, num_iters=10)
CKA_MODE = {"c100": "features", "in": "logits"}
PROJECTOR = {"c100": "convreg", "in": "bottleneck"}  # PROJECTOR conv1x1 / the cfg.py default

# Which official setting each shipped CIFAR-100 pair follows: the published pairs their own; the
# others carry over the published pair of their kind (same / cross architecture).
PUBLISHED = {"resnet32x4-resnet8x4": "c100-res32x4-res8x4", "wrn_40_2-ShuffleV1": "c100-wrn40_2-shuv1"}
CROSS = {"vgg13-MobileNetV2", "ResNet50-MobileNetV2", "ResNet50-vgg8", "resnet32x4-ShuffleV1",
         "resnet32x4-ShuffleV2", "wrn_40_2-ShuffleV1"}
IMAGENET = {"resnet34-resnet18": "in-r34-r18", "resnet50-MobileNetV1": "in-r50-mv1"}

WKD_PRESETS = sorted(p for d in ("cifar100", "imagenet") for p in (CONFIGS / d).glob("*-*/wkd_*.yaml"))


def _setting(path: Path) -> str:
    pair = path.parent.name
    if path.parent.parent.name == "imagenet":
        return IMAGENET[pair]
    return PUBLISHED.get(pair, "c100-wrn40_2-shuv1" if pair in CROSS else "c100-res32x4-res8x4")


def test_every_pair_has_the_three_wkd_presets():
    pairs = {p.parent for p in WKD_PRESETS}
    assert len(pairs) == 15  # 13 CIFAR-100 pairs + 2 ImageNet pairs
    for pair in pairs:
        assert sorted(p.stem for p in pair.glob("wkd_*.yaml")) == ["wkd_f", "wkd_l", "wkd_lf"], pair


@pytest.mark.parametrize("path", WKD_PRESETS, ids=[f"{p.parent.name}/{p.stem}" for p in WKD_PRESETS])
def test_wkd_preset_holds_the_official_values(path):
    setting = _setting(path)
    source, expected = OFFICIAL[(setting, path.stem)]
    kind = setting.split("-")[0]
    cfg = load_config(path)
    terms = {t.name: {"weight": t.weight, **t.params} for t in cfg.loss}
    assert set(terms) == {"ce", *expected}, path
    assert terms["ce"]["weight"] == 1.0 and all(terms[n]["weight"] == 1.0 for n in expected)
    for name, values in expected.items():
        got = dict(terms[name])
        if name == "wkd_f" and got["grid"] != values["grid"]:
            # Cut only where the teacher's last map is too small for the published grid (the
            # header says so); never on a published pair.
            assert path.parent.name not in PUBLISHED and path.parent.name not in IMAGENET, path
            assert got["grid"] < values["grid"] and "instead of the published" in path.read_text(), path
            got["grid"] = values["grid"]
        assert {k: got[k] for k in values} == values, (path, name, source)
        if name == "wkd_l":
            assert {k: got[k] for k in SINKHORN} == SINKHORN, path
            assert (got["cost"], got["cka_mode"], got["solver"]) == ("cka", CKA_MODE[kind], "plain"), path
        else:
            assert got["projector"] == PROJECTOR[kind], path
    assert cfg.optim.nesterov is True, path  # the official trainer's SGD(nesterov=True)
    # The header names the file the values come from, in words that ship with the package.
    header = "".join(line[2:].strip() + " " for line in path.read_text().splitlines() if line.startswith("#"))
    assert "official WKD repository" in header and source in header.replace("  ", " "), (path, source)
    assert "REFERENCE.md" not in header, path


def test_the_published_pairs_get_the_published_grid():
    for pair, setting in {**PUBLISHED, **IMAGENET}.items():
        d = CONFIGS / ("imagenet" if setting.startswith("in") else "cifar100") / pair
        for part in ("wkd_f", "wkd_lf"):
            terms = {t["name"]: t for t in yaml.safe_load((d / f"{part}.yaml").read_text())["loss"]}
            assert terms["wkd_f"]["grid"] == OFFICIAL[(setting, part)][1]["wkd_f"]["grid"]


def test_imagenet_kd_keeps_mdistillers_plain_momentum():
    # mdistiller's mdistiller/engine/trainer.py builds SGD without Nesterov; the WKD trainer with it.
    for pair in IMAGENET:
        assert load_config(CONFIGS / "imagenet" / pair / "kd.yaml").optim.nesterov is False
        assert load_config(CONFIGS / "imagenet" / pair / "wkd_l.yaml").optim.nesterov is True
