"""bnlab.analysis: tracking directories as DataFrames, aggregation, plots, ls exports."""

import math
import subprocess
import sys

import matplotlib
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, assert_one_line_error

from bnlab import analysis, stats, tracking

matplotlib.use("Agg")


@pytest.fixture
def sweep_dir(analysis_sweep):
    return analysis_sweep


def test_aggregate_matches_hand_computed_intervals():
    frame = pd.DataFrame({
        "norm": ["bn", "bn", "bn", "gn", "gn", "none"],
        "status": ["done", "done", "done", "done", "diverged", "done"],
        "test_accuracy": [0.80, 0.90, 0.85, 0.70, None, 0.5]})
    table = analysis.aggregate(frame, "norm").set_index("norm")
    # bn: mean 0.85, sample std 0.05, n 3; t(0.975, 2) = 4.302652729911275 (tables).
    half = 4.302652729911275 * 0.05 / math.sqrt(3)
    assert table.loc["bn", "mean"] == pytest.approx(0.85)
    assert table.loc["bn", "std"] == pytest.approx(0.05)
    assert table.loc["bn", "count"] == 3
    assert table.loc["bn", "ci_low"] == pytest.approx(0.85 - half)
    assert table.loc["bn", "ci_high"] == pytest.approx(0.85 + half)
    # gn: the diverged run has no value; one value gives no interval.
    assert table.loc["gn", ["count", "runs", "diverged"]].tolist() == [1, 2, 1]
    assert table.loc["gn", "mean"] == pytest.approx(0.70)
    assert math.isnan(table.loc["gn", "ci_low"])
    # A 90% interval with two groups: t(0.95, 1) = 6.313751514675043 (tables).
    two = pd.DataFrame({"norm": ["bn"] * 2, "lr": [0.1] * 2, "status": ["done"] * 2,
                        "loss": [1.0, 2.0]})
    row = analysis.aggregate(two, ["norm", "lr"], "loss", confidence=0.90).iloc[0]
    assert row["ci_high"] == pytest.approx(1.5 + 6.313751514675043 * math.sqrt(0.5) /
                                           math.sqrt(2))
    with pytest.raises(KeyError, match="no column"):
        analysis.aggregate(frame, "depth")


def test_aggregate_interval_is_the_one_group_contrast():
    # One t-interval in bnlab: a group's is stats.contrast of its values with
    # coefficient 1, where Welch–Satterthwaite's ν reduces to n-1.
    values = [0.80, 0.90, 0.85, 0.83]
    estimate = stats.contrast([(1, np.array(values))])
    assert estimate.dof == pytest.approx(3)
    half = stats.t_quantile(0.975, 3) * np.std(values, ddof=1) / math.sqrt(4)
    assert (estimate.low, estimate.high) == pytest.approx((np.mean(values) - half,
                                                           np.mean(values) + half))
    row = analysis.aggregate(pd.DataFrame({"norm": "bn", "test_accuracy": values}),
                             "norm").iloc[0]
    assert (row["mean"], row["ci_low"], row["ci_high"]) == (estimate.value, estimate.low,
                                                           estimate.high)


