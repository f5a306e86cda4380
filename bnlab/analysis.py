"""Tracking directories as pandas DataFrames, aggregation over seeds, and the
standard plots. Reads any tracking directory: one run, a sweep, or a folder of
sweeps (every folder below PATH that holds a run's config.json).

    from bnlab import analysis
    runs = analysis.load_runs("runs/bs")            # one row per run
    table = analysis.aggregate(runs, by=["norm", "batch_size"], metric="test_accuracy")
    analysis.plot_vs_batch_size(runs)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bnlab import tracking
from bnlab.stats import contrast

# The columns a run is usually told apart by, first in load_runs' frame.
KEY_COLUMNS = ("norm", "model", "batch_size", "norm_batch_size", "learning_rate",
               "weight_decay", "seed")
FINISHED = ("done", "diverged")


def load_runs(path: str | Path) -> pd.DataFrame:
    """One row per run: `run` (its folder name), `sweep` (the folder holding
    `runs/`, relative to `path`), `path`, `status`, every config field as a column,
    and every summary metric (None where the run has not finished). `status` is
    `tracking.RunDir.state`: done, diverged, failed, running, interrupted or pending."""
    root = Path(path)
    rows = []
    for run_dir in tracking.find_runs(root):
        config = run_dir.config()  # {} (warned) when damaged
        summary = run_dir.summary()
        status = summary.get("status") or run_dir.state()
        parent = run_dir.sweep_root()
        try:
            sweep_name = str(parent.relative_to(root)) if parent != root else "."
        except ValueError:  # `path` is the run itself
            sweep_name = "."
        row = {"run": run_dir.name, "sweep": sweep_name, "path": str(run_dir.path),
               "status": status}
        row.update({k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
        row.update({k: v for k, v in summary.items() if k != "status"})
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no runs under {root}")
    frame = pd.DataFrame(rows)
    first = ["run", "sweep", "status"] + [c for c in KEY_COLUMNS if c in frame]
    return frame[first + [c for c in frame.columns if c not in first]]


def load_curves(path: str | Path, metrics: list[str] | tuple[str, ...] | None = None,
                columns: tuple[str, ...] = KEY_COLUMNS, missing: bool = False) -> pd.DataFrame:
    """Long-format metrics over steps: one row per (run, step, metric) with `value`,
    plus the run's `columns` (from its config and summary) to group and plot by, in
    the order the run logged them (a run logs each step once). `metrics`: the metric
    names to keep (default: all). `missing`: also a row, valued NaN, where a metric
    was logged without a finite number (NaN and Inf are written as null)."""
    runs = load_runs(path)
    keep = [c for c in columns if c in runs]
    wanted = set(metrics) if metrics else None
    records = []  # built as tuples, one frame at the end: 1,000 runs load in a second
    for record in runs[["run", "path", *keep]].itertuples(index=False):
        fixed = (record[0], *record[2:])
        for row in tracking.RunDir(record[1]).metrics():
            step = row["step"]
            for metric, value in row.items():
                if metric == "step" or (wanted is not None and metric not in wanted):
                    continue
                # NaN is written as null: a diverged step has no value.
                if (isinstance(value, int | float) and not isinstance(value, bool)
                        and math.isfinite(value)):
                    records.append((*fixed, step, metric, float(value)))
                elif missing:
                    records.append((*fixed, step, metric, math.nan))
    return pd.DataFrame(records, columns=["run", *keep, "step", "metric", "value"])


def aggregate(frame: pd.DataFrame, by: list[str] | str, metric: str = "test_accuracy",
              confidence: float = 0.95) -> pd.DataFrame:
    """Per group of `by`: `mean`, `std` (n-1), `count` of runs with a value (a
    diverged run has none), `runs` (all of the group), `diverged`, and the
    `confidence` interval of the mean over seeds, `ci_low`..`ci_high`: mean ±
    t(n-1) · std / √n (`stats.contrast` of the one group); NaN for a group of fewer
    than two values."""
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*by, metric] if c not in frame]
    if missing:
        raise KeyError(f"no column(s) {', '.join(missing)}; have {', '.join(frame.columns)}")
    rows = []
    for key, group in frame.groupby(by, dropna=False, sort=True):
        values = pd.to_numeric(group[metric], errors="coerce").to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        n = len(values)
        estimate = contrast([(1, values)], confidence)
        std = float(values.std(ddof=1)) if n > 1 else math.nan
        diverged = int((group["status"] == "diverged").sum()) if "status" in group else 0
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
                     "mean": float(estimate.value), "std": std, "count": n,
                     "runs": len(group), "diverged": diverged, "ci_low": float(estimate.low),
                     "ci_high": float(estimate.high)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- plots

def _band(ax, x, table: pd.DataFrame, metric: str, color) -> None:
    """The interval as a band; for an accuracy, drawn inside [0, 1] (a t interval
    over 3 seeds with one outlier can reach past both ends)."""
    low, high = table["ci_low"], table["ci_high"]
    if "accuracy" in metric:
        low, high = low.clip(0, 1), high.clip(0, 1)
    ax.fill_between(x, low, high, alpha=0.2, color=color)


def _seeds(ax, runs: pd.DataFrame, x: str, metric: str, color) -> None:
    """Each run's own value, small and faint, beside the mean."""
    values = pd.to_numeric(runs[metric], errors="coerce")
    ax.scatter(runs[x], values, s=10, alpha=0.4, color=color, zorder=3)


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4))
    return ax


