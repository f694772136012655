"""Every YAML preset under configs/ loads, builds (teacher + student + loss terms) and trains one
step on random data of its dataset's shape: finite loss, every distillation term's gradient reaches
the student, the optimiser moves it. Plus: the committed CIFAR-100/ImageNet presets are exactly what
scripts/make_presets.py writes, and the pairs without an FSP preset really cannot run FSP.

Teachers are random-init (no checkpoint files needed), built once per (architecture, classes) and
shared by all presets that use them; WKD-L's CKA cost is cached across presets of one teacher.
"""
import functools
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from wdistill import losses, models
from wdistill.config import load_config
from wdistill.data import ImageDataset
from wdistill.engine import Trainer
from wdistill.errors import ConfigError
from wdistill.losses.base import SetupContext
from wdistill.models.taps import FeatureTap

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
# The COCO detection presets need torchvision: tests/test_detection_engine.py (tv venv) builds and runs them.
PRESETS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.relative_to(CONFIGS).parts[0] != "coco")

# Random data shaped like each dataset a preset may name: (channels, size, classes, images per class).
# ImageNet runs at 160x160 crops (not 224) of 176x176 images (not 256): the smallest size at which
# the last maps are 5x5, so that WKD-F's published grid 4 still leaves >= 2 positions per cell.
IMAGENET_TEST_CROP = 160
DATA_SHAPES = {"cifar100": (3, 32, 100, 1), "cifar10": (3, 32, 10, 10), "image_folder": (3, 176, 10, 2),
               "fashion_mnist": (1, 28, 10, 10), "fmnist_sample": (1, 28, 10, 10), "mnist": (1, 28, 10, 10)}
# Batch size: 3 with a heavy teacher (FT's paraphraser alone has 130M weights on ResNet50), else 4.
# Never 2: RKD's distance and angle potentials are constant for two samples, so no gradient.
HEAVY = {"ResNet50", "resnet32x4", "vgg13", "resnet34", "resnet50"}
WARN_FILTERS = ["ignore:crd. some class has only:UserWarning"]


@functools.lru_cache(maxsize=None)
def _load_make_presets():
    spec = importlib.util.spec_from_file_location("make_presets", ROOT / "scripts" / "make_presets.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_presets"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@functools.lru_cache(maxsize=None)
def _data(name: str) -> tuple[ImageDataset, ImageDataset]:
    if name not in DATA_SHAPES:
        raise AssertionError(f"test_presets has no data shape for dataset {name!r}: add it to DATA_SHAPES")
    c, size, k, per_class = DATA_SHAPES[name]
    g = torch.Generator().manual_seed(0)
    n = k * per_class
    images = torch.randint(0, 256, (n + 8, c, size, size), dtype=torch.uint8, generator=g)
    targets = torch.arange(n + 8) % k
    full = ImageDataset(images, targets, k, (0.5,) * c, (0.25,) * c, name=f"random-{name}")
    return full.subset(slice(0, n)), full.subset(slice(n, n + 8))


@functools.lru_cache(maxsize=None)
def _teacher(model: str, num_classes: int, channels: int) -> torch.nn.Module:
    torch.manual_seed(1)
    return models.create(model, num_classes=num_classes, in_channels=channels).eval()


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("preset_runs")


def _grads(loss: torch.Tensor, params: list) -> list:
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)


def _reaches(grads) -> bool:
    return any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def _step_batch(trainer: Trainer, epoch: int) -> dict:
    batch = next(iter(trainer.train_loader))
    batch.update(epoch=epoch, num_epochs=trainer.cfg.optim.epochs, step=0)
    return batch


def _one_training_step(trainer: Trainer) -> None:
    """What Trainer.fit does before and in its first step, cut to one batch per stage."""
    d = trainer.distiller
    trainer.setup_terms()
    student_params = [p for p in trainer.student.parameters() if p.requires_grad]
    optimizer = trainer.make_optimizer(d.trainable_parameters(), trainer.cfg.optim.lr)
    for term in d.terms.values():
        for stage in term.stages():  # init stages (AB, FSP, FT): one step each
            trainer.student.train(stage.train_student)
            batch = _step_batch(trainer, -1)
            loss = stage.loss(d.student_tap(batch["image"]), d.teacher_forward(batch["image"]), batch)
            assert torch.isfinite(loss), f"stage {stage.name}: loss {loss}"
            params = list(stage.parameters()) + (student_params if stage.train_student else [])
            assert params and _reaches(_grads(loss, params)), f"stage {stage.name} trains nothing"
            for p in params:
                p.grad = None
    d.train()
    total, parts, _ = d(_step_batch(trainer, 0))
    assert torch.isfinite(total), parts
    for name, value in parts.items():
        if name == "ce":
            continue
        if not value.requires_grad:  # AB/FSP: by the published recipe the main stage is CE only
            assert d.terms[name].stages() and float(value) == 0.0, f"{name} has no gradient and no stage"
            continue
        assert _reaches(_grads(value, student_params)), f"term {name}'s gradient does not reach the student"
    before = [p.detach().clone() for p in student_params]
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in student_params if p.grad is not None)
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, student_params)), "the student did not move"


