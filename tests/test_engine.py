"""Engine: config validation, distiller wiring, exact resume, non-finite guard, CLI, real-data learning."""
import json

import pytest
import torch
from builders import random_teacher, small_run

from wdistill import cli, losses, models
from wdistill.config import load_config
from wdistill.engine import Distiller, Trainer
from wdistill.engine.distiller import lr_at
from wdistill.errors import ConfigError, NonFiniteLoss


def _base(tmp_path, **over):
    return small_run(tmp_path, seed=3, train_subset=256, test_subset=200, batch_size=64, epochs=3,
                     extra_data={"crop_padding": 2}, **over)


@pytest.fixture
def teacher_ckpt(tmp_path):
    return random_teacher(tmp_path / "teacher.pt", "resnet14")


def test_config_errors_name_the_key_and_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"student.foo: unknown key; valid keys here: checkpoint"):
        load_config(_base(tmp_path, student={"model": "resnet8", "foo": 1}))
    with pytest.raises(ConfigError, match=r"optim.lr: .*valid number.*'fast'"):
        load_config(_base(tmp_path), ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(_base(tmp_path), ["optim.lr"])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("student: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad_yaml)


def test_overrides_reach_nested_lists(tmp_path):
    cfg = load_config(_base(tmp_path, loss=[{"name": "ce"}, {"name": "kd", "weight": 0.9, "T": 4}]),
                      ["loss.1.T=2", "loss.0.weight=0.1", "optim.milestones=[1,2]"])
    assert cfg.loss[1].params == {"T": 2} and cfg.loss[0].weight == 0.1 and cfg.optim.milestones == [1, 2]


def test_unknown_model_method_and_parameter(tmp_path, teacher_ckpt):
    with pytest.raises(ConfigError, match="unknown model 'resnet9'.*resnet"):
        Trainer(load_config(_base(tmp_path, student={"model": "resnet9"})))
    t = {"model": "resnet14", "checkpoint": teacher_ckpt}
    with pytest.raises(ConfigError, match="unknown method 'kdd'.*Did you mean kd"):
        Trainer(load_config(_base(tmp_path, teacher=t, loss=[{"name": "kdd"}])))
    with pytest.raises(ConfigError, match="has no parameter.*'temperature'.*valid: \\['T'\\]"):
        Trainer(load_config(_base(tmp_path, teacher=t, loss=[{"name": "kd", "temperature": 4}])))
    with pytest.raises(ConfigError, match="need a teacher"):
        Trainer(load_config(_base(tmp_path, loss=[{"name": "kd"}])))
    with pytest.raises(ConfigError, match="has no checkpoint"):
        Trainer(load_config(_base(tmp_path, teacher={"model": "resnet14"}, loss=[{"name": "kd"}])))


def test_model_and_checkpoint_errors_come_before_the_data_loads(tmp_path, monkeypatch, teacher_ckpt):
    """A typo in a model name (zoo or factory), a missing pretrained file or teacher checkpoint is refused before
    the data loads (on a large image folder in memory, minutes of decoding would come first)."""
    def no_data(*args, **kwargs):
        raise AssertionError("the data loaded before the config's models were checked")

    monkeypatch.setattr("wdistill.engine.trainer.build_loaders", no_data)
    kd = [{"name": "kd"}]
    cases = [({"student": {"model": "resnet9"}}, "student.model: unknown model 'resnet9'. Did you mean resnet8"),
             ({"teacher": {"model": "resnet41", "checkpoint": "t.pt"}, "loss": kd}, "teacher.model: unknown model"),
             ({"teacher": {"model": "resnet14", "checkpoint": str(tmp_path / "none.pt")}, "loss": kd},
              "teacher.checkpoint .*none.pt.* does not exist"),
             ({"teacher": {"model": "resnet14"}, "loss": kd}, "teacher 'resnet14' has no checkpoint"),
             ({"loss": kd}, "need a teacher"),
             ({"student": {"model": "no_such_pkg.nets:make"}}, "cannot import module 'no_such_pkg.nets'"),
             ({"student": {"model": "wdistill.models:no_such_factory"}}, "has no callable 'no_such_factory'"),
             ({"student": {"model": "resnet8", "pretrained": str(tmp_path / "none.pt")}},
              "pretrained weights .*none.pt.* do not exist"),
             ({"teacher": {"model": "resnet20", "checkpoint": teacher_ckpt}, "loss": kd},
              "teacher.checkpoint: checkpoint does not fit resnet20.*matches zoo model resnet14: in a config, model: "
              "resnet14; in Python, build it with create\\('resnet14', num_classes=10, in_channels=1\\)"),
             ({"teacher": {"model": "resnet14", "checkpoint": str(tmp_path / "junk.pt")}, "loss": kd},
              "teacher.checkpoint: could not load .*junk.pt")]
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for over, message in cases:
        with pytest.raises(ConfigError, match=message):
            Trainer(load_config(_base(tmp_path, **over)))
        assert not (tmp_path / "runs").exists()  # refused before its run directory was made
    # the right architecture, at the class count and channels of its own weights (10, 1), passes to the data
    with pytest.raises(AssertionError, match="the data loaded"):
        Trainer(load_config(_base(tmp_path, teacher={"model": "resnet14", "checkpoint": teacher_ckpt}, loss=kd)))


def test_teacher_checkpoint_for_another_architecture(tmp_path, teacher_ckpt):
    cfg = load_config(_base(tmp_path, teacher={"model": "resnet20", "checkpoint": teacher_ckpt},
                            loss=[{"name": "kd"}]))
    with pytest.raises(ValueError, match="resnet20"):
        Trainer(cfg)


def test_lr_schedules():
    assert lr_at(0, 0.05, "multistep", 240, [150, 180, 210], 0.1) == 0.05
    assert lr_at(150, 0.05, "multistep", 240, [150, 180, 210], 0.1) == pytest.approx(0.005)
    assert lr_at(239, 0.05, "multistep", 240, [150, 180, 210], 0.1) == pytest.approx(0.00005)
    assert lr_at(5, 0.1, "cosine", 10, [], 0.1) == pytest.approx(0.05)
    assert lr_at(0, 0.1, "cosine", 10, [], 0.1, warmup_epochs=2) == pytest.approx(0.05)


def test_distiller_freezes_teacher_and_trains_term_parameters():
    torch.manual_seed(0)
    student, teacher = models.create("resnet8", 10, 1), models.create("resnet14", 10, 1)

    class Scaled(losses.Term):
        name = "test_scaled_kd"

        def setup(self, ctx):
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, s, t, batch):
            return self.scale * (s["logits"] - t["logits"]).pow(2).mean()

    d = Distiller(student, [teacher], [("ce", 1.0, losses.create("ce")), ("scaled", 0.5, Scaled())])
    batch = {"image": torch.randn(8, 1, 28, 28), "target": torch.randint(0, 10, (8,)), "index": torch.arange(8)}
    d.setup(dict(num_classes=10, num_samples=8, train_targets=batch["target"], device=torch.device("cpu")), batch)
    d.train()
    assert not teacher.training
    total, parts, _ = d(batch)
    assert torch.allclose(total, parts["ce"] + parts["scaled"])
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert d.terms["scaled"].scale.grad is not None
    assert any(p is d.terms["scaled"].scale for p in d.trainable_parameters())


def test_non_finite_loss_names_term_and_keeps_last_checkpoint(tmp_path, teacher_ckpt):
    class Exploding(losses.Term):
        name = "test_exploding"

        def forward(self, s, t, batch):
            return s["logits"].sum() * (float("nan") if batch["epoch"] >= 1 else 0.0)

    losses.registry._TERMS.setdefault("test_exploding", Exploding)
    cfg = load_config(_base(tmp_path, teacher={"model": "resnet14", "checkpoint": teacher_ckpt},
                            loss=[{"name": "ce"}, {"name": "test_exploding"}]))
    with pytest.raises(NonFiniteLoss, match=r"'test_exploding' \(weight 1\).*epoch 2, step 4"):
        Trainer(cfg).fit()
    state = torch.load(tmp_path / "runs" / "r" / "last.pt", weights_only=False)
    assert state["epoch"] == 1


def test_amp_and_channels_last_run(tmp_path, teacher_ckpt):
    cfg = load_config(_base(tmp_path, teacher={"model": "resnet14", "checkpoint": teacher_ckpt},
                            loss=[{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9}]),
                      ["optim.epochs=1", "data.train_subset=128", "train.precision=bf16", "train.channels_last=true"])
    tr = Trainer(cfg)
    out = tr.fit()
    assert out["final_top1"] is not None
    assert tr.student.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    row = json.loads((tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert all(v == v for v in row.values())  # no NaN in any logged value


class _Stop(Exception):
    pass


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


RESUME_CASES = {
    "kd": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9}],
    "crd": [{"name": "ce"}, {"name": "crd", "weight": 0.8, "num_negatives": 128}],
    "wcord": [{"name": "ce"}, {"name": "wcord", "num_negatives": 128}],
    "wkd": [{"name": "ce"}, {"name": "wkd_l", "lambda_l": 30, "tau": 4}, {"name": "wkd_f", "lambda_f": 1.0}],
    "vid": [{"name": "ce"}, {"name": "vid"}],
}


@pytest.mark.parametrize("method", sorted(RESUME_CASES))
def test_resume_equals_uninterrupted_run(tmp_path, teacher_ckpt, method):
    """Weights, metrics and every term's state (memory banks, critics, connectors, costs) continue
    exactly: an interrupted and resumed run ends bit-for-bit where an uninterrupted one does."""
    t = {"model": "resnet14", "checkpoint": teacher_ckpt}
    loss = RESUME_CASES[method]
    full = Trainer(load_config(_base(tmp_path, teacher=t, loss=loss))).fit()

    def stop_after_two(msg):
        if msg.startswith("epoch 2/3"):
            raise _Stop

    cfg2 = load_config(_base(tmp_path, teacher=t, loss=loss), ["run.name=r2"])
    with pytest.raises(_Stop):
        Trainer(cfg2, log=stop_after_two).fit()
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(cfg2)
    resumed = Trainer(cfg2, resume=True).fit()
    assert resumed["final_top1"] == full["final_top1"]
    runs = tmp_path / "runs"
    rows = [_strip([json.loads(l) for l in (runs / n / "metrics.jsonl").read_text().splitlines()]) for n in ("r", "r2")]
    assert rows[0] == rows[1]
    a, b = (torch.load(runs / n / "last.pt", weights_only=False)["distiller"] for n in ("r", "r2"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    if method != "kd":
        assert any(k.startswith("terms.") for k in a)  # the term's own state is in the checkpoint


def test_cli_train_eval_export_and_errors(tmp_path, capsys):
    import yaml
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(_base(tmp_path, optim={"epochs": 1, "lr": 0.05})))
    assert cli.main(["train", str(cfg_path), "run.name=cli"]) == 0
    run = tmp_path / "runs" / "cli"
    assert {"config.yaml", "metrics.csv", "metrics.jsonl", "last.pt", "best.pt", "student.pt", "summary.json"} \
        <= {p.name for p in run.iterdir()}
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert cli.main(["eval", str(run / "student.pt"), "--data", "fmnist_sample", "--subset", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["arch"] == "resnet8" and out["top1"] == pytest.approx(summary["final_top1"])
    assert cli.main(["export", str(run), "--which", "last"]) == 0
    exported = torch.load(run / "student_last.pt", weights_only=False)
    m = models.create("resnet8", 10, 1)
    m.load_state_dict(exported["model"], strict=True)
    (tmp_path / "out").mkdir()
    assert cli.main(["export", str(run), "-o", str(tmp_path / "out")]) == 0  # a directory: the file goes in it
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["student_best.pt", "student_best.safetensors"]
    assert cli.main(["distill", str(cfg_path)]) == 2
    assert "needs a 'teacher:' section" in capsys.readouterr().err


@pytest.mark.slow
def test_kd_learns_on_real_fashion_mnist(tmp_path, fmnist_dir):
    """Teacher then KD student on real Fashion-MNIST (2,000 training images): far above chance."""
    # A last epoch at lr/10 lets BatchNorm's running statistics catch up with the weights, so the
    # eval-mode accuracy measures what was learned (see tests/test_methods_learn.py).
    data = {"name": "fashion_mnist", "root": fmnist_dir, "train_subset": 2000, "test_subset": 1000,
            "batch_size": 32, "crop_padding": 2}
    optim = {"epochs": 3, "lr": 0.05, "schedule": "multistep", "milestones": [2], "gamma": 0.1}
    t = Trainer(load_config(_base(tmp_path, data=data, student={"model": "resnet14"}, optim=optim),
                            ["run.name=teacher"])).fit()
    assert t["final_top1"] > 60
    s = Trainer(load_config(_base(tmp_path, data=data, teacher={"model": "resnet14",
                                  "checkpoint": str(tmp_path / "runs" / "teacher" / "student.pt")},
                                  loss=[{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9}],
                                  optim=optim),
                            ["run.name=kd"])).fit()
    assert s["final_top1"] > 60 and s["teacher_top1"] == pytest.approx(t["final_top1"])


def test_clip_grad_norm_scales_a_large_gradient_to_the_limit_and_counts_the_step():
    """train.clip_grad_norm by hand: loss 10 * sum(w) over 4 weights has gradient norm 20, clipped to 5
    (SGD at lr 1 moves each weight by 10 * 5 / 20 = 2.5); then sum(w) has norm 2, under the limit,
    untouched (a move of 1). The meter counts the first step's 3 samples as clipped, not the second's."""
    from contextlib import nullcontext

    from wdistill.engine.loop import Guard, Meter, Stepper
    w = torch.nn.Parameter(torch.zeros(4))
    scale = [10.0]
    meter, cpu = Meter(torch.device("cpu")), torch.device("cpu")
    stepper = Stepper(torch.nn.Module(), lambda b: (scale[0] * w.sum(), {}, None), torch.optim.SGD([w], lr=1.0),
                      torch.amp.GradScaler("cpu", enabled=False), nullcontext, 1, [w], meter, Guard([], {}, cpu),
                      clip=5.0)
    stepper.step({"target": torch.zeros(3)}, 0)
    assert torch.allclose(w.detach(), torch.full((4,), -2.5), atol=1e-5)
    scale[0] = 1.0
    stepper.step({"target": torch.zeros(3)}, 1)
    assert torch.allclose(w.detach(), torch.full((4,), -3.5), atol=1e-5)
    sums = meter.read()
    assert sums["clipped"] == 3 and sums["n"] == 6


def test_clip_grad_norm_in_a_run_records_the_share_clipped_and_a_loose_limit_changes_nothing(tmp_path):
    """A limit far above every gradient leaves the run bit-identical to one without it (train_clipped 0); a
    tiny one clips every step (train_clipped 1)."""
    rows, weights = {}, {}
    for name, clip in (("none", None), ("loose", 1e9), ("tight", 1e-6)):
        cfg = small_run(tmp_path, seed=3, epochs=1, name=name, extra_train={"clip_grad_norm": clip})
        t = Trainer(load_config(cfg), log=lambda *_: None)
        t.fit()
        rows[name], weights[name] = t.history[-1], t.student.state_dict()
    assert "train_clipped" not in rows["none"]
    assert rows["loose"]["train_clipped"] == 0 and rows["tight"]["train_clipped"] == 1
    assert all(torch.equal(weights["none"][k], weights["loose"][k]) for k in weights["none"])
    assert not all(torch.equal(weights["none"][k], weights["tight"][k]) for k in weights["none"])


def test_the_divergence_message_names_one_culprit_only_when_one_term_grew():
    """One weighted term that grew past 1e6 is named as the likely cause; when every term grew (the model ran away:
    WKD-L on a detector, where the detector's own loss blew up with it), blaming the largest term's weight would
    send the user to the wrong fix, so the message says the run ran away and sends the user to the weights together
    and the learning rate (FMNIST-Det: halving WKD-L kept every seed finite; clipping left one unable to learn)."""
    from wdistill.engine.loop import Guard
    cpu = torch.device("cpu")

    def message(values: dict[str, float]) -> str:
        guard = Guard(list(values), {n: 1.0 for n in values}, cpu)
        guard.observe(0, torch.tensor(1.0), {n: torch.tensor(1.0) for n in values}, torch.tensor(1.0))
        guard.observe(1, torch.tensor(sum(values.values())), {n: torch.tensor(v) for n, v in values.items()},
                      torch.tensor(float("nan")))
        with pytest.raises(NonFiniteLoss) as err:
            guard.check("epoch 1")
        return str(err.value)

    one = message({"det": 2.0, "wkd_l": 5e9})
    assert "The largest weighted term is 'wkd_l' (weight 1) at 5e+09: its weight is the likely cause" in one
    assert "gradient (every loss value finite) became non-finite in epoch 1, step 1" in one
    both = message({"det": 4.7e14, "wkd_l": 6e12})
    assert "its weight is the likely cause" not in both
    assert "Every weighted term grew past 1e6 first (the largest, 'det', to 4.7e+14): the model itself ran away" in both
    assert "Lower the distillation terms' weights together (halve them) or the learning rate" in both
    assert "clipping the gradient (train.clip_grad_norm) keeps the numbers finite but can leave" in both
    assert "likely cause" not in message({"det": 2.0, "wkd_l": 3.0})  # nothing grew: no culprit is guessed


def test_a_step_watcher_sees_every_step_its_terms_and_the_unclipped_gradient_norm(tmp_path):
    """Trainer.watchers: every step of the main epochs once, in order, with the weighted terms' live graph (a
    term's own gradient can be taken) and the norm of the whole gradient as the loop checks it, before clipping:
    equal to a norm taken here from the parameters' .grad at that moment. It changes nothing of the run."""
    from wdistill.engine import StepWatcher

    class Watch(StepWatcher):
        def __init__(self, trainer):
            self.trainer, self.seen = trainer, []

        def before_backward(self, step, batch, parts):
            params = [p for p in self.trainer.student.parameters() if p.requires_grad]
            kd = torch.autograd.grad(parts["kd"], params, retain_graph=True)
            self.seen.append({"step": step, "n": len(batch["target"]), "terms": sorted(parts),
                              "kd_grad": float(torch.cat([g.flatten() for g in kd]).norm())})

        def after_backward(self, step, grad_norm):
            grads = [p.grad.flatten() for p in self.trainer.optimizer_params if p.grad is not None]
            self.seen[-1] |= {"after": step, "norm": float(grad_norm), "mine": float(torch.cat(grads).norm())}

    teacher = random_teacher(tmp_path / "t.pt")
    runs = {}
    for name, watched in (("plain", False), ("watched", True)):
        cfg = small_run(tmp_path, seed=5, epochs=2, name=name, extra_train={"clip_grad_norm": 1e-3},
                        teacher={"model": "resnet8", "checkpoint": teacher},
                        loss=[{"name": "ce"}, {"name": "kd", "weight": 0.9}])
        t = Trainer(load_config(cfg), log=lambda *_: None)
        watch = Watch(t)
        if watched:
            t.watchers.append(watch)
        t.fit()
        runs[name] = (watch.seen, t.student.state_dict(), t.history)
    seen, weights, history = runs["watched"]
    assert [s["step"] for s in seen] == [s["after"] for s in seen] == list(range(8))  # 128 / 32 = 4 steps x 2
    assert all(s["terms"] == ["ce", "kd"] and s["n"] == 32 and s["kd_grad"] > 0 for s in seen)
    assert all(s["norm"] == pytest.approx(s["mine"], rel=1e-5) and s["norm"] > 1e-3 for s in seen)  # not clipped
    untimed = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert untimed(history) == untimed(runs["plain"][2])
    assert all(torch.equal(weights[k], runs["plain"][1][k]) for k in weights)
