"""bnlab.analysis: tracking directories as DataFrames, aggregation, plots, ls exports."""

import math
import subprocess
import sys
import warnings

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


# ---------------------------------------------------------------- never pooled silently

def _grid_frame():
    """A 2-D grid by hand: bn and gn × learning rates 0.1 and 0.2 × seeds 0-2, on two
    models for bn at 0.1; test accuracy = a number per run."""
    rows = []
    values = {("bn", 0.1): [0.80, 0.90, 0.85], ("bn", 0.2): [0.70, 0.75, 0.65],
              ("gn", 0.1): [0.60, 0.62, 0.70], ("gn", 0.2): [0.50, 0.40, 0.45]}
    for (norm, rate), accuracies in values.items():
        for seed, accuracy in enumerate(accuracies):
            rows.append({"learning_rate": rate, "model": "simple_cnn", "norm": norm,
                         "seed": seed, "status": "done", "test_accuracy": accuracy,
                         "test_loss": 1 - accuracy})
    rows.append({"learning_rate": 0.1, "model": "mlp", "norm": "bn", "seed": 0,
                 "status": "done", "test_accuracy": 0.5, "test_loss": 0.5})
    return pd.DataFrame(rows)


def test_varied_columns_are_the_config_fields_that_differ(sweep_dir):
    runs = analysis.load_runs(sweep_dir)
    # batch_size and learning_rate are zipped, norm crossed; log_grad_norms is the same
    # for all, norm_batch_size and the metrics are no config fields.
    assert analysis.varied_columns(runs) == ["norm", "batch_size", "learning_rate"]
    assert analysis.varied_columns(runs, exclude=()) == ["norm", "batch_size",
                                                         "learning_rate", "seed"]
    assert analysis.varied_columns(runs[runs["norm"] == "bn"]) == ["batch_size",
                                                                   "learning_rate"]
    # A frame built by hand: the columns named like configs/default.py's fields.
    assert analysis.varied_columns(_grid_frame()) == ["learning_rate", "model", "norm"]
    # By default a group is one setting: none's two rates are two groups.
    table = analysis.aggregate(runs)
    assert table.columns[:3].tolist() == ["norm", "batch_size", "learning_rate"]
    none = table[table["norm"] == "none"]
    assert none["learning_rate"].tolist() == [0.05, 1e6] and none["runs"].tolist() == [1, 1]
    assert table["runs"].tolist() == [2, 2, 2, 2, 1, 1]


def test_aggregate_warns_naming_the_fields_its_groups_pool():
    frame = _grid_frame()
    with pytest.warns(UserWarning, match=r"^aggregate: groups of norm pool runs that differ "
                      r"in learning_rate, model; pass by=\.\.\.") as shown:
        analysis.aggregate(frame, by=["norm"])
    assert len(shown) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default and a full `by` pool nothing
        table = analysis.aggregate(frame)
        analysis.aggregate(frame, ["learning_rate", "model", "norm"])
        analysis.aggregate(frame, ["norm"], warn=False)
    assert len(table) == 5 and set(table["runs"]) == {1, 3}
    # Several metrics: a row per group and metric.
    both = analysis.aggregate(frame, metric=["test_accuracy", "test_loss"])
    assert len(both) == 10
    row = both.set_index(["norm", "learning_rate", "model", "metric"]).loc[
        ("gn", 0.2, "simple_cnn", "test_loss")]
    assert row["mean"] == pytest.approx(0.55) and row["count"] == 3


T_975_2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (tables)
T_975_1 = 12.706204736174707  # the same, 1 degree of freedom


