"""WKD-L against a float64 re-implementation of the official WKD code's behaviour.

The reference functions below are written from the official repository's behaviour
(tools/generate_class_proto.py, tools/generate_cost_matrix.py, mdistiller/distillers/WKD.py):
class rows -> per-pair linear CKA on column-centred rows -> distance 1 - CKA (diagonal as
computed) -> sharpened by kappa, 1 - exp(-kappa d), for the CKA *and* the classifier ("fc")
distance -> relu(c) + 1e-8 -> per-sample (C-1)x(C-1) problems with the target class dropped ->
10 plain Sinkhorn iterations from u = 1/n -> loss_t + lambda * mean(sum(plan * cost)).
Everything here is float64 Python loops over pairs and samples; nothing is shared with wdistill.
"""
import math

import pytest
import torch
import torch.nn as nn

from wdistill import losses
from wdistill.losses import SetupContext
from wdistill.losses.wkd.official import CKA_SOURCE

D64 = torch.float64
C, H = 5, 3  # classes, spatial side of the teacher's last map


class Teacher(nn.Module):
    """A conv map (the last stage) and a linear classifier on its pooled vector."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4, C)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def tap(self, x):
        f = torch.relu(self.conv(x))
        return {"feats": [f], "logits": self.fc(f.mean((2, 3)))}


def data(per_class=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = C * per_class
    images = torch.randn(N, 2, H, H, generator=g)
    targets = torch.arange(N) % C
    perm = torch.randperm(N, generator=g)
    batches = [{"image": images[perm[i:i + 7]], "target": targets[perm[i:i + 7]], "index": perm[i:i + 7]}
               for i in range(0, N, 7)]
    return batches, images, targets


# ------------------------------------------------------------------ official behaviour, float64
def official_class_rows(teacher, images, targets, feature_type):
    """generate_class_proto.py: per class, in dataset order, one logit row per image
    ('logit'), or every spatial position of the last map as a row ('feature')."""
    rows = []
    with torch.no_grad():
        out = teacher.tap(images)
    for c in range(C):
        idx = [i for i in range(len(targets)) if int(targets[i]) == c]
        if feature_type == "logit":
            rows.append(out["logits"][idx].to(D64))
        else:
            f = out["feats"][-1][idx].to(D64)  # (m, c, h, w) -> (m * h * w, c), image-major
            rows.append(f.flatten(2).transpose(1, 2).reshape(-1, f.shape[1]))
    return rows


def official_cka_distance(rows):
    """generate_cost_matrix.py: 1 - linear CKA (column-centred) for every pair, loops."""
    dist = torch.zeros(C, C, dtype=D64)
    for i in range(C):
        for j in range(C):
            X = rows[i] - rows[i].mean(0, keepdim=True)
            Y = rows[j] - rows[j].mean(0, keepdim=True)
            hsic = torch.linalg.matrix_norm(Y.T @ X) ** 2
            dist[i, j] = 1 - hsic / (torch.linalg.matrix_norm(X.T @ X) * torch.linalg.matrix_norm(Y.T @ Y))
    return dist


def official_fc_distance(weight):
    W = weight.to(D64)
    dist = torch.zeros(C, C, dtype=D64)
    for i in range(C):
        for j in range(C):
            dist[i, j] = 1 - W[i] @ W[j] / (W[i].norm() * W[j].norm())
    return dist


def official_sharpen(dist, kappa):
    return 1 - torch.exp(-kappa * dist)


def official_loss(s, t, y, cost, tau, lam, reg=0.05, iters=10):
    """WKD.py: target term + lambda * Sinkhorn WD of the non-target parts, sample by sample."""
    cost = torch.relu(cost) + 1e-8
    loss_t, wd = 0.0, 0.0
    B = s.shape[0]
    for b in range(B):
        yb = int(y[b])
        loss_t -= float(torch.softmax(t[b], 0)[yb]) * float(torch.log_softmax(s[b], 0)[yb])
        keep = [k for k in range(C) if k != yb]
        p = torch.softmax(s[b, keep] / tau, 0)
        q = torch.softmax(t[b, keep] / tau, 0)
        M = cost[keep][:, keep]
        K = torch.exp(-M / reg)
        u = torch.full((C - 1,), 1.0 / (C - 1), dtype=D64)
        for _ in range(iters):
            v = q / (K.T @ u + 1e-8)
            u = p / (K @ v + 1e-8)
        wd += float((u[:, None] * K * v[None, :] * M).sum())
    return loss_t / B + lam * wd / B


# ------------------------------------------------------------------------------------ tests
def _ours(teacher, batches, cost, mode, kappa, lam, tau):
    term = losses.create("wkd_l", lambda_l=lam, tau=tau, kappa=kappa, cost=cost, cka_mode=mode,
                         decay_start_frac=None)
    N = sum(len(b["target"]) for b in batches)
    term.setup(SetupContext(student_out={}, teacher_out={}, num_classes=C, num_samples=N,
                            train_targets=torch.arange(N) % C, device=torch.device("cpu"), teacher=teacher,
                            teacher_tap=teacher.tap, train_batches=lambda: iter(batches)))
    return term


@pytest.mark.parametrize("source", ["feature", "logit", "fc"])
@pytest.mark.parametrize("kappa", [1.0, 2.0, 0.5])
def test_cost_and_loss_match_the_official_formula(source, kappa):
    torch.manual_seed(0)
    teacher = Teacher()
    batches, images, targets = data()
    if source == "fc":
        dist = official_fc_distance(teacher.fc.weight.detach())
        term = _ours(teacher, batches, "cosine_classifier", "features", kappa, 1.0, 2.0)
    else:
        dist = official_cka_distance(official_class_rows(teacher, images, targets, source))
        term = _ours(teacher, batches, "cka", {"feature": "features", "logit": "logits"}[source], kappa, 1.0, 2.0)
    cost = official_sharpen(dist, kappa)
    assert (term.cost.double() - cost).abs().max() < 1e-6, source
    # Off the diagonal kappa really changes the cost: the test would see it left out.
    off = ~torch.eye(C, dtype=torch.bool)
    if kappa != 1.0:
        assert (official_sharpen(dist, 1.0) - cost)[off].abs().min() > 1e-3

    g = torch.Generator().manual_seed(1)
    s = torch.randn(8, C, generator=g, dtype=D64) * 3
    t = torch.randn(8, C, generator=g, dtype=D64) * 3
    y = torch.randint(0, C, (8,), generator=g)
    for lam, tau in ((1.0, 2.0), (0.5, 4.0)):
        term.lambda_l, term.tau = lam, tau
        ours = float(term({"logits": s}, {"logits": t}, {"target": y, "epoch": 0}))
        want = official_loss(s, t, y, cost, tau, lam)
        assert abs(ours - want) < 1e-6, (source, kappa, lam, tau, ours, want)


def test_official_generator_sources_per_teacher():
    # generate_cost_matrix.sh of the official WKD repository runs generate_class_proto.py with
    # --feature_type feature for resnet32x4 and wrn_40_2 on CIFAR-100; ImageNet uses the script's
    # default 'logit' (its matrices are named logit_linear_cka.pth).
    assert CKA_SOURCE == {("cifar100", "resnet32x4"): "features", ("cifar100", "wrn_40_2"): "features",
                          ("imagenet", "resnet34"): "logits", ("imagenet", "resnet50"): "logits"}


def test_sources_give_different_costs():
    """Feature rows and logit rows are different sources: choosing the wrong one changes the cost."""
    teacher = Teacher()
    _, images, targets = data()
    a = official_cka_distance(official_class_rows(teacher, images, targets, "feature"))
    b = official_cka_distance(official_class_rows(teacher, images, targets, "logit"))
    assert (a - b).abs().max() > 1e-2
    assert math.isfinite(float(a.sum())) and math.isfinite(float(b.sum()))
