"""C1 (steps) and C14 (seconds): BN reaches an accuracy sooner
(`experiments/learning_rate.py`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bnlab import analysis
from bnlab.claims.base import (
    MARGINS,
    Verdict,
    _as_ratio,
    _blocked,
    _comparable,
    _finished,
    _not_measured,
    _panels,
    _title,
    _values,
    bounded,
    decide,
)
from bnlab.stats import Estimate

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _test_accuracy_curve(run_path: str) -> list[tuple[int, float]]:
    """(step, test accuracy) of every evaluation a run logged, in order."""
    curve = analysis.load_curves(run_path, ("test_accuracy",), columns=())
    return [(int(step), float(accuracy))
            for step, accuracy in zip(curve["step"], curve["value"], strict=True)]


def steps_to_accuracy(curve: list[tuple[int, float]], target: float) -> float | None:
    """The step at which the test accuracy first reaches `target`, linearly
    interpolated between the two evaluations around it; None when it never does."""
    previous = None
    for step, accuracy in curve:
        if accuracy >= target:
            if previous is None or previous[1] >= accuracy:
                return float(step)
            fraction = (target - previous[1]) / (accuracy - previous[1])
            return previous[0] + fraction * (step - previous[0])
        previous = (step, accuracy)
    return None


def _steps_to(runs: pd.DataFrame, target: float,
              seconds: bool = False) -> tuple[dict[int, float], dict[int, float]]:
    """Each seed's log steps to `target` test accuracy, and their upper bounds: a run
    that never reached it needs more than it ran (its last step a lower bound, no
    upper one). `seconds`: the steps at the run's measured training speed (steps
    per second after the first call, without evaluations), in log seconds."""
    steps, upper = {}, {}
    speeds = (pd.to_numeric(runs["steps_per_s"], errors="coerce") if "steps_per_s" in runs
              else pd.Series(math.nan, index=runs.index))
    for seed, path, speed in zip(runs["seed"], runs["path"], speeds, strict=True):
        curve = _test_accuracy_curve(path)
        reached = steps_to_accuracy(curve, target)
        value = math.log(reached if reached else curve[-1][0])
        if seconds:
            value -= math.log(speed) if speed and speed > 0 else math.nan
        steps[int(seed)] = value
        upper[int(seed)] = value if reached else math.inf
    return steps, upper


def _faster(bn: pd.DataFrame, none: pd.DataFrame, target: float,
            seconds: bool = False) -> tuple[Estimate, str]:
    """log(no norm's ÷ BN's) steps (or seconds) to `target`, paired by seed and
    `bounded` where a run never reached it; and why a side is open, if one is."""
    (bn_at, bn_up), (none_at, none_up) = (_steps_to(r, target, seconds) for r in (bn, none))
    log_ratio = bounded(low=[(1, none_at), (-1, bn_up)], high=[(1, none_up), (-1, bn_at)],
                        value=[(1, none_at), (-1, bn_at)])
    return log_ratio, _blocked(log_ratio, "a BN run never reached the target: its steps are "
                               "only a lower bound, and the ratio has no lower bound",
                               "a run without a norm never reached the target: the ratio "
                               "has no upper bound") or ""


def _speed_cells(runs: pd.DataFrame) -> dict[tuple[str, float], pd.DataFrame] | None:
    """The learning-rate experiment's runs by (norm, rate), for the cells where every
    run finished without diverging, with 2 seeds or more and test accuracy logged
    along the way; None without a bn and a none cell."""
    groups = [g for g in _comparable(_finished(runs), ("learning_rate",))
              if {"bn", "none"} <= set(g["norm"])]
    if not groups:
        return None
    cells = {}
    for (norm, rate), cell in groups[0].groupby(["norm", "learning_rate"]):
        if (norm in ("bn", "none") and (cell["status"] == "done").all() and len(cell) >= 2
                and all(len(_test_accuracy_curve(p)) >= 2 for p in cell["path"])):
            cells[(norm, float(rate))] = cell
    return cells if {n for n, _ in cells} == {"bn", "none"} else None


def _final(cell: pd.DataFrame) -> float:
    return float(np.nanmean(_values(cell, "test_accuracy")))


def _tuned_speed(runs: pd.DataFrame, claim: str, target_fraction: float,
                 seconds: bool) -> Verdict:
    """C1 (steps) and C14 (seconds): each norm at its tuned rate (the rate of its
    best mean final test accuracy), to `target_fraction` of the lower of those two
    accuracies; the same at every rate both trained at, in the details."""
    cells = _speed_cells(runs)
    if cells is None:
        return _not_measured(claim, "needs finished bn and none runs (2 seeds or more) with "
                             "test accuracy logged along the way (eval_every), all else equal")
    def tuned_on(seeds) -> dict[str, float]:
        """Each norm's rate of the best mean final test accuracy over `seeds`."""
        def final_on(cell):
            return _final(cell[cell["seed"].isin(seeds)])
        return {norm: max((r for n, r in cells if n == norm),
                          key=lambda r: final_on(cells[norm, r]))
                for norm in ("bn", "none")}

    every = sorted(set(cells["bn", next(r for n, r in cells if n == "bn")]["seed"]))
    tuned = tuned_on(every)  # shown, and drawn
    bn, none = cells["bn", tuned["bn"]], cells["none", tuned["none"]]
    final = {"bn": _final(bn), "none": _final(none)}
    target = target_fraction * min(final.values())
    # Cross-fitted: each seed's rates (and target) are chosen on the other seeds, so
    # the seed whose steps are counted did not help pick its arm's best rate (chosen
    # on the same seeds, a ratio of 1 came out 1.11× on average in a simulation).
    low, high, value, per_seed = [[], []], [[], []], [[], []], {}
    for seed in every:
        others = [s for s in every if s != seed]
        rates = tuned_on(others)
        mine = {n: cells[n, rates[n]] for n in ("bn", "none")}
        goal = target_fraction * min(_final(c[c["seed"].isin(others)]) for c in mine.values())
        steps = {n: _steps_to(c[c["seed"] == seed], goal, seconds) for n, c in mine.items()}
        if not all(steps[n][0] for n in steps):
            continue  # the seed did not run at a rate the others chose
        per_seed[str(seed)] = {"learning_rate": rates, "target_accuracy": goal}
        for i, norm in enumerate(("none", "bn")):
            (at, up) = steps[norm]
            value[i].append(at)
            low[i].append(at if norm == "none" else up)
            high[i].append(up if norm == "none" else at)

    def merged(dicts):
        return {k: v for d in dicts for k, v in d.items()}

    log_ratio = bounded(low=[(1, merged(low[0])), (-1, merged(low[1]))],
                        high=[(1, merged(high[0])), (-1, merged(high[1]))],
                        value=[(1, merged(value[0])), (-1, merged(value[1]))])
    open_side = _blocked(log_ratio, "a BN run never reached the target: its steps are only "
                         "a lower bound, and the ratio has no lower bound",
                         "a run without a norm never reached the target: the ratio has "
                         "no upper bound") or ""
    unit = "seconds" if seconds else "steps"
    each_rate = []
    for rate in sorted({r for n, r in cells if ("bn", r) in cells and ("none", r) in cells}):
        at_rate = target_fraction * min(_final(cells[n, rate]) for n in ("bn", "none"))
        estimate, why = _faster(cells["bn", rate], cells["none", rate], at_rate, seconds)
        each_rate.append({"verdict": decide(estimate, MARGINS[claim].judged),
                          "learning_rate": rate, "target_accuracy": at_rate,
                          "estimate": _as_ratio(estimate).jsonable(),
                          **({"reason": why} if why else {})})
    details = {"tuned_learning_rate": tuned, "target_accuracy": target,
               "tuned_without_the_seed": per_seed,
               "final_test_accuracy": final,
               "mean_to_target": {n: float(np.mean(np.exp(list(_steps_to(c, target, seconds)
                                                               [0].values()))))
                                  for n, c in (("bn", bn), ("none", none))},
               "unit": unit,
               "runs_that_never_reached_it": {
                   n: sum(math.isinf(v) for v in _steps_to(c, target)[1].values())
                   for n, c in (("bn", bn), ("none", none))},
               "at_each_learning_rate": each_rate}
    effect = (f"{unit} to {target:.1%} test accuracy, no norm's ÷ BN's, each at its tuned "
              f"rate (none {tuned['none']:g}, BN {tuned['bn']:g}, each seed's chosen on the "
              f"others; batch {bn['batch_size'].iloc[0]})")
    verdict = decide(log_ratio, MARGINS[claim].judged)
    return Verdict(claim, verdict, effect, _as_ratio(log_ratio), details,
                   pd.concat([bn, none]), reason=open_side)