def test_each_interval_is_its_hand_formula():
    frame = pd.DataFrame({"norm": "bn", "seed": [0, 1, 2], "test_loss": [0.80, 0.90, 0.85]})
    mean, sd = 0.85, 0.05  # by hand: deviations -0.05, 0.05, 0: variance 0.005/2

    def bounds(kind):
        row = analysis.aggregate(frame, "norm", "test_loss", interval=kind).iloc[0]
        assert row["mean"] == pytest.approx(mean)
        return (row["ci_low"], row["ci_high"]), row["interval"]

    t, said = bounds("t")
    half = T_975_2 * sd / math.sqrt(3)
    assert t == pytest.approx((mean - half, mean + half))
    assert said == "mean ± 95% t-interval over seeds (n=3)"
    se, said = bounds("se")
    assert se == pytest.approx((mean - sd / math.sqrt(3), mean + sd / math.sqrt(3)))
    assert said == "mean ± 1 standard error over seeds (n=3)"
    spread, said = bounds("sd")
    assert spread == pytest.approx((0.80, 0.90)) and "standard deviation" in said
    boot, said = bounds("bootstrap")
    # The percentile bootstrap: of 3 values the resampled means take 10 values,
    # 0.80 (all three 0.80) with probability 1/27 = 3.7% > 2.5%, so the 2.5% point is
    # the smallest mean, 0.80, and the 97.5% point the largest, 0.90.
    assert boot == pytest.approx((0.80, 0.90))
    assert said == "mean, 95% percentile bootstrap interval over seeds (n=3)"
    assert bounds("bootstrap") == (boot, said)  # a fixed generator: the same every time
    with pytest.raises(ValueError, match="allowed: t, se, sd, bootstrap"):
        bounds("ci")


def test_bootstrap_of_many_seeds_is_near_the_normal_interval():
    # 40 values: the percentile bootstrap of the mean approaches mean ± 1.96·s/√n
    # (its s with n, not n-1, in the denominator: the resamples' spread).
    values = np.random.default_rng(1).normal(0.5, 0.1, 40)
    estimate = stats.interval(values, "bootstrap")
    half = 1.959963984540054 * values.std(ddof=0) / math.sqrt(40)
    assert estimate.low == pytest.approx(values.mean() - half, abs=0.004)
    assert estimate.high == pytest.approx(values.mean() + half, abs=0.004)


def test_an_accuracy_interval_stays_inside_0_and_1(sweep_dir):
    # Two seeds, 0.1 and 0.95: mean 0.525, t-interval ± 12.71 · 0.601 / √2 = ± 5.4.
    frame = pd.DataFrame({"norm": "bn", "seed": [0, 1], "test_accuracy": [0.1, 0.95],
                          "train_loss": [0.1, 0.95]})
    accuracy = analysis.aggregate(frame, "norm", "test_accuracy").iloc[0]
    assert (accuracy["ci_low"], accuracy["ci_high"]) == (0.0, 1.0)
    half = T_975_1 * np.std([0.1, 0.95], ddof=1) / math.sqrt(2)
    loss = analysis.aggregate(frame, "norm", "train_loss").iloc[0]  # not an accuracy
    assert (loss["ci_low"], loss["ci_high"]) == pytest.approx((0.525 - half, 0.525 + half))
    # The drawn band too: no vertex below 0 or above 1.
    from matplotlib.collections import PolyCollection

    ax = analysis.plot_vs_batch_size(pd.concat([frame.assign(batch_size=4),
                                                frame.assign(batch_size=8)]))
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]  # not the dots
    assert len(bands) == 1
    band = bands[0].get_paths()[0].vertices
    assert band[:, 1].min() == 0.0 and band[:, 1].max() == 1.0


def test_paired_difference_is_the_mean_of_per_seed_differences():
    rows = []
    accuracy = {"bn": [0.80, 0.90, 0.85], "gn": [0.70, 0.85, 0.81], "ln": [0.60, None, 0.70]}
    for batch, shift in ((2, 0.0), (32, 0.1)):
        for norm, values in accuracy.items():
            for seed, value in enumerate(values):
                rows.append({"norm": norm, "batch_size": batch, "seed": seed,
                             "learning_rate": 0.05 * batch / 32,  # zipped with the batch
                             "status": "done" if value is not None else "diverged",
                             "test_accuracy": None if value is None else value + shift})
    table = analysis.paired_difference(pd.DataFrame(rows), "test_accuracy", baseline="bn")
    assert table.columns[:3].tolist() == ["batch_size", "learning_rate", "norm"]
    got = table.set_index(["batch_size", "norm"])
    # gn - bn per seed: -0.10, -0.05, -0.04; mean -0.19/3, sample sd by hand.
    differences = [-0.10, -0.05, -0.04]
    mean = sum(differences) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    for batch in (2, 32):  # the shift cancels in each difference
        row = got.loc[(batch, "gn")]
        assert row["mean"] == pytest.approx(mean) and row["seeds"] == 3
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(
            (mean - T_975_2 * sd / math.sqrt(3), mean + T_975_2 * sd / math.sqrt(3)))
        # ln's seed 1 diverged: seeds 0 and 2 pair, -0.20 and -0.15.
        row = got.loc[(batch, "ln")]
        assert row["seeds"] == 2 and row["mean"] == pytest.approx(-0.175)
        assert row["ci_high"] - row["mean"] == pytest.approx(T_975_1 * math.sqrt(0.00125) /
                                                             math.sqrt(2))
    assert got.loc[(2, "gn"), "interval"] == ("mean difference ± 95% t-interval over seeds "
                                              "(n=3)")
    # The t-interval is stats.paired's, the one the claims' rules use.
    frame = pd.DataFrame(rows)
    at2 = frame[frame["batch_size"] == 2]
    by_seed = {n: dict(zip(g["seed"], g["test_accuracy"], strict=True))
               for n, g in at2.groupby("norm")}
    estimate = stats.paired([(1, by_seed["gn"]), (-1, by_seed["bn"])])
    assert (got.loc[(2, "gn"), "ci_low"], got.loc[(2, "gn"), "ci_high"]) == pytest.approx(
        (estimate.low, estimate.high))
    # Pairing across batch sizes would give each seed two runs: refused, naming them.
    with pytest.raises(ValueError, match="differ in batch_size, learning_rate"):
        analysis.paired_difference(frame, by=[])
    with pytest.raises(ValueError, match="no run has norm='in'"):
        analysis.paired_difference(frame, baseline="in")


