"""wdistill: knowledge distillation in PyTorch built around optimal transport."""

__version__ = "0.1.0"
