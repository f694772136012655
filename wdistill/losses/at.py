"""Attention transfer."""
from __future__ import annotations

from wdistill.losses._shared.pairing import attention_map, match_spatial, paired_maps
from wdistill.losses.base import Term
from wdistill.losses.recipes import bracket, ce, publish
from wdistill.losses.registry import register


@register
class AT(Term):
    """Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017. As in the
    reference code, the squared difference is averaged (the paper sums p-norms; its beta/2 is the
    weight).

    Per layer of ``feats[1:]`` (the larger map average-pooled to the smaller):
    ``a(f) = l2norm(flatten(mean_c f^p))`` and ``L = sum_layers mean_{b,hw} (a_s - a_t)^2``.
    RepDistiller uses ``feat[1:-1]`` because its last feature is the pooled vector; our ``feats``
    holds no pooled vector, so ``feats[1:]`` is the same set of layers.

    Args:
        p: power of the activation in the attention map (2, published).

    Recommended weight: 1000 (RepDistiller, CIFAR-100).
    """

    name = "at"

    def __init__(self, p: float = 2.0):
        super().__init__()
        self.p = p

    def forward(self, student, teacher, batch):
        loss = 0.0
        for f_s, f_t in paired_maps(self.name, student, teacher):
            f_s, f_t = match_spatial(f_s, f_t)
            loss = loss + (attention_map(f_s, self.p) - attention_map(f_t, self.p)).pow(2).mean()
        return loss


# Published recipe (RepDistiller: CE + 1000 * AT); tuned over x0.3 / x1 / x3 of the weight.
publish("at", label="AT", order=3, terms=[ce(), {"name": "at", "weight": 1000.0}],
        grid=bracket("at", "weight", 1000.0), tune_priority=10)
