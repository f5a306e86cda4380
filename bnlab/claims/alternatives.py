"""C9: GN "between BN and LN", corrected, and GN in both regimes
(`experiments/batch_size.py`, `experiments/sequences.py`)."""

from __future__ import annotations

import math
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
    _not_measured,
    _title,
    decide,
)
from bnlab.stats import Estimate, paired

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def alternatives_rule(runs: pd.DataFrame) -> Verdict:
    """C9, the article's "GN sits between BN and LN and works well on small batches
    and on variable-length sequences". The first half is a slip: GN groups a
    sample's channels and never pools over the batch, so it spans LN (one group)
    to IN (one channel a group), not BN to LN; the report states the correction and
    shows each regime's accuracy from LN through GN's group sizes to IN. The second
    half is tested: in each regime, GN as configured (its `num_groups`) against the
    best of the other normalizations there (by mean accuracy: BN, LN, IN; BN with
    and without padding in its statistics on sequences), per seed. The regimes: the
    smallest batch of each model of the batch-size experiment (normalization batch =
    SGD batch) and the padded sequences. Effect: GN's largest shortfall. SUPPORTED
    when every shortfall's interval lies below `MARGINS["C9"]`, NOT SUPPORTED when
    one lies wholly above it; not measured without GN and another norm in both
    regimes. Picking the best arm from the same runs favours it a little: that errs
    against SUPPORTED."""
    works = MARGINS["C9"].judged
    regimes = _gn_regimes(_finished(runs))
    if not any(name.startswith("small batch") for name in regimes) or not any(
            name.startswith("sequences") for name in regimes):
        return _not_measured("C9", "needs gn and another norm in both regimes: at the "
                             "smallest of two batch sizes or more (batch_size.py) and on "
                             "padded sequences (sequences.py)")
    shortfalls: dict[str, Estimate] = {}
    details: dict[str, Any] = {"regimes": {}, "works_margin": works}
    used = []
    for name, (gn_name, others, ranking) in regimes.items():
        gn = ranking[gn_name]
        best = max(others, key=lambda arm: _mean(others[arm]))
        shortfalls[f"{name}: {best} minus GN"] = paired(
            [(1, _by_seed(others[best], "test_accuracy")), (-1, _by_seed(gn, "test_accuracy"))])
        arms = {arm: paired([(1, _by_seed(group, "test_accuracy"))]).jsonable()
                for arm, group in ranking.items()}
        details["regimes"][name] = {
            "test_accuracy": arms, "gn": gn_name,
            "best_other": best,
            "from_ln_to_in": [a for a in ranking if a.startswith(("LN", "GN", "IN"))]}
        used += list(ranking.values())
    # GN works when every shortfall is small; one clearly large one and it does not.
    each = [decide(e, works, below=True) for e in shortfalls.values()]
    if NOT_SUPPORTED in each:
        verdict = NOT_SUPPORTED
    elif all(v == SUPPORTED for v in each):
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    # The estimate shown: the largest shortfall (NaN only when none has a value).
    measured = [e for e in shortfalls.values() if not math.isnan(e.value)]
    worst = (max(measured, key=lambda e: e.value) if measured
             else next(iter(shortfalls.values())))
    details["shortfalls"] = {k: v.jsonable() for k, v in shortfalls.items()}
    details["correction"] = ("GN normalizes groups of a sample's channels: one group is "
                             "LN, one channel a group IN; it never pools over the batch, "
                             "so it does not sit between BN and LN")
    effect = ("GN's largest accuracy shortfall against the best other norm of each regime "
              "(small batch, sequences)")
    reason = ("each shortfall judged alone: " + "; ".join(
        f"{name}: {v}" for name, v in zip(shortfalls, each, strict=True))
        + " (SUPPORTED needs every one below the margin, NOT SUPPORTED one above it)")
    result = Verdict("C9", verdict, effect, worst, details, None, reason=reason)
    result.runs = pd.concat(used).drop_duplicates("path")
    return result


def _mean(runs: pd.DataFrame) -> float:
    values = list(_by_seed(runs, "test_accuracy").values())
    return float(np.mean(values)) if values else -math.inf


def _gn_regimes(runs: pd.DataFrame) -> dict[str, tuple[str, dict[str, pd.DataFrame],
                                                       dict[str, pd.DataFrame]]]:
    """C9's regimes: {name: (GN as configured: its arm's name, the other norms'
    arms, every arm in order from BN through LN and GN's group sizes to IN)}."""
    free = ("num_groups", "group_size", "mask_padding")
    out = {}
    plain = runs
    if "virtual_batch_size" in runs:
        plain = runs[pd.to_numeric(runs["virtual_batch_size"], errors="coerce").isna()]
    sequences = _is_sequences(plain)
    for group in _comparable(plain[~sequences], ("batch_size", "learning_rate", *free)):
        if "gn" not in set(group["norm"]) or group["batch_size"].nunique() < 2:
            continue
        small = group["batch_size"].min()
        arms = _gn_arms(group[group["batch_size"] == small])
        if arms:
            model = group["model"].iloc[0] if "model" in group else "model"
            out[f"small batch ({model}, batch {small})"] = arms
    for group in _comparable(plain[sequences], free):
        arms = _gn_arms(group)
        if arms:
            out["sequences"] = arms
            break
    return out


