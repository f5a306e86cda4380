"""Tracking directories as pandas DataFrames, aggregation over seeds, and the
standard plots. Reads any tracking directory: one run, a sweep, or a folder of
sweeps (every folder below PATH that holds a run's config.json).

    from bnlab import analysis
    runs = analysis.load_runs("runs/bs")            # one row per run
    analysis.varied_columns(runs)                   # the config fields that differ
    table = analysis.aggregate(runs)                # a row per setting, mean over seeds
    diffs = analysis.paired_difference(runs, "test_accuracy", baseline="bn")
    analysis.plot_vs_batch_size(runs)

Nothing here averages runs of different settings without saying so: `aggregate`
groups by every field that varies unless told otherwise, and warns, naming them,
when the groups it is given hold runs that differ in other fields; the plots draw
a line per setting; `paired_difference` refuses to pair runs of several settings.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bnlab import config as config_lib
from bnlab import data, stats, tracking

# The columns a run is usually told apart by, first in load_runs' frame.
KEY_COLUMNS = ("norm", "model", "batch_size", "norm_batch_size", "learning_rate",
               "weight_decay", "seed")
FINISHED = ("done", "diverged")
# load_runs' columns that describe where a run is, not what it computed.
RUN_COLUMNS = ("run", "sweep", "path", "status")
# The x axes of curves: `load_curves` gives each; what the axis says.
X_AXES = {"step": "step", "epoch": "epoch", "examples": "examples seen"}
# plot_curves' band: the runs' minimum to maximum, or an interval over seeds.
CURVE_BANDS = ("range", *stats.INTERVALS)


def load_runs(path: str | Path) -> pd.DataFrame:
    """One row per run: `run` (its folder name), `sweep` (the folder holding
    `runs/`, relative to `path`), `path`, `status`, every config field as a column,
    and every summary metric (None where the run has not finished). `status` is
    `tracking.RunDir.state`: done, diverged, failed, running, interrupted or pending.
    `frame.attrs["config_columns"]` names the columns that are config fields
    (`varied_columns` reads it; pandas keeps it through filtering)."""
    root = Path(path)
    rows = []
    fields: dict[str, None] = {}
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
        fields.update(dict.fromkeys(config))
    if not rows:
        raise FileNotFoundError(f"no runs under {root}")
    frame = pd.DataFrame(rows)
    first = ["run", "sweep", "status"] + [c for c in KEY_COLUMNS if c in frame]
    frame = frame[first + [c for c in frame.columns if c not in first]]
    frame.attrs["config_columns"] = [f for f in fields if f not in RUN_COLUMNS]
    return frame


def load_curves(path: str | Path, metrics: list[str] | tuple[str, ...] | None = None,
                columns: Sequence[str] | None = None, missing: bool = False) -> pd.DataFrame:
    """Long-format metrics over steps: one row per (run, step, metric) with `value`,
    `epoch` and `examples` (`examples_seen`), plus the run's `columns` (from its
    config and summary) to group and plot by, in the order the run logged them (a
    run logs each step once). `columns`: by default `KEY_COLUMNS` and every config
    field that varies across the runs, so that any of them can split the curves
    (`plot_curves`' hue); `()` for none. `metrics`: the metric names to keep
    (default: all). `missing`: also a row, valued NaN, where a metric was logged
    without a finite number (NaN and Inf are written as null)."""
    runs = load_runs(path)
    if columns is None:
        columns = list(dict.fromkeys([*KEY_COLUMNS, *varied_columns(runs, exclude=())]))
    keep = [c for c in columns if c in runs]
    wanted = set(metrics) if metrics else None
    per_step = _examples_per_step(runs)
    records = []  # built as tuples, one frame at the end: 1,000 runs load in a second
    for record, (batch, per_epoch) in zip(runs[["run", "path", *keep]].itertuples(index=False),
                                          per_step, strict=True):
        fixed = (record[0], *record[2:])
        for row in tracking.RunDir(record[1]).metrics():
            step = row["step"]
            at = (step / per_epoch, step * batch)
            for metric, value in row.items():
                if metric == "step" or (wanted is not None and metric not in wanted):
                    continue
                # NaN is written as null: a diverged step has no value.
                if (isinstance(value, int | float) and not isinstance(value, bool)
                        and math.isfinite(value)):
                    records.append((*fixed, step, *at, metric, float(value)))
                elif missing:
                    records.append((*fixed, step, *at, metric, math.nan))
    return pd.DataFrame(records, columns=["run", *keep, "step", "epoch", "examples", "metric",
                                          "value"])


def examples_seen(config: dict[str, Any] | pd.Series, step: float) -> tuple[float, float]:
    """(epoch, examples) a run has trained through at `step`: `step × batch_size`
    examples (the SGD batch, over all devices), and `step ÷ steps per epoch`, an
    epoch being `train_examples // batch_size` steps as the run counts them (so a
    run of num_epochs=1 ends at epoch 1.0). The training set's size is the run's
    `train_examples` (its summary) or what its config says (`data.train_examples`);
    NaN where neither is known."""
    batch, per_epoch = _examples_per_step(pd.DataFrame([dict(config)]))[0]
    return step / per_epoch, step * batch


def _examples_per_step(runs: pd.DataFrame) -> list[tuple[float, float]]:
    """Each run's (batch size, steps per epoch), each NaN where not known."""
    out = []
    for row in runs.to_dict("records"):
        batch = row.get("batch_size")
        size = row.get("train_examples")
        if not isinstance(size, numbers.Real) or not math.isfinite(size):
            try:
                size = data.train_examples({k: v for k, v in row.items() if _known(v)})
            except (TypeError, ValueError):
                size = None
        if not isinstance(batch, numbers.Real) or not batch > 0:
            out.append((math.nan, math.nan))
        else:  # examples are known from the batch alone; epochs need the set's size too
            out.append((float(batch), float(max(1, int(size) // int(batch))) if size
                        else math.nan))
    return out


def _known(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


# ---------------------------------------------------------------- what varies

def config_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of `frame` that are config fields: those `load_runs` recorded
    (`frame.attrs["config_columns"]`); for a frame built some other way, those
    named like a field of configs/default.py."""
    known = frame.attrs.get("config_columns")
    if known is None:
        known = config_lib.defaults()
    known = set(known)
    return [c for c in frame.columns if c in known and c not in RUN_COLUMNS]


def _comparable(value: Any) -> Any:
    """A config value as a key that is equal where the values are: 1 and 1.0 alike,
    NaN and None alike, a list as the tuple."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, list):
        return tuple(value)
    return value


def _keys(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: frame[c].map(_comparable) for c in columns}, index=frame.index)


def varied_columns(runs: pd.DataFrame, exclude: Sequence[str] = ("seed",)) -> list[str]:
    """The config fields whose values differ across the runs (`config_columns`), in
    the frame's order, without `exclude` (by default the seed, which a mean is
    taken over) and the fields that never tell results apart
    (`config.BOOKKEEPING_FIELDS`: where a run read its data, how often it logged)."""
    columns = [c for c in config_columns(runs)
               if c not in exclude and c not in config_lib.BOOKKEEPING_FIELDS]
    if runs.empty or not columns:
        return []
    counts = _keys(runs, columns).nunique(dropna=False)
    return [c for c in columns if counts[c] > 1]


def pooled_columns(runs: pd.DataFrame, by: Sequence[str],
                   exclude: Sequence[str] = ("seed",)) -> list[str]:
    """The varied fields (`varied_columns`, without `exclude`) that differ inside a
    group of `by`: what a mean over each group would average over besides the seed."""
    by = list(by)
    varied = [c for c in varied_columns(runs, exclude) if c not in by]
    if not varied or not by:
        return varied
    keys = _keys(runs, by + varied)
    counts = keys.groupby(by, dropna=False)[varied].nunique(dropna=False).max()
    return [c for c in varied if counts[c] > 1]


def is_accuracy(metric: str) -> bool:
    """A metric that is a fraction in [0, 1] (test_accuracy, final_train_accuracy):
    its means' intervals are cut to [0, 1], where every value they average lies."""
    return "accuracy" in metric


# ---------------------------------------------------------------- aggregation

def aggregate(frame: pd.DataFrame, by: Sequence[str] | str | None = None,
              metric: str | Sequence[str] = "test_accuracy", confidence: float = 0.95, *,
              interval: str = "t", warn: bool = True) -> pd.DataFrame:
    """Per group of `by` and per metric (`metric`: one name or several): `metric`,
    `mean`, `std` (n-1), `count` of runs with a value (a diverged run has none),
    `runs` (all of the group), `diverged`, and the interval of the mean over the
    seeds, `ci_low`..`ci_high` (`stats.interval`: "t", mean ± t(n-1)·s/√n, the
    default, at `confidence`; "se"; "sd"; "bootstrap"), in words in `interval`; an
    accuracy's interval cut to [0, 1]. NaN bounds for a group of fewer than two
    values.

    `by`: by default every config field that varies across the runs but the seed
    (`varied_columns`), so that each group is one setting over seeds. Given `by`
    whose groups hold runs that differ in other fields, the means pool them: a
    `UserWarning` names those fields (`warn=False` when that is meant)."""
    metrics = [metric] if isinstance(metric, str) else list(metric)
    given = by is not None
    by = ([by] if isinstance(by, str) else list(by)) if given else [
        c for c in varied_columns(frame) if c not in metrics]
    missing = [c for c in [*by, *metrics] if c not in frame]
    if missing:
        raise KeyError(f"no column(s) {', '.join(missing)}; have {', '.join(frame.columns)}")
    if interval not in stats.INTERVALS:
        raise ValueError(f"interval {interval!r}; allowed: {', '.join(stats.INTERVALS)}")
    if given and warn:
        pooled = [c for c in pooled_columns(frame, by) if c not in metrics]
        if pooled:
            warnings.warn(f"aggregate: groups of {', '.join(by) or 'all runs'} pool runs that "
                          f"differ in {', '.join(pooled)}; pass by=... with them (by=None "
                          "groups by every field that varies) or filter first", UserWarning,
                          stacklevel=2)
    groups = frame.groupby(by, dropna=False, sort=True) if by else [((), frame)]
    rows = []
    for key, group in groups:
        diverged = int((group["status"] == "diverged").sum()) if "status" in group else 0
        for name in metrics:
            values = pd.to_numeric(group[name], errors="coerce").to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            n = len(values)
            estimate = stats.interval(values, interval, confidence)
            low, high = float(estimate.low), float(estimate.high)
            if is_accuracy(name):
                low, high = min(max(low, 0.0), 1.0), min(max(high, 0.0), 1.0)
            rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
                         "metric": name, "mean": float(estimate.value),
                         "std": float(values.std(ddof=1)) if n > 1 else math.nan,
                         "count": n, "runs": len(group), "diverged": diverged,
                         "ci_low": low, "ci_high": high,
                         "interval": stats.interval_label(interval, confidence, n)})
    columns = [*by, "metric", "mean", "std", "count", "runs", "diverged", "ci_low", "ci_high",
               "interval"]
    return pd.DataFrame(rows, columns=columns)


def paired_difference(runs: pd.DataFrame, metric: str = "test_accuracy", baseline: str = "bn",
                      by: Sequence[str] | str | None = None, *, arm: str = "norm",
                      seed: str = "seed", confidence: float = 0.95,
                      interval: str = "t") -> pd.DataFrame:
    """Each arm (a value of `arm`, the norm by default) minus the `baseline` arm,
    seed by seed, per group of `by`: the runs of two arms with the same seed share
    their data order (and initialization where the shapes agree), so what the seed
    does to both cancels in each difference. A row per group and arm: `mean` of the
    per-seed differences, `ci_low`..`ci_high` (`interval`, as `aggregate`'s; "t" is
    `stats.paired`'s), `seeds` paired (those both arms have with a finite value: a
    diverged run's seed drops out), `interval` in words.

    `by`: by default every field that varies but the seed and `arm`. The baseline's
    runs pair with every value of a field their norm and model do not read (BN's
    runs with GN's at each num_groups). Runs of one arm that differ in another
    field inside a group would give a seed several values: refused (ValueError),
    as is a grouping where no group holds the baseline and another arm."""
    by = ([by] if isinstance(by, str) else list(by)) if by is not None else [
        c for c in varied_columns(runs, exclude=(seed, arm)) if c != metric]
    missing = [c for c in [*by, arm, seed, metric] if c not in runs]
    if missing:
        raise KeyError(f"no column(s) {', '.join(missing)}; have {', '.join(runs.columns)}")
    pooled = [c for c in pooled_columns(runs, [*by, arm], exclude=(seed,)) if c != metric]
    if pooled:
        raise ValueError(f"paired_difference: runs of one {arm} in a group of "
                         f"{', '.join(by) or 'all runs'} differ in {', '.join(pooled)}; pass "
                         "by=... with them or filter first")
    duplicated = runs[runs.duplicated([*by, arm, seed], keep=False)]
    if len(duplicated):
        first = duplicated.iloc[0]
        raise ValueError(f"paired_difference: {len(duplicated)} runs share {arm}="
                         f"{first[arm]!r}, {seed}={first[seed]!r} and their group "
                         f"({', '.join(by) or 'all runs'}): each seed must be one run")
    base = runs[runs[arm] == baseline]
    others = runs[runs[arm] != baseline]
    wildcard = _unread(base, by)
    keys_base, keys_other = _keys(base, by), _keys(others, by)
    rows = []
    for key, group in others.groupby([*by, arm], dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        setting = keys_other.loc[group.index].iloc[0]
        match = np.ones(len(base), dtype=bool)
        for field in by:
            match &= (keys_base[field] == setting[field]).to_numpy() | wildcard[field]
        paired_runs = base[match]
        if paired_runs.empty:
            continue
        values = dict(zip(group[seed], pd.to_numeric(group[metric], errors="coerce"),
                          strict=True))
        reference = dict(zip(paired_runs[seed], pd.to_numeric(paired_runs[metric],
                                                               errors="coerce"), strict=True))
        if len(reference) < len(paired_runs):
            raise ValueError(f"paired_difference: several {arm}={baseline!r} runs of one seed "
                             f"pair with {arm}={key[-1]!r}; pass by=... to tell them apart")
        differences = stats.per_seed([(1, values), (-1, reference)])
        estimate = stats.interval(np.array(list(differences.values()), dtype=float),
                                  interval, confidence)
        rows.append({**dict(zip([*by, arm], key, strict=True)), "baseline": baseline,
                     "metric": metric, "mean": float(estimate.value),
                     "ci_low": float(estimate.low), "ci_high": float(estimate.high),
                     "seeds": len(differences),
                     "interval": stats.interval_label(interval, confidence, len(differences))
                     .replace("mean", "mean difference", 1)})
    if not rows:
        raise ValueError(f"paired_difference: no {arm} shares a group of "
                         f"{', '.join(by) or 'all runs'} with {arm}={baseline!r}"
                         + ("" if len(base) else f" (no run has {arm}={baseline!r})")
                         + "; pass by=... (the fields to pair within)")
    return pd.DataFrame(rows, columns=[*by, arm, "baseline", "metric", "mean", "ci_low",
                                       "ci_high", "seeds", "interval"])


def _unread(runs: pd.DataFrame, fields: list[str]) -> dict[str, np.ndarray]:
    """Per field, which of the runs do not read it (their norm and model:
    `config.unread_fields`), so that any value of it pairs with them."""
    if not fields or runs.empty or "norm" not in runs:
        return {f: np.zeros(len(runs), dtype=bool) for f in fields}
    base = config_lib.defaults()
    models = runs["model"] if "model" in runs else pd.Series(base["model"], index=runs.index)
    unread = [config_lib.unread_fields(norm, model)
              for norm, model in zip(runs["norm"], models, strict=True)]
    return {f: np.array([f in names for names in unread], dtype=bool) for f in fields}


# ---------------------------------------------------------------- plots

def _band(ax, x, table: pd.DataFrame, color) -> None:
    """The interval as a band (`aggregate` cut an accuracy's to [0, 1])."""
    ax.fill_between(x, table["ci_low"], table["ci_high"], alpha=0.2, color=color)


def _seeds(ax, runs: pd.DataFrame, x: str, metric: str, color) -> None:
    """Each run's own value, small and faint, beside the mean."""
    values = pd.to_numeric(runs[metric], errors="coerce")
    ax.scatter(runs[x], values, s=10, alpha=0.4, color=color, zorder=3)


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4))
    return ax


