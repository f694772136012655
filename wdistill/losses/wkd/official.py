"""WKD's published settings, as in the official WKD repository (github.com/JiamingLv/WKD): its
configs/cifar100/wkd_{l,f,lf}/*.yaml and configs/imagenet/{r34_r18,r50_mv1}/wkd_*.yaml (values its
configs leave out are its mdistiller/engine/cfg.py defaults), and its cost generator
(generate_cost_matrix.sh). The WKD recipes (wkd_l.py, wkd_f.py) and scripts/make_presets.py read
them from here; tests/test_presets_wkd.py checks the shipped presets against its own copy.
"""
from __future__ import annotations

REPO = "the official WKD repository (github.com/JiamingLv/WKD)"
# CIFAR-100: the two published pairs, "homogeneous" (same architecture family) and "heterogeneous".
CIFAR_FILES = {"homogeneous": "res32x4_res8x4.yaml", "heterogeneous": "wrn40_2_shuv1.yaml"}
CIFAR_DIRS = {"L": "wkd_l", "F": "wkd_f", "LF": "wkd_lf"}
CIFAR = {
    "homogeneous": {"pair": "resnet32x4 -> resnet8x4",
                    "L": dict(lambda_l=600, tau=8, kappa=1),
                    "F": dict(lambda_f=0.08, gamma=4, grid=1),
                    "LF": dict(lambda_l=200, tau=8, kappa=1, lambda_f=0.08, gamma=8, grid=1)},
    "heterogeneous": {"pair": "wrn_40_2 -> ShuffleV1",
                      "L": dict(lambda_l=200, tau=6, kappa=1),
                      "F": dict(lambda_f=0.3, gamma=3, grid=4),
                      "LF": dict(lambda_l=60, tau=4, kappa=1, lambda_f=0.5, gamma=3, grid=4)},
}
CIFAR_PAIRS = {("resnet32x4", "resnet8x4"): "homogeneous", ("wrn_40_2", "ShuffleV1"): "heterogeneous"}
CIFAR_DECAY_START = 150  # COSINE_DECAY_EPOCH, of 240 epochs
SINKHORN = dict(reg=0.05, num_iters=10)  # SINKHORN.LAMBDA, ITER: the published, not converged, setting
# ImageNet: decay start 0 (the cfg.py default) except WKD-F alone on R50 -> MV1 (30); grid 4 is the
# cfg.py default SPATIAL_GRID.
IMAGENET_DIRS = {("resnet34", "resnet18"): "r34_r18", ("resnet50", "MobileNetV1"): "r50_mv1"}
IMAGENET = {
    ("resnet34", "resnet18"): {"L": dict(lambda_l=30, tau=2, kappa=1, decay_start=0),
                               "F": dict(lambda_f=0.02, gamma=2, grid=4, decay_start=0),
                               "LF": dict(lambda_l=10, tau=2, kappa=1, lambda_f=1.0, gamma=2, grid=4, decay_start=0)},
    ("resnet50", "MobileNetV1"): {"L": dict(lambda_l=25, tau=2, kappa=2, decay_start=0),
                                  "F": dict(lambda_f=0.005, gamma=2, grid=4, decay_start=30),
                                  "LF": dict(lambda_l=25, tau=2, kappa=2, lambda_f=0.005, gamma=2, grid=4,
                                             decay_start=0)},
}
# The teacher output the official generator (tools/generate_class_proto.py --feature_type, as run by
# generate_cost_matrix.sh) turns into the CKA cost: the last-stage feature map for both CIFAR-100
# teachers, logits for the ImageNet ones (wkd_cost_matrix/imagenet/*/logit_linear_cka.pth).
CKA_SOURCE = {("cifar100", "resnet32x4"): "features", ("cifar100", "wrn_40_2"): "features",
              ("imagenet", "resnet34"): "logits", ("imagenet", "resnet50"): "logits"}


def l_params(row: dict) -> dict:
    """A row's WKD-L parameters as a recipe writes them (floats)."""
    return {k: float(row[k]) for k in ("lambda_l", "tau", "kappa")}


def f_params(row: dict) -> dict:
    """A row's WKD-F parameters as a recipe writes them (weights float, grid int)."""
    return {"lambda_f": float(row["lambda_f"]), "gamma": float(row["gamma"]), "grid": int(row["grid"])}
