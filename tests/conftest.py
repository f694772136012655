import os

import pytest
import torch

# OMP_NUM_THREADS, when set, wins: on a loaded machine one thread per process is far faster.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


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
