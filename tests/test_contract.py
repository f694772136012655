"""The loss-term contract: after_step, on_stage_end, requires_teacher, the base-class setup guard,
term ids (two instances of one method)."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from wdistill import losses
from wdistill.config import load_config
from wdistill.engine import Distiller, Trainer
from wdistill.errors import ConfigError
from wdistill.losses.base import SetupContext

TAPS = {"feats": ["conv1", "conv2"], "embed": "fc:in"}


class TinyNet(nn.Module):
    """BatchNorm-free: an extra forward changes nothing, so reference embeddings are exact."""

    def __init__(self, width: int = 8, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


EVENTS: list = []


class Recorder(losses.Term):
    """Records the engine's calls: forward (with its batch size), after_step, on_stage_end."""

    name = "test_recorder"

    def setup(self, ctx):
        self.scale = nn.Parameter(torch.ones(()))

    def stages(self):
        def loss(s, t, batch):
            EVENTS.append(("stage_forward", len(batch["target"])))
            return (s["logits"] * self.scale).pow(2).mean()
        return [losses.Stage("rec_init", 1, loss, lambda: [self.scale])]

    def on_stage_end(self, stage):
        EVENTS.append(("stage_end", stage.name))

    def after_step(self, student, teacher, batch):
        assert not student["logits"].requires_grad  # detached outputs
        EVENTS.append(("after_step", len(batch["target"])))

    def forward(self, s, t, batch):
        EVENTS.append(("forward", len(batch["target"])))
        return (s["logits"] - t["logits"]).pow(2).mean() * self.scale


class NoTeacher(losses.Term):
    name = "test_no_teacher"
    requires_teacher = False

    def forward(self, s, t, batch):
        return s["logits"].pow(2).mean()


losses.registry._TERMS.setdefault("test_recorder", Recorder)
losses.registry._TERMS.setdefault("test_no_teacher", NoTeacher)


def _cfg(tmp_path, loss, teacher=True, name="r", epochs=1, **train):
    cfg = {"run": {"name": name, "out_dir": str(tmp_path / "runs"), "seed": 0, "device": "cpu"},
           "data": {"batch_size": 32, "crop_padding": 0, "flip": False},
           "student": {"model": "TinyNet", "taps": TAPS},
           "loss": loss, "optim": {"epochs": epochs, "lr": 0.05, "schedule": "constant"},
           "train": {"progress": False, "max_steps": 3, **train}}
    if teacher:
        cfg["teacher"] = {"model": "TinyNet", "taps": TAPS}
    return load_config(cfg)


def _data():
    from wdistill.data import bundled_sample
    return bundled_sample("train").subset(slice(0, 128)), bundled_sample("test").subset(slice(0, 64))


def test_after_step_once_per_optimiser_step_and_stage_end_before_main_loop(tmp_path):
    EVENTS.clear()
    cfg = _cfg(tmp_path, [{"name": "ce"}, {"name": "test_recorder"}], accumulate=2)
    torch.manual_seed(0)
    Trainer(cfg, student=TinyNet(), teachers=[TinyNet(16)], data=_data(), log=lambda m: None).fit()
    stage = [e for e in EVENTS if e[0].startswith("stage")]
    main = [e for e in EVENTS if not e[0].startswith("stage")]
    # The stage (3 steps of 2 micro-batches) ends once, before the main loop starts.
    assert stage == [("stage_forward", 16)] * 6 + [("stage_end", "rec_init")]
    assert EVENTS.index(("stage_end", "rec_init")) < EVENTS.index(("forward", 16))
    # Main loop: 3 optimiser steps of 2 micro-batches of 16; after_step after each step, not per micro-batch.
    assert main == [("forward", 16), ("forward", 16), ("after_step", 16)] * 3


