"""Distiller, trainer, configuration and checkpoints."""
from wdistill.config.schema import ConfigError, RunConfig, load_config
from wdistill.engine.distiller import Distiller, NonFiniteLoss
from wdistill.engine.trainer import Trainer, evaluate

__all__ = ["ConfigError", "RunConfig", "load_config", "Distiller", "NonFiniteLoss", "Trainer", "evaluate"]
