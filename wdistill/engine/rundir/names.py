"""The names of the files in a run directory, spelled out here and nowhere else."""

CONFIG, LAST, BEST, STUDENT, SUMMARY = "config.yaml", "last.pt", "best.pt", "student.pt", "summary.json"
STUDENT_SAFETENSORS, METRICS_CSV, METRICS_JSONL = "student.safetensors", "metrics.csv", "metrics.jsonl"
LOCK = ".lock"
DIVERGED = "diverged.json"  # written by workflows.reuse when a run's loss became non-finite
RUN_FILES = (LAST, BEST, STUDENT, STUDENT_SAFETENSORS, METRICS_CSV, METRICS_JSONL, SUMMARY, CONFIG, DIVERGED)
# What `wdistill eval` and the probe read from a run directory, by --which.
WHICH = {"student": STUDENT, "best": BEST, "last": LAST}
# What a resumed run may change: the length of the schedule and how it reports and where it runs.
RESUMABLE_CHANGES = ("optim.epochs", "train.progress", "train.eval_every", "train.log_every",
                     "train.tensorboard", "run.device", "data.workers", "data.eval_batch_size", "train.stop_after",
                     "train.grad_share", "train.checkpoint_every", "train.stop_signals", "data.on_bad_image")
# Settings that say how far a run goes, what a search around it does, or how its directory was reached
# (a relative or an absolute run.out_dir: the config.yaml read is the one inside it), not which run it is.
NOT_IDENTITY = ("train.stop_after", "auto.", "run.out_dir")
