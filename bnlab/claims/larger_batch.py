"""C11: the larger the batch, the closer its statistics to the data set's, and the
better (`experiments/batch_statistics.py`)."""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bnlab.claims.base import (
    INCONCLUSIVE,
    MARGINS,
    NOT_SUPPORTED,
    SUPPORTED,
    Verdict,
    _by_seed,
    _comparable,
    _finished,
    _keyed,
    _normalization_batch,
    _not_measured,
    _panels,
    _title,
    decide,
)
from bnlab.stats import Estimate, interval, paired

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_ERROR = re.compile(r"stat_error_(mean|var)_b(\d+)$")


def _errors(runs: pd.DataFrame, kind: str) -> dict[int, dict[Any, float]]:
    """{batch size B: {seed: the run's stat_error_KIND_bB}}."""
    columns = {int(m.group(2)): c for c in runs.columns
               if (m := _ERROR.match(str(c))) and m.group(1) == kind}
    return {size: _by_seed(runs, column) for size, column in sorted(columns.items())}


def _slopes(errors: dict[int, dict[Any, float]]) -> dict[Any, float]:
    """{seed: the least-squares slope of log10 error against log10 B}: −0.5 where the
    error falls as 1/√B, as the mean of B independent values does."""
    sizes = sorted(errors)
    seeds = set.intersection(*(set(v) for v in errors.values())) if sizes else set()
    x = np.log10(np.array(sizes, dtype=float))
    out = {}
    for seed in seeds:
        y = np.log10(np.array([errors[b][seed] for b in sizes], dtype=float))
        if len(sizes) >= 2 and np.all(np.isfinite(y)):
            out[seed] = float(np.polyfit(x, y, 1)[0])
    return out


def larger_batch_rule(runs: pd.DataFrame) -> Verdict:
    """C11. BN runs at one SGD batch that differ only in the normalization batch (ghost
    batches). "Closer": at the end of the runs that normalize over the whole SGD
    batch, the error of a batch's statistics (`stat_error_mean_bB`: mean over
    channels of |μ_B − μ|/σ) against the batch size B; per seed the slope of log
    error against log B, which must lie below 0 (−0.5 is sampling's 1/√B). "Better"
    decides: test accuracy at the largest normalization batch minus at the next
    smaller one, paired per seed, against the margin. SUPPORTED needs both; NOT
    SUPPORTED either's opposite; each smaller step in the details."""
    finished = _finished(runs)
    if "norm" not in finished or not any(_ERROR.match(str(c)) for c in finished.columns):
        return _not_measured("C11", "needs bn runs over normalization batches "
                             "(virtual_batch_size) with stat_error_batches set")
    bn = finished[finished["norm"] == "bn"]
    bn = bn.assign(normalization_batch=_normalization_batch(bn))
    groups = [g for g in _comparable(bn, ("virtual_batch_size",))
              if g["normalization_batch"].nunique() >= 2]
    if not groups:
        return _not_measured("C11", "needs bn runs that differ only in the normalization "
                             "batch (virtual_batch_size), all else equal")
    group = groups[0]
    accuracy = {int(b): _by_seed(cell, "test_accuracy")
                for b, cell in group.groupby("normalization_batch")}
    sizes = sorted(accuracy)
    margin = MARGINS["C11"].judged

    def step(small: int, large: int) -> Estimate:
        return paired([(1, accuracy[large]), (-1, accuracy[small])])

    better = step(sizes[-2], sizes[-1])
    whole = group[group["normalization_batch"] == pd.to_numeric(group["batch_size"])]
    errors = {kind: _errors(whole, kind) for kind in ("mean", "var")}
    slope = paired([(1, _slopes(errors["mean"]))])
    closer = (SUPPORTED if slope.high < 0 else NOT_SUPPORTED if slope.low > 0
              else INCONCLUSIVE)
    decided = decide(better, margin)
    verdict = (SUPPORTED if decided == SUPPORTED and closer == SUPPORTED
               else NOT_SUPPORTED if NOT_SUPPORTED in (decided, closer) else INCONCLUSIVE)
    reason = "" if verdict == decided else (
        f"the larger batch's accuracy says {decided}, its statistics' closeness says "
        f"{closer}: SUPPORTED needs both, NOT SUPPORTED either")
    details = {
        "sgd_batch": int(pd.to_numeric(group["batch_size"]).iloc[0]),
        "closer": {"verdict": closer,
                   "slope_of_log_error_against_log_batch": slope.jsonable(),
                   "sampling_slope": -0.5,
                   "mean_error_by_batch": {str(b): float(np.nanmean(list(v.values())))
                                           for b, v in errors["mean"].items()},
                   "variance_error_by_batch": {str(b): float(np.nanmean(list(v.values())))
                                               for b, v in errors["var"].items()}},
        "test_accuracy_by_normalization_batch": {
            str(b): interval(np.array(list(v.values()), dtype=float)).jsonable()
            for b, v in accuracy.items()},
        "per_seed_test_accuracy": {str(b): _keyed(v) for b, v in accuracy.items()},
        "other_settings": [
            {"setting": f"normalization batch {large} against {small}",
             "verdict": decide(step(small, large), margin),
             "estimate": step(small, large).jsonable()}
            for small, large in itertools.pairwise(sizes[:-1])],
    }
    if not details["other_settings"]:
        del details["other_settings"]
    effect = (f"test accuracy, BN normalizing over {sizes[-1]} examples minus over "
              f"{sizes[-2]} (ghost batches at an SGD batch of {details['sgd_batch']})")
    return Verdict("C11", verdict, effect, better, details, group, reason=reason)


def _larger_batch_figure(verdict: Verdict, fig: Figure) -> None:
    """The statistics' error against the batch size (log-log, with 1/√B), and test
    accuracy against the normalization batch (each seed, and the mean)."""
    left, right = _panels(fig, 2)
    closer = verdict.details["closer"]
    for i, (key, name) in enumerate((("mean_error_by_batch", "|μ_B − μ|/σ"),
                                     ("variance_error_by_batch", "|σ²_B/σ² − 1|"))):
        sizes = np.array([int(b) for b in closer[key]], dtype=float)
        values = np.array(list(closer[key].values()))
        left.plot(sizes, values, "o-", color=f"C{i}", label=name)
        if len(sizes):
            left.plot(sizes, values[0] * np.sqrt(sizes[0] / sizes), ":", color=f"C{i}",
                      lw=1, label=f"{name}: ∝ 1/√B")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("batch size B")
    left.set_ylabel("error of the batch's BN statistics (mean over channels, layers)")
    left.legend(fontsize=7)
    left.set_title("closer (the runs normalizing over the whole SGD batch)", fontsize=9)
    per_seed = verdict.details["per_seed_test_accuracy"]
    for b, values in per_seed.items():
        right.scatter([int(b)] * len(values), [100 * v for v in values.values()], s=12,
                      color="gray", alpha=0.6)
    means = verdict.details["test_accuracy_by_normalization_batch"]
    sizes = [int(b) for b in means]
    right.errorbar(sizes, [100 * m["value"] for m in means.values()],
                   yerr=[[100 * (m["value"] - m["low"]) for m in means.values()],
                         [100 * (m["high"] - m["value"]) for m in means.values()]],
                   fmt="o-", capsize=3, color="C2", label="mean, 95% t-interval")
    right.set_xscale("log", base=2)
    right.set_xlabel(f"normalization batch (SGD batch {verdict.details['sgd_batch']})")
    right.set_ylabel("test accuracy (%)")
    right.legend(fontsize=7)
    right.set_title("better?", fontsize=9)
    fig.suptitle(_title(verdict))