def _named(fields: Sequence[str], key: Any) -> list[str]:
    """"field=value" for each field of a groupby key (floats as %g: 1e+06, 0.05; a
    field a run left unset, None or NaN here, as "unset")."""
    return [f"{f}=unset" if _comparable(v) is None and not isinstance(v, str)
            else f"{f}={v:g}" if isinstance(v, float) else f"{f}={v}"
            for f, v in zip(fields, _keyed(key), strict=True)]


def facets(runs: pd.DataFrame, keep: Sequence[str],
           exclude: Sequence[str] = ("seed",)) -> list[tuple[str, pd.DataFrame]]:
    """The runs split by every field that varies inside a group of `keep`
    (`pooled_columns`): a part per setting of those fields, with its title
    ("model=mlp, learning_rate=0.1"; "" where nothing else varies), so that a plot
    or table of `keep` in each part averages over nothing but the seeds (a panel per
    model and learning rate for accuracy against batch size on a 2-D grid)."""
    fields = pooled_columns(runs, keep, exclude)
    if not fields:
        return [("", runs)]
    return [(", ".join(_named(fields, key)), part)
            for key, part in runs.groupby(fields, sort=True, dropna=False)]


def _lines(runs: pd.DataFrame, hue: str, x: str | None) -> list[tuple[Any, str, pd.DataFrame]]:
    """The runs of each line (or point) of a plot, as (hue value, label, runs): a line
    per `hue` value, split further by every field that would otherwise be averaged
    over inside one of its x values (`pooled_columns`: a learning rate on a 2-D grid
    of batch size × rate), named in its label, so that no mean pools settings. A
    field zipped with x (the learning rate scaled with the batch) splits nothing."""
    out = []
    for value, runs_of in runs.groupby(hue, sort=True, dropna=False):
        extra = pooled_columns(runs_of, [hue, x] if x else [hue])
        if not extra:
            out.append((value, str(value), runs_of))
            continue
        for key, part in runs_of.groupby(extra, sort=True, dropna=False):
            out.append((value, ", ".join([str(value), *_named(extra, key)]), part))
    return out


