"""Protocol D's results files (benchtools/det_report.py): a table pooled from the results CSVs of
disjoint seeds equals the table of all the runs at once, and what cannot be pooled is refused."""
import math

import pytest

from benchtools import det_report as R

TEACHER_VAL = {"final_AP": 0.5391}
TEACHER_TEST = {"AP": 0.53, "AP50": 0.7304, "AP75": 0.6492, "APs": 0.5251, "APm": 0.5112, "APl": float("nan")}


def _runs(seeds) -> dict:
    """Made-up finished runs of three rows, every metric different per (method, seed)."""
    out = {}
    for i, m in enumerate(("vanilla", "kd", "wkd_l")):
        for sd in seeds:
            x = 0.30 + 0.03 * i + 0.011 * sd * (i + 1) + 0.002 * sd * sd
            out[(m, sd)] = {"final_AP": x, "final_AP50": x + 0.2 + 0.004 * sd, "final_AP75": x + 0.05 - 0.003 * sd,
                            "final_APs": x - 0.01, "final_APm": x - 0.04 + 0.001 * sd, "final_APl": None,
                            "wall_seconds": 600.0 + 100 * i + 7 * sd}
    return out


def _write(out, seeds, speed=None, teacher_test=TEACHER_TEST):
    rows = R.summarise(_runs(seeds), speed or {})
    R.write_results(rows, R.teacher_row(TEACHER_VAL, teacher_test), out, {"date": "d", "commit": "c", "torch": "t",
                    "device": "cpu", "threads": 1, "cpus": 2, "command": f"seeds {seeds}"}, seeds)
    return out / f"{R.P.REPORT}.csv"


def test_pooling_two_parts_of_disjoint_seeds_equals_the_table_of_all_runs(tmp_path):
    a = _write(tmp_path / "a", [0, 1], speed={"vanilla": 2.0, "kd": 2.5, "wkd_l": 2.7})
    b = _write(tmp_path / "b", [2])  # its step times were not measured: the first part's are kept
    merged = R.merge_results([b, a], tmp_path / "m", command=["merge"])
    whole = R.summarise(_runs([0, 1, 2]), {"vanilla": 2.0, "kd": 2.5, "wkd_l": 2.7})
    assert [r["method"] for r in merged] == [r["method"] for r in whole] == ["vanilla", "kd", "wkd_l"]
    for got, want in zip(merged, whole):
        assert got["n"] == 3 and got["seeds"] == [0, 1, 2] and got["settings"] == want["settings"]
        for k in ("AP", "AP_std", "AP50", "AP50_std", "AP75", "AP75_std", "APs", "APm", "gain"):
            if want[k] is None:
                assert got[k] is None, k
            else:  # the CSVs hold 4 decimals of each (x100) figure
                assert got[k] == pytest.approx(want[k], abs=2e-4), (got["method"], k)
        assert got["wall_seconds"] == pytest.approx(want["wall_seconds"], abs=0.1)
        assert got["per_seed"] == pytest.approx(want["per_seed"], abs=0.006)  # 2 decimals, in seed order
        assert got["step_seconds"] == want["step_seconds"] and got["overhead"] == pytest.approx(want["overhead"])
    text = (tmp_path / "m" / f"{R.P.REPORT}.md").read_text()
    assert "Pooled from: `fmnist-det-v2.csv`" in text and "| teacher R50-FPN (2,000 steps; 1 run) | 53.00 |" in text
    stamp, teacher, rows = R.read_results_csv(tmp_path / "m" / f"{R.P.REPORT}.csv")  # the pooled file pools again
    assert stamp["command"] == "merge" and teacher["val_AP"] == pytest.approx(53.91) and teacher["AP"] == 53.0
    assert math.isclose(rows[1]["AP_std"], whole[1]["AP_std"], abs_tol=2e-4)


def test_parts_that_cannot_share_a_table_are_refused(tmp_path):
    a = _write(tmp_path / "a", [0, 1])
    with pytest.raises(ValueError, match="vanilla seed 1 is in both"):
        R.merge_results([a, _write(tmp_path / "b", [1, 2])], tmp_path / "m")
    other = _write(tmp_path / "c", [2], teacher_test=dict(TEACHER_TEST, AP=0.52))
    with pytest.raises(ValueError, match="its students had another teacher"):
        R.merge_results([a, other], tmp_path / "m")
    edited = tmp_path / "d.csv"
    edited.write_text(_write(tmp_path / "d", [2]).read_text().replace("kd w=", "kd w=2"))
    with pytest.raises(ValueError, match="kd: settings .* only runs of the same settings"):
        R.merge_results([a, edited], tmp_path / "m")
    single = (tmp_path / "c" / f"{R.P.REPORT}.md").read_text()  # one run per row: no standard error is made up
    assert "AP vs KD (no s.e.: a single run)" in single and "± 0.00 s.e." not in single
    old = tmp_path / "old.csv"  # a file without the seeds column cannot say which seeds it holds
    old.write_text(a.read_text().replace("method,runs,seeds,", "method,runs,"))
    with pytest.raises(ValueError, match="with its seeds"):
        R.merge_results([old], tmp_path / "m")
