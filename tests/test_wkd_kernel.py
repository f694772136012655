"""WKD-L's ``kernel`` option: the compiled forms compute what the eager one does (value and student gradient, through
inductor on the CPU), each form asks torch.compile for its own mode, a run with a compiled kernel trains as the eager
one, and a kernel that cannot hold the configured solver is refused when the term is built."""
import pytest
import torch
from builders import random_teacher, small_run

from wdistill import losses, ot
from wdistill.config import load_config
from wdistill.engine import Trainer
from wdistill.errors import ConfigError
from wdistill.losses.wkd import wkd_l as W


@pytest.fixture
def fresh_kernels():
    """compiled_parts keeps one wrapper per mode for the process: a test that swaps torch.compile starts and ends
    without one."""
    W.compiled_parts.cache_clear()
    yield
    W.compiled_parts.cache_clear()


def _term_value_and_grad(kernel: str, B: int = 16, C: int = 10):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(B, C, generator=g).requires_grad_(True)
    t = torch.randn(B, C, generator=g)
    y = torch.randint(0, C, (B,), generator=g)
    m = torch.rand(C, C, generator=g)
    cost = ot.cka_cost(((m + m.T) / 2).fill_diagonal_(1.0))
    term = losses.create("wkd_l", lambda_l=30.0, tau=4.0, cost=cost, kernel=kernel)
    value = term({"logits": s}, {"logits": t}, {"target": y, "epoch": 0, "num_epochs": 10})
    value.backward()
    return value.detach(), s.grad


def test_the_compiled_kernel_computes_the_eager_loss_and_gradient(fresh_kernels):
    # inductor's real code generation (C++ on the CPU): about 10 s on the 2-core machine
    v0, g0 = _term_value_and_grad("eager")
    v1, g1 = _term_value_and_grad("compiled")
    assert v1.item() == pytest.approx(v0.item(), rel=1e-5)
    assert (g1 - g0).norm() <= 1e-5 * g0.norm()
    assert g0.norm() > 0


def test_each_kernel_asks_for_its_own_compile_mode(fresh_kernels, monkeypatch):
    modes = []
    real = torch.compile

    def spy(fn, mode=None, **kw):
        modes.append((fn, mode))
        return real(fn, backend="eager")  # traced and run as written: the mode is what is checked here
    monkeypatch.setattr(torch, "compile", spy)
    for kernel in ("compiled", "cuda_graph", "compiled"):
        v, _ = _term_value_and_grad(kernel)
        assert v.item() == pytest.approx(_term_value_and_grad("eager")[0].item(), rel=1e-6)
    # one wrapper per mode, made once: a second term with the same kernel compiles nothing new
    assert modes == [(W.wkd_l_parts, "default"), (W.wkd_l_parts, "reduce-overhead")]


def test_a_run_with_the_compiled_kernel_trains_as_the_eager_one(tmp_path, fresh_kernels, dynamo_graphs):
    teacher = {"model": "resnet8", "checkpoint": random_teacher(tmp_path / "teacher.pt")}
    runs = {}
    for kernel in ("eager", "compiled"):
        loss = [{"name": "ce", "weight": 1.0}, {"name": "wkd_l", "weight": 1.0, "lambda_l": 30.0, "tau": 4.0,
                                                  "kernel": kernel}]
        cfg = load_config(small_run(tmp_path, seed=2, name=kernel, teacher=teacher, loss=loss, epochs=2,
                                    extra_train={"grad_share": False}))
        runs[kernel] = Trainer(cfg, log=lambda *_: None)
        runs[kernel].fit()
    # the loss went through dynamo: a graph holding the Sinkhorn loop's matrix products (in the autograd Function's
    # forward body), not a model's convolutions
    code = [gm.print_readable(print_output=False) for gm in dynamo_graphs]
    assert code and any("addmm" in c and "conv2d" not in c for c in code)
    for a, b in zip(runs["eager"].history, runs["compiled"].history, strict=True):
        for k in ("train_loss", "train_wkd_l", "test_top1"):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), (k, a[k], b[k])


@pytest.mark.parametrize("kw, says", [({"kernel": "fast"}, "unknown kernel 'fast'"),
                                      ({"kernel": "compiled", "solver": "log"}, "needs solver 'plain'")])
def test_a_kernel_that_cannot_run_is_refused_when_the_term_is_built(kw, says):
    with pytest.raises(ConfigError, match=says):
        losses.create("wkd_l", **kw)