def test_analysis_and_claims_import_no_training_and_no_matplotlib():
    # analysis reads tracking directories with pandas; the claims are judged without
    # drawing (the report imports matplotlib when it draws a figure).
    code = ("import sys; import bnlab.analysis, bnlab.claims; print(sorted(m for m in "
            "('jax', 'matplotlib', 'bnlab.train', 'bnlab.sweep') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_load_runs_has_a_row_per_run_with_config_and_summary(sweep_dir):
    runs = analysis.load_runs(sweep_dir)
    assert len(runs) == 10
    assert sorted(runs["status"]) == ["diverged"] + ["done"] * 9
    assert {"norm", "batch_size", "norm_batch_size", "learning_rate", "seed",
            "test_accuracy", "steps_per_s", "sweep", "path"} <= set(runs.columns)
    bn = runs[runs["norm"] == "bn"]
    assert sorted(bn["norm_batch_size"]) == [4, 4, 16, 16] and set(bn["seed"]) == {0, 1}
    assert set(runs.loc[runs["norm"] == "gn", "norm_batch_size"]) == {1}
    for row in runs.to_dict("records"):
        summary = tracking.read_json(f"{row['path']}/summary.json")
        assert row["test_accuracy"] == summary["test_accuracy"] or (
            summary["test_accuracy"] is None and pd.isna(row["test_accuracy"]))
    # The same rows from the sweep's parent folder, and from one run's folder.
    assert len(analysis.load_runs(sweep_dir.parent)) >= 10
    one = analysis.load_runs(runs["path"].iloc[0])
    assert len(one) == 1 and one["run"].iloc[0] == runs["run"].iloc[0]
    with pytest.raises(FileNotFoundError):
        analysis.load_runs(sweep_dir / "launches")


def test_load_curves_is_long_format(sweep_dir):
    curves = analysis.load_curves(sweep_dir, metrics=["train_loss", "test_accuracy"])
    assert set(curves["metric"]) == {"train_loss", "test_accuracy"}
    pick = "norm == 'bn' and seed == 0 and batch_size == 4"
    run = analysis.load_runs(sweep_dir).query(pick).iloc[0]
    rows = tracking.read_metrics(f"{run['path']}/metrics.jsonl")
    losses = curves.query(pick + " and metric == 'train_loss'").sort_values("step")
    assert losses["step"].tolist() == [r["step"] for r in rows] == [5, 10]
    assert losses["value"].tolist() == pytest.approx([r["train_loss"] for r in rows])


def test_load_curves_keeps_values_logged_as_null_only_when_asked(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    tracking.write_json_atomic(run_dir / "config.json", {"norm": "none"})
    tracking.write_json_atomic(run_dir / "status.json", {"status": "done"})
    (run_dir / "metrics.jsonl").write_text('{"step": 5, "ics/fc": 0.5, "ics/conv": null}\n'
                                           '{"step": 10, "ics/fc": null, "ics/conv": null}\n')
    assert analysis.load_curves(tmp_path)[["step", "metric", "value"]].values.tolist() == [
        [5, "ics/fc", 0.5]]
    logged = analysis.load_curves(tmp_path, missing=True)
    assert logged[["step", "metric"]].values.tolist() == [
        [5, "ics/fc"], [5, "ics/conv"], [10, "ics/fc"], [10, "ics/conv"]]
    assert logged["value"].isna().tolist() == [False, True, True, True]


def test_plots_draw_what_they_are_given(sweep_dir):
    runs = analysis.load_runs(sweep_dir)
    ax = analysis.plot_vs_batch_size(runs[runs["norm"] != "none"])
    assert [list(line.get_xdata()) for line in ax.get_lines()] == [[4, 16], [4, 16]]
    assert sorted(line.get_label() for line in ax.get_lines()) == ["bn", "gn"]
    ax = analysis.plot_lr_sensitivity(runs)
    assert any("diverged" in (c.get_label() or "") for c in ax.collections)
    curves = analysis.load_curves(sweep_dir, metrics=["train_loss"])
    ax = analysis.plot_curves(curves[curves["norm"] != "none"], "train_loss")
    means = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    expected = curves[(curves["norm"] == "bn")].groupby("step")["value"].mean()
    assert list(means["bn"]) == pytest.approx(expected.tolist())
    profile = analysis.grad_norm_profile(analysis.load_curves(sweep_dir))
    bn = profile[profile["norm"] == "bn"]
    assert bn["layer"].tolist() == ["conv1", "conv2", "fc1", "fc2", "norm1", "norm2"]
    assert bn["position"].tolist() == list(range(6)) and (bn["mean"] > 0).all()


def test_ls_exports_csv_and_parquet(cli, sweep_dir, tmp_path):
    def ls(*args):
        return cli("ls", str(sweep_dir), *args)

    result = ls("--format", "csv")
    assert result.returncode == 0, result.stderr
    from io import StringIO

    table = pd.read_csv(StringIO(result.stdout))
    assert len(table) == 10 and {"norm", "seed", "test_accuracy"} <= set(table.columns)
    result = ls("--format", "parquet", "--out", str(tmp_path / "runs.parquet"))
    assert result.returncode == 0, result.stderr
    parquet = pd.read_parquet(tmp_path / "runs.parquet")
    assert sorted(parquet["run"]) == sorted(table["run"])
    assert_one_line_error(ls("--format", "parquet"), "needs --out")
    assert_one_line_error(ls("--format", "xml"), "unknown --format 'xml'")