def _interval_ylabel(metric: str, tables: list[pd.DataFrame], interval: str,
                     confidence: float) -> str:
    """The y axis: the metric, and what its points and bands are, with the seeds per
    mean (a range where groups differ)."""
    counts = pd.concat([t["count"] for t in tables]) if tables else pd.Series([], dtype=int)
    counts = counts[counts > 0]
    n = (int(counts.min()), int(counts.max())) if len(counts) else None
    return (f"{metric.replace('_', ' ')}\n"
            f"{stats.interval_label(interval, confidence, n)}")


def _log_x(ax, values, tables: list[pd.DataFrame], base: float = 10) -> None:
    """A log x axis; where no mean is finite (every run diverged), its limits from
    the x values, which matplotlib's autoscale has none of (it cannot log-scale 0..1)."""
    if not any(np.isfinite(t["mean"].to_numpy(dtype=float)).any() for t in tables) \
            and len(values):
        ax.set_xlim(min(values) / 2, max(values) * 2)
    ax.set_xscale("log", base=base)


def _keyed(key) -> tuple:
    """A groupby key as a tuple (pandas gives a tuple for a list of columns)."""
    return key if isinstance(key, tuple) else (key,)


def plot_vs_batch_size(runs: pd.DataFrame, metric: str = "test_accuracy",
                       x: str = "batch_size", hue: str = "norm", ax=None, *,
                       interval: str = "t", confidence: float = 0.95):
    """The Group Norm paper's Figure 1: the metric against the batch size (log 2
    axis), one line per norm, the mean over seeds with its interval (`aggregate`'s
    `interval`, said on the y axis), and each run's own value as a faint dot. A
    further field that varies inside a (norm, batch size) group gets lines of its
    own (e.g. a learning rate on a 2-D grid), named in the legend: never averaged."""
    ax = _axes(ax)
    tables = []
    for _, label, part in _lines(runs, hue, x):
        table = aggregate(part, x, metric, confidence, interval=interval, warn=False)
        tables.append(table)
        line, = ax.plot(table[x], table["mean"], marker="o", label=label)
        _band(ax, table[x], table, line.get_color())
        _seeds(ax, part, x, metric, line.get_color())
    values = sorted(runs[x].unique())
    _log_x(ax, values, tables, base=2)
    ax.set_xticks(values, [str(v) for v in values])
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(_interval_ylabel(metric, tables, interval, confidence))
    ax.legend(title=hue)
    ax.grid(alpha=0.3)
    return ax


