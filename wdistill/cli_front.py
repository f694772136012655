"""`wdistill eval`: score any file a run writes on the data it was trained on.

What eval reads (``resolve_checkpoint``):
- a run directory: its ``student.pt`` (the final epoch, what the run exports); ``--which best``
  or ``--which last`` picks ``best.pt`` / ``last.pt`` instead. An interrupted run without
  ``student.pt`` falls back to ``best.pt``, then ``last.pt`` (said in the output);
- ``best.pt`` / ``last.pt``: the trainer's state; the ``student.`` weights are taken;
- ``student.pt`` and files written by ``wdistill export``: student weights + architecture;
- a bare state_dict or a published checkpoint (``--model NAME`` names the architecture).

The data: ``--data`` when given; otherwise the data section the checkpoint records (trainer
states and ``student.pt`` do), or the ``config.yaml`` of the run directory it sits in. A file
that records neither needs ``--data``: eval never guesses.
"""
from __future__ import annotations

import json
from pathlib import Path

from wdistill.config.schema import ConfigError

RUN_FILES = {"student": "student.pt", "best": "best.pt", "last": "last.pt"}


def resolve_checkpoint(path: str | Path, which: str | None = None) -> tuple[Path, str | None]:
    """(file to read, note for the user or None) for a file or a run directory."""
    path = Path(path)
    if path.is_dir():
        if which:
            f = path / RUN_FILES[which]
            if not f.is_file():
                raise ConfigError(f"{path} has no {f.name}: the run wrote "
                                  f"{', '.join(p.name for p in sorted(path.glob('*.pt'))) or 'no checkpoint yet'}")
            return f, None
        for name in ("student", "best", "last"):
            f = path / RUN_FILES[name]
            if f.is_file():
                note = None if name == "student" else f"{path} has no student.pt (unfinished run): using {f.name}"
                return f, note
        raise ConfigError(f"{path} holds no student.pt, best.pt or last.pt: pass a run directory written by "
                          "`wdistill train/distill` or a checkpoint file")
    if which:
        raise ConfigError("--which picks a file of a run directory; you passed a file")
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    return path, None


def student_weights(state: dict) -> tuple[dict, dict | None, str | None, dict]:
    """(state_dict, run config or None, arch or None, model kwargs) of any checkpoint a run writes."""
    if not isinstance(state, dict):
        raise ConfigError(f"the checkpoint holds a {type(state).__name__}, not a dict of weights")
    if "distiller" in state:  # best.pt / last.pt: the whole distiller; the student is under "student."
        prefix = "student."
        sd = {k[len(prefix):]: v for k, v in state["distiller"].items() if k.startswith(prefix)}
        cfg = state.get("config")
        kwargs = (cfg or {}).get("student", {}).get("kwargs") or {}
        return sd, cfg, state.get("arch"), kwargs
    if isinstance(state.get("model"), dict):  # student.pt or an exported student
        cfg = {"data": state["data"]} if isinstance(state.get("data"), dict) else None
        return state["model"], cfg, state.get("arch"), state.get("kwargs") or {}
    return state, None, None, {}  # a bare state_dict (published checkpoints)


def _run_config_beside(path: Path) -> dict | None:
    """The config.yaml the trainer wrote next to ``path`` (a file of a run directory), if any."""
    import yaml

    f = path.parent / "config.yaml"
    if not f.is_file():
        return None
    try:
        raw = yaml.safe_load(f.read_text())
    except yaml.YAMLError:
        return None
    return raw if isinstance(raw, dict) and isinstance(raw.get("data"), dict) else None


def _io_shape(arch: str, kwargs: dict, sd: dict) -> tuple[int | None, int | None]:
    """(classes, input channels) the weights imply: rows of the last Linear, width of the first Conv."""
    import torch
    import torch.nn as nn

    from wdistill import models

    if arch not in models.available():  # timm/torchvision/factory specs: shapes come from the weights' metadata
        return None, None
    with torch.device("meta"):
        m = models.create(arch, **kwargs)
    convs = [n for n, x in m.named_modules() if isinstance(x, nn.Conv2d)]
    linears = [n for n, x in m.named_modules() if isinstance(x, nn.Linear)]
    strip = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    nc = strip.get(f"{linears[-1]}.weight") if linears else None
    ch = strip.get(f"{convs[0]}.weight") if convs else None
    return (None if nc is None else int(nc.shape[0])), (None if ch is None else int(ch.shape[1]))


