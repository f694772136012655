"""``wdistill config show|check|reference`` and ``wdistill list``."""
from __future__ import annotations

from wdistill.config import dump_config, load_config
from wdistill.config.reference import LIST_SECTIONS, listing, reference_markdown
from wdistill.engine.build import check_config
from wdistill.errors import ConfigError
from wdistill.io import atomic_write_text


def cmd_config(args) -> int:
    if args.action == "reference":
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


def cmd_list(args) -> int:
    print("\n".join(listing([flag for flag, _, _ in LIST_SECTIONS if getattr(args, flag)])))
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("config", help="show the resolved config, check it, or write the reference (docs/config.md)",
                       description="show: the config with every default filled in (YAML); check: validate only "
                                   "(exit 0, or 2 with the problem); reference: the configuration reference "
                                   "generated from the code (docs/config.md)")
    s.add_argument("action", choices=["show", "check", "reference"])
    s.add_argument("config", nargs="?", help="YAML run config (show, check)")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.1")
    s.add_argument("-o", "--output", default=None, help="reference: write to this file (e.g. docs/config.md)")
    s.set_defaults(func=cmd_config)
    s = sub.add_parser("list", help="models, data sets (with options) and methods (with parameters)")
    for flag, helptext, _ in LIST_SECTIONS:
        s.add_argument(f"--{flag}", action="store_true", help=f"only {helptext}")
    s.set_defaults(func=cmd_list)



