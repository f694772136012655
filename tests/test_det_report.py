"""Protocol D's results files (benchtools/det_report.py, det_merge.py): a table pooled from the results CSVs of
disjoint seeds equals the table of all the runs at once, and what cannot be pooled is refused."""
import math

import pytest

from benchtools import det_diagnostics as D
from benchtools import det_merge as M
from benchtools import det_report as R

TEACHER_VAL = {"final_AP": 0.5391}
STAMP = {"date": "d", "commit": "c", "torch": "t", "device": "cpu", "threads": 1, "cpus": 2, "command": "c"}
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
    merged = M.merge_results([b, a], tmp_path / "m", command=["merge"])
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
    # WKD-L - vanilla per seed: 6.0, 8.2, 10.4 (AP in %): mean 8.2, sample std 2.2, standard error 2.2 / sqrt(3)
    assert "+8.20 AP vs vanilla (± 2.31 s.e.; paired by seed +8.20 ± 1.27 over 3)" in text
    stamp, teacher, rows = M.read_results_csv(tmp_path / "m" / f"{R.P.REPORT}.csv")  # the pooled file pools again
    assert stamp["command"] == "merge" and teacher["val_AP"] == pytest.approx(53.91) and teacher["AP"] == 53.0
    again = M.merge_results([tmp_path / "m" / f"{R.P.REPORT}.csv"], tmp_path / "m2", command=["merge again"])
    assert [r["per_seed"] for r in again] == [r["per_seed"] for r in rows]
    assert M.read_results_csv(tmp_path / "m2" / f"{R.P.REPORT}.csv")[0]["pooled from"] == stamp["pooled from"]
    assert math.isclose(rows[1]["AP_std"], whole[1]["AP_std"], abs_tol=2e-4)


def test_parts_that_cannot_share_a_table_are_refused(tmp_path):
    a = _write(tmp_path / "a", [0, 1])
    with pytest.raises(ValueError, match="vanilla seed 1 is in both"):
        M.merge_results([a, _write(tmp_path / "b", [1, 2])], tmp_path / "m")
    other = _write(tmp_path / "c", [2], teacher_test=dict(TEACHER_TEST, AP=0.52))
    with pytest.raises(ValueError, match="its students had another teacher"):
        M.merge_results([a, other], tmp_path / "m")
    edited = tmp_path / "d.csv"
    edited.write_text(_write(tmp_path / "d", [2]).read_text().replace("kd w=", "kd w=2"))
    with pytest.raises(ValueError, match="kd: settings .* only runs of the same settings"):
        M.merge_results([a, edited], tmp_path / "m")
    single = (tmp_path / "c" / f"{R.P.REPORT}.md").read_text()  # one run per row: no standard error is made up
    assert "AP vs KD (no s.e.: a single run)" in single and "± 0.00 s.e." not in single
    old = tmp_path / "old.csv"  # a file without the seeds column cannot say which seeds it holds
    old.write_text(a.read_text().replace("method,runs,seeds,", "method,runs,"))
    with pytest.raises(ValueError, match="with its seeds"):
        M.merge_results([old], tmp_path / "m")


def test_diagnostic_gains_are_paired_by_seed(tmp_path):
    """A run's gain over vanilla is the mean of its per-seed differences over the seeds both finished, with
    their standard error; a seed the run misses (diverged, or not run yet) drops out of the pairing."""
    ap = {("vanilla", 2): 0.36, ("vanilla", 3): 0.40, ("vanilla", 4): 0.35, ("wkd_l-lambda0", 2): 0.39,
          ("wkd_l-lambda0", 3): 0.41, ("wkd_l-lambda0", 4): None, ("wkd_l", 3): 0.37}
    results = {k: None if v is None else {"final_AP": v, "final_AP50": v + 0.2, "final_AP75": v + 0.05}
               for k, v in ap.items()}
    stamp = {"date": "d", "commit": "c", "torch": "t", "device": "cpu", "threads": 1, "cpus": 2, "command": "c"}
    rows = D.write_diagnostics(results, tmp_path, stamp)
    assert [r["name"] for r in rows] == ["vanilla", "wkd_l", "wkd_l-lambda0"]  # the protocol's order
    van, row, lam = rows
    assert van["paired_gain"] is None and van["AP"] == pytest.approx(37.0) and van["AP_std"] == pytest.approx(7 ** 0.5)
    # seeds 2 and 3: differences 3 and 1 -> mean 2, sample std sqrt(2), s.e. 1 (unpaired means would give 40 - 37)
    assert lam["seeds"] == [2, 3] and lam["paired_n"] == 2
    assert lam["paired_gain"] == pytest.approx(2.0) and lam["paired_se"] == pytest.approx(1.0)
    assert row["paired_gain"] == pytest.approx(-3.0) and row["paired_se"] is None and row["paired_n"] == 1
    text = (tmp_path / f"{R.P.REPORT}-diagnostics.md").read_text()
    assert "| wkd_l-lambda0 | target part alone (`wkd_l.lambda_l=0`) | 39.00 (s2), 41.00 (s3) | 40.00 ± 1.41 |" in text
    assert "| +2.00 ± 1.00 (2 seeds) | 2 |" in text


