"""C5: BN degrades at small batch; GN, LN and IN do not (`experiments/batch_size.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bnlab import analysis
from bnlab.claims.base import (
    INCONCLUSIVE,
    MARGINS,
    NOT_SUPPORTED,
    SUPPORTED,
    Verdict,
    _by_seed,
    _comparable,
    _finished,
    _normalization_batch,
    _not_measured,
    _panels,
    _title,
    _values,
    decide,
)
from bnlab.stats import paired

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _small_batch(runs: pd.DataFrame) -> Verdict:
    """C5 on one comparable group (one model, one setting but batch and rate)."""
    small, large = runs["batch_size"].min(), runs["batch_size"].max()

    def accuracy(norm, size):
        return _by_seed(runs[(runs["norm"] == norm) & (runs["batch_size"] == size)],
                        "test_accuracy")

    def drop(norm):
        return paired([(1, accuracy(norm, large)), (-1, accuracy(norm, small))])

    # Per seed: the four runs of a seed share its data order.
    excess = paired([(1, accuracy("bn", large)), (-1, accuracy("bn", small)),
                     (-1, accuracy("gn", large)), (1, accuracy("gn", small))])
    model = runs["model"].iloc[0] if "model" in runs else None
    details = {"setting": model, "model": model,
               "small_batch": int(small), "large_batch": int(large),
               "drop": {norm: drop(norm).jsonable() for norm in sorted(set(runs["norm"]))
                        if norm != "none"}}
    # BN's train/test discrepancy (Wu & Johnson 2021): the same BN runs tested with
    # running averages (EMA), PreciseBN population statistics and batch statistics.
    modes = {"ema": "test_accuracy", "precise_bn": "test_accuracy_precise_bn",
             "batch_statistics": "test_accuracy_batch_stats"}
    bn = runs[runs["norm"] == "bn"]
    if all(column in bn for column in modes.values()):
        details["bn_test_accuracy_by_statistics"] = {
            f"batch {size}": {mode: float(np.nanmean(_values(bn[bn["batch_size"] == size], c)))
                              for mode, c in modes.items()} for size in (small, large)}
    effect = f"BN's accuracy drop from batch {large} to {small}, minus GN's"
    if model:
        effect += f" ({model})"
    # Two claims in one: BN degrades (its own drop is above the margin), and more than
    # GN does (the excess). An excess alone would call a flat BN beside a GN that gains
    # at small batch "degraded".
    margin = MARGINS["C5"].judged
    bn_degrades, bn_more = decide(drop("bn"), margin), decide(excess, margin)
    if NOT_SUPPORTED in (bn_degrades, bn_more):
        verdict = NOT_SUPPORTED
    elif bn_degrades == bn_more == SUPPORTED:
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    details["bn_degrades"], details["bn_degrades_more_than_gn"] = bn_degrades, bn_more
    reason = ""
    if bn_degrades != bn_more:
        reason = (f"BN's own drop says {bn_degrades}, its excess over GN's {bn_more}: "
                  "SUPPORTED needs both, NOT SUPPORTED either")
    return Verdict("C5", verdict, effect, excess, details, runs, reason=reason)


def _ghost_batch(bn: pd.DataFrame, gn: pd.DataFrame) -> Verdict:
    """C5 with the normalization batch apart from the SGD batch: BN runs of one model
    at one SGD batch and rate with ghost batches (`virtual_batch_size`; none = the
    whole batch). Only BN's statistics change with the ghost batch; GN's never
    depend on the batch, so its drop is 0 by construction and the excess over GN's
    is BN's own drop. `gn`: GN runs at the same SGD batch and rate (details only)."""
    sgd = int(bn["batch_size"].iloc[0])
    ghost = _normalization_batch(bn)
    small = int(ghost.min())

    def accuracy(size):
        return _by_seed(bn[ghost == size], "test_accuracy")

    drop = paired([(1, accuracy(sgd)), (-1, accuracy(small))])
    model = bn["model"].iloc[0] if "model" in bn else None
    setting = f"{model}, ghost batches at SGD batch {sgd}" if model else "ghost batches"
    details = {"setting": setting, "model": model, "sgd_batch": sgd,
               "small_batch": small, "large_batch": sgd,
               "bn_test_accuracy_by_normalization_batch": {
                   str(size): float(np.mean(list(accuracy(size).values())))
                   for size in sorted(set(ghost))},
               "drop": {"bn": drop.jsonable(),
                        "gn": "0 by construction: GN's statistics do not depend on the batch"}}
    if len(gn):
        details["gn_test_accuracy"] = float(np.mean(list(_by_seed(gn, "test_accuracy")
                                                         .values())))
    effect = (f"BN's accuracy drop from normalization batch {sgd} to {small} at SGD batch "
              f"{sgd} and one rate (ghost batches{f', {model}' if model else ''}); GN's is 0")
    verdict = decide(drop, MARGINS["C5"].judged)
    details["bn_degrades"] = details["bn_degrades_more_than_gn"] = verdict
    return Verdict("C5", verdict, effect, drop, details, pd.concat([bn, gn]))