def _crd_distiller(momentum=0.5):
    torch.manual_seed(0)
    student, teacher = TinyNet(), TinyNet(16)
    crd = losses.create("crd", feat_dim=8, num_negatives=6, momentum=momentum)
    d = Distiller(student, [teacher], [("ce", 1.0, losses.create("ce")), ("crd", 0.8, crd)], TAPS, [TAPS])
    n = 40
    g = torch.Generator().manual_seed(1)
    images, targets = torch.randn(n, 1, 12, 12, generator=g), torch.arange(n) % 4
    d.setup(dict(num_classes=10, num_samples=n, train_targets=targets, device=torch.device("cpu")),
            {"image": images[:8], "target": targets[:8], "index": torch.arange(8)})
    return d.train(), crd, images, targets


def test_crd_banks_after_steps_equal_the_update_on_each_steps_embeddings():
    """The bank rows after N steps are normalise(m * old + (1 - m) * e), e the embedding of the step's
    forward (before the optimiser moved the heads), rows of other samples untouched."""
    d, crd, images, targets = _crd_distiller(momentum=0.3)
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.5)
    g = torch.Generator().manual_seed(2)
    for step in range(3):
        index = torch.randperm(40, generator=g)[:8]
        batch = {"image": images[index], "target": targets[index], "index": index, "epoch": 0, "num_epochs": 1}
        with torch.no_grad():  # the old in-forward update used these values
            e_s = F.normalize(crd.embed_s(d.student_tap(batch["image"])["embed"]), dim=1)
            e_t = F.normalize(crd.embed_t(d.teacher_forward(batch["image"])["embed"]), dim=1)
        old_s, old_t = crd.bank_s.clone(), crd.bank_t.clone()
        total, _, _ = d(batch)
        opt.zero_grad()
        total.backward()
        opt.step()
        assert torch.equal(crd.bank_s, old_s)  # the step itself leaves the banks alone
        d.after_step()
        for bank, old, e in ((crd.bank_s, old_s, e_s), (crd.bank_t, old_t, e_t)):
            expected = old.clone()
            expected[index] = F.normalize(0.3 * old[index] + 0.7 * e, dim=1)
            torch.testing.assert_close(bank, expected, rtol=1e-6, atol=1e-7)
        updated = crd.bank_s.clone()
        d.after_step()  # nothing pending: a second call changes nothing
        assert torch.equal(crd.bank_s, updated)


def test_ft_stage_end_freezes_the_paraphraser_in_a_run(tmp_path):
    cfg = _cfg(tmp_path, [{"name": "ce"}, {"name": "ft", "weight": 1.0, "init_epochs": 1}])
    torch.manual_seed(0)
    trainer = Trainer(cfg, student=TinyNet(), teachers=[TinyNet(16)], data=_data(), log=lambda m: None)
    ends = []
    ft = trainer.distiller.terms["ft"]
    original = ft.on_stage_end

    def spy(stage):
        ends.append([p.requires_grad for p in ft.paraphraser.parameters()])
        original(stage)
        snapshot.extend(p.detach().clone() for p in ft.paraphraser.parameters())

    snapshot: list = []
    ft.on_stage_end = spy
    trainer.fit()
    assert len(ends) == 1 and all(ends[0])  # called once, while the stage's parameters were learning
    params = list(ft.paraphraser.parameters())
    assert all(not p.requires_grad and p.grad is None for p in params)
    assert all(torch.equal(p, s) for p, s in zip(params, snapshot))  # the main loop never moved it


def test_requires_teacher_decides_without_naming_terms(tmp_path, monkeypatch):
    from wdistill.data import build as data_build

    def no_loading(*a, **k):
        raise AssertionError("the data was loaded before the config error")

    with monkeypatch.context() as m:
        m.setattr(data_build, "build_loaders", no_loading)
        with pytest.raises(ConfigError, match=r"\['kd'\] need a teacher"):
            Trainer(_cfg(tmp_path, [{"name": "ce"}, {"name": "kd"}], teacher=False), student=TinyNet(),
                    log=lambda m: None)
    assert losses.get("ce").requires_teacher is False and losses.get("kd").requires_teacher is True
    # A term that declares it needs no teacher trains without one, like ce.
    summary = Trainer(_cfg(tmp_path, [{"name": "ce"}, {"name": "test_no_teacher", "weight": 0.1}], teacher=False),
                      student=TinyNet(), data=_data(), log=lambda m: None).fit()
    assert summary["teacher_top1"] is None and summary["final_top1"] is not None


