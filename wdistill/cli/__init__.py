"""The ``wdistill`` command line: one module per command group, each its argparse definition and
one call into the library (``wdistill.workflows``, ``wdistill.engine``).

Exit codes: 0 done; 1 internal error (a wdistill bug); 2 bad input (config, file, argument);
3 the loss became non-finite; 130 interrupted. Errors print as one paragraph; ``--debug`` (or
``WDISTILL_DEBUG=1``) adds the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from wdistill.cli import auto, config, demo, evaluate, models, train
from wdistill.errors import ConfigError, FileLoadError, NonFiniteLoss

BENCH_MOVED = ("the benchmarks are project tooling, not part of the installed package: from a wdistill checkout "
               "run `python -m benchtools {args}` (protocols: docs/benchmarks.md)")


def _cmd_bench(args) -> int:
    raise ConfigError(BENCH_MOVED.format(args=" ".join(args.rest) or "--help"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wdistill", description="Knowledge distillation built around optimal transport.")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (train, auto, evaluate, demo, config, models):
        group.add_parsers(sub)
    b = sub.add_parser("bench", help="moved: `python -m benchtools ...` in a checkout", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("WDISTILL_DEBUG") == "1"
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted: every finished epoch is saved; continue with the same command and --resume",
              file=sys.stderr)
        return 130
    except NonFiniteLoss as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ConfigError, FileLoadError, FileNotFoundError, ValueError) as e:  # bad input: message, no traceback
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug of ours: still one paragraph, the traceback on request
        if debug:
            raise
        print(f"internal error: {type(e).__name__}: {e}. This is a wdistill bug; run again with --debug for the "
              "traceback and report it", file=sys.stderr)
        return 1
