"""The Python API on models that are not in the zoo (described by module paths)."""
import json

import torch
import torch.nn as nn

import wdistill
from wdistill.data import bundled_sample


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class TinyNet(nn.Module):
    """A user's own network: no tap_spec, names of its own choosing."""

    def __init__(self, width, classes=10, channels=1):
        super().__init__()
        self.stem = Block(channels, width, 1)
        self.stage1 = Block(width, width, 1)
        self.stage2 = Block(width, 2 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.pool(self.stage2(self.stage1(self.stem(x)))).flatten(1))


TAPS = {"feats": ["stem", "stage1", "stage2"], "preact": ["stem.bn", "stage1.bn", "stage2.bn"], "embed": "head:in"}


def test_distill_user_models_with_feature_methods(tmp_path):
    torch.manual_seed(0)
    train, test = bundled_sample("train").subset(slice(0, 512)), bundled_sample("test").subset(slice(0, 200))
    teacher, student = TinyNet(16), TinyNet(8)
    t_out = wdistill.distill(teacher, None, train, test, epochs=3, out_dir=str(tmp_path), name="t",
                     student_taps=TAPS, train={"progress": False})
    before = {k: v.clone() for k, v in student.state_dict().items()}
    out = wdistill.distill(student, teacher, train, test,
                           loss=[{"name": "ce"}, {"name": "kd", "weight": 0.9}, {"name": "at", "weight": 1000}],
                           epochs=3, out_dir=str(tmp_path), name="s", student_taps=TAPS, teacher_taps=TAPS,
                           train={"progress": False})
    # A constant prediction scores at most 13.5% on these 200 images; measured here: teacher 33.0,
    # student 26.5 after 3 epochs on 512 images.
    majority = 100 * test.targets.bincount().max().item() / len(test)
    assert t_out["final_top1"] > majority + 10 and out["final_top1"] > majority + 7, (majority, t_out, out)
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert (tmp_path / "s" / "student.pt").exists()
    # The caller's models come back without the forward hooks distill() put on them.
    hooked = [name for model in (student, teacher) for name, m in model.named_modules() if m._forward_hooks]
    assert not hooked, hooked


def test_distill_with_views_feeds_each_model_its_view_of_one_crop(tmp_path):
    """Privileged information from Python: the teacher sees the 28x28 crop, the student the same
    crop 2x average-pooled (checked against the teacher's input), and the run records the view."""
    import pytest
    import torch.nn.functional as F
    import yaml

    from wdistill.errors import ConfigError

    torch.manual_seed(0)
    train, test = bundled_sample("train").subset(slice(0, 64)), bundled_sample("test").subset(slice(0, 32))
    teacher, student = TinyNet(8), TinyNet(8)
    t_ins, s_ins = [], []
    teacher.stem.register_forward_hook(lambda m, a, out: t_ins.append(a[0].detach()))
    student.stem.register_forward_hook(lambda m, a, out: s_ins.append(a[0].detach()) if m.training else None)
    wdistill.distill(student, teacher, train, test, epochs=1, out_dir=str(tmp_path), name="v",
                     student_taps=TAPS, teacher_taps=TAPS, student_view={"name": "downsample", "factor": 2},
                     train={"progress": False, "max_steps": 2}, data={"crop_padding": 2, "flip": True})
    assert s_ins and all(x.shape[-2:] == (14, 14) for x in s_ins)
    assert all(x.shape[-2:] == (28, 28) for x in t_ins)
    for s_in in s_ins:  # each training batch of the student is the pooled batch its teacher saw
        assert any(t.shape == (s_in.shape[0], 1, 28, 28) and torch.allclose(s_in, F.avg_pool2d(t, 2), atol=1e-6)
                   for t in t_ins)
    cfg = yaml.safe_load((tmp_path / "v" / "config.yaml").read_text())
    assert cfg["student"]["view"]["name"] == "downsample" and cfg["teachers"][0]["view"] is None
    with pytest.raises(ConfigError, match=r"teacher_view: 2 given for 1 teacher\(s\)"):
        wdistill.distill(student, teacher, train, test, out_dir=str(tmp_path), name="w",
                         teacher_view=[{"name": "identity"}, {"name": "identity"}])


class Relabelled(torch.utils.data.Dataset):
    """A user's Dataset (streamed) of the bundled images whose item ``bad`` carries ``label``."""

    def __init__(self, images, bad, label):
        self.images, self.bad, self.label = images, bad, label

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image, target = self.images[i]
        return image, self.label if i == self.bad else target