def _test_data(args, cfg: dict | None, source: str):
    """(test set, description, eval-loader crop kwargs) per the rules in the module docstring."""
    from wdistill.data import ImageDataset, load_dataset
    from wdistill.data.build import open_datasets
    from wdistill.config.schema import load_config

    if args.data:
        _, test = load_dataset(args.data, args.root)
        return test, {"name": args.data, "root": args.root, "from": "--data"}, {}
    if cfg and isinstance(cfg.get("data"), dict):
        data = dict(cfg["data"])
        if args.root:
            data["root"] = args.root
        run_cfg = load_config({"student": {"model": "unused"}, "data": data})
        _, test = open_datasets(run_cfg.data.model_copy(update={"loader": "memory"}))
        if not isinstance(test, ImageDataset):
            raise ConfigError(f"{args.checkpoint} was trained on streamed data ({run_cfg.data.name}); evaluate it "
                              "with --data NAME --root DIR, or `wdistill train CONFIG optim.epochs=...` reports test "
                              "accuracy every epoch")
        if run_cfg.data.test_subset:
            test = test.subset(slice(0, run_cfg.data.test_subset))
        return test, {"name": run_cfg.data.name, "root": run_cfg.data.root, "from": source}, run_cfg.data.crop_kwargs()
    raise ConfigError(f"{args.checkpoint} does not record the data it was trained on: pass --data NAME "
                      "(and --root DIR), e.g. --data fashion_mnist; `wdistill list` names the data sets")


def _recorded_view(raw: dict, cfg: dict | None) -> dict | None:
    """The student view a checkpoint records (student.pt/exports: ``view``; trainer states and
    config.yaml: ``student.view``); None for the image itself."""
    if isinstance(raw, dict) and isinstance(raw.get("view"), dict):
        view = raw["view"]
    else:
        view = ((cfg or {}).get("student") or {}).get("view")
    return view if isinstance(view, dict) and view.get("name", "identity") != "identity" else None


def cmd_eval(args) -> int:
    import torch

    from wdistill import models
    from wdistill.data import BatchLoader
    from wdistill.engine import evaluate
    from wdistill.engine.checkpoint import load
    from wdistill.models.weights import load_checkpoint

    from wdistill.models.weights import read_checkpoint

    path, note = resolve_checkpoint(args.checkpoint, args.which)
    raw = read_checkpoint(path) if path.suffix == ".safetensors" else load(path, "cpu", what="checkpoint to evaluate")
    sd, cfg, arch, kwargs = student_weights(raw)
    if path.suffix == ".safetensors":  # shapes recorded in the file's metadata
        recorded = {k: raw[k] for k in ("num_classes", "in_channels") if isinstance(raw.get(k), int)}
    else:
        recorded = {}
    source = f"{path.name} (recorded config)"
    if cfg is None and not args.data:
        cfg = _run_config_beside(path)
        source = f"{path.parent / 'config.yaml'}"
    arch = args.model or arch or ((cfg or {}).get("student") or {}).get("model")
    if not arch:
        raise ConfigError(f"{path} does not record its architecture: pass --model NAME (`wdistill list` "
                          "names the models)")
    test, data_desc, crop = _test_data(args, cfg, source)
    if args.subset:
        test = test.subset(slice(0, args.subset))
    try:
        nc, ch = _io_shape(arch, kwargs, sd)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--model {arch}: {e}") from None
    nc = nc or recorded.get("num_classes") or test.num_classes
    ch = ch or recorded.get("in_channels") or test.channels
    if nc != test.num_classes:
        raise ConfigError(f"{path} is a {nc}-class model but {data_desc['name']} has {test.num_classes} classes: "
                          "evaluate it on the data it was trained on (pass that --data/--root)")
    if ch != test.channels:
        raise ConfigError(f"{path} takes {ch}-channel images but {data_desc['name']} has {test.channels} "
                          "channels: evaluate it on the data it was trained on (pass that --data/--root)")
    model = models.build(arch, nc, ch, kwargs)
    load_checkpoint(model, sd, name=arch)
    view = _recorded_view(raw, cfg) if args.view is None else (None if args.view == "identity" else {"name": args.view})
    if view:  # the student is scored on the view it was trained on (student.view), as training did
        from wdistill.data.views import View, Viewed
        try:
            model = Viewed(model, View(view))
        except ValueError as e:
            raise ConfigError(f"the recorded student view {view}: {e}") from None
    from wdistill.engine.build import resolve_device
    device = resolve_device(args.device)
    if args.center_crop:
        crop = {"resized_crop": args.center_crop}
    metrics = evaluate(model.to(device), BatchLoader(test, args.batch_size, False, device, **crop))
    out = {"checkpoint": str(path), "arch": arch, "data": data_desc, "images": len(test),
           **({"view": view} if view else {}), **metrics}
    if note:
        out["note"] = note
    print(json.dumps(out, indent=2))
    return 0