def test_paired_difference_pairs_bn_with_gn_at_each_of_its_groups():
    # num_groups is GN's: BN's runs (num_groups at its default) pair with GN's at 2 and 4.
    rows = [{"norm": norm, "num_groups": groups, "seed": seed, "status": "done",
             "test_accuracy": value}
            for norm, groups, values in (("bn", 8, [0.8, 0.9]), ("gn", 2, [0.7, 0.7]),
                                         ("gn", 4, [0.75, 0.95]))
            for seed, value in enumerate(values)]
    table = analysis.paired_difference(pd.DataFrame(rows), baseline="bn")
    assert table["num_groups"].tolist() == [2, 4]
    assert table["mean"].tolist() == pytest.approx([-0.15, 0.0])


def _run(root, name, config, rows, summary=None):
    """A run directory written by hand: its config, status and metrics rows."""
    run_dir = root / "runs" / name
    run_dir.mkdir(parents=True)
    tracking.write_json_atomic(run_dir / "config.json", config)
    tracking.write_json_atomic(run_dir / "status.json", {"status": "done"})
    if summary is not None:
        tracking.write_json_atomic(run_dir / "summary.json", {"status": "done", **summary})
    (run_dir / "metrics.jsonl").write_text("".join(
        f'{{"step": {step}, "train_loss": {loss}}}\n' for step, loss in rows))


def test_curves_split_by_any_config_field_on_steps_epochs_or_examples(tmp_path):
    """hue="num_groups" raised KeyError: load_curves kept only KEY_COLUMNS of each
    run, so a field outside them never reached the curves. It keeps every field
    that varies now."""
    base = {"norm": "gn", "dataset": "synthetic", "batch_size": 32, "num_epochs": 1.0,
            "train_size": 256, "seed": 0}
    losses = {(2, 0): [2.0, 1.0], (2, 1): [3.0, 2.0], (4, 0): [2.5, 0.5], (4, 1): [2.5, 1.5]}
    for (groups, seed), (first, last) in losses.items():
        _run(tmp_path, f"g{groups}s{seed}", {**base, "num_groups": groups, "seed": seed},
             [(4, first), (8, last)])
    curves = analysis.load_curves(tmp_path)
    assert "num_groups" in curves
    ax = analysis.plot_curves(curves, hue="num_groups")
    means = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert means == {"2": pytest.approx([2.5, 1.5]), "4": pytest.approx([2.5, 1.0])}
    assert ax.get_legend().get_title().get_text() == (
        "num groups: mean, band: min to max over runs (n=2)")
    # 256 examples of batch 32: 8 steps an epoch; step 4 is half an epoch, 128 examples.
    ax = analysis.plot_curves(curves, hue="num_groups", x="epoch")
    assert list(ax.get_lines()[0].get_xdata()) == [0.5, 1.0] and ax.get_xlabel() == "epoch"
    ax = analysis.plot_curves(curves, hue="num_groups", x="examples")
    assert list(ax.get_lines()[0].get_xdata()) == [128, 256]
    assert ax.get_xlabel() == "examples seen"
    ax = analysis.plot_curves(curves, hue="num_groups", interval="t")
    title = ax.get_legend().get_title().get_text()
    assert title == "num groups: mean ± 95% t-interval over seeds (n=2)"
    # A line that pools runs of other settings says so.
    ax = analysis.plot_curves(curves, hue="norm")
    assert ax.get_legend().get_title().get_text().endswith("pooled in a line: num_groups")
    # Several columns: a line per combination.
    ax = analysis.plot_curves(curves, hue=["norm", "num_groups"])
    assert sorted(line.get_label() for line in ax.get_lines()) == ["gn, num_groups=2",
                                                                   "gn, num_groups=4"]
    with pytest.raises(ValueError, match="allowed: step, epoch, examples"):
        analysis.plot_curves(curves, x="epochs")


