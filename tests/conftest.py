import os

import pytest
import torch


def _threads() -> int:
    """OMP_NUM_THREADS, when set, wins: on a loaded machine one thread per process is far faster. Otherwise at
    most 2, and under pytest-xdist (`make test`) the cores are shared out between the workers."""
    if os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"])
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    return max(1, min(2, (os.cpu_count() or 1) // workers))


def pytest_configure(config):
    """Set each test process's threads, and export them so that the trainings the tests start as subprocesses
    take no more. Not in pytest-xdist's controller: it runs no test, and its workers inherit its environment, so
    a count chosen there (before the workers exist) would oversubscribe the cores."""
    if config.getoption("numprocesses", default=None) and "PYTEST_XDIST_WORKER" not in os.environ:
        return
    os.environ["OMP_NUM_THREADS"] = str(_threads())
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


class Graphs(list):
    """The FX graphs dynamo handed the backend, in order; ``modules``: those nn.Module.compile was called on."""

    def __init__(self):
        super().__init__()
        self.modules = []


@pytest.fixture
def dynamo_graphs(monkeypatch) -> Graphs:
    """torch.compile and nn.Module.compile with a backend that records the FX graphs dynamo hands it and runs them
    as traced: what can go wrong in our use of compile (a hook's output lost, a wrapped module saved) happens before
    code generation, which inductor takes minutes for on a 2-core CPU. The graphs, filled as they come."""
    graphs = Graphs()

    def recording(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def compile_in_place(module, **kw):
        graphs.modules.append(module)
        return compile_method(module, backend=recording)
    compile_fn, compile_method = torch.compile, torch.nn.Module.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_fn(model, backend=recording))
    monkeypatch.setattr(torch.nn.Module, "compile", compile_in_place)
    return graphs


def convolves(gm) -> bool:
    """Whether the FX graph ``gm`` holds a 2-d convolution (a model's body was traced, not a stray helper)."""
    return any("conv2d" in str(n.target) for n in gm.graph.nodes)


def require_importable(name: str):
    """Import ``name`` for a module of tests that needs it (torchvision, timm, pycocotools): skip the
    module where it is not importable, except under WDISTILL_REQUIRE_TV=1 (the venv of
    ``scripts/tv_venv.sh``, which CI runs), where a missing package is a failure."""
    try:
        return __import__(name)
    except Exception as e:  # ImportError, or a torchvision built for another torch (RuntimeError)
        if os.environ.get("WDISTILL_REQUIRE_TV") == "1":
            pytest.fail(f"WDISTILL_REQUIRE_TV=1 but {name} is not importable: {e}", pytrace=False)
        pytest.skip(f"{name} not importable: {e}", allow_module_level=True)


@pytest.fixture
def fmnist_dir():
    if not os.path.isdir(FMNIST_DIR) and not os.environ.get("WDISTILL_FMNIST"):
        if os.environ.get("CI"):
            pytest.fail(
                "CI must install Debian's dataset-fashion-mnist (`make test`, i.e. scripts/setup.sh --test, does)"
            )
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return os.environ.get("WDISTILL_FMNIST", FMNIST_DIR)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a shared, loaded 2-core CPU spinning OpenMP
    workers made such modules ~8x slower. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def plant_term():
    """``plant_term(name, fn, recipe=None, weight=1.0)``: register a teacher-free loss term ``name`` whose value is
    ``fn(student_outputs, batch)`` for one test; with ``recipe``, also publish a recipe of that name (CE + the
    term at ``weight``). Returns the recipe's name, else the term's; both are removed after the test."""
    from wdistill import losses
    from wdistill.losses import recipes as published

    terms, recipes = [], []

    def plant(name: str, fn, recipe: str | None = None, weight: float = 1.0) -> str:
        class Planted(losses.Term):
            """A term planted by a test."""
            requires_teacher = False

            def forward(self, student, teacher, batch):
                return fn(student, batch)
        Planted.name = name
        losses.register(Planted)
        terms.append(name)
        if recipe is not None:
            published.publish(recipe, label=recipe.title(), terms=[published.ce(), {"name": name, "weight": weight}],
                              grid=[{}])
            recipes.append(recipe)
        return recipe or name

    yield plant
    for recipe in recipes:
        published.unpublish(recipe)
    for name in terms:
        losses.registry._TERMS.pop(name)