def speed_rule(runs: pd.DataFrame, target_fraction: float = 0.95) -> Verdict:
    """C1: BN reaches a given test accuracy in fewer steps than no norm. Each norm at
    its tuned rate (its best mean final test accuracy on the grid: the comparison
    the BN paper makes), to `target_fraction` of the lower of the two norms' final
    accuracy, so both can reach it; the same at every rate both trained at (the
    article's "same learning rate") in `details["at_each_learning_rate"]`. Effect:
    steps to the target, no norm's ÷ BN's, the geometric mean over seeds of each
    seed's ratio (paired, on log steps). A run that never reaches it needs more
    steps than it ran (`bounded`): a BN run that never does leaves SUPPORTED
    undecided, a run without a norm NOT SUPPORTED."""
    return _tuned_speed(runs, "C1", target_fraction, seconds=False)


def wall_clock_rule(runs: pd.DataFrame, target_fraction: float = 0.95) -> Verdict:
    """C14: BN reaches a given test accuracy in less time than no norm ("higher
    accuracy in the same time"). As C1, in seconds: each run's steps to the target
    at its measured training speed (`steps_per_s`: after the first call, which
    compiles, and without evaluations), so BN's extra work per step counts."""
    return _tuned_speed(runs, "C14", target_fraction, seconds=True)


