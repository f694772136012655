"""CLI commands about models: `inspect`, `teachers fetch|status`, `list --presets`."""
from __future__ import annotations

import torch

from wdistill.config.schema import ConfigError


def parse_input_size(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--input-size {text!r}: give C,H,W, e.g. 3,224,224") from None
    return c, h, w


def inspect_model(spec: str, input_size: tuple[int, int, int], num_classes: int, kwargs: dict | None = None) -> str:
    """Module paths, classes and output shapes of one forward, then the automatic taps."""
    from wdistill.models import build, spec_for
    from wdistill.models.autotap import auto_spec, trace

    c, h, w = input_size
    try:
        model = build(spec, num_classes=num_classes, in_channels=c, kwargs=kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model {spec!r}: {e}") from None
    x = torch.zeros(1, c, h, w)
    calls, _ = trace(model, x)
    width = max([len(t.path) for t in calls] + [6])
    lines = [f"{spec}: input {tuple(x.shape)}, {sum(p.numel() for p in model.parameters()):,} parameters",
             f"{'module':<{width}}  {'class':<22} output shape"]
    for t in calls:
        shape = "x".join(map(str, t.shape)) if t.shape is not None else "(not a tensor)"
        reused = f"  (called {t.calls}x: not usable as a tap)" if t.calls > 1 else ""
        lines.append(f"{t.path:<{width}}  {t.kind:<22} {shape}{reused}")
    declared = spec_for(model)
    try:
        taps, source = (declared, "declared by the zoo model") if declared else (auto_spec(model, x), "automatic")
        lines += ["", f"taps ({source}):", f"  feats: {taps.feats}", f"  embed: {taps.embed}"]
        if taps.preact:
            lines.append(f"  preact: {taps.preact}")
    except ValueError as e:
        lines += ["", f"no automatic taps: {e}"]
    lines.append("Override in YAML: student: {model: ..., taps: {feats: [...], embed: 'PATH:in'}}")
    return "\n".join(lines)


def cmd_inspect(args) -> int:
    import yaml

    default = "3,224,224" if args.model.startswith(("timm:", "torchvision:")) else "3,32,32"
    kwargs = yaml.safe_load(args.kwargs) if args.kwargs else None
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ConfigError(f"--kwargs {args.kwargs!r} must be a mapping, e.g. '{{width: 2}}'")
    print(inspect_model(args.model, parse_input_size(args.input_size or default), args.num_classes, kwargs))
    return 0


def cmd_teachers(args) -> int:
    from wdistill.models import teachers

    if args.action == "status":
        for name, path, state in teachers.status():
            print(f"{name:<11} {state:<10} {path}")
        return 0
    try:
        teachers.fetch(args.names or None, base_url=args.url, sha256=args.sha256, progress=not args.quiet)
    except teachers.FetchError as e:
        raise ConfigError(str(e)) from None
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("inspect", help="module paths and output shapes of a model, and the taps wdistill would use")
    s.add_argument("model", help="zoo name, timm:<name>, torchvision:<name> or pkg.module:factory")
    s.add_argument("--input-size", default=None, help="C,H,W (default 3,32,32; 3,224,224 for timm/torchvision)")
    s.add_argument("--num-classes", type=int, default=100)
    s.add_argument("--kwargs", default=None, help="YAML mapping passed to the model constructor, e.g. '{width: 2}'")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("teachers", help="fetch and verify the published CIFAR-100 teachers into the cache")
    s.add_argument("action", choices=["fetch", "status"])
    s.add_argument("names", nargs="*", help="teachers (default: all): resnet56 resnet110 resnet32x4 wrn_40_2 vgg13 ResNet50")
    s.add_argument("--url", default=None, help="base URL of a mirror serving cifar_teachers.tar "
                   "(default: mdistiller's release assets; env WDISTILL_TEACHERS_URL)")
    s.add_argument("--sha256", default=None, help="expected SHA-256 of cifar_teachers.tar, if you have one "
                   "(none is published)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_teachers)