def plot_lr_sensitivity(runs: pd.DataFrame, metric: str = "test_accuracy",
                        x: str = "learning_rate", hue: str = "norm", ax=None, *,
                        interval: str = "t", confidence: float = 0.95):
    """The metric against the learning rate (log axis), one line per norm (and per
    value of a further field that varies inside a (norm, rate) group), the mean over
    seeds with its interval (said on the y axis); each diverged run is an × on the
    axis floor."""
    ax = _axes(ax)
    colors, tables = {}, []
    for value, label, part in _lines(runs, hue, x):
        table = aggregate(part, x, metric, confidence, interval=interval, warn=False)
        tables.append(table)
        line, = ax.plot(table[x], table["mean"], marker="o", label=label)
        colors.setdefault(value, line.get_color())
        _band(ax, table[x], table, line.get_color())
        _seeds(ax, part[part["status"] != "diverged"], x, metric, line.get_color())
    diverged = runs[runs["status"] == "diverged"]
    if len(diverged):
        floor = ax.get_ylim()[0]
        for name, group in diverged.groupby(hue):
            ax.scatter(group[x], [floor] * len(group), marker="x", s=60,
                       color=colors.get(name, "k"), clip_on=False,
                       label=f"{name}: diverged")
    _log_x(ax, sorted(runs[x].unique()), tables)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(_interval_ylabel(metric, tables, interval, confidence))
    ax.legend(title=hue)
    ax.grid(alpha=0.3)
    return ax


