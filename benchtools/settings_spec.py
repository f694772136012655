"""What each setting of protocol C (docs/benchmarks.md) trains: its rows, teacher counts, views and
schedule. One home for the plan (benchtools.settings) and the report (benchtools.settings_report)
alike; both read these as ``settings_spec.NAME`` at call time, so a test that shrinks a setting
(monkeypatch of this module) shrinks what is trained and what is reported together."""
from __future__ import annotations

from benchtools import protocol

SETTINGS = ("ensemble", "privileged", "crossmodal", "selfdistill")
SCHEDULE = protocol.Schedule("fmnist-settings-v1", False, protocol.FULL.epochs, "test", (0, 1, 2))
ENSEMBLE_METHODS, ENSEMBLE_SIZES = ("kd", "crd", "wcord", "wkd_l"), (1, 2, 4)
VIEW_METHODS = ("vanilla", "kd", "crd", "crd_kd", "wcord", "wcord_kd")
SELF_METHODS, GENERATIONS = ("kd", "wkd_l"), 3
VIEWS = {"privileged": (None, {"name": "downsample", "factor": 2}),
         "crossmodal": ({"name": "lowpass", "size": 5}, {"name": "highpass", "size": 5})}
PROBE_L2 = 1e-4
