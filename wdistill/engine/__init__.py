"""The engine: build a run from its config, distil (teachers + student + weighted terms), train,
evaluate, checkpoint, resume, scale out. It knows terms, not methods. ``make_trainer`` picks the
trainer of the config's task (classification, or detection: ``det_trainer``)."""
from wdistill.engine.det_trainer import DetectionTrainer
from wdistill.engine.distiller import Distiller
from wdistill.engine.evaluate import evaluate
from wdistill.engine.loop import StepWatcher
from wdistill.engine.tasks import make_trainer
from wdistill.engine.trainer import Trainer

__all__ = ["Distiller", "DetectionTrainer", "StepWatcher", "Trainer", "evaluate", "make_trainer"]