@pytest.mark.parametrize("name", [n for n in losses.available() if losses.get(n).built_by_setup])
def test_forward_before_setup_is_one_clear_error(name):
    term = losses.create(name)
    with pytest.raises(RuntimeError, match=rf"loss term '{name}' is not set up .*call setup\(ctx\) before the first"):
        term({"logits": torch.zeros(2, 3)}, {"logits": torch.zeros(2, 3)}, {"target": torch.zeros(2).long()})


def test_a_terms_config_error_is_the_one_the_cli_catches():
    """One ConfigError for every layer: a term's bad value is the same class the CLI prints without a
    traceback (a second class in losses/ would escape that handler)."""
    from wdistill import errors
    with pytest.raises(errors.ConfigError, match=r"dkd T=-1.0 must be > 0"):
        losses.create("dkd", T=-1)


def test_guard_follows_what_setup_builds():
    # WKD-L given its cost matrix needs no setup; FT's stage functions are guarded too.
    term = losses.create("wkd_l", cost=torch.zeros(3, 3), decay_start_frac=None)
    value = term({"logits": torch.randn(2, 3)}, {"logits": torch.randn(2, 3)}, {"target": torch.tensor([0, 1])})
    assert torch.isfinite(value)
    (stage,) = losses.create("ft").stages()
    with pytest.raises(RuntimeError, match="'ft' is not set up"):
        stage.parameters()
    ctx = SetupContext(
        student_out={"feats": [torch.zeros(2, 4, 4, 4)]},
        teacher_out={"feats": [torch.zeros(2, 4, 4, 4)]},
        num_classes=3,
        num_samples=2,
        train_targets=torch.zeros(2).long(),
        device=torch.device("cpu"),
    )
    ft = losses.create("ft")
    ft.setup(ctx)
    ft.check_ready()  # set up: no error


# ---- two instances of one method ------------------------------------------------------------


def _kd_by_hand(s_logits, t_logits, T):
    """T^2 * mean_b sum_c p_t log(p_t / p_s), softmaxes at temperature T, in float64."""
    s, t = s_logits.double() / T, t_logits.double() / T
    log_ps = s - s.logsumexp(1, keepdim=True)
    log_pt = t - t.logsumexp(1, keepdim=True)
    return float((log_pt.exp() * (log_pt - log_ps)).sum(1).mean() * T * T)


def test_two_kd_instances_train_together_and_log_apart(tmp_path):
    loss = [
        {"name": "ce", "weight": 0.2},
        {"name": "kd", "id": "kd_t2", "T": 2, "weight": 0.3},
        {"name": "kd", "id": "kd_t8", "T": 8, "weight": 0.5},
    ]
    torch.manual_seed(0)
    teacher = TinyNet(16)
    with torch.no_grad():
        teacher.fc.weight.mul_(30)  # confident logits: KD at T=2 and T=8 differ clearly
    trainer = Trainer(_cfg(tmp_path, loss), student=TinyNet(), teachers=[teacher], data=_data(), log=lambda m: None)
    trainer.fit()
    d = trainer.distiller
    assert list(d.terms) == ["ce", "kd_t2", "kd_t8"] and d.terms["kd_t2"].T == 2 and d.terms["kd_t8"].T == 8
    d.train()
    batch = dict(next(iter(trainer.train_loader)), epoch=0, num_epochs=1)
    with torch.no_grad():
        total, parts, s_out = d(batch)
        t_logits = d.teacher_forward(batch["image"])["logits"]
    for key, T, w in (("kd_t2", 2, 0.3), ("kd_t8", 8, 0.5)):
        assert float(parts[key]) == pytest.approx(w * _kd_by_hand(s_out["logits"], t_logits, T), rel=1e-5)
    kd2, kd8 = float(parts["kd_t2"]) / 0.3, float(parts["kd_t8"]) / 0.5
    assert abs(kd2 - kd8) > 0.05 * kd8  # really two temperatures
    run = tmp_path / "runs" / "r"
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_ce", "train_kd_t2", "train_kd_t8"} <= set(row) and row["train_kd_t2"] != row["train_kd_t8"]
    import yaml

    stored = yaml.safe_load((run / "config.yaml").read_text())["loss"]
    assert [(t["name"], t["id"]) for t in stored] == [("ce", "ce"), ("kd", "kd_t2"), ("kd", "kd_t8")]


