"""C12: BN's batch noise makes a model more robust to small input changes
(`experiments/learning_rate.py`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bnlab.claims.base import (
    CHANCE,
    INCONCLUSIVE,
    MARGINS,
    TRAINS_ABOVE_CHANCE,
    Verdict,
    _by_seed,
    _comparable,
    _cross_fitted,
    _finished,
    _not_measured,
    _panels,
    _title,
    decide,
)
from bnlab.stats import paired

if TYPE_CHECKING:
    from matplotlib.figure import Figure


# C12's perturbations, by the metric each leaves (`probes.final_robustness_evaluations`):
# the Gaussian noise decides (the article's "small changes of the input"), the FGSM
# step, the worst small change, is judged beside it.
ROBUST_METRICS = {"noise": "robust_noise_accuracy", "fgsm": "robust_fgsm_accuracy"}


def _robust_cells(runs: pd.DataFrame) -> dict[tuple[str, float], pd.DataFrame] | None:
    """The learning-rate experiment's bn and none runs by (norm, rate), where they
    measured robustness (`robust_noise`); None without both norms."""
    finished = _finished(runs)
    if "robust_clean_accuracy" not in finished:
        return None
    groups = [g for g in _comparable(finished, ("learning_rate",))
              if {"bn", "none"} <= set(g["norm"])
              and pd.to_numeric(g.get("robust_noise"), errors="coerce").fillna(0).gt(0).all()]
    if not groups:
        return None
    cells = {(norm, float(rate)): cell
             for (norm, rate), cell in groups[0].groupby(["norm", "learning_rate"])
             if norm in ("bn", "none")}
    return cells if {n for n, _ in cells} == {"bn", "none"} else None


UNTRAINED = (f"an arm's mean clean accuracy is within {100 * TRAINS_ABOVE_CHANCE:g} points "
             "of chance: a model that has not learned has little to lose, so its "
             "robustness says nothing")


def _learned(accuracy: float) -> bool:
    """Whether an accuracy is above chance by `TRAINS_ABOVE_CHANCE` (a run's, or an
    arm's mean)."""
    return accuracy > CHANCE + TRAINS_ABOVE_CHANCE


def _trained(accuracy: dict[Any, float]) -> bool:
    """Whether an arm learned: its mean accuracy over seeds `_learned`."""
    return bool(accuracy) and _learned(_finite_mean(accuracy.values()))


def _finite_mean(values) -> float:
    """The mean of the finite values; NaN, quietly, when there are none (every seed
    of an arm left out)."""
    array = np.asarray(list(values), dtype=float)
    finite = array[np.isfinite(array)]
    return float(finite.mean()) if finite.size else math.nan


def _drops(cell: pd.DataFrame, metric: str) -> dict[Any, float]:
    """{seed: accuracy on the unperturbed examples minus under the perturbation}; NaN
    (the seed left out of the paired interval) for a run that diverged or did not
    learn (clean accuracy within `TRAINS_ABOVE_CHANCE` of chance): it has nothing to
    lose, and scoring its loss 0 would make the arm that failed look robust."""
    clean, perturbed = _by_seed(cell, "robust_clean_accuracy"), _by_seed(cell, metric)
    return {s: clean[s] - perturbed[s] if _learned(clean[s]) else math.nan
            for s in clean if s in perturbed}


def robustness_rule(runs: pd.DataFrame) -> Verdict:
    """C12: BN's batch noise makes a model more robust to small changes of its input.
    The learning-rate experiment's SimpleCNN runs, each norm at its tuned rate (the
    rate of the best mean test accuracy over the other seeds, `_cross_fitted`: both
    norms at their best clean accuracy, as near equal as the grid makes them). Effect:
    the accuracy lost to Gaussian noise (`robust_noise` on the 0-1 pixel scale) on
    the same test examples, no norm's loss minus BN's, paired per seed (the noise is
    the seed's, the same for both): positive when BN keeps more. One FGSM step
    (`robust_fgsm`) judged the same way beside it; both at every rate both norms ran
    in the details."""
    cells = _robust_cells(runs)
    if cells is None:
        return _not_measured("C12", "needs bn and none runs over learning rates with "
                             "robust_noise and robust_fgsm set, all else equal")
    margin = MARGINS["C12"]
    chosen = {}
    for norm in ("bn", "none"):
        by_rate = {r: _by_seed(c, "test_accuracy") for (n, r), c in cells.items() if n == norm}
        _, chosen[norm] = _cross_fitted(by_rate)

    def at_tuned(norm: str, per_cell: dict) -> dict[Any, float]:
        """{seed: its value ({(norm, rate): {seed: value}}) at its norm's rate chosen
        without it}."""
        return {int(seed): per_cell[norm, rate].get(int(seed), math.nan)
                for seed, rate in chosen[norm].items() if (norm, rate) in per_cell}

    clean_of = {key: _by_seed(cell, "robust_clean_accuracy") for key, cell in cells.items()}
    clean = {n: at_tuned(n, clean_of) for n in ("bn", "none")}
    estimates, settings = {}, []
    for kind, metric in ROBUST_METRICS.items():
        if metric not in runs:
            continue
        # Each cell's losses once: the tuned rates and every rate read them.
        losses = {key: _drops(cell, metric) for key, cell in cells.items()}
        drop = {n: at_tuned(n, losses) for n in ("bn", "none")}
        left_out = {n: sum(math.isnan(v) for v in drop[n].values()) for n in drop}
        estimate = paired([(1, drop["none"]), (-1, drop["bn"])])
        each = []
        for rate in sorted({r for n, r in cells if ("bn", r) in cells and ("none", r) in cells}):
            at = paired([(1, losses["none", rate]), (-1, losses["bn", rate])])
            trained = all(_trained(clean_of[n, rate]) for n in ("bn", "none"))
            each.append({"learning_rate": rate,
                         "verdict": decide(at, margin.judged) if trained else INCONCLUSIVE,
                         **({} if trained else {"reason": UNTRAINED}),
                         "estimate": at.jsonable(),
                         "mean_drop": {n: _finite_mean(losses[n, rate].values())
                                       for n in ("bn", "none")}})
        estimates[kind] = estimate
        settings.append({"setting": kind, "verdict": decide(estimate, margin.judged),
                         "estimate": estimate.jsonable(),
                         "mean_drop": {n: _finite_mean(v.values()) for n, v in drop.items()},
                         **({"seeds_that_did_not_learn": left_out}
                            if any(left_out.values()) else {}),
                         "at_each_learning_rate": each})
    if "noise" not in estimates:
        return _not_measured("C12", "needs runs with robust_noise set")
    trained = all(_trained(clean[n]) for n in ("bn", "none"))
    why = UNTRAINED
    if trained and any("seeds_that_did_not_learn" in s for s in settings):
        # A seed whose run failed at its tuned rate: judging the rest would judge the
        # arm on the seeds it survived.
        trained, why = False, ("a run at a tuned rate did not learn (diverged, or within "
                               f"{100 * TRAINS_ABOVE_CHANCE:g} points of chance)")
    if not trained:
        for setting in settings:
            setting.update(verdict=INCONCLUSIVE, reason=why)
    first = cells[next(iter(cells))].iloc[0]
    noise, fgsm = first.get("robust_noise"), first.get("robust_fgsm")
    names = {"noise": f"Gaussian noise of std {noise:g}",
             "fgsm": f"one FGSM step of {fgsm:g}" if fgsm else "no FGSM step"}
    details = {"perturbation": names["noise"], "pixel_scale": "0 to 1, images clipped to it",
               "test_examples": int(first.get("robust_test_examples", 0)),
               "learning_rate_chosen_without_the_seed": chosen,
               "mean_clean_accuracy": {n: _finite_mean(v.values())
                                       for n, v in clean.items()},
               "noise": next(x for x in settings if x["setting"] == "noise"),
               "other_settings": [{**x, "setting": names[x["setting"]]} for x in settings
                                  if x["setting"] != "noise"]}
    if not details["other_settings"]:
        del details["other_settings"]
    effect = (f"accuracy lost to {names['noise']} (0-1 pixel scale), no norm's loss minus "
              "BN's, each at its tuned rate (chosen per seed on the other seeds)")
    used = pd.concat([cells[n, r] for n in ("bn", "none") for r in set(chosen[n].values())
                      if (n, r) in cells])
    verdict = decide(estimates["noise"], margin.judged) if trained else INCONCLUSIVE
    return Verdict("C12", verdict, effect, estimates["noise"], details, used,
                   reason="" if trained else why)


def _robustness_figure(verdict: Verdict, fig: Figure) -> None:
    """Accuracy lost to each perturbation against the learning rate, per norm (mean
    over seeds); and the effect (no norm's loss − BN's) at each rate with the margin."""
    left, right = _panels(fig, 2)
    settings = [verdict.details["noise"], *verdict.details.get("other_settings", [])]
    names = [verdict.details["perturbation"],
             *(x["setting"] for x in verdict.details.get("other_settings", []))]
    for i, (setting, name) in enumerate(zip(settings, names, strict=True)):
        # Rates where an arm did not learn lose nothing to anything: left out.
        each = [x for x in setting["at_each_learning_rate"] if "reason" not in x]
        rates = [x["learning_rate"] for x in each]
        for j, norm in enumerate(("bn", "none")):
            left.plot(rates, [100 * x["mean_drop"][norm] for x in each], ["o-", "s--"][i],
                      color=f"C{j}", label=f"{norm}: {name}")
        values = [100 * x["estimate"]["value"] for x in each]
        low = [100 * (x["estimate"]["value"] - x["estimate"]["low"]) for x in each]
        high = [100 * (x["estimate"]["high"] - x["estimate"]["value"]) for x in each]
        right.errorbar(np.array(rates) * (1.04 if i else 1), values, yerr=[low, high],
                       fmt=["o", "s"][i], capsize=3, color=f"C{2 + i}", label=name)
    if not any(len(line.get_xdata()) for line in left.lines):  # e.g. at the smoke scale
        for ax in (left, right):
            ax.text(0.5, 0.5, "no learning rate where both norms learned",
                    ha="center", va="center", transform=ax.transAxes)
        fig.suptitle(_title(verdict))
        return
    left.set_xscale("log")
    left.set_xlabel("learning rate")
    left.set_ylabel("accuracy lost (points; mean over seeds)")
    left.legend(fontsize=7, loc="upper right")
    left.set_title("rates where both norms learned", fontsize=9)
    right.axhline(100 * MARGINS["C12"].value, color="k", ls="--", lw=1, label="margin")
    right.axhline(0, color="gray", lw=0.5)
    right.set_xscale("log")
    right.set_xlabel("learning rate (both norms)")
    right.set_ylabel("no norm's loss − BN's (points, 95% paired interval)")
    right.legend(fontsize=7)
    fig.suptitle(_title(verdict))
