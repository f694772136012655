""""Is it helping?": each loss term's share of the student's gradient, measured once per epoch.

At the first step of every epoch the training loop takes, besides the step's own backward, one
backward per weighted term to the student's parameters (``loop.term_grad_norms``). The epoch's
metrics then hold ``grad_norm_<term>`` and ``grad_share_<term>`` = that norm over the sum of all
terms' norms. After the first epoch a term whose gradient is negligible (under 1% of the
cross-entropy's) or dominant (over 100 times it) is named with its weight: at 1% it barely moves
the student, at 100x the student hardly sees its labels any more; both usually mean the weight was
made for another data set (e.g. a CIFAR-100 weight on 10 classes).
"""
from __future__ import annotations

NEGLIGIBLE, DOMINANT = 0.01, 100.0
PREFIX = "gradnorm_"


def grad_share_row(sums: dict[str, float], world_size: int) -> dict[str, float]:
    """``grad_norm_<term>`` and ``grad_share_<term>`` from the pass's sums, whose ``gradnorm_*``
    entries are removed (each probe is one step, summed over the ranks)."""
    norms = {k[len(PREFIX):]: sums.pop(k) / world_size for k in [k for k in sums if k.startswith(PREFIX)]}
    total = sum(norms.values())
    row = {f"grad_norm_{k}": v for k, v in norms.items()}
    row.update({f"grad_share_{k}": (v / total if total > 0 else 0.0) for k, v in norms.items()})
    return row


def helping_warnings(row: dict, weights: dict[str, float], ce_terms: list[str]) -> list[str]:
    """One line per term whose gradient is negligible or dominant against the cross-entropy's."""
    ce = sum(row.get(f"grad_norm_{k}", 0.0) for k in ce_terms)
    if not ce_terms or ce <= 0:
        return []
    out = []
    for term, weight in weights.items():
        norm = row.get(f"grad_norm_{term}")
        if term in ce_terms or norm is None or weight == 0:
            continue
        ratio = norm / ce
        if ratio < NEGLIGIBLE:
            out.append(f"warning: loss term {term!r} (weight {weight:g}) has {100 * ratio:.2g}% of the cross-entropy's "
                       f"gradient on the student after the first epoch: it barely moves the student; raise its "
                       f"weight (e.g. x10) or drop it")
        elif ratio > DOMINANT:
            out.append(f"warning: loss term {term!r} (weight {weight:g}) has {ratio:.3g}x the cross-entropy's "
                       f"gradient on the student after the first epoch: the labels hardly count any more; lower "
                       f"its weight (e.g. /10)")
    return out