@pytest.mark.filterwarnings(*WARN_FILTERS)
@pytest.mark.parametrize("path", PRESETS, ids=[str(p.relative_to(CONFIGS)) for p in PRESETS])
def test_preset_builds_and_trains_one_step(path, out_dir):
    run_name = re.sub(r"[^\w.-]", "_", str(path.relative_to(CONFIGS)))
    cfg = load_config(path)
    heavy = any(s.model in HEAVY for s in cfg.teacher_sections() + [cfg.student])
    crop = [f"data.random_resized_crop={IMAGENET_TEST_CROP}"] if cfg.data.random_resized_crop else []
    cfg = load_config(path, [f"run.out_dir={out_dir}", f"run.name={run_name}", "run.device=cpu",
                             f"data.batch_size={3 if heavy else 4}", "train.progress=false"] + crop)
    train, test = _data(cfg.data.name)
    teachers = [_teacher(s.model, train.num_classes, train.channels) for s in cfg.teacher_sections()]
    for s in cfg.teacher_sections():
        assert s.checkpoint, f"{path}: teacher {s.model} has no checkpoint path"
    trainer = Trainer(cfg, teachers=teachers or None, data=(train, test), log=lambda *_: None)
    try:
        _one_training_step(trainer)
    finally:
        for tap in trainer.distiller.teacher_taps:  # shared teachers must not keep this run's hooks
            tap.remove()


# ---------------------------------------------------------------------------------- consistency
def test_presets_are_what_the_generator_writes():
    mp = _load_make_presets()
    files = mp.all_presets()
    on_disk = {str(p.relative_to(CONFIGS)) for p in mp.owned(CONFIGS)}
    assert on_disk == set(files), (f"missing: {sorted(set(files) - on_disk)[:5]}, "
                                   f"extra: {sorted(on_disk - set(files))[:5]}: run scripts/make_presets.py")
    stale = [rel for rel, text in files.items() if (CONFIGS / rel).read_text() != text]
    assert not stale, f"{stale[:5]} differ from scripts/make_presets.py: run it"
    assert mp.main(["--check"]) == 0


def test_every_pair_has_every_method_and_fsp_only_where_widths_match():
    mp = _load_make_presets()
    pair_dirs = {f"{t}-{s}" for t, s in mp.SAME_ARCH + mp.CROSS_ARCH}
    assert len(pair_dirs) == 13
    readme = (CONFIGS / "cifar100" / "README.md").read_text()
    for d in sorted(pair_dirs):
        methods = {p.stem for p in (CONFIGS / "cifar100" / d).glob("*.yaml")}
        assert set(mp.cifar_methods()) - {"fsp"} <= methods <= set(mp.cifar_methods()), (d, methods)
        if "fsp" not in methods:
            assert f"`{d}`" in readme, f"configs/cifar100/README.md must say why {d} has no FSP preset"
    models_dir = {p.stem for p in (CONFIGS / "cifar100" / "models").glob("*.yaml")}
    assert models_dir == {m for d in pair_dirs for m in d.split("-")}
    for d in ("resnet34-resnet18", "resnet50-MobileNetV1"):
        assert {p.stem for p in (CONFIGS / "imagenet" / d).glob("*.yaml")} == {"kd", "wkd_l", "wkd_f", "wkd_lf"}