def test_a_diagnostic_run_is_its_row_with_one_change():
    for name, (row, change, _) in R.P.DIAGNOSTICS.items():
        base, diag = R.P.student_config(row, 3, "runs"), R.P.diagnostic_config(name, 3, "runs")
        assert diag["run"]["name"] == f"diag/{name}/seed3" and diag["run"]["seed"] == 3
        (key, value), = change.items()
        if "." in key:  # a config path: the terms as the row has them, that one setting changed
            section, option = key.split(".")
            assert diag["loss"] == base["loss"] and diag[section][option] == value != base[section].get(option)
            diag[section] = {k: v for k, v in diag[section].items() if k != option}
            base[section] = {k: v for k, v in base[section].items() if k != option}
        else:  # a parameter of the row's own term
            changed = [(a, b) for a, b in zip(base["loss"], diag["loss"]) if a != b]
            assert len(changed) == 1 and changed[0][1] == changed[0][0] | change, name
        assert {k: v for k, v in diag.items() if k not in ("run", "loss")} == \
               {k: v for k, v in base.items() if k not in ("run", "loss")}
    assert {n for n, d in R.P.DIAGNOSTICS.items() if "train.clip_grad_norm" in d[1]} == {"wkd_l-clip", "vanilla-clip"}
    assert R.P.DIAGNOSTICS["wkd_l-half"][1]["weight"] == pytest.approx(R.P.row_terms("wkd_l")[1]["weight"] / 2)


def _with_diverged(seeds_finished, diverged):
    """_runs of ``seeds_finished``, and {"diverged": message} records for the (method, seed)s of ``diverged``."""
    out = _runs(seeds_finished)
    for key in diverged:
        out.pop(key, None)
        out[key] = {"diverged": f"loss became non-finite ({key})"}
    return out


