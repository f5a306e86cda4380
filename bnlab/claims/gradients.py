"""C4: BN relieves vanishing and exploding gradients; C13: BN lets deeper networks train
(`experiments/gradient_flow.py`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bnlab import analysis
from bnlab.claims.base import (
    CHANCE,
    INCONCLUSIVE,
    MARGINS,
    NOT_SUPPORTED,
    SUPPORTED,
    Verdict,
    _by_seed,
    _comparable,
    _cross_fitted,
    _finished,
    _not_measured,
    _panels,
    _title,
    _values,
    decide,
)
from bnlab.stats import Estimate, paired

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _gradient_spread(run_path: str) -> float:
    """The typical spread of a run's weight layers' gradient norms: log10(largest /
    smallest) across layers at each log, the median over its logs. Vanishing (the
    input side far below the output side) and exploding (one layer far above the
    rest) both widen it. The median, not the widest: one log where a layer's
    gradient was near zero gave 22 decades in a run whose other logs spread 1-3,
    and one such log should not decide a run. NaN without `grad_norm/` metrics."""
    curves = analysis.load_curves(run_path, columns=())
    metric = curves["metric"]
    layer = metric.str.slice(len("grad_norm/")).str.lower()
    norms = curves[metric.str.startswith("grad_norm/") & ~layer.str.contains("norm", regex=False)
                   & (curves["value"] > 0)]
    # A run logs each step once: a step's values are one log's.
    spreads = [math.log10(values.max() / values.min())
               for _, values in norms.groupby("step", sort=False)["value"] if len(values) >= 2]
    return float(np.median(spreads)) if spreads else math.nan


def _at_initialization(runs: pd.DataFrame) -> pd.Series:
    """Which runs probe the gradients at initialization: a run of one step logs that
    step's gradients, taken at the initial weights."""
    if "num_steps" not in runs:
        return pd.Series(False, index=runs.index)
    return pd.to_numeric(runs["num_steps"], errors="coerce") == 1


def _spread_estimate(group: pd.DataFrame) -> tuple[Estimate, dict[str, Any]]:
    """No norm's gradient-norm spread minus BN's, paired per seed, and the details."""
    by_seed = {norm: {seed: _gradient_spread(path) for seed, path in
                      group.loc[group["norm"] == norm, ["seed", "path"]].itertuples(index=False)}
               for norm in ("bn", "none")}
    spreads = {n: np.array([v for v in values.values() if np.isfinite(v)])
               for n, values in by_seed.items()}
    estimate = paired([(1, by_seed["none"]), (-1, by_seed["bn"])])
    details = {"mean_spread_decades": {n: float(v.mean()) if len(v) else math.nan
                                       for n, v in spreads.items()},
               "runs": {n: len(v) for n, v in spreads.items()}}
    return estimate, details


def _spread_groups(runs: pd.DataFrame) -> list[pd.DataFrame]:
    return [g for g in _comparable(runs, ()) if {"bn", "none"} <= set(g["norm"])
            and np.isfinite([_gradient_spread(p) for p in g["path"][:1]]).all()]


def gradient_rule(runs: pd.DataFrame) -> Verdict:
    """C4: BN keeps gradient norms even across depth. Effect: the typical spread of
    the weight layers' gradient norms (decades, `_gradient_spread`), no norm's minus
    BN's, paired per seed, for runs that logged `log_grad_norms`: over training (the
    largest group of bn and none runs all else equal), and at initialization (runs
    of one step) at the deepest depth probed, where mean-field theory predicts BN's
    gradients to explode towards the input (Yang et al. 2019). Two claims in one, as
    the claim says "relieves" without a when: SUPPORTED needs both, NOT SUPPORTED
    either; without initialization probes, training decides alone. Every depth
    probed at initialization is in `details["other_settings"]`."""
    finished = _finished(runs)
    init = _at_initialization(finished)
    trained, probes = _spread_groups(finished[~init]), _spread_groups(finished[init])
    if not trained:
        return _not_measured("C4", "needs bn and none runs with log_grad_norms=True, "
                             "all else equal")
    group = trained[0]
    estimate, details = _spread_estimate(group)
    if min(details["runs"].values()) == 0:
        return _not_measured("C4", "needs bn and none runs with log_grad_norms=True")
    margin = MARGINS["C4"].judged
    during = decide(estimate, margin)
    details["test_accuracy"] = {n: float(np.nanmean(_values(group[group["norm"] == n],
                                                            "test_accuracy")))
                                for n in ("bn", "none")}
    details["during_training"] = during
    verdict, reason, used = during, "", [group]
    if probes:
        by_depth = {}
        for probe in probes:
            depth = int(probe["depth"].iloc[0]) if "depth" in probe else 0
            if depth not in by_depth or len(probe) > len(by_depth[depth]):
                by_depth[depth] = probe
        deepest = max(by_depth)
        others = []
        for depth in sorted(by_depth):
            at, more = _spread_estimate(by_depth[depth])
            others.append({"setting": f"at initialization, depth {depth}",
                           "verdict": decide(at, margin), "estimate": at.jsonable(), **more})
        at_init = others[sorted(by_depth).index(deepest)]["verdict"]
        details["at_initialization"] = {"depth": deepest, "verdict": at_init}
        details["other_settings"] = others
        used += list(by_depth.values())
        if NOT_SUPPORTED in (during, at_init):
            verdict = NOT_SUPPORTED
        elif during == at_init == SUPPORTED:
            verdict = SUPPORTED
        else:
            verdict = INCONCLUSIVE
        if during != at_init:
            reason = (f"during training it says {during}, at initialization (depth {deepest}) "
                      f"{at_init}: SUPPORTED needs both, NOT SUPPORTED either")
    depth = f", depth {int(group['depth'].iloc[0])}" if "depth" in group else ""
    effect = ("gradient-norm spread across layers (decades), no norm's minus BN's, over "
              f"training{depth}")
    return Verdict("C4", verdict, effect, estimate, details, pd.concat(used), reason=reason)


