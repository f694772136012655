"""The engine: build a run from its config, distil (teachers + student + weighted terms), train,
evaluate, checkpoint, resume, scale out. It knows terms, not methods."""
from wdistill.engine.distiller import Distiller
from wdistill.engine.evaluate import evaluate
from wdistill.engine.trainer import Trainer

__all__ = ["Distiller", "Trainer", "evaluate"]