def _ghost_settings(runs: pd.DataFrame) -> list[Verdict]:
    """Each group of BN runs that differ only in their ghost batch (one at least set),
    judged by `_ghost_batch` with the GN runs of its model, SGD batch and rate."""
    if "virtual_batch_size" not in runs:
        return []
    bn = runs[runs["norm"] == "bn"]
    out = []
    for group in _comparable(bn, ("virtual_batch_size",)):
        sizes = pd.to_numeric(group["virtual_batch_size"], errors="coerce")
        if sizes.notna().any() and sizes.fillna(0).nunique() >= 2:
            same = runs[(runs["norm"] == "gn")
                        & (runs["batch_size"] == group["batch_size"].iloc[0])
                        & (runs["learning_rate"] == group["learning_rate"].iloc[0])]
            if "model" in runs:
                same = same[same["model"] == group["model"].iloc[0]]
            out.append(_ghost_batch(group, same))
    return out


def small_batch_rule(runs: pd.DataFrame) -> Verdict:
    """C5: BN's test accuracy drops at small batch, and by more than GN's (the Group
    Norm paper's Figure 1). Decided, where the runs have them, on ghost batches
    (`_ghost_batch`): the normalization batch made small at a fixed SGD batch and
    rate, on a network whose statistics then average few values (the MLP: 2 values
    at normalization batch 2), so BN's statistics are not confounded with gradient
    noise, the regime where the GN paper finds the effect. Beside it, in
    `details["other_settings"]`, each model with the normalization batch equal to
    the SGD batch (the article's setting, the rate scaled with the batch): BN's drop
    from the largest batch to the smallest minus GN's, per seed (the four runs of a
    seed share its data order); SUPPORTED when both BN's own drop and that excess
    lie above `MARGINS["C5"]`, NOT SUPPORTED when either lies below it. Without
    ghost batches the largest such group decides. Every norm's own drop is in
    `details["drop"]`."""
    finished = _finished(runs)
    plain = finished
    if "virtual_batch_size" in finished:
        plain = finished[pd.to_numeric(finished["virtual_batch_size"], errors="coerce").isna()]
    candidates = [g for g in _comparable(plain, ("batch_size", "learning_rate"))
                  if {"bn", "gn"} <= set(g["norm"]) and g["batch_size"].nunique() >= 2]
    verdicts = _ghost_settings(finished) + [_small_batch(group) for group in candidates]
    if not verdicts:
        return _not_measured("C5", "needs bn and gn runs at two batch sizes or more, or bn "
                             "runs with ghost batches")
    first = verdicts[0]
    first.details["other_settings"] = [
        {"setting": v.details["setting"], "verdict": v.verdict, "effect": v.effect,
         "estimate": v.estimate.jsonable(), **v.details} for v in verdicts[1:]]
    first.runs = pd.concat([v.runs for v in verdicts]).drop_duplicates("path")
    return first


def _small_batch_figure(verdict: Verdict, fig: Figure) -> None:
    """Test accuracy against the batch size, a panel per model (normalization batch =
    SGD batch, without no norm), and a panel per ghost-batch setting: BN against its
    normalization batch at a fixed SGD batch, GN's accuracy there as a line."""
    runs = verdict.runs
    ghost = (pd.to_numeric(runs["virtual_batch_size"], errors="coerce")
             if "virtual_batch_size" in runs else pd.Series(np.nan, index=runs.index))
    settings = [v for v in [verdict.details, *verdict.details.get("other_settings", [])]
                if "sgd_batch" in v]
    plain = runs[ghost.isna() & (runs["norm"] != "none")]
    models = list(dict.fromkeys(plain["model"])) if "model" in plain else [None]
    axes = _panels(fig, len(settings) + len(models))
    for ax, setting in zip(axes, settings, strict=False):
        sizes = setting["bn_test_accuracy_by_normalization_batch"]
        bn = runs[(runs["norm"] == "bn") & (runs["batch_size"] == setting["sgd_batch"])]
        if setting.get("model") and "model" in runs:
            bn = bn[bn["model"] == setting["model"]]
        norm_batch = ghost[bn.index].fillna(setting["sgd_batch"])
        ax.scatter(norm_batch, pd.to_numeric(bn["test_accuracy"]), color="C0", s=12,
                   alpha=0.6, label="BN, each seed")
        ax.plot([int(k) for k in sizes], list(sizes.values()), "o-", color="C0",
                label="BN, mean over seeds")
        if "gn_test_accuracy" in setting:
            ax.axhline(setting["gn_test_accuracy"], color="C1", ls="--",
                       label="GN (no batch dependence), mean")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"normalization batch (ghost batch; SGD batch {setting['sgd_batch']})")
        ax.set_ylabel("test accuracy")
        ax.set_title(setting["setting"])
        ax.legend(fontsize=8)
    for ax, model in zip(axes[len(settings):], models, strict=True):
        group = plain if model is None else plain[plain["model"] == model]
        analysis.plot_vs_batch_size(group, ax=ax)
        ax.set_title(f"{model}: normalization batch = SGD batch" if model else "")
    fig.suptitle(_title(verdict))
