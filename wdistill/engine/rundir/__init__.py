"""The run directory, ``run.out_dir/run.name``: the one home of its file names (``names``), its
lock (``lock``), the "same config" and "finished" checks and the claim/begin/release sequence
(``core``), and the student file with the readers of every file a run writes (``student``)."""
from wdistill.engine.rundir.core import (
                                        RunDir,
                                        changes_from,
                                        config_differences,
                                        finished,
                                        fmt,
                                        holds_config,
                                        run_path,
                                        write_metrics,
)
from wdistill.engine.rundir.lock import acquire, try_lock, unlock
from wdistill.engine.rundir.names import (
                                        BEST,
                                        CONFIG,
                                        DIVERGED,
                                        LAST,
                                        LOCK,
                                        METRICS_CSV,
                                        METRICS_JSONL,
                                        NOT_IDENTITY,
                                        RESUMABLE_CHANGES,
                                        RUN_FILES,
                                        STUDENT,
                                        STUDENT_SAFETENSORS,
                                        SUMMARY,
                                        WHICH,
)
from wdistill.engine.rundir.student import (
                                        read_history,
                                        resolve_checkpoint,
                                        run_config,
                                        student_record,
                                        student_weights,
                                        write_student,
)

__all__ = ["RunDir", "changes_from", "config_differences", "finished", "fmt", "holds_config", "run_path",
           "write_metrics", "acquire",
           "try_lock", "unlock", "BEST", "CONFIG", "DIVERGED", "LAST", "LOCK", "METRICS_CSV", "METRICS_JSONL",
           "NOT_IDENTITY",
           "RESUMABLE_CHANGES", "RUN_FILES", "STUDENT", "STUDENT_SAFETENSORS", "SUMMARY", "WHICH", "read_history",
           "resolve_checkpoint", "run_config", "student_record", "student_weights", "write_student"]