def _speed_figure(verdict: Verdict, fig: Figure) -> None:
    """Test accuracy over steps (C14: seconds) at the tuned rates, the target and each
    norm's mean to it; and the ratio at every learning rate against the margin."""
    left, right = _panels(fig, 2)
    seconds = verdict.details["unit"] == "seconds"
    curves = pd.concat([analysis.load_curves(p, ("test_accuracy",))
                        for p in verdict.runs["path"]])
    if seconds:  # each run's steps at its own measured speed
        speed = dict(zip(verdict.runs["run"], pd.to_numeric(verdict.runs["steps_per_s"],
                                                            errors="coerce"), strict=True))
        curves = curves.assign(step=curves["step"] / curves["run"].map(speed))
    analysis.plot_curves(curves, "test_accuracy", ax=left)
    left.set_xlabel("seconds of training" if seconds else "step")
    left.axhline(verdict.details["target_accuracy"], color="k", ls="--", lw=1, label="target")
    for norm, value in verdict.details["mean_to_target"].items():
        left.axvline(value, ls=":", lw=1, color="C0" if norm == "bn" else "C1")
    left.legend()
    left.set_title("each at its tuned rate (band: seeds' min to max)", fontsize=9)
    each = verdict.details["at_each_learning_rate"]
    for item in each:
        e = item["estimate"]
        low = e["value"] - e["low"] if e["low"] is not None and math.isfinite(e["low"]) else 0
        high = (e["high"] - e["value"] if e["high"] is not None and math.isfinite(e["high"])
                else 0)
        right.errorbar(item["learning_rate"], e["value"], yerr=[[low], [high]], fmt="o",
                       capsize=3, color="C2")
    right.axhline(MARGINS[verdict.claim].value, color="k", ls="--", lw=1, label="margin")
    right.axhline(1, color="gray", lw=0.5)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("learning rate (both norms)")
    right.set_ylabel(f"{verdict.details['unit']} to target, none ÷ BN (95% interval)")
    right.legend()
    right.set_title("at each learning rate of the grid", fontsize=9)
    fig.suptitle(_title(verdict))