def test_a_diverged_run_is_marked_not_dropped(tmp_path):
    """A run whose loss became non-finite stays in the table as a mark (runs column, per-seed list, CSV, chart
    label), out of the means; a row whose every seed diverged is a row saying so, out of the comparisons."""
    results = _with_diverged([0, 1, 2], [("wkd_l", 1), ("wkd_l", 2), ("kd", 0), ("kd", 1), ("kd", 2)])
    rows = R.summarise(results, {"vanilla": 2.0, "kd": 2.5, "wkd_l": 2.7})
    by = {r["method"]: r for r in rows}
    assert [r["method"] for r in rows] == ["vanilla", "kd", "wkd_l"]
    assert by["wkd_l"]["n"] == 1 and by["wkd_l"]["seeds"] == [0] and by["wkd_l"]["diverged"] == [1, 2]
    assert by["wkd_l"]["AP"] == pytest.approx(100 * _runs([0])[("wkd_l", 0)]["final_AP"])  # the finished seed only
    assert by["kd"]["n"] == 0 and by["kd"]["AP"] is None and by["kd"]["gain"] is None
    assert by["kd"]["diverged"] == [0, 1, 2]
    assert by["kd"]["overhead"] == pytest.approx(1.25)  # its step was still timed
    assert R.console_line("kd", by["kd"]) == ("            kd AP    n/a AP50    n/a AP75    n/a per seed "
                                              "diverged (s0), diverged (s1), diverged (s2)")  # what the command prints
    R.write_results(rows, R.teacher_row(TEACHER_VAL, TEACHER_TEST), tmp_path / "a", STAMP, [0, 1, 2])
    text = (tmp_path / "a" / f"{R.P.REPORT}.md").read_text()
    assert "| 1 (+2 diverged: s1, s2) | det w=1; wkd_l" in text
    assert "| KD | diverged on every seed | | | | |  | 2.50 | x1.25 | 0 (+3 diverged: s0, s1, s2) |" in text
    assert "- WKD-L: 36.00 (s0), diverged (s1), diverged (s2)" in text
    assert "vs KD" not in text  # no comparison with a row that has no AP
    assert (tmp_path / "a" / f"{R.P.REPORT}.png").is_file()
    # the CSV keeps the marks, so that a pooled table keeps them too; a seed cannot be both finished and diverged
    stamp, teacher, back = M.read_results_csv(tmp_path / "a" / f"{R.P.REPORT}.csv")
    assert {r["method"]: r["diverged"] for r in back} == {"vanilla": [], "kd": [0, 1, 2], "wkd_l": [1, 2]}
    R.write_results(R.summarise(_with_diverged([3], [("wkd_l", 3)]), {}), R.teacher_row(TEACHER_VAL, TEACHER_TEST),
                    tmp_path / "b", STAMP, [3])
    merged = {r["method"]: r for r in M.merge_results([tmp_path / "a" / f"{R.P.REPORT}.csv",
                                                       tmp_path / "b" / f"{R.P.REPORT}.csv"], tmp_path / "m")}
    assert merged["wkd_l"]["n"] == 1 and merged["wkd_l"]["diverged"] == [1, 2, 3]
    assert merged["wkd_l"]["AP"] == pytest.approx(by["wkd_l"]["AP"], abs=1e-4) and merged["wkd_l"]["AP_std"] is None
    assert merged["kd"]["n"] == 1 and merged["kd"]["diverged"] == [0, 1, 2] and merged["kd"]["seeds"] == [3]
    R.write_results(R.summarise(_with_diverged([4], [("wkd_l", 1)]), {}), R.teacher_row(TEACHER_VAL, TEACHER_TEST),
                    tmp_path / "c", STAMP, [4])
    with pytest.raises(ValueError, match="wkd_l seed 1 is in both"):
        M.merge_results([tmp_path / "a" / f"{R.P.REPORT}.csv", tmp_path / "c" / f"{R.P.REPORT}.csv"], tmp_path / "m")
    old = tmp_path / "old.csv"  # a file from before the column: read as nothing diverged
    old.write_text((tmp_path / "b" / f"{R.P.REPORT}.csv").read_text().replace(",diverged_seeds", "")
                   .replace(",3\n", "\n"))
    assert all(r["diverged"] == [] for r in M.read_results_csv(old)[2])


def test_a_diverged_diagnostic_run_is_marked(tmp_path):
    results = {("vanilla", 2): {"final_AP": 0.36, "final_AP50": 0.56, "final_AP75": 0.41},
               ("vanilla", 3): {"final_AP": 0.40, "final_AP50": 0.60, "final_AP75": 0.45},
               ("wkd_l", 2): {"final_AP": 0.35, "final_AP50": 0.55, "final_AP75": 0.40},
               ("wkd_l", 3): {"diverged": "loss became non-finite"}, ("wkd_l-half", 2): {"diverged": "x"},
               ("wkd_l-half", 3): None}
    rows = {r["name"]: r for r in D.write_diagnostics(results, tmp_path, STAMP)}
    assert rows["wkd_l"]["seeds"] == [2] and rows["wkd_l"]["diverged"] == [3] and rows["wkd_l"]["paired_n"] == 1
    assert rows["wkd_l-half"]["AP"] is None and rows["wkd_l-half"]["diverged"] == [2]  # seed 3 not run: no mark
    text = (tmp_path / f"{R.P.REPORT}-diagnostics.md").read_text()
    assert "| 35.00 (s2), diverged (s3) | 35.00 | 55.00 | 40.00 | -1.00 (1 seeds) | 1 (+1 diverged: s3) |" in text
    assert "| diverged (s2) | n/a | n/a | n/a |  | 0 (+1 diverged: s2) |" in text
    # what the command prints of each row, a row whose every seed diverged included
    assert R.console_line("wkd_l", rows["wkd_l"]) == \
        "         wkd_l AP  35.00 AP50  55.00 AP75  40.00 per seed 35.00 (s2), diverged (s3)"
    assert R.console_line("wkd_l-half", rows["wkd_l-half"]) == \
        "    wkd_l-half AP    n/a AP50    n/a AP75    n/a per seed diverged (s2)"
