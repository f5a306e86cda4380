"""C6: BN goes after the convolution, before the activation
(`experiments/placement.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bnlab import analysis
from bnlab.claims.base import (
    MARGINS,
    Verdict,
    _by_seed,
    _comparable,
    _finished,
    _not_measured,
    _panels,
    _title,
    decide,
)
from bnlab.stats import paired

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def placement_rule(runs: pd.DataFrame) -> Verdict:
    """C6: BN between the convolution and the activation beats BN after the
    activation. Effect: test accuracy, before minus after, means over seeds."""
    candidates = [g for g in _comparable(_finished(runs), ("norm_placement",))
                  if "norm_placement" in g and set(g["norm"]) == {"bn"}
                  and {"before_activation", "after_activation"} <= set(g["norm_placement"])]
    if not candidates:
        return _not_measured("C6", "needs bn runs with norm_placement before_activation and "
                             "after_activation, all else equal")
    at = candidates[0]

    def accuracy(placement):
        return _by_seed(at[at["norm_placement"] == placement], "test_accuracy")

    estimate = paired([(1, accuracy("before_activation")), (-1, accuracy("after_activation"))])
    details = {"mean_test_accuracy": {p: float(np.nanmean(list(accuracy(p).values())))
                                      for p in ("before_activation", "after_activation")},
               "seeds": int(min(len(accuracy(p)) for p in ("before_activation",
                                                             "after_activation")))}
    effect = "test accuracy, BN before the ReLU minus after it"
    return Verdict("C6", decide(estimate, MARGINS["C6"].judged), effect, estimate, details,
                   at)


def _placement_figure(verdict: Verdict, fig: Figure) -> None:
    """Test accuracy, BN before and after the activation."""
    ax, = _panels(fig, 1)
    analysis.plot_errorbars(verdict.runs, "norm_placement", ("test_accuracy",), ("test",),
                            ax=ax)
    ax.set_title(_title(verdict))