def test_facets_split_off_what_a_plot_would_average(sweep_dir):
    runs = analysis.load_runs(sweep_dir)
    # Accuracy against batch size per norm: no norm's two rates at batch 16 would be
    # one point, so the learning rate (and the batch size zipped with it) splits.
    parts = analysis.facets(runs, ["norm", "batch_size"])
    assert [(title, len(part)) for title, part in parts] == [
        ("learning_rate=0.0125", 4), ("learning_rate=0.05", 5), ("learning_rate=1e+06", 1)]
    assert analysis.facets(runs[runs["norm"] != "none"], ["norm", "batch_size"])[0][0] == ""
    for _, part in parts:
        assert analysis.pooled_columns(part, ["norm", "batch_size"]) == []


def test_epochs_count_the_training_set_the_run_saw(tmp_path):
    # Without train_size: the dataset's size (synthetic: 512 unless set; Fashion-MNIST:
    # 60,000), or the summary's train_examples once the run finished.
    for name, config, summary in (
            ("syn", {"dataset": "synthetic", "batch_size": 32}, None),
            ("fm", {"dataset": "fashion_mnist", "batch_size": 60}, None),
            ("tfds", {"dataset": "cifar10", "batch_size": 50}, {"train_examples": 5000})):
        _run(tmp_path / name, "r", config, [(10, 1.0)], summary)
    epochs = {name: analysis.load_curves(tmp_path / name)["epoch"].iloc[0]
              for name in ("syn", "fm", "tfds")}
    assert epochs == {"syn": 10 / 16, "fm": 10 / 1000, "tfds": 10 / 100}
    _run(tmp_path / "unknown", "r", {"dataset": "cifar10", "batch_size": 50}, [(10, 1.0)])
    curves = analysis.load_curves(tmp_path / "unknown")
    assert curves["examples"].iloc[0] == 500 and math.isnan(curves["epoch"].iloc[0])
    with pytest.raises(ValueError, match="training set size is not known"):
        analysis.plot_curves(curves, hue="batch_size", x="epoch")


def test_plots_draw_a_line_per_setting_and_say_their_interval(sweep_dir):
    runs = analysis.load_runs(sweep_dir)
    # No norm ran at two rates at batch 16: two lines, not one averaging them.
    ax = analysis.plot_vs_batch_size(runs)
    assert sorted(line.get_label() for line in ax.get_lines()) == [
        "bn", "gn", "none, learning_rate=0.05", "none, learning_rate=1e+06"]
    assert ax.get_ylabel() == "test accuracy\nmean ± 95% t-interval over seeds (n=1–2)"
    # Only a diverged run: nothing finite to draw, and still a figure.
    diverged = runs[runs["status"] == "diverged"]
    for plot in (analysis.plot_vs_batch_size, analysis.plot_lr_sensitivity):
        ax = plot(diverged)
        ax.figure.canvas.draw()  # matplotlib could not log-scale its default 0..1
        assert ax.get_xlim()[0] > 0
    ax = analysis.plot_vs_batch_size(runs[runs["norm"] != "none"], interval="se")
    assert ax.get_ylabel() == "test accuracy\nmean ± 1 standard error over seeds (n=2)"
    ax = analysis.plot_errorbars(runs[runs["norm"] != "none"], "norm", ("test_accuracy",),
                                 ("test",))
    # bn and gn each at two batch sizes: four points, each named.
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["bn, batch_size=4, learning_rate=0.0125",
                      "bn, batch_size=16, learning_rate=0.05",
                      "gn, batch_size=4, learning_rate=0.0125",
                      "gn, batch_size=16, learning_rate=0.05"]
