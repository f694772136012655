"""``wdistill train`` and ``wdistill distill``."""
from __future__ import annotations

import json

from wdistill.cli._args import add_config_args, positive_int
from wdistill.config import load_config
from wdistill.engine import make_trainer
from wdistill.errors import ConfigError
from wdistill.workflows.selfdistill import run_generations


def cmd_train(args, require_teacher: bool) -> int:
    cfg = load_config(args.config, args.overrides)
    resume = "auto" if args.auto_resume else args.resume
    if getattr(args, "generations", None):  # born-again chain
        print(json.dumps(run_generations(cfg, args.generations, resume=resume, overwrite=args.overwrite), indent=2))
        return 0
    if require_teacher and not cfg.teacher_sections():
        raise ConfigError("`wdistill distill` needs a 'teacher:' section (model + checkpoint); "
                          "to train without a teacher use `wdistill train`")
    trainer = make_trainer(cfg, resume=resume, overwrite=args.overwrite)
    summary = trainer.fit()
    if trainer.rank == 0:  # under torchrun, one summary, not one per process
        print(json.dumps(summary, indent=2))
    return 0


def add_parsers(sub) -> None:
    for name, helptext in (("train", "train a model with the configured loss (a teacher or a vanilla student)"),
                           ("distill", "distill a student from a teacher (config needs a teacher section)")):
        s = sub.add_parser(name, help=helptext)
        add_config_args(s)
        s.add_argument("--resume", action="store_true", help="continue the run in run.out_dir/run.name")
        s.add_argument("--auto-resume", action="store_true",
                       help="continue the run in run.out_dir/run.name if there is one, else start it: the flag for "
                            "a job a scheduler may requeue (after a torchrun restart it is implied)")
        s.add_argument("--overwrite", action="store_true", help="start again over an existing run directory")
        if name == "distill":
            s.add_argument("--generations", type=positive_int, default=None, metavar="N",
                           help="self-distillation: N born-again generations in run.out_dir/run.name/gen<k>, "
                                "each distilled from the previous generation's student (gen1 from the config's "
                                "teacher, or a cross-entropy run without one); --resume continues the chain")
        s.set_defaults(func=lambda a, n=name: cmd_train(a, require_teacher=(n == "distill")))
