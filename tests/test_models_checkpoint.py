"""Checkpoint loading for the model zoo: wrappers, 'module.' prefix, strict round trips, and
error messages that name the architecture the checkpoint belongs to."""
from __future__ import annotations

import argparse

import pytest
import torch
from builders import IMAGENET_ZOO as IMAGENET
from builders import randomize_bn
from builders import zoo_model as build

from wdistill.models import available, create, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", sorted(available()))
def test_state_dict_round_trip(name, tmp_path):
    src, s = randomize_bn(build(name, num_classes=10)), 32 if name in IMAGENET else 16
    x = torch.randn(2, 3, s, s)
    torch.save({"epoch": 3, "model": src.state_dict()}, tmp_path / "ckpt.pth")
    with torch.no_grad():
        ref = src(x)
        for ckpt in (src.state_dict(), tmp_path / "ckpt.pth"):
            torch.manual_seed(123)  # different init from src
            fresh = create(name, num_classes=10)
            assert not torch.equal(fresh.eval()(x), ref)
            assert torch.equal(load_checkpoint(fresh, ckpt).eval()(x), ref)


def test_checkpoint_wrappers_and_module_prefix():
    src = randomize_bn(build("resnet8"))
    x = torch.randn(2, 3, 16, 16)
    for ckpt in ({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}},
                 {"model": src.state_dict(), "best_acc": 71.2}):
        m = load_checkpoint(create("resnet8"), ckpt).eval()
        assert torch.equal(m(x), src(x))


def test_checkpoint_mismatch_names_the_right_model():
    with pytest.raises(ValueError) as e:
        load_checkpoint(create("resnet8"), {"model": create("resnet8x4", num_classes=10).state_dict()})
    msg = str(e.value)
    assert "resnet8 (ResNetCifar)" in msg and "another shape" in msg and "resnet8x4" in msg
    with pytest.raises(ValueError) as e:
        load_checkpoint(create("wrn_40_2"), create("wrn_16_2").state_dict(), name="wrn_40_2")
    msg = str(e.value)
    assert "wrn_40_2" in msg and "120 missing keys" in msg and "block1.layer.2." in msg
    assert "matches zoo model wrn_16_2" in msg
    with pytest.raises(ValueError, match=r"build it with create\('resnet8', num_classes=100, in_channels=1\)"):
        load_checkpoint(create("resnet8", num_classes=10), create("resnet8", in_channels=1).state_dict())
    sd = create("resnet8").state_dict()
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"1 unexpected keys \(e.g. extra.weight\).*no zoo model"):
        load_checkpoint(create("resnet8"), sd)


def test_checkpoint_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(create("resnet8"), tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="neither a state_dict"):
        load_checkpoint(create("resnet8"), {"epoch": 1, "acc": 0.5})


def test_pickled_extras_need_trust(tmp_path):
    src = randomize_bn(build("resnet8"))
    torch.save({"model": src.state_dict(), "opt": argparse.Namespace(lr=0.05)}, tmp_path / "c.pth")
    with pytest.raises(ValueError, match=r"trusted=True"):
        load_checkpoint(create("resnet8"), tmp_path / "c.pth")
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(load_checkpoint(create("resnet8"), tmp_path / "c.pth", trusted=True).eval()(x), src(x))


def test_old_checkpoint_without_num_batches_tracked_loads():
    src = randomize_bn(build("resnet8"))
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(load_checkpoint(create("resnet8"), sd).eval()(x), src(x))
