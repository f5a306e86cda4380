"""C2: BN tolerates much larger learning rates (`experiments/learning_rate.py`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bnlab import analysis
from bnlab.claims.base import (
    MARGINS,
    TRAINS_ABOVE_CHANCE,
    Verdict,
    _as_ratio,
    _blocked,
    _comparable,
    _finished,
    _keyed,
    _not_measured,
    _panels,
    _title,
    bounded,
    decide,
)
from bnlab.stats import Estimate

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _rate_limits(bn: pd.DataFrame, none: pd.DataFrame,
                 classes: int) -> tuple[Estimate, dict[str, Any], str]:
    """log(BN's ÷ no norm's highest rate that trains), per seed within the bounds
    each arm's own grid gives (`bounded`); the details; and why a side is open, if
    one is."""
    found: dict[str, dict[int, tuple[float, float, float, float]]] = {}
    for norm, mine in (("bn", bn), ("none", none)):
        # The arm's own rates: one arm may go further up than the other.
        grid = sorted(float(r) for r in mine["learning_rate"].unique())
        below_grid = math.log(grid[0]) - (math.log(grid[1]) - math.log(grid[0]))
        accuracy = pd.to_numeric(mine["test_accuracy"], errors="coerce")
        collapsed = (mine["collapsed"].fillna(False).astype(bool) if "collapsed" in mine
                     else pd.Series(False, index=mine.index))
        trains = ((mine["status"] == "done") & ~collapsed
                  & (accuracy >= 1 / classes + TRAINS_ABOVE_CHANCE))
        found[norm] = {}
        # {seed: (highest rate that trains or NaN, its log's bounds, the log shown)}
        for seed, group in mine.groupby("seed"):
            rate = float(group.loc[trains[group.index], "learning_rate"].max())
            if math.isnan(rate):  # trains at no rate: its limit is below the grid
                found[norm][int(seed)] = (rate, -math.inf, math.log(grid[0]), below_grid)
                continue
            above = [r for r in grid if r > rate]
            found[norm][int(seed)] = (rate, math.log(rate),
                                      math.log(above[0]) if above else math.inf,
                                      math.log(rate))

    def column(norm, i):
        return {seed: v[i] for seed, v in found[norm].items()}

    def count(norm, i, value):
        return sum(v[i] == value for v in found[norm].values())

    log_ratio = bounded(low=[(1, column("bn", 1)), (-1, column("none", 2))],
                        high=[(1, column("bn", 2)), (-1, column("none", 1))],
                        value=[(1, column("bn", 3)), (-1, column("none", 3))])
    details = {"highest_training_rate": {n: _keyed(column(n, 0)) for n in found},
               "seeds_at_the_top_rate": {n: count(n, 2, math.inf) for n in found},
               "seeds_at_no_rate": {n: count(n, 1, -math.inf) for n in found}}
    open_side = _blocked(
        log_ratio, "for a seed BN trains at no rate of the grid, or the run without a norm "
        "trains at its top rate: the ratio has no lower bound",
        "for a seed BN trains at the grid's top rate, or the run without a norm at no "
        "rate of it: the grid did not reach a limit, and the ratio has no upper bound")
    return log_ratio, details, open_side or ""


def learning_rate_rule(runs: pd.DataFrame, classes: int = 10) -> Verdict:
    """C2: BN trains at larger learning rates than no norm. For each seed, the
    highest rate of the grid at which each norm's run trains (`TRAINS_ABOVE_CHANCE`).
    Effect: BN's ÷ no norm's, the geometric mean over seeds of each seed's ratio,
    judged against `MARGINS["C2"]`. A grid only brackets a norm's limit: it lies
    between its highest rate that trains and the next rate of the grid (above the
    top rate when it trains there, below the lowest when it trains at none), so each
    seed's ratio is known within bounds and the interval is `bounded`'s: the grid's
    step widens it, and a limit the grid did not reach leaves that side undecided.

    Where the runs have SimpleCNN with BN on fc1 too (`norm_fc1`: every hidden
    layer normalized, as in the papers that find the effect), that BN decides, and
    the article's net (its convolutions normalized, fc1 not) is judged beside it in
    `details["other_settings"]`; otherwise the article's net decides."""
    # Rates compared where only the rate differs (a batch-size sweep that scales the
    # rate with the batch has one rate per setting).
    candidates = [g for g in _comparable(_finished(runs), ("learning_rate", "norm_fc1"))
                  if {"bn", "none"} <= set(g["norm"])
                  and min(g[g["norm"] == n]["learning_rate"].nunique()
                          for n in ("bn", "none")) >= 2]
    if not candidates:
        return _not_measured("C2", "needs bn and none runs at two learning rates or more, "
                             "all else equal")
    runs = candidates[0]
    size = runs["batch_size"].iloc[0]
    grid = sorted(float(r) for r in runs["learning_rate"].unique())
    on_fc1 = (runs["norm_fc1"].fillna(False).astype(bool) if "norm_fc1" in runs
              else pd.Series(False, index=runs.index))
    # A run without a norm computes the same whatever norm_fc1 says.
    none = runs[(runs["norm"] == "none") & ~on_fc1]
    if none.empty:
        none = runs[runs["norm"] == "none"]
    arms = {"BN on every hidden layer": runs[(runs["norm"] == "bn") & on_fc1],
            "the article's net (BN on its convolutions)": runs[(runs["norm"] == "bn") & ~on_fc1]}
    arms = {name: bn for name, bn in arms.items() if bn["learning_rate"].nunique() >= 2}
    if not arms or none["learning_rate"].nunique() < 2:
        return _not_measured("C2", "needs bn and none runs at two learning rates or more, "
                             "all else equal")
    judged = []
    for name, bn in arms.items():
        log_ratio, details, open_side = _rate_limits(bn, none, classes)
        judged.append((name, log_ratio, details, open_side,
                       decide(log_ratio, MARGINS["C2"].judged)))
    (setting, log_ratio, details, open_side, verdict), *others = judged
    details.update({"setting": setting,
                    "trains": f"not diverged or collapsed, test accuracy >= "
                              f"{1 / classes + TRAINS_ABOVE_CHANCE:.0%}",
                    "rates": grid, "batch_size": int(size),
                    "other_settings": [
                        {"setting": name, "verdict": v, "estimate": _as_ratio(e).jsonable(),
                         **({"reason": why} if why else {}), **d}
                        for name, e, d, why, v in others]})
    effect = f"highest learning rate that trains: BN's ÷ no norm's ({setting}, batch {size})"
    return Verdict("C2", verdict, effect, _as_ratio(log_ratio), details,
                   pd.concat([none, *arms.values()]), reason=open_side)


def _learning_rate_figure(verdict: Verdict, fig: Figure) -> None:
    """Test accuracy against the learning rate per arm (mean over seeds, 95% band),
    divergences marked, the 'trains' line drawn."""
    ax, = _panels(fig, 1)
    runs = verdict.runs
    on_fc1 = (runs["norm_fc1"].fillna(False).astype(bool) if "norm_fc1" in runs
              else pd.Series(False, index=runs.index))
    arm = np.where(runs["norm"] == "none", "none",
                   np.where(on_fc1, "bn (every hidden layer)", "bn (convolutions)"))
    analysis.plot_lr_sensitivity(runs.assign(arm=arm), hue="arm", ax=ax)
    ax.axhline(0.1 + TRAINS_ABOVE_CHANCE, color="k", ls="--", lw=1)
    ax.set_title(f"{_title(verdict)} (band: 95% over seeds; dashed: trains above it)",
                 fontsize=9)
