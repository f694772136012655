"""Issue 15 point 7: leaderboard charts explain themselves; the curves chart names the run and marks
WKD's weight decay."""
import json

import matplotlib
import pytest
import yaml

matplotlib.use("Agg")
from matplotlib.container import ErrorbarContainer  # noqa: E402

from benchtools import report  # noqa: E402
from wdistill.workflows.plots import curves_figure, decay_spans, leaderboard_figure, plot_run, row_kind  # noqa: E402


def _rows():
    return [{"name": "teacher", "top1": 91.4, "std": None}, {"name": "vanilla", "top1": 87.3, "std": 0.2},
            {"name": "KD", "top1": 89.0, "std": 0.4}, {"name": "WKD-L", "top1": 89.6, "std": 0.2},
            {"name": "WCoRD+KD", "top1": 89.9, "std": 0.15}]


def test_row_kinds():
    assert [row_kind(n) for n in ("teacher (resnet20, shipped)", "vanilla", "KD", "DKD", "WKD-L+WKD-F", "wcord_kd")] \
        == ["teacher", "vanilla", "baseline", "baseline", "wasserstein", "wasserstein"]


def test_leaderboard_has_legend_marked_axis_seed_note_and_no_teacher_error_bar():
    fig = leaderboard_figure(_rows(), "t", "mean of 3 seeds; teacher: 1 run")
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:4] == ["teacher", "vanilla student (no teacher)", "other distillation methods",
                          "Wasserstein methods (WKD, WCoRD)"]
    assert any(t.startswith("vanilla level (87.30)") for t in legend)
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(87.3)
    bars = ax.containers[0]
    colors = [b.get_facecolor() for b in bars]
    assert colors[3] == colors[4] != colors[2] != colors[0]  # Wasserstein rows share a colour of their own
    (err,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    xs = sorted(seg[0][0] for seg in err.lines[2][0].get_segments())
    assert xs == [1, 2, 3, 4]  # every row with a std, not the teacher (x = 0)
    bottom = ax.get_ylim()[0]
    assert bottom > 0 and f"axis starts at {bottom:.0f}%" in ax.get_ylabel()
    assert any("3 seeds" in t.get_text() for t in fig.texts)


def test_untruncated_axis_says_nothing():
    fig = leaderboard_figure([{"name": "vanilla", "top1": 1.0, "std": None}, {"name": "KD", "top1": 3.0, "std": None}],
                             "t", "n")
    assert fig.axes[0].get_ylim()[0] == 0 and "axis starts" not in fig.axes[0].get_ylabel()


def test_bench_chart_note_counts_seeds(tmp_path):
    table = [{"method": "teacher", "n": 1, "final_mean": 91.0, "final_std": None},
             {"method": "vanilla", "n": 3, "final_mean": 87.0, "final_std": 0.3},
             {"method": "wkd_l", "n": 3, "final_mean": 89.0, "final_std": 0.2}]
    report.bar_chart(table, {"wkd_l": "WKD-L"}, tmp_path / "c.png", "title")
    assert (tmp_path / "c.png").stat().st_size > 10_000


def _fake_run(tmp_path, epochs=8, frac=0.625):
    run = tmp_path / "student_wkd_lf"
    run.mkdir()
    cfg = {"run": {"name": "student_wkd_lf"}, "student": {"model": "resnet8"}, "teacher": {"model": "resnet20"},
           "optim": {"epochs": epochs},
           "loss": [{"name": "ce", "weight": 1.0}, {"name": "wkd_f", "weight": 1.0, "decay_start_frac": frac}]}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"epoch": e + 1, "train_loss": 2.0 / (e + 1), "train_ce": 1.0 / (e + 1), "train_wkd_f": 1.0 / (e + 1),
             "train_top1": 50.0 + e, "test_top1": 49.0 + e} for e in range(epochs)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_curves_title_and_decay_mark(tmp_path):
    run = _fake_run(tmp_path)
    # 0-based epoch e has weight w*0.5(1+cos(pi(e-5)/3)) once e > 5: plotted epochs 7, 8 -> span from 6
    assert decay_spans(yaml.safe_load((run / "config.yaml").read_text())) == [("wkd_f", 6.0, 8)]
    fig = curves_figure(run)
    title = fig._suptitle.get_text()
    assert "resnet8 student distilled from resnet20" in title and "wkd_f" in title
    ax_l = fig.axes[0]
    spans = [p for p in ax_l.patches if p.get_label().endswith("decaying")]
    assert len(spans) == 1 and spans[0].get_x() == pytest.approx(6.0)
    assert any("cosine" in t.get_text() and "after epoch 6 the WKD-F weight" in t.get_text() for t in fig.texts)
    assert plot_run(run).is_file()


def test_curves_without_decay_have_no_mark(tmp_path):
    run = _fake_run(tmp_path, frac=None)
    fig = curves_figure(run)
    assert not [p for p in fig.axes[0].patches if p.get_label().endswith("decaying")]
    assert not [t for t in fig.texts if "cosine" in t.get_text()]


def test_decay_span_starts_after_the_last_full_weight_epoch():
    # 5 epochs, decay from 0.625 * 5 = 3.125: epochs (1-based, as plotted and as the official trainer
    # counts) 1..3 at full weight, 4 and 5 decayed; decay_start 4: only epoch 5 decays (to 0)
    cfg = {"optim": {"epochs": 5}, "loss": [{"name": "wkd_l"}, {"name": "wkd_f", "decay_start": 4}]}
    assert decay_spans(cfg) == [("wkd_l", 4.0, 5), ("wkd_f", 5.0, 5)]
    assert decay_spans({"optim": {"epochs": 5}, "loss": [{"name": "wkd_f", "decay_start": 5}]}) == []


def test_long_recipe_names_wrap_upright_and_the_axis_names_the_split():
    """wdistill auto's chart: recipe labels with their settings wrap under upright ticks instead of
    squeezing the plot, and the y-axis says held-out, not test."""
    rows = [{"name": "WKD-L+WKD-F (wkd_l w=1 lambda_l=10 tau=4; wkd_f w=1 lambda_f=0.08 gamma=8)", "top1": 91.2,
             "std": 0.3}, {"name": "vanilla", "top1": 87.4, "std": 0.6}]
    ax = leaderboard_figure(rows, "t", "n", ylabel="held-out top-1 (%)").axes[0]
    labels = ax.get_xticklabels()
    assert all(label.get_rotation() == 0 for label in labels)
    assert labels[0].get_text().count("\n") >= 3 and "num_n\negatives" not in labels[0].get_text()
    assert ax.get_ylabel().startswith("held-out top-1 (%)")


def test_plot_writes_where_it_says_and_refuses_a_path_that_cannot_be_a_file(tmp_path, capsys):
    from wdistill.cli import main

    run = _fake_run(tmp_path)
    assert main(["plot", str(run), "-o", str(tmp_path / "curves")]) == 0  # no suffix: a PNG, and said so
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'curves.png'}"
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(run), "-o", str(tmp_path / "curves.svg")]) == 0
    assert (tmp_path / "curves.svg").read_text().lstrip().startswith("<?xml")
    (tmp_path / "file").write_text("")
    assert main(["plot", str(run), "-o", str(tmp_path / "file" / "c.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {tmp_path / 'file' / 'c.png'}: {tmp_path / 'file'} is a file, not a "
                          "directory"), err
    assert main(["plot", str(run), "-o", str(tmp_path)]) == 0  # a directory: the chart goes in it
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'curves.png'}"
