"""Intervals over seeds: the one t-interval implementation. `analysis.aggregate`
gives each group's mean with it (`contrast`, or another kind of `interval`), the
claims' rules their effects on per-seed differences of arms that share seeds
(`paired`, built on `per_seed`). NumPy and SciPy only, so that analysis and claims
can both import it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Estimate:
    """An effect with its 95% interval: a linear combination of group means (Welch,
    `contrast`) or the mean of per-seed differences (Student, `paired`). `dof`: the
    interval's degrees of freedom (inf for a zero-width one, NaN without one)."""

    value: float
    low: float
    high: float
    dof: float

    def jsonable(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def t_quantile(probability: float, dof: float) -> float:
    """Student's t quantile (scipy)."""
    from scipy import stats  # on the first interval: it takes most of a second to import

    return float(stats.t.ppf(probability, dof))


def contrast(groups: list[tuple[float, np.ndarray]], confidence: float = 0.95) -> Estimate:
    """Σ cᵢ·mean(xᵢ) over independent groups (c, values), with the interval
    ± t(ν)·√(Σ cᵢ² sᵢ²/nᵢ), ν by Welch–Satterthwaite. Non-finite values are left
    out; NaN bounds when a group has fewer than two values. One group with c = 1 is
    its mean with the Student interval mean ± t(n-1)·s/√n: ν reduces to n-1."""
    value, variance, dof_denominator = 0.0, 0.0, 0.0
    for coefficient, values in groups:
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if len(values) < 2:
            mean = float(values.mean()) if len(values) else math.nan
            return Estimate(value + coefficient * mean, math.nan, math.nan, math.nan)
        term = coefficient**2 * values.var(ddof=1) / len(values)
        value += coefficient * values.mean()
        variance += term
        dof_denominator += term**2 / (len(values) - 1)
    if variance == 0:
        return Estimate(value, value, value, math.inf)
    dof = variance**2 / dof_denominator
    half = t_quantile(0.5 + confidence / 2, dof) * math.sqrt(variance)
    return Estimate(value, value - half, value + half, dof)


def per_seed(groups: list[tuple[float, dict[Any, float]]]) -> dict[Any, float]:
    """{seed: Σ cᵢ·xᵢ(seed)} for each seed that every group (c, {seed: value}) has
    with a finite value, in seed order."""
    shared = set.intersection(*({seed for seed, value in values.items()
                                 if math.isfinite(value)} for _, values in groups))
    return {seed: sum(c * values[seed] for c, values in groups) for seed in sorted(shared)}


def paired(groups: list[tuple[float, dict[Any, float]]], confidence: float = 0.95) -> Estimate:
    """Σ cᵢ·xᵢ(s) for each seed s that every group (c, {seed: value}) has, then the
    mean over those seeds with the Student interval. For arms that share seeds (the
    same data order, and the same initialization where the shapes agree): what the
    seed does to both arms cancels in each difference. NaN bounds with fewer than two
    shared seeds; a seed with a non-finite value in any group is left out."""
    differences = np.array(list(per_seed(groups).values()), dtype=float)
    return contrast([(1, differences)], confidence)


# The intervals `interval` draws around a mean over seeds.
INTERVALS = ("t", "se", "sd", "bootstrap")
BOOTSTRAP_RESAMPLES = 10_000
# A fixed generator: the same runs give the same bootstrap interval every time.
BOOTSTRAP_SEED = 0


def interval(values: np.ndarray, kind: str = "t", confidence: float = 0.95) -> Estimate:
    """The mean of `values` (non-finite ones left out) with an interval of `kind`:
    "t", the Student interval mean ± t(n-1)·s/√n (`contrast` of one group); "se",
    mean ± s/√n; "sd", mean ± s (the seeds' spread, not the mean's uncertainty);
    "bootstrap", the percentile bootstrap of the mean (`BOOTSTRAP_RESAMPLES`
    resamples from a generator seeded with `BOOTSTRAP_SEED`). `confidence` is the
    t and bootstrap intervals' level; NaN bounds with fewer than two values."""
    if kind not in INTERVALS:
        raise ValueError(f"interval {kind!r}; allowed: {', '.join(INTERVALS)}")
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if kind == "t" or len(values) < 2:
        return contrast([(1, values)], confidence)
    mean = float(values.mean())
    if kind in ("se", "sd"):
        half = float(values.std(ddof=1)) / (math.sqrt(len(values)) if kind == "se" else 1.0)
        return Estimate(mean, mean - half, mean + half, len(values) - 1.0)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = values[rng.integers(0, len(values), (BOOTSTRAP_RESAMPLES, len(values)))].mean(1)
    low, high = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return Estimate(mean, float(low), float(high), math.nan)


def interval_label(kind: str = "t", confidence: float = 0.95,
                   n: int | tuple[int, int] | None = None) -> str:
    """What an `interval` of `kind` is, in words, for a plot's legend or axis: "mean ±
    95% t-interval over seeds (n=3)". `n`: the seeds per mean, or (fewest, most)."""
    level = f"{confidence * 100:g}%"
    said = {"t": f"mean ± {level} t-interval", "se": "mean ± 1 standard error",
            "sd": "mean ± 1 standard deviation",
            "bootstrap": f"mean, {level} percentile bootstrap interval"}[kind]
    if isinstance(n, tuple):
        n = n[0] if n[0] == n[1] else f"{n[0]}–{n[1]}"
    return f"{said} over seeds" + (f" (n={n})" if n is not None else "")