def _is_sequences(runs: pd.DataFrame) -> pd.Series:
    """The runs of the padded-sequence experiment: its data set where the runs
    record one, else the BN runs' `mask_padding` setting (a synthetic directory)."""
    if "dataset" in runs and runs["dataset"].notna().all():
        return runs["dataset"] == "fashion_mnist_rows"
    if "mask_padding" in runs:
        return runs["mask_padding"].notna()
    return pd.Series(False, index=runs.index)


def _gn_arms(runs: pd.DataFrame):
    """(GN as configured: its arm's name, {other norm: runs}, {every arm: runs} in
    order) of one
    regime, or None without GN and another norm there. GN's arms are named by their
    groups; a `group_size` arm by its channels a group."""
    runs = runs[runs["norm"] != "none"]
    size = (pd.to_numeric(runs["group_size"], errors="coerce") if "group_size" in runs
            else pd.Series(np.nan, index=runs.index))
    gn = runs[(runs["norm"] == "gn") & size.isna()]
    if not len(gn):
        return None
    groups = pd.to_numeric(gn["num_groups"], errors="coerce") if "num_groups" in gn else None
    gn_name = (f"GN (G = {int(groups.iloc[0])})" if groups is not None
               and groups.notna().all() and groups.nunique() == 1 else "GN")
    others: dict[str, pd.DataFrame] = {}
    bn = runs[runs["norm"] == "bn"]
    if "mask_padding" in bn and bn["mask_padding"].fillna(False).astype(bool).any():
        masked = bn["mask_padding"].fillna(False).astype(bool)
        others.update({"BN (naive)": bn[~masked], "BN (masked)": bn[masked]})
    else:
        others["BN"] = bn
    others["LN (G = 1)"] = runs[runs["norm"] == "ln"]
    others["IN (G = C)"] = runs[runs["norm"] == "in"]
    others = {name: arm for name, arm in others.items() if len(arm)}
    if not others:
        return None
    finer = {f"GN ({int(k)} channels a group)": runs[(runs["norm"] == "gn") & (size == k)]
             for k in sorted(size[runs["norm"] == "gn"].dropna().unique(), reverse=True)}
    ranking = {name: arm for name, arm in others.items() if name.startswith("BN")}
    ranking.update({name: others[name] for name in ("LN (G = 1)",) if name in others})
    ranking[gn_name] = gn
    ranking.update(finer)
    ranking.update({name: others[name] for name in ("IN (G = C)",) if name in others})
    return gn_name, others, ranking


def _alternatives_figure(verdict: Verdict, fig: Figure) -> None:
    """Each regime's test accuracy by arm, from BN through LN and GN's group sizes
    to IN (mean over seeds with its 95% t-interval), GN as configured marked, and
    GN's shortfalls against the margin (drawn from the details)."""
    regimes = verdict.details["regimes"]
    # A row of regimes, the shortfalls across the row below (their labels are long).
    fig.set_size_inches(5 * max(len(regimes), 2), 7)
    grid = fig.add_gridspec(2, len(regimes), height_ratios=(3, 2))
    for i, (name, regime) in enumerate(regimes.items()):
        ax = fig.add_subplot(grid[0, i])
        arms = regime["test_accuracy"]
        for y, (arm, e) in enumerate(arms.items()):
            low = 0.0 if math.isnan(e["low"]) else e["value"] - e["low"]
            high = 0.0 if math.isnan(e["high"]) else e["high"] - e["value"]
            color = "C3" if arm == regime["gn"] else ("C0" if arm.startswith("BN") else "C2")
            ax.errorbar(100 * e["value"], y, xerr=[[100 * low], [100 * high]], fmt="o",
                        capsize=3, color=color)
        ax.set_yticks(range(len(arms)), list(arms), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("test accuracy (%; mean, 95% t-interval)")
        ax.set_title(name, fontsize=9)
    ax = fig.add_subplot(grid[1, :])
    shortfalls = verdict.details["shortfalls"]
    for y, e in enumerate(shortfalls.values()):
        low = 0.0 if math.isnan(e["low"]) else e["value"] - e["low"]
        high = 0.0 if math.isnan(e["high"]) else e["high"] - e["value"]
        ax.errorbar(100 * e["value"], y, xerr=[[100 * low], [100 * high]], fmt="o",
                    capsize=3, color="C3")
    ax.axvline(100 * verdict.details["works_margin"], color="k", ls="--", lw=1,
               label="works: below this")
    ax.axvline(0, color="gray", lw=0.5)
    ax.set_yticks(range(len(shortfalls)), list(shortfalls), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("GN's shortfall against the best other norm (accuracy points, 95% "
                  "paired interval)")
    ax.legend(fontsize=8)
    fig.suptitle(_title(verdict))
    fig.tight_layout()