def plot_errorbars(runs: pd.DataFrame, by: str, metrics: tuple[str, ...],
                   labels: tuple[str, ...], ax=None, ylabel: str = "accuracy", *,
                   interval: str = "t", confidence: float = 0.95):
    """Mean and interval of each metric (x positions, named by `labels`) per value of
    `by` (colors, side by side; a further field that varies inside a group of `by`
    splits it, named in the legend); the interval is said on the y axis."""
    ax = _axes(ax)
    points = _lines(runs, by, None)
    tables = []
    for x, metric in enumerate(metrics):
        for offset, (_, label, part) in enumerate(points):
            row = aggregate(part, [], metric, confidence, interval=interval,
                            warn=False).iloc[0]
            tables.append(pd.DataFrame([row]))
            ax.errorbar(x + 0.15 * offset, row["mean"], fmt="o", capsize=3,
                        yerr=[[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]],
                        color=f"C{offset}", label=label if x == 0 else None)
    middle = 0.075 * (len(points) - 1)  # each metric's label under the middle of its group
    ax.set_xticks([middle + x for x in range(len(metrics))], labels)
    ax.set_xlim(-0.3, len(metrics) - 1 + 2 * middle + 0.3)
    ax.set_ylabel(_interval_ylabel(ylabel, tables, interval, confidence))
    ax.legend(title=by.replace("_", " "))
    ax.grid(alpha=0.3)
    return ax


