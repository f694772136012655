"""Issue 15 point 8: the WKD-L cost shows a progress bar only while it is really built."""
import torch
import torch.nn as nn

from wdistill.losses import SetupContext
from wdistill.losses.wkd.cost import load_or_build_cka


class _Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)

    def tap(self, x):
        return {"feats": [torch.relu(self.conv(x))], "logits": torch.zeros(len(x), 3)}


class _Batches:
    """A loader-like iterable with a length (as the trainer passes)."""

    def __init__(self, n=12, bs=4):
        g = torch.Generator().manual_seed(0)
        self.images, self.targets = torch.randn(n, 1, 4, 4, generator=g), torch.arange(n) % 3
        self.bs = bs

    def __len__(self):
        return (len(self.targets) + self.bs - 1) // self.bs

    def __iter__(self):
        for i in range(0, len(self.targets), self.bs):
            yield {"image": self.images[i:i + self.bs], "target": self.targets[i:i + self.bs],
                   "index": torch.arange(i, min(i + self.bs, len(self.targets)))}


def _ctx(teacher, cache):
    return SetupContext(student_out={}, teacher_out={}, num_classes=3, num_samples=12,
                        train_targets=torch.arange(12) % 3, device=torch.device("cpu"), teacher=teacher,
                        teacher_tap=teacher.tap, train_batches=_Batches, cache_dir=str(cache))


def test_bar_only_when_the_cost_is_built_and_it_has_a_total(tmp_path, capsys):
    teacher = _Teacher()
    built = load_or_build_cka(_ctx(teacher, tmp_path), "features", None, progress=True)
    err = capsys.readouterr().err
    assert "WKD cost: teacher features" in err
    assert "0/3" in err  # a real total (3 batches), not a bare "0it"
    assert "0it" not in err
    cached = load_or_build_cka(_ctx(teacher, tmp_path), "features", None, progress=True)
    out = capsys.readouterr()
    assert torch.equal(built, cached)
    assert "loaded the CKA matrix" in out.out
    assert "WKD cost" not in out.err and "it/s" not in out.err  # no bar for a cache hit


def test_default_progress_stays_off_the_log_when_not_a_terminal(tmp_path, capsys):
    load_or_build_cka(_ctx(_Teacher(), tmp_path), "features", None)  # pytest's capture is not a tty
    assert "WKD cost" not in capsys.readouterr().err