def positive_int(text: str) -> int:
    from wdistill.cli import positive_int as check
    return check(text)


def add_eval_parser(sub) -> None:
    s = sub.add_parser("eval", help="top-1/top-5 of a run or checkpoint on the test split of its own data",
                       description=__doc__.split("\n", 1)[1].strip(),
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    s.add_argument("checkpoint", help="a run directory, or student.pt / best.pt / last.pt / an exported "
                                      "or published checkpoint")
    s.add_argument("--which", choices=list(RUN_FILES), default=None,
                   help="for a run directory: student.pt (default, the final epoch), best.pt or last.pt")
    s.add_argument("--data", default=None, help="data set name (default: the one the run recorded; "
                                                "required when the file records none)")
    s.add_argument("--root", default=None, help="data directory (default: the recorded one)")
    s.add_argument("--model", default=None, help="architecture, if the checkpoint does not record it")
    s.add_argument("--subset", type=positive_int, default=None, help="evaluate on the first N test images only")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--center-crop", type=int, default=None,
                   help="evaluate on the centre NxN crop (the ImageNet recipe: images stored at 256, --center-crop 224)")
    s.add_argument("--view", default=None, choices=["identity", "downsample", "mask", "channels", "lowpass",
                                                    "highpass"],
                   help="score on this view (default parameters) instead of the student view the run recorded")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_eval)


# ---- wdistill config show|check|reference ----------------------------------------------------------
def check_config(cfg) -> list[str]:
    """Checks beyond the schema that need no training: model names, loss terms and their parameters,
    teacher checkpoints. Returns what was checked; raises ConfigError naming the problem and fix."""
    from wdistill import losses, models

    for role, section in [("student", cfg.student)] + [("teacher", s) for s in cfg.teacher_sections()]:
        if ":" not in section.model and section.model not in models.available():  # timm:/torchvision:/factory
            raise ConfigError(f"{role}.model {section.model!r} is not a zoo model; `wdistill list` names them")
        if section.checkpoint:
            from wdistill.engine.build import missing_checkpoint
            problem = missing_checkpoint(section, role)
            if problem:
                raise ConfigError(problem)
    from wdistill.engine.build import check_teacher_needs
    check_teacher_needs(cfg)
    for i, t in enumerate(cfg.loss):
        try:
            losses.create(t.name, **t.params)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"loss.{i} ({t.name}): {e}") from None
    return ["schema", "data set and options", "models", "loss terms", "checkpoints exist"]


def cmd_config(args) -> int:
    from wdistill.engine.checkpoint import atomic_write_text
    from wdistill.config.schema import dump_config, load_config

    if args.action == "reference":
        from wdistill.config.reference import reference_markdown
        text = reference_markdown()
        if args.output:
            atomic_write_text(text, args.output)
            print(f"wrote {args.output}")
        else:
            print(text, end="")
        return 0
    if not args.config:
        raise ConfigError(f"`wdistill config {args.action}` needs a CONFIG file, e.g. configs/fmnist/kd.yaml")
    cfg = load_config(args.config, args.overrides)
    if args.action == "show":
        print(dump_config(cfg), end="")
        return 0
    checked = check_config(cfg)
    print(f"ok: {args.config} is valid ({', '.join(checked)} checked; the data itself is not read)")
    return 0


def add_config_parser(sub) -> None:
    s = sub.add_parser("config", help="show the resolved config, check it, or write the reference (docs/config.md)",
                       description="show: the config with every default filled in (YAML); check: validate only "
                                   "(exit 0, or 2 with the problem); reference: the configuration reference "
                                   "generated from the code (docs/config.md)")
    s.add_argument("action", choices=["show", "check", "reference"])
    s.add_argument("config", nargs="?", help="YAML run config (show, check)")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.1")
    s.add_argument("-o", "--output", default=None, help="reference: write to this file (e.g. docs/config.md)")
    s.set_defaults(func=cmd_config)


# ---- wdistill list ------------------------------------------------------------------------------------
def _list_models(args) -> list[str]:
    from wdistill import models
    return ["models: " + ", ".join(models.available())]


def _list_data(args) -> list[str]:
    from wdistill.config.reference import _flow, data_sets
    lines = ["data sets (data.name) and their data.options (default):"]
    for name, opts in data_sets().items():
        lines.append(f"  {name}: " + (", ".join(f"{k}={_flow(v)}" for k, v in opts.items()) or "no options"))
    return lines