def plot_curves(curves: pd.DataFrame, metric: str = "train_loss",
                hue: str | Sequence[str] = "norm", ax=None, log_y: bool = False, *,
                x: str = "step", interval: str = "range", confidence: float = 0.95):
    """A metric over `x` ("step", "epoch" or "examples" seen: `load_curves`' columns),
    one line per `hue` value (any column of `curves`: `load_curves` keeps every config
    field that varies; several columns: a line per combination, "bn, norm_fc1=True"):
    the mean over the group's runs (seeds) at each x, and a band,
    by default from their minimum to their maximum (`interval="range"`), or an
    interval over seeds as `aggregate`'s. The legend's title says what the band is
    and over how many runs, and names any field other than the seed that differs
    inside a line (its mean pools them: filter, or pick that field as `hue`)."""
    ax = _axes(ax)
    if x not in X_AXES:
        raise ValueError(f"x={x!r}; allowed: {', '.join(X_AXES)}")
    if interval not in CURVE_BANDS:
        raise ValueError(f"interval {interval!r}; allowed: {', '.join(CURVE_BANDS)}")
    hues = [hue] if isinstance(hue, str) else list(hue)
    for column in (*hues, x):
        if column not in curves:
            raise KeyError(f"the curves have no column {column!r}; load_curves keeps "
                           f"{', '.join(c for c in curves.columns if c not in ('metric', 'value'))}"
                           f" (columns=... adds others)")
    data = curves[curves["metric"] == metric]
    if data[x].isna().all() and len(data):
        raise ValueError(f"x={x!r}: the runs' batch size or training set size is not known "
                         "(a tfds dataset without train_size, or curves loaded with columns=())")
    sizes = []
    for key, group in data.groupby(hues, sort=True, dropna=False):
        key = _keyed(key)
        name = ", ".join([str(key[0]), *_named(hues[1:], key[1:])])
        if interval == "range":
            table = group.groupby(x)["value"].agg(["mean", "min", "max"]).reset_index()
            low, high = table["min"], table["max"]
        else:
            table = aggregate(group, x, "value", confidence, interval=interval, warn=False)
            low, high = table["ci_low"], table["ci_high"]
            if is_accuracy(metric):
                low, high = low.clip(0, 1), high.clip(0, 1)
        line, = ax.plot(table[x], table["mean"], label=str(name))
        ax.fill_between(table[x], low, high, alpha=0.2, color=line.get_color())
        sizes.append(group["run"].nunique() if "run" in group else len(group))
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend(title=_curves_title(data, hues, interval, confidence, sizes), fontsize=8,
              title_fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def _curves_title(data: pd.DataFrame, hues: list[str], interval: str, confidence: float,
                  sizes: list[int]) -> str:
    """plot_curves' legend title: the hue, the band, the runs per line, and any field
    that differs inside a line."""
    n = (min(sizes), max(sizes)) if sizes else None
    if interval == "range":
        said = "mean, band: min to max over runs" + (
            "" if n is None else f" (n={n[0]})" if n[0] == n[1] else f" (n={n[0]}–{n[1]})")
    else:
        said = stats.interval_label(interval, confidence, n)
    title = f"{', '.join(hues).replace('_', ' ')}: {said}"
    if "run" in data and len(data):
        runs = data.drop_duplicates("run")
        runs.attrs = {}  # the curves' columns are config fields, whatever attrs says
        fields = [c for c in runs.columns if c not in ("run", "step", "epoch", "examples",
                                                       "metric", "value")]
        pooled = [c for c in pooled_columns(runs, hues) if c in fields] if fields else []
        if pooled:
            title += f"\npooled in a line: {', '.join(pooled)}"
    return title


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
    ax.legend(title=f"{hue}: mean, band: min to max over runs")
    ax.grid(alpha=0.3)
    return ax
