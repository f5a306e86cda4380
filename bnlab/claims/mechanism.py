"""C10: BN works by reducing internal covariate shift (`experiments/mechanism.py`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bnlab import analysis
from bnlab.claims.base import (
    INCONCLUSIVE,
    MARGINS,
    NOT_SUPPORTED,
    SUPPORTED,
    Verdict,
    _as_ratio,
    _by_seed,
    _comparable,
    _finished,
    _log_ratio,
    _not_measured,
    _panels,
    _title,
    decide,
)
from bnlab.stats import paired

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _mean_diagnostics(curves: pd.DataFrame, layers: set[str] | None = None) -> dict[str, float]:
    """A run's diagnostics (its `analysis.load_curves`) averaged over its logs:
    `ics_l2`, `ics` and `ics_cos` (also over the `layers` given, all when None), and
    each `landscape/` metric by its name."""
    curves = curves[curves["value"].notna()]  # NaN: logged without a value
    out = {}
    for prefix in ("ics_l2", "ics", "ics_cos"):
        mine = curves[curves["metric"].str.startswith(prefix + "/")]
        if layers is not None:
            mine = mine[mine["metric"].str.slice(len(prefix) + 1).isin(layers)]
        # A run logs each step once: a step's values are one log's. NumPy's mean (not
        # pandas') on each: the same sums, in the same order, as the values logged.
        per_log = [float(np.mean(values.to_numpy()))
                   for _, values in mine.groupby("step", sort=False)["value"]]
        if per_log:
            out[prefix] = float(np.mean(per_log))
    landscape = curves[curves["metric"].str.startswith("landscape/")]
    for metric, values in landscape.groupby("metric", sort=False)["value"]:
        out[metric.split("/", 1)[1]] = float(np.mean(values.to_numpy()))
    return out


# C10's second test: noisy BN (`bn_noise`) brings the shift back; if BN then trains
# as well as before, its gain does not come from removing the shift. One point of
# test accuracy: Santurkar et al. find noisy BN within a point or two of BN (their
# Figure 2), and a point is C3's and C8's margin on the same data.
NOISY_BN_MARGIN = 0.01


def mechanism_rule(runs: pd.DataFrame) -> Verdict:
    """C10: BN works by reducing internal covariate shift. Effect: the ICS ‖G − G'‖
    of Santurkar et al. 2018 (Definition 2.1: a layer's gradient before and after
    the layers below it take the optimizer's step), averaged over the logs and the
    layers all arms have, no norm's ÷ BN's, judged against `MARGINS["C10"]`: BN must
    reduce it. Then their noisy-BN experiment: BN with noise after it redrawn every
    step (`bn_noise`), which must bring the shift back (noisy ÷ BN ICS, the same
    margin), against BN (accuracy, `NOISY_BN_MARGIN`) and against the same noise
    drawn once (`bn_noise_static`, the control: as much noise, no shift), so that
    what the shift costs is told from what noise costs:
      NOT SUPPORTED: BN does not reduce the shift by the margin; or the noise brings
        it back and costs less than the margin, against BN or against the control.
      SUPPORTED: BN reduces the shift, the noise brings it back, and the shift costs
        accuracy beyond the same noise held still.
      INCONCLUSIVE otherwise, and without noisy-BN arms (a reduction alone cannot
        show that BN works *by* it; noise that costs accuracy, without the control,
        cannot say whether the shift or the noise did).
    Their cosine, the shift relative to the gradient's size and the loss landscape's
    smoothness (their alternative explanation: β-smoothness, gradient change, loss
    range, no norm's ÷ BN's) are in `details`."""
    def has_ics(path):
        return "ics_l2" in _mean_diagnostics(analysis.load_curves(path, columns=()))

    candidates = [g for g in _comparable(_finished(runs), ("bn_noise", "bn_noise_static"))
                  if {"bn", "none"} <= set(g["norm"]) and has_ics(g["path"].iloc[0])]
    if not candidates:
        return _not_measured("C10", "needs bn and none runs with log_landscape=True "
                             "(and ics_l2 logged: bnlab 2026-12-05 on), all else equal")
    at = candidates[0]
    at = at[at["norm"].isin(("bn", "none"))]
    arm_of = _mechanism_arms(at)
    arms = {arm: at[arm_of == arm] for arm in ("bn", "none", "noisy_bn", "static_noise_bn")
            if (arm_of == arm).any()}
    at = pd.concat(arms.values())

    # With the logs that have no value (NaN): a run has a layer if it logged its ICS.
    curves = {p: analysis.load_curves(p, columns=(), missing=True) for p in at["path"]}

    def layers(path):
        names = curves[path]["metric"]
        return {n.split("/", 1)[1] for n in names[names.str.startswith("ics_l2/")]}

    common = set.intersection(*(layers(p) for p in at["path"]))
    means = {arm: {seed: _mean_diagnostics(curves[p], common)
                   for seed, p in runs_of[["seed", "path"]].itertuples(index=False)}
             for arm, runs_of in arms.items()}

    def values(metric, *names):
        return {n: {seed: m[metric] for seed, m in means[n].items() if metric in m}
                for n in names or ("bn", "none")}

    def mean(by_seed):
        return float(np.mean(list(by_seed.values()))) if by_seed else math.nan

    ics = values("ics_l2", *arms)
    log_ratio = _log_ratio(ics)
    reduces = decide(log_ratio, MARGINS["C10"].judged)
    details = {"layers": sorted(common),
               "mean_ics_l2": {n: mean(v) for n, v in ics.items()},
               "mean_ics_cosine": {n: mean(v) for n, v in values("ics_cos", *arms).items()},
               "mean_relative_ics": {n: mean(v) for n, v in values("ics", *arms).items()},
               "relative_ics_none_over_bn": _as_ratio(_log_ratio(values("ics"))).jsonable(),
               "smoothness_none_over_bn": {
                   metric: _as_ratio(_log_ratio(values(metric))).jsonable()
                   for metric in ("beta", "grad_change", "loss_range")},
               "bn_reduces_ics": reduces,
               "test_accuracy_bn_minus_none": paired(
                   [(1, _by_seed(arms["bn"], "test_accuracy")),
                    (-1, _by_seed(arms["none"], "test_accuracy"))]).jsonable()}
    if reduces == NOT_SUPPORTED:
        verdict, reason = NOT_SUPPORTED, "BN does not reduce the shift by the margin"
    elif "noisy_bn" not in arms:
        verdict = INCONCLUSIVE
        reason = "no noisy-BN arm: a reduction alone cannot show that BN works by it"
    else:
        verdict, reason, details["noisy_bn"] = _noisy_bn_test(arms, ics, reduces)
    effect = "internal covariate shift ‖G − G′‖ (Santurkar et al.), no norm's ÷ BN's"
    return Verdict("C10", verdict, effect, _as_ratio(log_ratio), details, at, reason=reason)


def _mechanism_arms(runs: pd.DataFrame) -> pd.Series:
    """Each run's arm of C10: bn, none, noisy_bn (noise redrawn every step) or
    static_noise_bn (the same draw at every step)."""
    def field(name, default):
        values = runs[name] if name in runs else pd.Series(default, index=runs.index)
        return values.where(values.notna(), default)

    noise = pd.to_numeric(field("bn_noise", 0.0), errors="coerce").fillna(0.0)
    static = field("bn_noise_static", False).astype(bool)
    arm = np.where(runs["norm"] != "bn", runs["norm"],
                   np.where(noise <= 0, "bn", np.where(static, "static_noise_bn", "noisy_bn")))
    return pd.Series(arm, index=runs.index)


def _noisy_bn_test(arms: dict[str, pd.DataFrame], ics: dict[str, dict[Any, float]],
                   reduces: str) -> tuple[str, str, dict]:
    """C10's verdict from its noisy-BN arms (`mechanism_rule`), why, and the details."""
    def accuracy(arm):
        return _by_seed(arms[arm], "test_accuracy")

    restored = _log_ratio({"none": ics["noisy_bn"], "bn": ics["bn"]})
    noise_restores = decide(restored, MARGINS["C10"].judged)
    cost = paired([(1, accuracy("bn")), (-1, accuracy("noisy_bn"))])
    noise_costs = decide(cost, NOISY_BN_MARGIN)
    details = {"ics_noisy_over_bn": _as_ratio(restored).jsonable(),
               "noise_restores_ics": noise_restores,
               "test_accuracy_bn_minus_noisy": cost.jsonable(),
               "noise_costs_accuracy": noise_costs, "accuracy_margin": NOISY_BN_MARGIN}
    shift_costs = None
    if "static_noise_bn" in arms:
        shift = paired([(1, accuracy("static_noise_bn")), (-1, accuracy("noisy_bn"))])
        shift_costs = decide(shift, NOISY_BN_MARGIN)
        details.update({
            "ics_static_over_bn": _as_ratio(
                _log_ratio({"none": ics["static_noise_bn"], "bn": ics["bn"]})).jsonable(),
            "test_accuracy_static_minus_noisy": shift.jsonable(),
            "shift_costs_accuracy": shift_costs})
    if noise_restores == SUPPORTED and NOT_SUPPORTED in (noise_costs, shift_costs):
        return NOT_SUPPORTED, ("noisy BN has the shift back and trains as well (against "
                               "BN, or against the same noise held still): BN does not "
                               "work by removing the shift"), details
    if (reduces == SUPPORTED and noise_restores == SUPPORTED
            and noise_costs == SUPPORTED and shift_costs == SUPPORTED):
        return SUPPORTED, ("BN reduces the shift, and bringing it back costs accuracy "
                           "beyond the same noise held still"), details
    return INCONCLUSIVE, (f"BN reduces the shift: {reduces}; the noise brings it back: "
                          f"{noise_restores}; it costs accuracy against BN: {noise_costs}; "
                          f"against the same noise held still: "
                          f"{shift_costs or 'not measured'}"), details


def _mechanism_figure(verdict: Verdict, fig: Figure) -> None:
    """ICS over steps (the mean over the compared layers), and the loss landscape's
    effective β-smoothness."""
    left, right = _panels(fig, 2)
    curves = pd.concat([analysis.load_curves(p) for p in verdict.runs["path"]])
    # An arm per line: BN with noise (redrawn, or held still) apart from BN.
    curves = curves.assign(arm=_mechanism_arms(curves).str.replace("_", " "))
    layers = {f"ics_l2/{name}" for name in verdict.details["layers"]}
    ics = curves[curves["metric"].isin(layers)]
    ics = ics.groupby(["run", "arm", "step"], as_index=False)["value"].mean()
    analysis.plot_curves(ics.assign(metric="ICS"), "ICS", hue="arm", ax=left, log_y=True)
    left.set_title("internal covariate shift ‖G − G′‖ (the optimizer's step)")
    analysis.plot_curves(curves, "landscape/beta", hue="arm", ax=right, log_y=True)
    right.set_title("effective β-smoothness (lower: smoother)")
    fig.suptitle(_title(verdict))