def plot_vs_batch_size(runs: pd.DataFrame, metric: str = "test_accuracy",
                       x: str = "batch_size", hue: str = "norm", ax=None):
    """The Group Norm paper's Figure 1: the metric against the batch size (log 2
    axis), one line per norm, mean over seeds with its 95% interval, and each
    run's own value as a faint dot."""
    ax = _axes(ax)
    table = aggregate(runs, [hue, x], metric)
    for name, group in table.groupby(hue, sort=True):
        group = group.sort_values(x)
        line, = ax.plot(group[x], group["mean"], marker="o", label=str(name))
        _band(ax, group[x], group, metric, line.get_color())
        _seeds(ax, runs[runs[hue] == name], x, metric, line.get_color())
    ax.set_xscale("log", base=2)
    values = sorted(table[x].unique())
    ax.set_xticks(values, [str(v) for v in values])
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend(title=hue)
    ax.grid(alpha=0.3)
    return ax


def plot_lr_sensitivity(runs: pd.DataFrame, metric: str = "test_accuracy",
                        x: str = "learning_rate", hue: str = "norm", ax=None):
    """The metric against the learning rate (log axis), one line per norm, mean
    over seeds with its 95% interval; each diverged run is an × on the axis floor."""
    ax = _axes(ax)
    table = aggregate(runs, [hue, x], metric)
    colors = {}
    for name, group in table.groupby(hue, sort=True):
        group = group.sort_values(x)
        line, = ax.plot(group[x], group["mean"], marker="o", label=str(name))
        colors[name] = line.get_color()
        _band(ax, group[x], group, metric, line.get_color())
        _seeds(ax, runs[(runs[hue] == name) & (runs["status"] != "diverged")], x, metric,
               line.get_color())
    diverged = runs[runs["status"] == "diverged"]
    if len(diverged):
        floor = ax.get_ylim()[0]
        for name, group in diverged.groupby(hue):
            ax.scatter(group[x], [floor] * len(group), marker="x", s=60,
                       color=colors.get(name, "k"), clip_on=False,
                       label=f"{name}: diverged")
    ax.set_xscale("log")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend(title=hue)
    ax.grid(alpha=0.3)
    return ax


