"""Distiller, trainer, configuration and checkpoints."""
from .config import ConfigError, RunConfig, load_config
from .distiller import Distiller, NonFiniteLoss
from .trainer import Trainer, evaluate

__all__ = ["ConfigError", "RunConfig", "load_config", "Distiller", "NonFiniteLoss", "Trainer", "evaluate"]
