"""C3: BN regularizes (`experiments/generalization.py`, `experiments/learning_rate.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bnlab import analysis
from bnlab.claims.base import (
    MARGINS,
    Verdict,
    _by_seed,
    _comparable,
    _not_measured,
    _panels,
    _title,
    _values,
    decide,
)
from bnlab.stats import Estimate, paired

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _generalization(at: pd.DataFrame) -> tuple[Estimate, dict[str, Any]]:
    """BN's test accuracy minus no norm's per seed at one setting, and the details:
    each norm's train-minus-test gap, with the train accuracy of the model evaluated
    on its whole training set where the runs measured it (`final_train_accuracy`),
    the running mean of the last training batches otherwise (it lags the weights)."""
    size, rate = at["batch_size"].iloc[0], at["learning_rate"].iloc[0]
    bn, none = at[at["norm"] == "bn"], at[at["norm"] == "none"]
    evaluated = ("final_train_accuracy" in at
                 and pd.to_numeric(at["final_train_accuracy"], errors="coerce").notna().all())
    train = "final_train_accuracy" if evaluated else "train_accuracy"
    estimate = paired([(1, _by_seed(bn, "test_accuracy")), (-1, _by_seed(none, "test_accuracy"))])
    narrower = paired([(1, _by_seed(none, train)), (-1, _by_seed(none, "test_accuracy")),
                       (-1, _by_seed(bn, train)), (1, _by_seed(bn, "test_accuracy"))])
    details = {"batch_size": int(size), "learning_rate": float(rate),
               "train_examples": (int(at["train_size"].iloc[0]) if "train_size" in at
                                  and pd.notna(at["train_size"].iloc[0]) else None),
               "train_accuracy": {
                   "measured as": "the model on its whole training set at the end" if evaluated
                   else "running mean of the last training batches (training mode)",
                   **{n: float(np.nanmean(_values(g, train))) for n, g in (("bn", bn),
                                                                            ("none", none))}},
               "test_accuracy": {n: float(np.nanmean(_values(g, "test_accuracy")))
                                 for n, g in (("bn", bn), ("none", none))},
               "gap_none_minus_bn": narrower.jsonable()}
    return estimate, details


def generalization_rule(runs: pd.DataFrame) -> Verdict:
    """C3: BN generalizes better than no norm. Effect: test accuracy of BN minus no
    norm, per seed (paired), judged against `MARGINS["C3"]`; the train-minus-test
    gaps' difference is reported beside it, not judged. Decided where the runs fit a
    small training set (`generalization.py`: they measured `final_train_accuracy`,
    the regime where a regularizer shows); the article's setting (the learning-rate
    experiment: one epoch, nothing overfits) judged beside it in
    `details["other_settings"]`. In each, one setting both norms ran: the one with
    the most seeds of each, then the largest batch, then the smallest learning rate
    (where both are likely to train)."""
    runs = runs[runs["status"] == "done"]
    candidates = [g for g in _comparable(runs, ()) if {"bn", "none"} <= set(g["norm"])]
    if not candidates:
        return _not_measured("C3", "needs finished bn and none runs, all else equal")

    def preference(group):
        seeds = min((group["norm"] == n).sum() for n in ("bn", "none"))
        return seeds, group["batch_size"].iloc[0], -group["learning_rate"].iloc[0]

    def fitted(group):  # the generalization experiment's runs ask for it
        return ("eval_train_set" in group
                and group["eval_train_set"].fillna(False).astype(bool).all())

    settings = {}
    for name, regime in (("a small training set fitted", True),
                         ("one epoch (the article's setting)", False)):
        mine = [g for g in candidates if fitted(g) == regime]
        if mine:
            settings[name] = max(mine, key=preference)
    judged = []
    for name, at in settings.items():
        estimate, details = _generalization(at)
        judged.append((name, at, estimate, details, decide(estimate, MARGINS["C3"].judged)))
    (setting, at, estimate, details, verdict), *others = judged
    details = {"setting": setting, **details, "other_settings": [
        {"setting": name, "verdict": v, "estimate": e.jsonable(), **d}
        for name, _, e, d, v in others]}
    effect = (f"test accuracy, BN minus no norm ({setting}: batch {details['batch_size']}, "
              f"lr {details['learning_rate']:g})")
    return Verdict("C3", verdict, effect, estimate, details, at)


def _generalization_figure(verdict: Verdict, fig: Figure) -> None:
    """Train and test accuracy of the compared setting, per norm (mean, 95% interval
    over seeds)."""
    ax, = _panels(fig, 1)
    runs = verdict.runs
    train = ("final_train_accuracy" if "final_train_accuracy" in runs
             and runs["final_train_accuracy"].notna().all() else "train_accuracy")
    analysis.plot_errorbars(runs, "norm", (train, "test_accuracy"),
                            ("train (whole set, at the end)" if train != "train_accuracy"
                             else "train (last batches)", "test"), ax=ax)
    ax.set_title(f"{_title(verdict)}: {verdict.details['setting']} (95% over seeds)",
                 fontsize=9)
