"""Model zoo: parameter counts, reference parameter names, hook taps (checkpoint loading:
test_models_checkpoint.py).

Regenerate the key fixture (only after checking the names by hand against the reference code):
    python tests/test_models.py --write-fixture
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from builders import IMAGENET_ZOO as IMAGENET
from builders import randomize_bn
from builders import zoo_model as build

from wdistill.models import FeatureTap, available, create

FIXTURE = Path(__file__).parent / "data" / "zoo_keys.json"

CIFAR = sorted(set(available()) - IMAGENET)


pytestmark = pytest.mark.usefixtures("one_thread")


# Published parameter counts in millions (docs/methods.md; torchvision / mdistiller for ImageNet),
# with the number of decimals they are given to.
PARAMS_M = {
    "resnet8": (0.08, 2), "resnet20": (0.28, 2), "resnet56": (0.86, 2), "resnet110": (1.74, 2),
    "resnet8x4": (1.23, 2), "resnet32x4": (7.43, 2), "wrn_40_2": (2.26, 2), "wrn_16_2": (0.70, 2),
    "wrn_40_1": (0.57, 2), "vgg8": (3.97, 2), "vgg13": (9.46, 2), "MobileNetV2": (0.81, 2),
    "ShuffleV1": (0.95, 2), "ShuffleV2": (1.36, 2), "ResNet50": (23.7, 1),
    "resnet18": (11.69, 2), "resnet34": (21.80, 2), "resnet50": (25.56, 2), "MobileNetV1": (4.23, 2),
}


# --- closed-form parameter counts from the architecture definitions (independent of the code) ---

def count_resnet_cifar(depth, widths, classes=100, c_in=3):
    n = (depth - 2) // 6
    p, cin = 9 * c_in * widths[0] + 2 * widths[0], widths[0]
    for s, c in enumerate(widths[1:]):
        for i in range(n):
            p += 9 * cin * c + 2 * c + 9 * c * c + 2 * c
            if i == 0 and (s > 0 or cin != c):
                p += cin * c + 2 * c  # 1x1 projection + BN
            cin = c
    return p + (cin + 1) * classes


def count_wrn(depth, k, classes=100, c_in=3):
    n = (depth - 4) // 6
    p, cin = 9 * c_in * 16, 16
    for c in (16 * k, 32 * k, 64 * k):
        for i in range(n):
            p += 2 * cin + 9 * cin * c + 2 * c + 9 * c * c + (cin * c if cin != c else 0)
            cin = c
    return p + 2 * cin + (cin + 1) * classes


def count_vgg(cfg, classes=100, c_in=3):
    p, cin = 0, c_in
    for block in cfg:
        for v in block:
            p += 9 * cin * v + v + 2 * v  # conv with bias + BN
            cin = v
    return p + (cin + 1) * classes


S16, S64 = [16, 16, 32, 64], [32, 64, 128, 256]
VGG = {"vgg8": [[64], [128], [256], [512], [512]],
       "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
       "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
       "vgg16": [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
       "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4]}
FORMULA = {
    **{f"resnet{d}": (lambda d=d: count_resnet_cifar(d, S16)) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": lambda: count_resnet_cifar(8, S64), "resnet32x4": lambda: count_resnet_cifar(32, S64),
    **{f"wrn_{d}_{k}": (lambda d=d, k=k: count_wrn(d, k)) for d in (16, 40) for k in (1, 2)},
    **{name: (lambda cfg=cfg: count_vgg(cfg)) for name, cfg in VGG.items()},
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def size_of(name):
    return 64 if name in IMAGENET else 32


def test_every_model_has_a_reference_count():
    assert set(available()) == set(PARAMS_M) | set(FORMULA)


@pytest.mark.parametrize("name", sorted(PARAMS_M))
def test_param_count_matches_published(name):
    ref, dec = PARAMS_M[name]
    assert abs(n_params(build(name)) / 1e6 - ref) <= 0.5 * 10 ** -dec + 1e-9


@pytest.mark.parametrize("name", sorted(FORMULA))
def test_param_count_matches_closed_form(name):
    if name in PARAMS_M:  # the formula itself agrees with the published figure
        ref, dec = PARAMS_M[name]
        assert abs(FORMULA[name]() / 1e6 - ref) <= 0.5 * 10 ** -dec + 1e-9
    assert n_params(build(name)) == FORMULA[name]()


def test_in_channels_changes_only_the_stem():
    assert n_params(create("resnet8", in_channels=1)) == count_resnet_cifar(8, S16, c_in=1)
    assert n_params(create("wrn_16_2", in_channels=1)) == count_wrn(16, 2, c_in=1)
    assert n_params(create("vgg8", in_channels=1, num_classes=10)) == count_vgg(VGG["vgg8"], 10, 1)


# --- reference parameter names ------------------------------------------------------------------

def signature(model):
    lines = sorted(f"{k}:{list(v.shape)}" for k, v in model.state_dict().items())
    return {"num_keys": len(lines), "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest()}


@pytest.mark.parametrize("name", sorted(available()))
def test_state_dict_keys_pinned(name):
    pinned = json.loads(FIXTURE.read_text())
    assert name in pinned, f"{name} has no pinned keys: check its names, then regenerate the fixture"
    assert signature(build(name)) == pinned[name]


SPOT = {  # names and shapes as the reference code spells them
    "wrn_40_2": {"block1.layer.0.bn1.weight": (16,), "block1.layer.0.convShortcut.weight": (32, 16, 1, 1),
                 "block2.layer.0.convShortcut.weight": (64, 32, 1, 1), "block3.layer.5.conv2.weight": (128, 128, 3, 3),
                 "bn1.running_var": (128,), "fc.weight": (100, 128)},
    "wrn_40_1": {"block2.layer.0.convShortcut.weight": (32, 16, 1, 1)},
    "resnet8x4": {"layer1.0.downsample.0.weight": (64, 32, 1, 1), "layer3.0.bn2.weight": (256,),
                  "fc.weight": (100, 256)},
    "vgg13": {"block0.0.bias": (64,), "block0.3.weight": (64, 64, 3, 3), "block0.4.running_mean": (64,),
              "block4.3.weight": (512, 512, 3, 3), "classifier.weight": (100, 512)},
    "MobileNetV2": {"conv1.0.weight": (16, 3, 3, 3), "blocks.0.0.conv.0.weight": (16, 16, 1, 1),
                    "blocks.1.0.conv.3.weight": (48, 1, 3, 3), "blocks.6.0.conv.7.weight": (160,),
                    "conv2.0.weight": (1280, 160, 1, 1), "classifier.0.weight": (100, 1280)},
    "ShuffleV1": {"conv1.weight": (24, 3, 1, 1), "layer1.0.conv1.weight": (54, 24, 1, 1),
                  "layer1.0.conv3.weight": (216, 18, 1, 1), "layer2.0.conv1.weight": (60, 80, 1, 1),
                  "layer3.3.bn3.weight": (960,), "linear.weight": (100, 960)},
    "ShuffleV2": {"layer1.0.conv1.weight": (24, 1, 3, 3), "layer1.0.conv5.weight": (58, 58, 1, 1),
                  "layer2.7.conv3.weight": (116, 116, 1, 1), "conv2.weight": (1024, 464, 1, 1),
                  "bn2.weight": (1024,), "linear.weight": (100, 1024)},
    "ResNet50": {"conv1.weight": (64, 3, 3, 3), "layer1.0.shortcut.0.weight": (256, 64, 1, 1),
                 "layer4.2.bn3.weight": (2048,), "linear.weight": (100, 2048)},
    "resnet18": {"conv1.weight": (64, 3, 7, 7), "layer2.0.downsample.1.running_var": (128,),
                 "layer4.1.conv2.weight": (512, 512, 3, 3), "fc.weight": (1000, 512)},
    "resnet50": {"layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer2.0.conv2.weight": (128, 128, 3, 3),
                 "layer4.2.conv3.weight": (2048, 512, 1, 1), "fc.weight": (1000, 2048)},
    "MobileNetV1": {"model.0.0.weight": (32, 3, 3, 3), "model.1.0.weight": (32, 1, 3, 3),
                    "model.1.3.weight": (64, 32, 1, 1), "model.13.4.running_mean": (1024,),
                    "fc.weight": (1000, 1024)},
}
KEY_COUNTS = {"resnet18": 122, "resnet34": 218, "resnet50": 320}  # torchvision state_dicts


@pytest.mark.parametrize("name", sorted(SPOT))
def test_spot_check_reference_names(name):
    sd = build(name).state_dict()
    for key, shape in SPOT[name].items():
        assert key in sd, f"{name}: missing reference key {key}"
        assert tuple(sd[key].shape) == shape, key
    if name in KEY_COUNTS:
        assert len(sd) == KEY_COUNTS[name]


# --- taps ---------------------------------------------------------------------------------------

CHANNELS = {
    **{f"resnet{d}": S16 for d in (8, 14, 20, 32, 44, 56, 110)}, "resnet8x4": S64, "resnet32x4": S64,
    **{f"wrn_{d}_{k}": [16, 16 * k, 32 * k, 64 * k] for d in (16, 40) for k in (1, 2)},
    **{v: [64, 128, 256, 512, 512] for v in VGG},
    "MobileNetV2": [16, 12, 16, 48, 160], "ShuffleV1": [24, 240, 480, 960],
    "ShuffleV2": [24, 116, 232, 464], "ResNet50": [64, 256, 512, 1024, 2048],
    "resnet18": [64, 64, 128, 256, 512], "resnet34": [64, 64, 128, 256, 512],
    "resnet50": [64, 256, 512, 1024, 2048], "MobileNetV1": [32, 128, 256, 512, 1024],
}
SPATIAL = {  # at 32x32 (CIFAR) / 64x64 (ImageNet) input
    **{n: [32, 32, 16, 8] for n in CHANNELS if n.startswith(("resnet", "wrn")) and n not in IMAGENET},
    **{v: [32, 16, 8, 4, 4] for v in VGG}, "MobileNetV2": [16, 16, 8, 4, 2],
    "ShuffleV1": [32, 16, 8, 4], "ShuffleV2": [32, 16, 8, 4], "ResNet50": [32, 32, 16, 8, 4],
    **{n: [32, 16, 8, 4, 2] for n in IMAGENET},
}
# Points whose feats are ReLU outputs (WRN stages are raw residual sums, MobileNetV2 stages are
# linear bottlenecks, as in the reference code).
POST_RELU = {n: range(len(CHANNELS[n])) for n in CHANNELS}
POST_RELU.update({n: [] for n in CHANNELS if n.startswith("wrn")}, MobileNetV2=[0])


def classifier_of(model):
    head = dict(model.named_modules())[model.tap_spec().embed.split(":")[0]]
    return [m for m in head.modules() if isinstance(m, nn.Linear)][-1]  # MobileNetV2: Sequential


def shuffle2(x):
    n, c, h, w = x.shape
    return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


@pytest.mark.parametrize("name", sorted(available()))
def test_tap_shapes_and_preactivations(name):
    model, s = randomize_bn(build(name)), size_of(name)
    with torch.no_grad():
        out = FeatureTap(model)(torch.randn(2, 3, s, s))
    feats, pre = out["feats"], out["preact_feats"]
    assert len(feats) == len(pre) == len(CHANNELS[name])
    assert [f.shape[1] for f in feats] == CHANNELS[name]
    assert [f.shape[-1] for f in feats] == SPATIAL[name]
    assert all(a.shape == b.shape for a, b in zip(feats, pre))
    assert out["embed"].shape == (2, classifier_of(model).in_features)
    assert out["logits"].shape == (2, classifier_of(model).out_features)
    for i in POST_RELU[name]:
        assert feats[i].min() >= 0 and pre[i].min() < 0, f"{name} point {i}"
        expect = F.relu(pre[i])
        if name == "ShuffleV2" and i > 0:  # the reference takes the pre-activation before the shuffle
            expect = shuffle2(expect)
        assert torch.equal(feats[i], expect), f"{name} point {i}"


@pytest.mark.parametrize("name", sorted(available()))
def test_tapped_tensors_are_not_modified_in_place(name):
    """Copies taken the moment each hook fires equal the tensors handed out after the forward."""
    model, s = randomize_bn(build(name)), size_of(name)
    tap = FeatureTap(model)
    copies = {}
    modules = dict(model.named_modules())
    for point in set(tap.spec.feats) | set(tap.spec.preact):
        path, _, where = point.partition(":")
        if where == "in":
            modules[path].register_forward_pre_hook(lambda m, a, p=point: copies.__setitem__(p, a[0].clone()))
        else:
            modules[path].register_forward_hook(lambda m, a, o, p=point: copies.__setitem__(p, o.clone()))
    with torch.no_grad():
        out = tap(torch.randn(2, 3, s, s))
    for point, t in zip(tap.spec.feats + tap.spec.preact, out["feats"] + out["preact_feats"]):
        assert torch.equal(t, copies[point]), f"{name}: {point} was modified after capture"


def _compare(out, feats, pre, embed, logits):
    for a, b in zip(out["feats"], feats, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(out["preact_feats"], pre, strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(out["embed"], embed, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["logits"], logits, rtol=0, atol=1e-5)


def test_hooks_match_hand_forward_resnet8():
    m, x = randomize_bn(build("resnet8")), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = FeatureTap(m)(x)
        stem_pre = m.bn1(m.conv1(x))
        feats, pre, h = [F.relu(stem_pre)], [stem_pre], F.relu(stem_pre)
        for layer in (m.layer1, m.layer2, m.layer3):
            (b,) = layer  # resnet8: one block per stage
            z = b.bn2(b.conv2(F.relu(b.bn1(b.conv1(h))))) + (h if b.downsample is None else b.downsample(h))
            pre.append(z)
            h = F.relu(z)
            feats.append(h)
        embed = h.mean((2, 3))
        _compare(out, feats, pre, embed, m.fc(embed))


def test_hooks_match_hand_forward_wrn_16_2():
    m, x = randomize_bn(build("wrn_16_2")), torch.randn(2, 3, 32, 32)

    def block(b, h):  # pre-activation unit, Zagoruyko & Komodakis fig. 1(c)
        a = F.relu(b.bn1(h))
        r = b.conv2(F.relu(b.bn2(b.conv1(a))))
        return r + (h if b.convShortcut is None else b.convShortcut(a))

    with torch.no_grad():
        out = FeatureTap(m)(x)
        h = m.conv1(x)
        feats = [h]
        for stage in (m.block1, m.block2, m.block3):
            for b in stage.layer:
                h = block(b, h)
            feats.append(h)
        pre = [feats[0], m.block2.layer[0].bn1(feats[1]), m.block3.layer[0].bn1(feats[2]), m.bn1(feats[3])]
        embed = F.relu(pre[3]).mean((2, 3))
        _compare(out, feats, pre, embed, m.fc(embed))


def test_hooks_match_hand_forward_vgg8():
    m, x = randomize_bn(build("vgg8")), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = FeatureTap(m)(x)
        h, feats, pre = x, [], []
        for i in range(5):
            conv, bn = getattr(m, f"block{i}")  # vgg8: one conv per block
            pre.append(bn(conv(h)))
            feats.append(F.relu(pre[-1]))
            h = F.max_pool2d(feats[-1], 2) if i < 3 else feats[-1]  # block 3 unpooled at 32x32
        embed = h.mean((2, 3))
        _compare(out, feats, pre, embed, m.classifier(embed))


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_models_take_one_channel_28x28(name):
    model = build(name, in_channels=1, num_classes=10).eval()
    with torch.no_grad():
        out = FeatureTap(model)(torch.randn(2, 1, 28, 28))
    assert out["logits"].shape == (2, 10) and torch.isfinite(out["logits"]).all()
    sizes = [f.shape[-1] for f in out["feats"]]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < 28


def test_imagenet_resnet_takes_one_channel():
    out = FeatureTap(build("resnet18", in_channels=1, num_classes=5).eval())(torch.randn(1, 1, 64, 64))
    assert out["logits"].shape == (1, 5)


# --- a user model outside the zoo ---------------------------------------------------------------

class UserBlock(nn.Module):  # torchvision style, in-place residual add and ReLU
    def __init__(self, c_in, c, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if stride == 1 and c_in == c else nn.Sequential(
            nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += identity
        return self.relu(out)


class UserResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(UserBlock(8, 8, 1))
        self.layer2 = nn.Sequential(UserBlock(8, 16, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 7)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_user_model_with_tap_spec_dict():
    torch.manual_seed(0)
    m, x = randomize_bn(UserResNet()), torch.randn(2, 3, 16, 16)
    tap = FeatureTap(m, {"feats": ["maxpool", "layer1", "layer2"], "embed": "fc:in"})
    with torch.no_grad():
        out = tap(x)
        tap.remove()
        s = m.maxpool(F.relu(m.bn1(m.conv1(x))))
        f1 = m.layer1(s)
        f2 = m.layer2(f1)
    assert not tap._store  # hooks gone: the calls above captured nothing
    for a, b in zip(out["feats"], [s, f1, f2], strict=True):
        assert torch.equal(a, b)
    assert out["preact_feats"] is out["feats"]  # no preact given: reuse feats
    torch.testing.assert_close(out["embed"], f2.mean((2, 3)), rtol=0, atol=1e-6)
    assert out["logits"].shape == (2, 7)


def test_user_model_bad_spec_errors():
    m = UserResNet()
    with pytest.raises(ValueError, match=r"no module 'layer3'.*named_modules"):
        FeatureTap(m, {"feats": ["layer1", "layer3"], "embed": "fc:in"})
    with pytest.raises(ValueError, match="suffix"):
        FeatureTap(m, {"feats": ["layer1:pre"], "embed": "fc:in"})
    tap = FeatureTap(m)  # no spec: found at the first call, where the resolution changes
    tap(torch.randn(1, 3, 16, 16))
    assert (tap.spec.feats, tap.spec.embed) == (["relu", "layer1", "layer2"], "fc:in")


if __name__ == "__main__" and "--write-fixture" in sys.argv:
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps({n: signature(build(n)) for n in available()}, indent=1) + "\n")
    print(f"wrote {FIXTURE}")
