"""Optimal-transport building blocks: pure, batched, differentiable tensor functions.

Every solver runs in float32 (float64 if given float64) whatever the autocast dtype.
"""
from wdistill.ot._precision import full_precision
from wdistill.ot.costs import cka_cost, class_cka_matrix, classifier_cost, cosine_cost, linear_cka
from wdistill.ot.gaussian import gaussian_w2, gaussian_w2_diag, sqrtm_psd
from wdistill.ot.ipot import ipot
from wdistill.ot.sinkhorn import sinkhorn, sinkhorn2, sinkhorn_log, sinkhorn_log2

__all__ = [
    "full_precision",
    "class_cka_matrix", "classifier_cost", "cka_cost", "cosine_cost", "linear_cka",
    "gaussian_w2", "gaussian_w2_diag", "sqrtm_psd",
    "ipot",
    "sinkhorn", "sinkhorn2", "sinkhorn_log", "sinkhorn_log2",
]
