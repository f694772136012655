"""train.precision and train.tf32 (issue 26): what ``auto`` becomes on each device, loss scaling
for float16 only, a precision the GPU lacks refused by name, and the CUDA switches really set.
(The forward's dtype inside a real run: tests/test_claims.py::test_precision_really_autocasts_the_forward.)"""
import pytest
import torch

from wdistill.config import load_config
from wdistill.engine.precision import Precision, configure_backends, resolve_precision
from wdistill.errors import ConfigError

CUDA = torch.device("cuda")  # only a name here: nothing runs on it


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA device whose bfloat16 support the test sets."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")

    def has_bf16(flag):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: flag)
    return has_bf16


def test_auto_is_bf16_on_ampere_fp16_on_older_gpus_fp32_on_cpu(gpu):
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    gpu(True)
    assert resolve_precision("auto", CUDA) == "bf16"
    gpu(False)
    assert resolve_precision("auto", CUDA) == "fp16"
    with pytest.raises(ConfigError, match="Tesla V100 has no bfloat16; use fp16"):
        resolve_precision("bf16", CUDA)


def test_only_float16_scales_the_loss_and_fp32_has_no_autocast():
    cpu = torch.device("cpu")
    assert Precision("fp16", cpu).scaler().is_enabled()
    assert not Precision("bf16", cpu).scaler().is_enabled() and not Precision("auto", cpu).scaler().is_enabled()
    x = torch.randn(4, 4)
    with Precision("fp32", cpu).autocast():
        assert (x @ x).dtype == torch.float32
    with Precision("bf16", cpu).autocast():
        assert (x @ x).dtype == torch.bfloat16
    with Precision("fp16", cpu).autocast():
        assert (x @ x).dtype == torch.float16


def test_fp16_loss_scaling_keeps_gradients_that_underflow_unscaled():
    """The reason for the scaler: a gradient of 1e-8 is zero in float16 (smallest subnormal 6e-8)
    and survives when the loss is scaled by 2^16 and the gradient unscaled after."""
    cpu = torch.device("cpu")

    def weight_grad(scaled: bool) -> torch.Tensor:
        torch.manual_seed(0)
        lin = torch.nn.Linear(4, 1, bias=False)
        opt = torch.optim.SGD(lin.parameters(), lr=0.1)
        scaler = Precision("fp16", cpu).scaler() if scaled else torch.amp.GradScaler("cpu", enabled=False)
        with Precision("fp16", cpu).autocast():
            out = lin(torch.ones(1, 4))
        scaler.scale(out.float().sum() * 1e-8).backward()
        scaler.unscale_(opt)
        return lin.weight.grad

    assert torch.all(weight_grad(scaled=False) == 0)
    assert torch.allclose(weight_grad(scaled=True), torch.full((1, 4), 1e-8), rtol=1e-2)


@pytest.mark.parametrize("tf32", [False, True])
def test_cuda_switches(tf32):
    before = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        configure_backends(torch.device("cpu"), tf32)
        assert (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32) == before  # the CPU is left alone
        configure_backends(CUDA, tf32)
        assert torch.backends.cudnn.benchmark
        assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_config_names_the_choices_and_maps_the_old_amp_key():
    base = {"student": {"model": "resnet8"}}
    assert load_config(base).train.precision == "auto" and load_config(base).train.tf32 is False
    assert load_config(base | {"train": {"amp": True}}).train.precision == "bf16"
    assert load_config(base | {"train": {"amp": False}}).train.precision == "fp32"
    with pytest.raises(ConfigError, match="precision.*'auto', 'fp32', 'bf16' or 'fp16'"):
        load_config(base, ["train.precision=half"])
    with pytest.raises(ConfigError, match="keep precision"):
        load_config(base | {"train": {"amp": True, "precision": "fp16"}})
