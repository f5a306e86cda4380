"""Intervals over seeds: the one t-interval implementation. `analysis.aggregate`
gives each group's mean with it (`contrast`), the claims' rules their effects on
per-seed differences of arms that share seeds (`paired`). NumPy and SciPy only, so
that analysis and claims can both import it.
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


def paired(groups: list[tuple[float, dict[Any, float]]], confidence: float = 0.95) -> Estimate:
    """Σ cᵢ·xᵢ(s) for each seed s that every group (c, {seed: value}) has, then the
    mean over those seeds with the Student interval. For arms that share seeds (the
    same data order, and the same initialization where the shapes agree): what the
    seed does to both arms cancels in each difference. NaN bounds with fewer than two
    shared seeds; a seed with a non-finite value in any group is left out."""
    shared = set.intersection(*({seed for seed, value in values.items()
                                 if math.isfinite(value)} for _, values in groups))
    per_seed = [sum(c * values[seed] for c, values in groups) for seed in sorted(shared)]
    return contrast([(1, np.array(per_seed, dtype=float))], confidence)
