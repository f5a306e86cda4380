"""C8: BN suits variable-length sequences badly; LN suits them
(`experiments/sequences.py`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

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
from bnlab.stats import paired

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _sequence_runs(runs: pd.DataFrame) -> pd.DataFrame | None:
    """The padded-sequence runs (`sequences.py`) that compare BN with LN, all else
    equal but the norm, `mask_padding` and the seed; None without them."""
    runs = runs[runs["status"] == "done"]
    if "dataset" in runs:
        runs = runs[runs["dataset"] == "fashion_mnist_rows"]
    candidates = [g for g in _comparable(runs, ("mask_padding",))
                  if {"bn", "ln"} <= set(g["norm"]) and "mask_padding" in g]
    return candidates[0] if candidates else None


def _sequence_norms(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    masked = runs["mask_padding"].fillna(False).astype(bool)
    out = {"bn (naive)": runs[(runs["norm"] == "bn") & ~masked],
           "bn (masked)": runs[(runs["norm"] == "bn") & masked]}
    out.update({norm: runs[runs["norm"] == norm] for norm in ("ln", "gn", "none")})
    return {name: group for name, group in out.items() if len(group)}


def sequence_rule(runs: pd.DataFrame) -> Verdict:
    """C8: on padded variable-length sequences LN does better than BN with the
    padding in its statistics (the naive way). Effect: test accuracy, LN minus naive
    BN, means over seeds. How much the padding moves BN is in `details`: the share
    of test predictions that change when the test set is padded further, with each
    batch's own statistics (as BN trains) and as the model is evaluated; and masked
    BN's and GN's accuracy."""
    at = _sequence_runs(runs)
    if at is None:
        return _not_measured("C8", "needs seq_cnn runs on fashion_mnist_rows with bn and ln, "
                             "all else equal (experiments/sequences.py)")
    groups = _sequence_norms(at)
    if "bn (naive)" not in groups:
        return _not_measured("C8", "needs naive BN runs (mask_padding=False)")
    estimate = paired([(1, _by_seed(groups["ln"], "test_accuracy")),
                       (-1, _by_seed(groups["bn (naive)"], "test_accuracy"))])

    def mean(group, metric):
        return float(np.nanmean(_values(group, metric))) if metric in group else math.nan

    details = {
        "test_accuracy": {n: mean(g, "test_accuracy") for n, g in groups.items()},
        "predictions_changed_by_more_padding": {
            "with batch statistics": {n: mean(g, "prediction_change_padded_batch_stats")
                                      for n, g in groups.items() if n.startswith("bn")},
            "as evaluated": {n: mean(g, "prediction_change_padded") for n, g in groups.items()}},
        "seeds": int(min(len(g) for g in groups.values()))}
    effect = "test accuracy on padded sequences, LN minus BN with padding in its statistics"
    return Verdict("C8", decide(estimate, MARGINS["C8"].judged), effect, estimate, details,
                   at)


def _sequence_figure(verdict: Verdict, fig: Figure) -> None:
    """Test accuracy per normalization on padded sequences, and the share of test
    predictions that more padding changes."""
    left, right = _panels(fig, 2)
    groups = _sequence_norms(verdict.runs)
    labelled = pd.concat([g.assign(normalization=n) for n, g in groups.items()])
    analysis.plot_errorbars(labelled, "normalization", ("test_accuracy",), ("test",), ax=left)
    left.set_title("test accuracy, padded sequences")
    changed = verdict.details["predictions_changed_by_more_padding"]
    names = list(changed["as evaluated"])
    for offset, (label, values) in enumerate(changed.items()):
        bars = right.bar([i + 0.4 * offset for i in range(len(names))],
                         [100 * values.get(n, math.nan) for n in names], width=0.4,
                         label=label)
        right.bar_label(bars, fmt="%.1f", fontsize=7)
    right.set_xticks([i + 0.2 for i in range(len(names))], names)
    right.set_ylabel("% of test predictions")
    right.set_title("predictions changed by padding 28 → 56 steps")
    right.legend()
    fig.suptitle(_title(verdict))
