"""``wdistill demo`` and ``wdistill plot``."""
from __future__ import annotations

from pathlib import Path

from wdistill.workflows import demo
from wdistill.workflows.plots import plot_run


def cmd_demo(args) -> int:
    if args.make_teacher:
        demo.make_demo_teacher(str(Path(args.out) / "make-teacher"))
        return 0
    methods = demo.demo_methods(args.methods, full=args.full)
    student_epochs = args.student_epochs or (demo.FULL_STUDENT_EPOCHS if args.full else demo.QUICK_STUDENT_EPOCHS)
    teacher_epochs = args.teacher_epochs or (demo.FULL_TEACHER_EPOCHS if args.full else None)
    rows = demo.run_demo(args.out, methods, teacher_epochs=teacher_epochs, student_epochs=student_epochs)
    table, chart = demo.write_leaderboard(rows, args.out, student_epochs)
    print("\n" + demo.leaderboard_table(rows))
    print(f"\nwrote {table} and {chart}")
    return 0


def cmd_plot(args) -> int:
    print(f"wrote {plot_run(args.run_dir, args.output)}")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("demo", help="distilled students on the bundled Fashion-MNIST sample: a leaderboard in minutes",
                       description=f"Quick (default): resnet8 students ({', '.join(demo.QUICK_METHODS)}) distilled "
                                   "for 5 epochs from the resnet20 teacher shipped in the package. --full: trains "
                                   "the teacher (10 epochs) and seven students (8 epochs).")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--full", action="store_true", help="the long demo: train the teacher, seven students, 8 epochs")
    s.add_argument("--methods", default=None, help="comma-separated, e.g. vanilla,kd,wkd_l, or 'all' "
                   "(default: vanilla,kd,wkd_l,wkd_lf,wcord_kd; with --full also dkd,crd_kd)")
    s.add_argument("--teacher-epochs", type=int, default=None,
                   help="train the teacher for N epochs instead of using the shipped one (--full: 10)")
    s.add_argument("--student-epochs", type=int, default=None, help="default 5 (--full: 8)")
    s.add_argument("--make-teacher", action="store_true",
                   help="(maintainers) train the shipped teacher under --out (copy it to wdistill/assets/ "
                        "in a checkout to ship it)")
    s.set_defaults(func=cmd_demo)
    p = sub.add_parser("plot", help="training curves of a run (loss terms, train/test top-1) as a PNG")
    p.add_argument("run_dir")
    p.add_argument("-o", "--output", default=None,
                   help="a file (PNG, or the format its suffix names), or a directory to hold curves.png "
                        "(default: RUN_DIR)")
    p.set_defaults(func=cmd_plot)
