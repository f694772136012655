"""Property: whatever config and command line a user writes, wdistill either runs it or stops
with one clear message, never a traceback (issue 12). Hypothesis mixes valid and broken keys,
types, values, YAML text and CLI arguments; valid runs are cut to one step so 300 cases stay cheap."""
import contextlib
import io
import itertools

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wdistill import cli, models

KEYS = ["run.name", "run.seed", "run.device", "run.out_dir", "data.name", "data.batch_size", "data.train_subset",
        "data.test_subset", "data.crop_padding", "data.flip", "data.eval_batch_size", "data.options",
        "student.model", "student.taps", "student.kwargs", "loss.0.name", "loss.0.weight", "loss.1.name",
        "loss.1.T", "loss.1.weight", "loss.1.num_negatives", "optim.epochs", "optim.lr", "optim.schedule",
        "optim.milestones", "optim.warmup_epochs", "optim.momentum", "optim.gamma", "train.precision",
        "train.accumulate", "train.log_every", "train.max_steps", "train.eval_every", "bogus.key", "data.bogus",
        "loss", "optim", "teacher.model", "teacher.checkpoint", "optim.lr.x"]
VALUES = ["1", "0", "-5", "2", "16", "1e1", "abc", "[1,", "true", "null", "{a: 1}", "[1, 2]", "2.5", "resnet8",
          "resnet14", "kd", "ce", "crd", "1e30", ".nan", "", "../x", "cpu", "cuda", "tpu", "cosine", "{feats: [x]}",
          "fmnist_sample", "cifar100", "bf16", "fp16", "auto", "[]", "0.05", "-0.1", "'7'", "]"]
COMMANDS = ["train", "train", "distill", "distill", "eval", "export", "list", "nonsense"]
FLAGS = [
    "--resume",
    "--overwrite",
    "--subset",
    "0",
    "--subset",
    "-5",
    "--device",
    "cuda",
    "--batch-size",
    "x",
    "--bogus",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    teacher = root / "teacher.pt"
    torch.save({"model": models.create("resnet8", num_classes=10, in_channels=1).state_dict()}, teacher)
    return root, str(teacher)


overrides = st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(VALUES)), max_size=2)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    command=st.sampled_from(COMMANDS),
    overrides=overrides,
    teacher=st.booleans(),
    kd=st.booleans(),
    raw_yaml=st.sampled_from([None, None, None, "student: [unclosed", "- a list", "42", "", "run: {name: 1}"]),
    flags=st.lists(st.sampled_from(FLAGS), max_size=2),
    missing_file=st.booleans(),
    clean=st.booleans(),
)
def test_every_input_runs_or_gets_one_clear_message(
    world, command, overrides, teacher, kd, raw_yaml, flags, missing_file, clean
):
    root, teacher_path = world
    if clean:  # half the cases keep a valid base, so a good share really runs
        overrides, flags, missing_file, raw_yaml = overrides[:1] if kd else [], [], False, None
        teacher = teacher or command == "distill"
    name = f"f{next(_counter)}"
    cfg = {
        "run": {"name": name, "out_dir": str(root / "runs"), "seed": 0, "device": "cpu"},
        "data": {"name": "fmnist_sample", "train_subset": 64, "test_subset": 32, "batch_size": 16, "crop_padding": 2},
        "student": {"model": "resnet8"},
        "loss": [{"name": "ce"}] + ([{"name": "kd", "weight": 0.9}] if kd else []),
        "optim": {"epochs": 1, "lr": 0.05},
        "train": {"progress": False, "max_steps": 1},
    }
    if teacher:
        cfg["teacher"] = {"model": "resnet8", "checkpoint": teacher_path}
    path = root / f"{name}.yaml"
    path.write_text(raw_yaml if raw_yaml is not None else yaml.safe_dump(cfg))
    target = str(root / "missing.yaml") if missing_file else str(path)
    if command in ("train", "distill"):
        argv = [command, target] + [f"{k}={v}" for k, v in overrides] + flags
    elif command == "eval":
        argv = ["eval", teacher_path if not missing_file else str(path)] + flags
    elif command == "export":
        argv = ["export", str(root / "runs" / name)] + flags
    else:
        argv = [command] + flags
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse: usage + one line
            code = e.code
    text = err.getvalue()
    assert "Traceback" not in text and "internal error" not in text, (argv, text)
    assert code in (0, 2, 3), (argv, code, text)
    if code:
        assert text.startswith("error: ") or text.startswith("usage: "), (argv, text)
        assert len(text.strip().splitlines()) <= 12, (argv, text)  # one paragraph, not a dump


_counter = itertools.count()
