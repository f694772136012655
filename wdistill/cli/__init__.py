"""The ``wdistill`` command line: one module per command group, each its argparse definition and
one call into the library (``wdistill.workflows``, ``wdistill.engine``).

Exit codes: 0 done; 1 internal error (a wdistill bug); 2 bad input (config, file, argument, unreadable
images); 3 the loss became non-finite; 74 a run file could not be written (disk full, quota, read-only;
the previous file is intact); 75 stopped by a signal (SIGTERM, SIGUSR1: ``train.stop_signals``) after
writing a checkpoint, run it again with ``--resume`` (EX_TEMPFAIL: the code to requeue on); 130
interrupted (Ctrl-C). Errors print as one paragraph; ``--debug`` (or
``WDISTILL_DEBUG=1``) adds the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from wdistill.cli import auto, config, data, demo, evaluate, models, train
from wdistill.engine import ddp
from wdistill.errors import ConfigError, FileLoadError, NonFiniteLoss, PeerLost, Preempted, StorageError

EXIT_STORAGE, EXIT_PREEMPTED = 74, 75  # sysexits.h: EX_IOERR, EX_TEMPFAIL (a scheduler requeues on 75)
BENCH_MOVED = ("the benchmarks are project tooling, not part of the installed package: from a wdistill checkout "
               "run `python -m benchtools {args}` (protocols: docs/benchmarks.md)")


def _cmd_bench(args) -> int:
    raise ConfigError(BENCH_MOVED.format(args=" ".join(args.rest) or "--help"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wdistill", description="Knowledge distillation built around optimal transport.")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (train, auto, evaluate, data, demo, config, models):
        group.add_parsers(sub)
    b = sub.add_parser("bench", help="moved: `python -m benchtools ...` in a checkout", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # a scheduler's log file shows every line as it is written
        sys.stdout.reconfigure(line_buffering=True)
    debug = args.debug or os.environ.get("WDISTILL_DEBUG") == "1"
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted: the last checkpoint (each epoch end, and every train.checkpoint_every) is kept; "
              "continue with the same command and --resume", file=sys.stderr)
        return 130
    except Preempted as e:  # a checkpoint was written: not an error, a pause
        print(f"stopped: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except StorageError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_STORAGE
    except PeerLost as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
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
    finally:
        # under torchrun: leave the process group on every way out (done, stopped, failed, a peer lost), or its
        # destructor at interpreter shutdown can abort the worker (exit -6 instead of this function's code)
        ddp.leave()