def _list_methods(args) -> list[str]:
    from wdistill.config.reference import _flow, methods
    lines = ["methods (loss[].name) and their parameters (default):"]
    for name, (_, params) in methods().items():
        lines.append(f"  {name}: " + (", ".join(f"{k}={_flow(v)}" for k, v in params.items()) or "no parameters"))
    return lines


# Sections of `wdistill list`, in order: (flag, help, lister). A new section (e.g. presets) is one
# more entry; with no flag given every section is printed.
def _list_presets(args) -> list[str]:
    from wdistill.config.schema import list_presets
    names = list_presets()
    return ["presets (`wdistill distill NAME`):"] + [f"  {n}" for n in names] + [f"{len(names)} presets"]


LIST_SECTIONS = [("models", "zoo architectures", _list_models),
                 ("data", "data sets and their options", _list_data),
                 ("methods", "loss terms and their parameters", _list_methods),
                 ("presets", "the shipped preset names (not shown by default: there are hundreds)", _list_presets)]
DEFAULT_LIST = ("models", "data", "methods")


def cmd_list(args) -> int:
    chosen = [s for s in LIST_SECTIONS if getattr(args, s[0])] or [s for s in LIST_SECTIONS if s[0] in DEFAULT_LIST]
    print("\n".join(line for _, _, lister in chosen for line in lister(args)))
    return 0


def add_list_parser(sub) -> None:
    s = sub.add_parser("list", help="models, data sets (with options) and methods (with parameters)")
    for flag, helptext, _ in LIST_SECTIONS:
        s.add_argument(f"--{flag}", action="store_true", help=f"only {helptext}")
    s.set_defaults(func=cmd_list)


# ---- wdistill demo ----------------------------------------------------------------------------------
def demo_chart(rows: list[dict], path, student_epochs: int) -> None:
    from wdistill.workflows.plots import leaderboard_chart

    leaderboard_chart([{"name": r["method"], "top1": r["top1"], "std": None} for r in rows], path,
                      f"wdistill demo: resnet20 teacher -> resnet8 students ({student_epochs} epochs), "
                      "bundled Fashion-MNIST sample", "One run each (seed 0), final epoch, on the sample's 1,000 test "
                      "images: differences under about 1 point are noise.")


def cmd_demo(args) -> int:
    from wdistill.workflows import demo
    from wdistill.engine.checkpoint import atomic_write_text

    if args.make_teacher:
        demo.make_demo_teacher(str(Path(args.out) / "make-teacher"))
        return 0
    methods = demo.demo_methods(args.methods, full=args.full)
    student_epochs = args.student_epochs or (demo.FULL_STUDENT_EPOCHS if args.full else demo.QUICK_STUDENT_EPOCHS)
    teacher_epochs = args.teacher_epochs or (demo.FULL_TEACHER_EPOCHS if args.full else None)
    rows = demo.run_demo(args.out, methods, teacher_epochs=teacher_epochs, student_epochs=student_epochs)
    table = demo.leaderboard_table(rows)
    out = Path(args.out)
    atomic_write_text(table + "\n", out / "leaderboard.md")
    demo_chart(rows, out / "leaderboard.png", student_epochs)
    print("\n" + table)
    print(f"\nwrote {out / 'leaderboard.md'} and {out / 'leaderboard.png'}")
    return 0


def add_demo_parser(sub) -> None:
    s = sub.add_parser("demo", help="distilled students on the bundled Fashion-MNIST sample: a leaderboard in minutes",
                       description=f"Quick (default): resnet8 students ({', '.join(__import__('wdistill.workflows.demo').demo.QUICK_METHODS)}) "
                                   "distilled for 5 epochs from the resnet20 teacher shipped in the package. "
                                   "--full: trains the teacher (10 epochs) and seven students (8 epochs).")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--full", action="store_true", help="the long demo: train the teacher, seven students, 8 epochs")
    s.add_argument("--methods", default=None, help="comma-separated, e.g. vanilla,kd,wkd_l, or 'all' "
                   "(default: vanilla,kd,wkd_l,wkd_lf,wcord_kd; with --full also dkd,crd_kd)")
    s.add_argument("--teacher-epochs", type=int, default=None,
                   help="train the teacher for N epochs instead of using the shipped one (--full: 10)")
    s.add_argument("--student-epochs", type=int, default=None, help="default 5 (--full: 8)")
    s.add_argument("--make-teacher", action="store_true",
                   help="(maintainers) train the shipped teacher into wdistill/assets/, run dir under --out")
    s.set_defaults(func=cmd_demo)