def test_duplicate_ids_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"share the id 'kd': give each an `id`"):
        _cfg(tmp_path, [{"name": "kd", "T": 2}, {"name": "kd", "T": 8}])
    with pytest.raises(ConfigError, match=r"share the id 'a'"):
        _cfg(tmp_path, [{"name": "kd", "id": "a"}, {"name": "ce", "id": "a"}])
    with pytest.raises(ConfigError, match=r"id 'kd.2' must be letters"):
        _cfg(tmp_path, [{"name": "kd", "id": "kd.2"}])


def test_ids_key_checkpoints_and_stages_and_old_checkpoints_resume(tmp_path):
    EVENTS.clear()
    loss = [{"name": "ce"}, {"name": "test_recorder"}, {"name": "test_recorder", "id": "rec_b"}]
    torch.manual_seed(0)
    Trainer(_cfg(tmp_path, loss), student=TinyNet(), teachers=[TinyNet(16)], data=_data(), log=lambda m: None).fit()
    assert [e for e in EVENTS if e[0] == "stage_end"] == [("stage_end", "rec_init")] * 2  # each instance's stage
    last = tmp_path / "runs" / "r" / "last.pt"
    state = torch.load(last, weights_only=True)
    assert {"terms.test_recorder.scale", "terms.rec_b.scale"} <= set(state["distiller"])
    assert state["stages_done"] == ["rec_init", "rec_b.rec_init"]
    # A run written before ids existed: no `id` in its config; its terms keyed by name.
    old_loss = [{"name": "ce"}, {"name": "test_recorder"}]
    torch.manual_seed(0)
    Trainer(
        _cfg(tmp_path, old_loss, name="old"),
        student=TinyNet(),
        teachers=[TinyNet(16)],
        data=_data(),
        log=lambda m: None,
    ).fit()
    old_last = tmp_path / "runs" / "old" / "last.pt"
    state = torch.load(old_last, weights_only=True)
    for t in state["config"]["loss"]:
        del t["id"]
    torch.save(state, old_last)
    EVENTS.clear()
    cfg = _cfg(tmp_path, old_loss, name="old", epochs=2)
    summary = Trainer(
        cfg, student=TinyNet(), teachers=[TinyNet(16)], data=_data(), resume=True, log=lambda m: None
    ).fit()
    assert summary["epochs"] == 2 and not [e for e in EVENTS if e[0].startswith("stage")]  # stage not rerun
    assert len((tmp_path / "runs" / "old" / "metrics.jsonl").read_text().splitlines()) == 2


# ---- shared memory pieces -------------------------------------------------------------------


def _contrastive(name, **kw):
    torch.manual_seed(0)
    n, c = 30, 3
    ctx = SetupContext(
        student_out={"embed": torch.randn(4, 5)},
        teacher_out={"embed": torch.randn(4, 7)},
        num_classes=c,
        num_samples=n,
        train_targets=torch.arange(n) % c,
        device=torch.device("cpu"),
    )
    term = losses.create(name, num_negatives=8, **kw)
    term.setup(ctx)
    return term


