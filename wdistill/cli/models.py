"""``wdistill inspect`` and ``wdistill teachers fetch|status``."""
from __future__ import annotations

from wdistill.cli._args import input_size, yaml_mapping
from wdistill.models import teachers
from wdistill.workflows.inspect import inspect_model


def cmd_inspect(args) -> int:
    default = (3, 224, 224) if args.model.startswith(("timm:", "torchvision:")) else (3, 32, 32)
    print(inspect_model(args.model, args.input_size or default, args.num_classes, args.kwargs))
    return 0


def cmd_teachers(args) -> int:
    if args.action == "status":
        for name, path, state in teachers.status():
            print(f"{name:<11} {state:<10} {path}")
        return 0
    teachers.fetch(args.names or None, base_url=args.url, sha256=args.sha256, progress=not args.quiet)
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("inspect", help="module paths and output shapes of a model, and the taps wdistill would use")
    s.add_argument("model", help="zoo name, timm:<name>, torchvision:<name> or pkg.module:factory")
    s.add_argument("--input-size", type=input_size, default=None,
                   help="C,H,W (default 3,32,32; 3,224,224 for timm/torchvision)")
    s.add_argument("--num-classes", type=int, default=100)
    s.add_argument("--kwargs", type=yaml_mapping, default=None,
                   help="YAML mapping passed to the model constructor, e.g. '{width: 2}'")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("teachers", help="fetch and verify the published CIFAR-100 teachers into the cache")
    s.add_argument("action", choices=["fetch", "status"])
    s.add_argument("names", nargs="*", help="teachers (default: all): " + " ".join(teachers.TEACHERS))
    s.add_argument("--url", default=None, help="base URL of a mirror serving cifar_teachers.tar "
                   "(default: mdistiller's release assets; env WDISTILL_TEACHERS_URL)")
    s.add_argument("--sha256", default=None, help="expected SHA-256 of cifar_teachers.tar, if you have one "
                   "(none is published)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_teachers)
