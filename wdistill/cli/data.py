"""``wdistill data check``."""
from __future__ import annotations

from wdistill.cli._args import add_config_args
from wdistill.config import load_config
from wdistill.workflows.datacheck import check_data


def cmd_data_check(args) -> int:
    result = check_data(load_config(args.config, args.overrides), workers=args.workers, resume=args.resume,
                        output=args.output)
    print("\n".join(result["report"]))
    return 2 if result["bad"] else 0


def add_parsers(sub) -> None:
    s = sub.add_parser("data", help="check a run's data: every unreadable image, empty file and unexpected mode",
                       description="check: read every image of the config's data set once (worker processes, "
                                   "progress bar) and list every unreadable image, empty file and unexpected mode. "
                                   "Exit 0 when every image reads, 2 when some cannot.")
    s.add_argument("action", choices=["check"])
    add_config_args(s)
    s.add_argument("--workers", type=int, default=None, help="worker processes (default: the CPU cores, at most 8)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted check where it stopped")
    s.add_argument("-o", "--output", default=None, help="also write the unreadable and empty files here, one a line")
    s.set_defaults(func=cmd_data_check)
