"""wdistill: knowledge distillation in PyTorch built around optimal transport."""

__version__ = "0.1.0"


def distill(*args, **kwargs):
    """See :func:`wdistill.api.distill` (imported lazily to keep ``import wdistill`` light)."""
    from wdistill.api import distill as _distill

    return _distill(*args, **kwargs)