def plot_errorbars(runs: pd.DataFrame, by: str, metrics: tuple[str, ...],
                   labels: tuple[str, ...], ax=None, ylabel: str = "accuracy"):
    """Mean and 95% interval of each metric (x positions, named by `labels`) per
    value of `by` (colors, side by side)."""
    ax = _axes(ax)
    groups = runs[by].nunique()
    for x, metric in enumerate(metrics):
        table = aggregate(runs, by, metric)
        for offset, row in enumerate(table.itertuples()):
            ax.errorbar(x + 0.15 * offset, row.mean, fmt="o", capsize=3,
                        yerr=[[row.mean - row.ci_low], [row.ci_high - row.mean]],
                        color=f"C{offset}", label=getattr(row, by) if x == 0 else None)
    middle = 0.075 * (groups - 1)  # each metric's label under the middle of its group
    ax.set_xticks([middle + x for x in range(len(metrics))], labels)
    ax.set_xlim(-0.3, len(metrics) - 1 + 2 * middle + 0.3)
    ax.set_ylabel(ylabel)
    ax.legend(title=by.replace("_", " "))
    ax.grid(alpha=0.3)
    return ax


def plot_curves(curves: pd.DataFrame, metric: str = "train_loss", hue: str = "norm",
                ax=None, log_y: bool = False):
    """A metric over steps, one line per `hue` value: the mean over the group's
    runs (seeds) and a band from their minimum to their maximum."""
    ax = _axes(ax)
    data = curves[curves["metric"] == metric]
    for name, group in data.groupby(hue, sort=True):
        stats = group.groupby("step")["value"].agg(["mean", "min", "max"]).reset_index()
        line, = ax.plot(stats["step"], stats["mean"], label=str(name))
        ax.fill_between(stats["step"], stats["min"], stats["max"], alpha=0.2,
                        color=line.get_color())
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend(title=hue)
    ax.grid(alpha=0.3)
    return ax


def grad_norm_profile(curves: pd.DataFrame, hue: str = "norm",
                      step: int | None = None) -> pd.DataFrame:
    """Per-layer gradient norms (runs trained with `log_grad_norms`) at `step` (the
    last step each run logged, by default): one row per (hue, layer) with the
    layer's `position` (input side first), mean over runs, min and max."""
    data = curves[curves["metric"].str.startswith("grad_norm/")].copy()
    if data.empty:
        raise ValueError("no grad_norm/ metrics: train with --config.log_grad_norms=True")
    last = data.groupby("run")["step"].transform("max") if step is None else step
    data = data[data["step"] == last]
    data["layer"] = data["metric"].str.slice(len("grad_norm/"))
    order = {name: i for i, name in enumerate(tracking.layer_names(set(data["layer"])))}
    table = data.groupby([hue, "layer"])["value"].agg(["mean", "min", "max"]).reset_index()
    table["position"] = table["layer"].map(order)
    return table.sort_values([hue, "position"]).reset_index(drop=True)


def plot_grad_norms(curves: pd.DataFrame, hue: str = "norm", step: int | None = None,
                    ax=None, layers: str | None = None):
    """Each layer's gradient norm against its position, one line per `hue` value,
    log scale: vanishing or exploding gradients show as a slope. `layers`: a
    regular expression on layer names to keep (e.g. "Conv" for the conv layers)."""
    ax = _axes(ax)
    table = grad_norm_profile(curves, hue, step)
    if layers:
        table = table[table["layer"].str.contains(layers)]
    for name, group in table.groupby(hue, sort=True):
        line, = ax.plot(group["position"], group["mean"], marker="o", label=str(name))
        ax.fill_between(group["position"], group["min"], group["max"], alpha=0.2,
                        color=line.get_color())
    ticks = table.drop_duplicates("position").sort_values("position")
    ax.set_xticks(ticks["position"], ticks["layer"], rotation=90, fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("layer (input → output)")
    ax.set_ylabel("gradient L2 norm")
    ax.legend(title=hue)
    ax.grid(alpha=0.3)
    return ax
