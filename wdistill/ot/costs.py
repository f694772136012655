"""Ground costs: cosine costs between vector sets and CKA costs between classes."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from wdistill.ot._precision import full_precision


@full_precision
def cosine_cost(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Pairwise cost ``c_ij = 1 - cos(x_i, y_j)`` in [0, 2].

    Args:
        X: (..., n, d); Y: (..., m, d) (same leading dims and width).

    Returns:
        (..., n, m) costs.
    """
    if X.shape[-1] != Y.shape[-1]:
        raise ValueError(f"cosine_cost: feature widths differ ({X.shape[-1]} vs {Y.shape[-1]}); "
                         "project both sets to one width first (e.g. with an embedding head)")
    return 1 - F.normalize(X, dim=-1) @ F.normalize(Y, dim=-1).transpose(-1, -2)


def classifier_cost(weight: torch.Tensor) -> torch.Tensor:
    """``1 - cos(w_i, w_j)`` between the rows of a classifier weight (C, d): the (C, C) category cost
    WKD-L offers as an alternative to CKA (Lv et al., NeurIPS 2024)."""
    if weight.dim() != 2:
        raise ValueError(f"classifier_cost expects a (num_classes, d) weight, got shape {tuple(weight.shape)}")
    return cosine_cost(weight, weight).clamp_min(0)


@full_precision
def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Linear centred kernel alignment (Kornblith et al., ICML 2019) of paired rows.

    ``CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred Xc, Yc;
    equivalently ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with linear kernels K = X X^T,
    L = Y Y^T and HSIC(K, L) = tr(K H L H) / (n-1)^2, H = I - 11^T/n.

    Args:
        X: (..., n, p), Y: (..., n, q): row r of X and of Y describe the same example.

    Returns:
        (...) values in [0, 1].
    """
    if X.shape[-2] != Y.shape[-2]:
        raise ValueError(f"linear_cka: X and Y need the same number of rows, got {X.shape[-2]} and {Y.shape[-2]}")
    Xc = X - X.mean(-2, keepdim=True)
    Yc = Y - Y.mean(-2, keepdim=True)
    fro = lambda M: M.pow(2).sum((-2, -1))  # noqa: E731
    cross = fro(Yc.transpose(-1, -2) @ Xc)
    return cross / (fro(Xc.transpose(-1, -2) @ Xc) * fro(Yc.transpose(-1, -2) @ Yc)).sqrt().clamp_min(1e-30)


@full_precision
def class_cka_matrix(feats: torch.Tensor, block: int = 8) -> torch.Tensor:
    """Linear CKA between every pair of classes: (C, n, D) class feature sets -> (C, C) matrix.

    ``feats[i]`` holds n rows (examples, or example x spatial position) of class i, row r of every
    class paired with row r of every other (as in WKD's cost construction). Uses the feature-space
    form ``||Xj^T Xi||_F^2`` when D <= n and the Gram form ``<Xi Xi^T, Xj Xj^T>_F`` (centred)
    otherwise, whichever multiplies fewer numbers; both equal :func:`linear_cka` pairwise.

    Args:
        feats: (C, n, D) class-conditional features.
        block: classes per product chunk (bounds memory to block * min(n, D)^2 numbers).

    Returns:
        (C, C) symmetric matrix, ones on the diagonal.
    """
    if feats.dim() != 3:
        raise ValueError(f"class_cka_matrix expects (num_classes, rows, dim), got shape {tuple(feats.shape)}")
    Cn, n, D = feats.shape
    X = feats - feats.mean(1, keepdim=True)
    if D <= n:
        # cross[i, j] = ||Xj^T Xi||_F^2: a (D, D) product per pair.
        Xt = X.transpose(1, 2)  # (C, D, n)
        cross = torch.zeros(Cn, Cn, dtype=X.dtype, device=X.device)
        for i in range(Cn):
            for j0 in range(i, Cn, block):  # upper triangle only; mirrored below
                cross[i, j0:j0 + block] = (Xt[j0:j0 + block] @ X[i]).pow(2).sum((1, 2))
        cross = cross.triu() + cross.triu(1).T
    else:
        # Centred Grams G_i = Xi Xi^T (n, n); cross[i, j] = <G_i, G_j>.
        grams = torch.stack([X[i] @ X[i].T for i in range(Cn)]).reshape(Cn, n * n)
        cross = grams @ grams.T
        cross = (cross + cross.T) / 2
    norms = cross.diagonal().clamp_min(1e-30).sqrt()
    return cross / (norms.unsqueeze(0) * norms.unsqueeze(1))


def cka_cost(cka: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """Sharpened CKA cost of WKD-L: ``c_ij = 1 - exp(-kappa (1 - CKA_ij))``, in [0, 1), zero diagonal.

    Lv et al., NeurIPS 2024 (category interrelations of WKD-L); kappa=1 on CIFAR-100.
    """
    if kappa <= 0:
        raise ValueError(f"kappa must be > 0, got {kappa}")
    dist = (1 - cka).clamp(0, 1)
    dist = dist - torch.diag_embed(dist.diagonal())  # exact zeros on the diagonal
    return 1 - torch.exp(-kappa * dist)
