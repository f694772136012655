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


def _step_with_overflow(fused: bool | None) -> tuple[list[torch.Tensor], float]:
    """Six float16 steps with loss scaling through the Stepper's calls (scale, unscale_, step, update); the fourth
    overflows. Returns the parameters and momentum buffers after, and the scale."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=fused)
    precision = Precision("fp16", torch.device("cpu"))
    scaler = precision.scaler()
    for i in range(6):
        with precision.autocast():
            loss = torch.nn.functional.cross_entropy(net(x), y) * (float("inf") if i == 3 else 1.0)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    return [p.detach() for p in net.parameters()] + [opt.state[p]["momentum_buffer"] for p in net.parameters()], \
        scaler.get_scale()


def test_fp16_steps_fused_with_the_unfused_update_and_skips_an_overflow_the_same(tmp_path):
    """Under float16 loss scaling the optimiser is fused: its step reads the scaler's overflow flag on the device
    (an unfused one makes the scaler read it on the host every step: tests/test_host_sync.py). The update, and the
    step skipped at an overflow, equal the unfused ones; the Trainer builds it so, and only for float16."""
    fused, unfused = _step_with_overflow(True), _step_with_overflow(None)
    assert fused[1] == unfused[1] == 2.0 ** 15  # halved once, at the overflow
    for a, b in zip(fused[0], unfused[0]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert Precision("fp16", torch.device("cpu")).fused_optimizer is True
    assert Precision("bf16", torch.device("cpu")).fused_optimizer is None

    from wdistill.data import bundled_sample
    from wdistill.engine import Trainer
    for precision, expected in (("fp16", True), ("fp32", None)):
        cfg = load_config({"run": {"name": precision, "out_dir": str(tmp_path), "device": "cpu"},
                           "data": {"name": "fmnist_sample", "batch_size": 32}, "student": {"model": "resnet8"},
                           "loss": [{"name": "ce"}], "optim": {"epochs": 1},
                           "train": {"precision": precision, "progress": False}})
        data = (bundled_sample("train").subset(slice(0, 64)), bundled_sample("test").subset(slice(0, 32)))
        trainer = Trainer(cfg, data=data, log=lambda m: None)
        summary = trainer.fit()
        assert trainer.optimizer.param_groups[0]["fused"] is expected and summary["final_top1"] >= 0


def test_a_checkpoint_of_another_precision_resumes_with_this_runs_optimiser_step(tmp_path):
    """`precision: auto` follows the device: a run saved in bfloat16 or float32 (unfused optimiser) may resume on an
    older GPU in float16 (fused). The checkpoint's optimiser state must not bring its `fused` flag along: a fused
    optimiser's GradScaler hands an unfused step the overflow flag, which it refuses (an AssertionError)."""
    from types import SimpleNamespace

    from wdistill.engine.state import restore
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    saved = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(3, 4)).sum().backward()
    saved.step()
    precision = Precision("fp16", torch.device("cpu"))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, fused=precision.fused_optimizer)
    trainer = SimpleNamespace(run_dir=tmp_path, distiller=torch.nn.Module(), optimizer=opt, scaler=precision.scaler())
    restore(trainer, {"distiller": {}, "optimizer": saved.state_dict(), "best_top1": 0.0, "history": [],
                      "stages_done": [], "epoch": 1})
    assert opt.param_groups[0]["fused"] is True
    torch.testing.assert_close(opt.state[net.weight]["momentum_buffer"], saved.state[net.weight]["momentum_buffer"])
    with precision.autocast():
        loss = net(torch.randn(3, 4)).float().sum()
    trainer.scaler.scale(loss).backward()
    trainer.scaler.step(opt)  # raised AssertionError("Expected grad_scale and found_inf to be None") before
    trainer.scaler.update()