class Padded(torch.utils.data.Dataset):
    """The bundled images, every other one cropped to 24 x 24."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image, target = self.images[i]
        return (image if i % 2 else image[:, 2:-2, 2:-2]), target


def test_models_and_labels_that_do_not_fit_the_data_are_refused_with_the_fix(tmp_path):
    """Each refusal comes before the first training step, as a ConfigError that names the model or the item."""
    import pytest

    from wdistill.errors import ConfigError

    train, test = bundled_sample("train").subset(slice(0, 64)), bundled_sample("test").subset(slice(0, 32))
    run = dict(epochs=1, out_dir=str(tmp_path), student_taps=TAPS, teacher_taps=TAPS, train={"progress": False})
    cases = [
        (TinyNet(8), TinyNet(8, classes=5), "the teacher scores 5 classes but the data have 10: give it a classifier "
                                            "of 10 outputs"),
        (TinyNet(8), [TinyNet(8), TinyNet(8, classes=5)], "the teacher 1 scores 5 classes"),
        (TinyNet(8, classes=11), TinyNet(8), "the student scores 11 classes but the data have 10: give it a "
                                             r"classifier of 10 outputs, or set data=\{'num_classes': ...\}"),
        (TinyNet(8, channels=3), TinyNet(8), r"the student cannot run on the data: on a batch of shape \(64, 1, 28, "
                                             r"28\) \(1 channel\(s\), 28x28 pixels.*expected input.*3 channels"),
        (TinyNet(8), "resnet20", "the teacher must be a torch.nn.Module, got the str 'resnet20'"),
    ]
    for i, (student, teacher, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=message):
            wdistill.distill(student, teacher, train, test, name=f"r{i}", **run)
        assert not (tmp_path / f"r{i}" / "last.pt").exists()
    # A label that is no class index, met by the streaming loader in the test split (read before training, when
    # the teacher is scored): the item and its label are named, not torch's "Target 10 is out of bounds".
    with pytest.raises(ConfigError, match=r"item 7 of the test split has the label 10, not a class index in "
                                          r"\[0, 10\).*set data=\{'num_classes': ...\}"):
        wdistill.distill(TinyNet(8), TinyNet(8), Relabelled(train, 0, 0), Relabelled(test, 7, 10), name="labels",
                         batch_size=16, data={"num_classes": 10, "loader": "stream"}, **run)
    assert not (tmp_path / "labels" / "last.pt").exists()
    # Images of two sizes, streamed through two worker processes: the items are named, not torch.stack's error.
    with pytest.raises(ConfigError, match=r"the training split holds images of different shapes \(channels, height, "
                                          r"width\): item \d+ is \(1, 2[48], 2[48]\), item \d+ \(1, 2[48], 2[48]\)"
                                          r".*random_resized_crop"):
        wdistill.distill(TinyNet(8), None, Padded(train), Padded(test), name="sizes", batch_size=16,
                         data={"num_classes": 10, "loader": "stream", "workers": 2}, **run)
    # One-hot labels: refused as labels, on either path, before anything is read as a bad image.
    for loader, where in (("stream", "Relabelled"), ("memory", "train")):
        with pytest.raises(ConfigError, match=rf"{where}\[0\] label: a label must be one class index, got an array "
                                              r"of shape \(10,\) \(one-hot"):
            wdistill.distill(TinyNet(8), None, Relabelled(train, 0, torch.eye(10)[3]), Relabelled(test, 0, 0),
                             name=f"onehot-{loader}", batch_size=16, data={"num_classes": 10, "loader": loader}, **run)


def test_a_dataloader_or_a_pair_of_tensors_is_refused_with_the_dataset_to_pass(tmp_path):
    """Two common ways of handing over data that are not a Dataset: each refusal says what to pass instead."""
    import pytest
    from torch.utils.data import DataLoader, TensorDataset

    from wdistill.errors import ConfigError

    x, y = torch.randn(32, 1, 28, 28), torch.arange(32) % 10
    run = dict(epochs=1, out_dir=str(tmp_path), student_taps=TAPS, train={"progress": False})
    for train, message in ((DataLoader(TensorDataset(x, y), batch_size=8), r"train_data is a DataLoader: pass its "
                            r"Dataset \(`loader.dataset`\) instead.*batch_size="),
                           ((x, y), r"train_data is a tuple of two tensors: wrap the images and labels in a Dataset, "
                            r"torch.utils.data.TensorDataset\(images, labels\)")):
        with pytest.raises(ConfigError, match=message):
            wdistill.distill(TinyNet(8), None, train, TensorDataset(x, y), **run)


def test_a_bad_label_met_inside_an_epoch_stops_after_a_checkpoint_and_the_fixed_data_resume(tmp_path):
    """A streamed label out of range met mid-epoch (item 40 is not in the batch the terms are set up on): the
    steps before it are kept (last.pt written at that batch, as for a bad image file), the error names the item
    and the way on, and the run resumes on the fixed data."""
    import pytest

    from wdistill.errors import ConfigError

    train, test = bundled_sample("train").subset(slice(0, 64)), bundled_sample("test").subset(slice(0, 32))
    run = dict(epochs=2, out_dir=str(tmp_path), student_taps=TAPS, batch_size=16, name="r", train={"progress": False},
               data={"num_classes": 10, "loader": "stream", "workers": 0})
    with pytest.raises(ConfigError, match=r"item 40 of the training split has the label 10, not a class index.*the "
                                          r"run stopped after writing last.pt: once the data are fixed, run the same "
                                          r"command with --resume"):
        wdistill.distill(TinyNet(8), None, Relabelled(train, 40, 10), test, **run)
    state = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and state["step"] > 0  # inside the first epoch, the steps before the batch kept
    wdistill.distill(TinyNet(8), None, Relabelled(train, 40, 3), test, resume=True, **run)
    rows = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["epoch"] for row in rows] == [1, 2]