def test_crd_and_wcord_share_one_sampler_and_one_vocabulary():
    from wdistill.losses._shared import memory

    crd, wcord = _contrastive("crd", replacement=True), _contrastive("wcord")  # both: with replacement
    assert isinstance(crd.sampler, memory.ClassSampler) and isinstance(wcord.sampler, memory.ClassSampler)
    y = torch.tensor([0, 1, 2, 0])
    # The same random stream gives the same negatives through either term.
    torch.manual_seed(5)
    via_crd = crd.sample_contrast(torch.tensor([0, 1, 2, 3]))[:, 1:]  # rows 0..3 have labels 0, 1, 2, 0
    torch.manual_seed(5)
    via_wcord = wcord.sample_negatives({"target": y})
    assert torch.equal(via_crd, via_wcord) and ((via_crd % 3) != y[:, None]).all()
    shared = {"num_negatives", "momentum", "scoring", "sync_bank", "feat_dim", "tau"}
    for name in ("crd", "wcord"):
        params = losses.registry.resolve_params(name, {})
        assert shared <= set(params), (name, shared - set(params))
        assert losses.get(name).num_negatives_param == "num_negatives"


def test_old_option_name_is_a_deprecated_alias():
    with pytest.warns(FutureWarning, match=r"bank_scoring='full' is deprecated; write scoring='matmul'"):
        params = losses.registry.resolve_params("wcord", {"bank_scoring": "full"})
    assert params["scoring"] == "matmul" and "bank_scoring" not in params
    with pytest.raises(ValueError, match="give only 'scoring'"):
        losses.registry.resolve_params("wcord", {"bank_scoring": "gather", "scoring": "gather"})
    with pytest.raises(ValueError, match=r"wcord scoring='dense' is unknown"):
        losses.create("wcord", scoring="dense")


def test_pending_rows_gather_every_micro_batch_once():
    from wdistill.losses._shared.memory import PendingRows, momentum_update_

    p = PendingRows()
    assert p.take() is None
    p.add(torch.tensor([1, 2]), torch.ones(2, 3, requires_grad=True))
    p.add(torch.tensor([4]), torch.full((1, 3), 2.0))
    index, values = p.take()
    assert index.tolist() == [1, 2, 4] and values[:, 0].tolist() == [1, 1, 2] and not values.requires_grad
    assert p.take() is None  # taken once
    bank = torch.zeros(5, 3)
    bank[:, 0] = 1
    momentum_update_(bank, index, values, 0.5)
    assert torch.equal(bank[[0, 3]], torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]))  # rows not in the step
    assert torch.allclose(bank[[1, 2]], F.normalize(torch.tensor([[1.0, 0.5, 0.5]]), dim=1).expand(2, 3))
    assert torch.allclose(bank[4], F.normalize(torch.tensor([1.5, 1.0, 1.0]), dim=0))


def test_the_detectors_loss_keeps_its_four_parts_when_asked():
    """det, read by its parts (benchtools/step_trace.py): torchvision's four losses, each times its stage's weight."""
    names = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")
    raw = {k: torch.tensor(float(i + 1), requires_grad=True) for i, k in enumerate(names)}
    term = losses.create("det", rpn=2.0, roi=0.5)
    value = term({"losses": raw}, None, {})
    assert term.last_parts is None and float(value) == 2 * (1 + 2) + 0.5 * (3 + 4)
    term.keep_parts = True
    term({"losses": raw}, None, {})
    parts = term.last_parts
    expected = {"rpn objectness": ("loss_objectness", 2.0), "rpn box": ("loss_rpn_box_reg", 2.0),
                "roi class": ("loss_classifier", 0.5), "roi box": ("loss_box_reg", 0.5)}
    assert set(parts) == set(expected)
    for part, (loss, w) in expected.items():
        grads = torch.autograd.grad(parts[part], list(raw.values()), allow_unused=True)
        assert [None if g is None else float(g) for g in grads] == [w if k == loss else None for k in names]
        assert float(parts[part]) == w * float(raw[loss])