def _gradient_figure(verdict: Verdict, fig: Figure) -> None:
    """Each weight layer's gradient norm, input side first: at the last log of
    training, and at initialization at the deepest depth probed."""
    runs = verdict.runs
    init = _at_initialization(runs)
    panels = [("over training: last log", runs[~init])]
    if init.any():
        depth = verdict.details["at_initialization"]["depth"]
        probes = runs[init]
        if "depth" in probes:
            probes = probes[probes["depth"] == depth]
        panels.append((f"at initialization, depth {depth}", probes))
    for ax, (title, group) in zip(_panels(fig, len(panels)), panels, strict=True):
        curves = pd.concat([analysis.load_curves(p) for p in group["path"]])
        analysis.plot_grad_norms(curves, ax=ax, layers="Conv|Dense")
        ax.set_title(title)
    fig.suptitle(_title(verdict))


def depth_rule(runs: pd.DataFrame) -> Verdict:
    """C13: BN lets a deep network train that does not train without it. A plain CNN
    (no skip connections) at the deepest depth the runs have, BN against no norm,
    each at its rate: BN at its one rate (or chosen per seed on the other seeds when
    it has several), no norm at the rate of its best mean test accuracy over the
    other seeds (`_cross_fitted`; it has the smaller rates of the BN paper's
    baselines too). Effect: test accuracy, BN minus no norm, paired per seed; a
    diverged run scores chance. Every depth and rate is in the details."""
    finished = _finished(runs)
    if "depth" not in finished or "model" not in finished:
        return _not_measured("C13", "needs plain_cnn runs (depth) with bn and none")
    plain = finished[(finished["model"] == "plain_cnn") & ~_at_initialization(finished)]
    groups = [g for g in _comparable(plain, ("learning_rate",)) if {"bn", "none"} <= set(g["norm"])]
    if not groups:
        return _not_measured("C13", "needs plain_cnn runs with bn and none, all else equal "
                             "but the learning rate")
    by_depth = {}
    for group in groups:
        depth = int(group["depth"].iloc[0])
        if depth not in by_depth or len(group) > len(by_depth[depth]):
            by_depth[depth] = group

    def judged(group):
        arms, chosen, accuracy = {}, {}, {}
        for norm in ("bn", "none"):
            mine = group[group["norm"] == norm]
            by_rate = {float(r): _by_seed(cell, "test_accuracy")
                       for r, cell in mine.groupby("learning_rate")}
            arms[norm], chosen[norm] = _cross_fitted(by_rate)
            accuracy[norm] = {f"{r:g}": float(np.mean(list(v.values())))
                              for r, v in sorted(by_rate.items())}
        estimate = paired([(1, arms["bn"]), (-1, arms["none"])])
        return estimate, {"learning_rate_chosen_without_the_seed": chosen,
                          "mean_test_accuracy_by_rate": accuracy,
                          "diverged": {n: int((group.loc[group["norm"] == n, "status"]
                                               == "diverged").sum()) for n in ("bn", "none")}}

    deepest = max(by_depth)
    estimate, details = judged(by_depth[deepest])
    details = {"depth": deepest, **details, "other_settings": []}
    for depth in sorted(by_depth):
        if depth != deepest:
            other, more = judged(by_depth[depth])
            details["other_settings"].append(
                {"setting": f"depth {depth}", "verdict": decide(other, MARGINS["C13"].judged),
                 "estimate": other.jsonable(), **more})
    if not details["other_settings"]:
        del details["other_settings"]
    effect = (f"test accuracy of a {deepest}-layer plain CNN, BN minus no norm, each at its "
              "rate (no norm's chosen per seed on the other seeds)")
    return Verdict("C13", decide(estimate, MARGINS["C13"].judged), effect, estimate, details,
                   by_depth[deepest])


def _depth_figure(verdict: Verdict, fig: Figure) -> None:
    """Test accuracy of each run against its learning rate, BN and no norm."""
    ax, = _panels(fig, 1)
    runs = verdict.runs
    for i, norm in enumerate(("bn", "none")):
        mine = runs[runs["norm"] == norm]
        accuracy = pd.to_numeric(mine["test_accuracy"]).where(mine["status"] != "diverged",
                                                              CHANCE)
        ax.scatter(mine["learning_rate"], accuracy, color=f"C{i}", s=14, alpha=0.7,
                   label=f"{norm}, each seed (diverged at chance)")
        means = accuracy.groupby(mine["learning_rate"]).mean()
        ax.plot(means.index, means.to_numpy(), "o-", color=f"C{i}", label=f"{norm}, mean")
    ax.axhline(CHANCE, color="gray", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    ax.set_title(f"{_title(verdict)} (depth {verdict.details.get('depth')})")