def _probe(model: str) -> dict:
    with torch.device("meta"):  # the FSP check reads shapes only
        return FeatureTap(models.create(model, 100, 3).eval())(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("pair", ["wrn_40_2-wrn_40_1", "vgg13-MobileNetV2", "ResNet50-MobileNetV2",
                                  "ResNet50-vgg8", "resnet32x4-ShuffleV1", "resnet32x4-ShuffleV2",
                                  "wrn_40_2-ShuffleV1"])
def test_pairs_without_fsp_preset_really_cannot_run_fsp(pair):
    """Independent of the generator's width rule: the FSP term itself refuses these pairs."""
    assert not (CONFIGS / "cifar100" / pair / "fsp.yaml").exists()
    t, s = pair.split("-")
    ctx = SetupContext(student_out=_probe(s), teacher_out=_probe(t), num_classes=100, num_samples=1,
                       train_targets=torch.zeros(1, dtype=torch.long), device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="equal student/teacher channel counts"):
        losses.create("fsp").setup(ctx)


def test_headers_name_their_sources():
    mp = _load_make_presets()
    for path in mp.owned(CONFIGS):
        text = path.read_text()
        header = "".join(line for line in text.splitlines(True) if line.startswith("#"))
        assert text.startswith("# "), f"{path} has no header comment"
        assert "scripts/make_presets.py" in header and "Recipe:" in header, path
        # sources a user can read: papers and files of public repositories, not internal notes
        assert "REFERENCE.md" not in header and "BENCHMARK.md" not in header, path
        assert any(src in header for src in ("RepDistiller", "mdistiller", "paper")), path


# Published values typed in from the papers/reference configs independently of scripts/make_presets.py's tables.
EXPECTED_BETA = {"fitnet": 100, "at": 1000, "sp": 3000, "cc": 0.02, "vid": 1, "rkd": 1, "pkt": 30000,
                 "ft": 200, "nst": 50}
EXPECTED_DKD_BETA = {"resnet56-resnet20": 2, "resnet110-resnet32": 2, "vgg13-vgg8": 6, "vgg13-MobileNetV2": 6,
                     "wrn_40_2-wrn_16_2": 6, "wrn_40_2-wrn_40_1": 6, "resnet32x4-resnet8x4": 8,
                     "wrn_40_2-ShuffleV1": 8, "ResNet50-MobileNetV2": 8}
EXPECTED_WKD = {  # (pair, method): {term: {param: value}}
    ("resnet32x4-resnet8x4", "wkd_l"): {"wkd_l": dict(lambda_l=600, tau=8, kappa=1, decay_start=150)},
    ("wrn_40_2-ShuffleV1", "wkd_l"): {"wkd_l": dict(lambda_l=200, tau=6, kappa=1, decay_start=150)},
    ("resnet32x4-resnet8x4", "wkd_f"): {"wkd_f": dict(lambda_f=0.08, gamma=4, grid=1, decay_start=150)},
    ("wrn_40_2-ShuffleV1", "wkd_f"): {"wkd_f": dict(lambda_f=0.3, gamma=3, grid=4, decay_start=150)},
    ("resnet32x4-resnet8x4", "wkd_lf"): {"wkd_l": dict(lambda_l=200, tau=8, kappa=1),
                                         "wkd_f": dict(lambda_f=0.08, gamma=8, grid=1)},
    ("wrn_40_2-ShuffleV1", "wkd_lf"): {"wkd_l": dict(lambda_l=60, tau=4, kappa=1),
                                       "wkd_f": dict(lambda_f=0.5, gamma=3, grid=4)},
    ("resnet34-resnet18", "wkd_l"): {"wkd_l": dict(lambda_l=30, tau=2, kappa=1, decay_start=0, cka_mode="logits")},
    ("resnet34-resnet18", "wkd_f"): {"wkd_f": dict(lambda_f=0.02, gamma=2, grid=4, decay_start=0,
                                                   projector="bottleneck")},
    ("resnet34-resnet18", "wkd_lf"): {"wkd_l": dict(lambda_l=10, tau=2, kappa=1),
                                      "wkd_f": dict(lambda_f=1.0, gamma=2, grid=4)},
    ("resnet50-MobileNetV1", "wkd_l"): {"wkd_l": dict(lambda_l=25, tau=2, kappa=2, decay_start=0)},
    ("resnet50-MobileNetV1", "wkd_f"): {"wkd_f": dict(lambda_f=0.005, gamma=2, grid=4, decay_start=30)},
    ("resnet50-MobileNetV1", "wkd_lf"): {"wkd_l": dict(lambda_l=25, tau=2, kappa=2, decay_start=0),
                                         "wkd_f": dict(lambda_f=0.005, gamma=2, grid=4, decay_start=0)},
}


def _terms(cfg) -> dict:
    return {t.name: {"weight": t.weight, **t.params} for t in cfg.loss}


def test_presets_hold_the_published_numbers():
    for path in sorted((CONFIGS / "cifar100").glob("*-*/*.yaml")):
        pair, method = path.parent.name, path.stem
        cfg = load_config(path)
        terms = _terms(cfg)
        t, s = pair.split("-")
        assert (cfg.teacher.model, cfg.student.model) == (t, s), path
        assert cfg.teacher.checkpoint == f"cache:teachers/cifar100/{t}.pth", path
        o = cfg.optim
        assert (o.epochs, o.milestones, o.gamma, o.momentum, o.weight_decay, cfg.data.batch_size) == \
            (240, [150, 180, 210], 0.1, 0.9, 5e-4, 64), path
        assert o.lr == (0.01 if s in ("MobileNetV2", "ShuffleV1", "ShuffleV2") else 0.05), path
        assert o.nesterov == method.startswith("wkd"), path
        assert (cfg.data.name, cfg.data.crop_padding, cfg.data.flip) == ("cifar100", 4, True), path
        if method == "kd":
            assert set(terms) == {"ce", "kd"} and terms["ce"]["weight"] == 0.1, path
            assert (terms["kd"]["weight"], terms["kd"]["T"]) == (0.9, 4), path
        elif method in EXPECTED_BETA:
            assert terms["ce"]["weight"] == 1 and terms[method]["weight"] == EXPECTED_BETA[method], path
            assert set(terms) == {"ce", method}, path
        elif method in ("crd", "crd_kd"):
            assert terms["crd"]["weight"] == 0.8 and terms["crd"]["num_negatives"] == 16384, path
            assert terms["crd"]["tau"] == 0.07 and terms["crd"]["momentum"] == 0.5, path
            assert ("kd" in terms) == (method == "crd_kd") and terms.get("kd", {"weight": 1})["weight"] == 1, path
        elif method == "dkd":
            assert terms["dkd"]["beta"] == EXPECTED_DKD_BETA.get(pair, 8), path
            assert (terms["dkd"]["alpha"], terms["dkd"]["T"], terms["dkd"]["warmup"]) == (1, 4, 20), path
        elif method in ("wcord", "wcord_kd"):
            assert (terms["wcord"]["lambda1"], terms["wcord"]["lambda2"]) == (0.8, 0.1), path
            assert ("kd" in terms) == (method == "wcord_kd"), path
        elif method in ("ab", "fsp"):
            assert terms[method]["init_epochs"] == 30 and terms[method]["main_weight"] == 0, path
        if (pair, method) in EXPECTED_WKD:
            for term, params in EXPECTED_WKD[(pair, method)].items():
                assert {k: terms[term][k] for k in params} == params, (path, term)
    for (pair, method), expected in EXPECTED_WKD.items():
        family = "cifar100" if (CONFIGS / "cifar100" / pair).is_dir() else "imagenet"
        path = CONFIGS / family / pair / f"{method}.yaml"
        terms = _terms(load_config(path))
        for term, params in expected.items():
            assert {k: terms[term][k] for k in params} == params, (path, term)
    for pair in ("resnet34-resnet18", "resnet50-MobileNetV1"):
        for method in ("kd", "wkd_l", "wkd_f", "wkd_lf"):
            cfg = load_config(CONFIGS / "imagenet" / pair / f"{method}.yaml")
            o = cfg.optim
            assert (o.epochs, o.lr, o.milestones, o.weight_decay, cfg.data.batch_size) == (
                100,
                0.1,
                [30, 60, 90],
                1e-4,
                256,
            )
            d = cfg.data
            assert (d.name, d.crop_padding, d.random_resized_crop, d.rrc_scale, d.options["size"]) == (
                "image_folder",
                0,
                224,
                (0.08, 1.0),
                256,
            )
        kd = _terms(load_config(CONFIGS / "imagenet" / pair / "kd.yaml"))
        assert set(kd) == {"ce", "kd"} and kd["ce"]["weight"] == 0.5 and (kd["kd"]["weight"], kd["kd"]["T"]) == (0.5, 1)


def test_a_built_wheel_ships_every_preset(tmp_path):
    """`pip install wdistill` (not editable) must carry configs/: recipe() reads the tuned
    FMNIST presets from inside the package. Builds the wheel and lists what it holds."""
    import subprocess
    import zipfile

    from wdistill.config import presets as recipes

    assert recipes.FMNIST_DIR.is_relative_to(Path(recipes.__file__).resolve().parent)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("wdistill-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "wdistill"
    wanted = {p.resolve().relative_to(package.parent).as_posix() for p in PRESETS}
    assert wanted and any("/fmnist/" in w for w in wanted)
    assert wanted <= shipped, f"missing from the wheel: {sorted(wanted - shipped)[:5]}"


def test_a_missing_teacher_that_a_preset_trains_names_that_preset(tmp_path, monkeypatch, capsys):
    """The COCO presets' teachers are trained by coco/models/<backbone>: a missing one names that command."""
    from wdistill.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["config", "check", "coco/resnet101-resnet18/wkd_l"]) == 2
    err = capsys.readouterr().err
    assert "teacher.checkpoint 'runs/coco/models/resnet101/student.pt'" in err
    assert "`wdistill train coco/models/resnet101` (a shipped preset) trains it and writes student.pt there" in err
    assert main(["config", "check", "coco/resnet101-resnet18/wkd_l", "teacher.checkpoint=runs/no/such/student.pt"]) == 2
    assert "wdistill train no/such" not in capsys.readouterr().err  # only a shipped preset is named
