"""The article's claims and the rules that turn a tracking directory into a verdict
for each: SUPPORTED, NOT SUPPORTED or INCONCLUSIVE, from several seeds with a 95%
interval, never from one run.

Each rule reads the runs `analysis.load_runs` gives, picks those of its
experiment, and returns a `Verdict` with the effect it measured and its interval.
A claim without a rule yet, or a directory without its runs, is reported as
"not measured": never a verdict. Each claim also declares its figure, beside its
rule: a function that draws what the rule compared on the matplotlib Figure it is
given (`report.write_report` creates, saves and closes it, so that importing the
claims imports no matplotlib).

Where things are: this module holds the registry (`CLAIMS`: each claim's text,
experiments, rule, figure and margin) and judges it (`evaluate`, each seed set
alone and `replicated`); `base` the verdict, the margins fixed before the runs
(`MARGINS`), the one decision rule (`decide`) and the helpers the rules share;
one module per claim or pair of claims for its rule and figure: `speed` (C1, C14),
`learning_rate` (C2), `generalization` (C3), `gradients` (C4, C13), `batch` (C5),
`placement` (C6), `statistics` (C7), `sequences` (C8), `alternatives` (C9),
`mechanism` (C10), `larger_batch` (C11), `robustness` (C12).
"""

from __future__ import annotations

import dataclasses
import math

import pandas as pd

from bnlab.claims.alternatives import _alternatives_figure, alternatives_rule
from bnlab.claims.base import (
    CHANCE,
    INCONCLUSIVE,
    MARGINS,
    NOT_MEASURED,
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    Margin,
    Verdict,
    _not_measured,
    bounded,
    decide,
)
from bnlab.claims.batch import _small_batch_figure, small_batch_rule
from bnlab.claims.generalization import _generalization_figure, generalization_rule
from bnlab.claims.gradients import _depth_figure, _gradient_figure, depth_rule, gradient_rule
from bnlab.claims.larger_batch import _larger_batch_figure, larger_batch_rule
from bnlab.claims.learning_rate import _learning_rate_figure, learning_rate_rule
from bnlab.claims.mechanism import _mechanism_figure, mechanism_rule
from bnlab.claims.placement import _placement_figure, placement_rule
from bnlab.claims.robustness import _robustness_figure, robustness_rule
from bnlab.claims.sequences import _sequence_figure, sequence_rule
from bnlab.claims.speed import _speed_figure, speed_rule, steps_to_accuracy, wall_clock_rule
from bnlab.claims.statistics import _statistics_figure, statistics_rule

__all__ = [
    "CHANCE", "CLAIMS", "EXPERIMENTS", "INCONCLUSIVE", "MARGINS", "NOT_MEASURED",
    "NOT_SUPPORTED", "SUPPORTED", "Claim", "Margin", "Verdict", "alternatives_rule",
    "bounded", "claims_by_id", "decide", "depth_rule", "evaluate", "generalization_rule",
    "gradient_rule", "larger_batch_rule", "learning_rate_rule", "mechanism_rule",
    "placement_rule", "replicated", "robustness_rule", "sequence_rule", "small_batch_rule",
    "speed_rule", "statistics_rule", "steps_to_accuracy", "wall_clock_rule",
]


CLAIMS: tuple[Claim, ...] = (
    Claim("C1", "speed", "BN speeds training up: fewer steps to a given accuracy",
          ("learning_rate",), speed_rule,
          "BN paper: the same accuracy in 14× fewer steps (with BN and a 5× learning rate)",
          figure=_speed_figure, margin=MARGINS["C1"]),
    Claim("C2", "lr", "BN tolerates much larger learning rates",
          ("learning_rate",), learning_rate_rule,
          "BN paper: without BN the 5× learning rate diverged",
          figure=_learning_rate_figure, margin=MARGINS["C2"]),
    Claim("C3", "regularize", "BN regularizes: better generalization",
          ("generalization", "learning_rate"), generalization_rule,
          figure=_generalization_figure, margin=MARGINS["C3"]),
    Claim("C4", "gradients", "BN relieves vanishing and exploding gradients",
          ("gradient_flow",), gradient_rule,
          figure=_gradient_figure, margin=MARGINS["C4"]),
    Claim("C5", "small batch", "BN degrades at small batch; GN, LN and IN do not",
          ("batch_size",), small_batch_rule,
          "GN paper, ResNet-50 ImageNet top-1 error at 32 → 2 images per GPU: BN 23.6 → "
          "34.7 (+11.1 points), GN 24.1 → 24.1; CIFAR-10 ResNet-20 accuracy at 32 → 2: "
          "BN 86.4 → 80.3 (−6.1), GN 86.0 → 85.8 (−0.2)",
          figure=_small_batch_figure, margin=MARGINS["C5"]),
    Claim("C6", "placement", "BN goes after the convolution, before the activation",
          ("placement",), placement_rule,
          figure=_placement_figure, margin=MARGINS["C6"]),
    Claim("C7", "stats", "μ_B and σ²_B are per-channel vectors over the batch", (),
          statistics_rule, figure=_statistics_figure),
    Claim("C8", "sequences", "BN suits variable-length sequences badly; LN suits them",
          ("sequences",), sequence_rule,
          figure=_sequence_figure, margin=MARGINS["C8"]),
    Claim("C9", "alternatives", "GN sits between BN and LN and works in both regimes",
          ("batch_size", "sequences"), alternatives_rule,
          "GN paper (Wu & He 2018): GN spans LN (G = 1) to IN (G = C) and, at batch 2, "
          "trails BN at batch 32 by 0.5 point on ImageNet where BN at batch 2 loses 11; "
          "the article's 'between BN and LN' is a slip (GN never pools over the batch)",
          figure=_alternatives_figure, margin=MARGINS["C9"]),
    Claim("C10", "mechanism", "BN works by reducing internal covariate shift", ("mechanism",),
          mechanism_rule, reference="Santurkar et al. 2018: BN nets show similar or "
          "larger ICS, and a much smoother loss landscape; BN with noise after it, which "
          "brings the shift back, trains about as well as BN (their noisy BN)",
          figure=_mechanism_figure, margin=MARGINS["C10"]),
    Claim("C11", "batch size", "The larger the batch, the closer its statistics to the "
          "data set's, and the better", ("batch_statistics",), larger_batch_rule,
          "sampling: a mean of B values errs as 1/√B; Hoffer et al. 2017 (ghost BN) and "
          "Summers & Dinneen 2020: normalizing over fewer examples than the SGD batch "
          "generalizes better",
          figure=_larger_batch_figure, margin=MARGINS["C11"]),
    Claim("C12", "robustness", "BN's batch noise makes the model more robust to small "
          "changes of the input", ("learning_rate",), robustness_rule,
          "Galloway et al. 2019: BN lowers accuracy under small Gaussian noise and "
          "adversarial perturbations (the opposite of the claim)",
          figure=_robustness_figure, margin=MARGINS["C12"]),
    Claim("C13", "depth", "BN lets deeper networks train",
          ("gradient_flow",), depth_rule,
          "He et al. 2016: 20- to 56-layer plain nets train with BN (their degradation "
          "problem is an optimization gap of points, not a failure to train)",
          figure=_depth_figure, margin=MARGINS["C13"]),
    Claim("C14", "wall clock", "BN gives higher accuracy in the same time",
          ("learning_rate",), wall_clock_rule,
          "BN paper: Inception's accuracy in 14× fewer training steps (steps, not time)",
          figure=_speed_figure, margin=MARGINS["C14"]),
)

# Every experiment a claim names: in a `bnlab reproduce` directory each is a sweep
# folder of that name, and a claim is judged on its own experiments' runs only.
EXPERIMENTS = tuple(dict.fromkeys(e for claim in CLAIMS for e in claim.experiments))


def claims_by_id(ids: list[str] | None = None) -> tuple[Claim, ...]:
    """The claims with these ids (all when None), in registry order; ValueError on
    an unknown id."""
    if not ids:
        return CLAIMS
    known = {c.id.lower(): c for c in CLAIMS}
    unknown = [i for i in ids if i.lower() not in known]
    if unknown:
        raise ValueError(f"unknown claim(s) {', '.join(unknown)}; claims: "
                         f"{', '.join(c.id for c in CLAIMS)}")
    wanted = {i.lower() for i in ids}
    return tuple(c for c in CLAIMS if c.id.lower() in wanted)


def _runs_of(claim: Claim, runs: pd.DataFrame) -> pd.DataFrame:
    """The runs a claim is judged on: its experiments' sweeps where the directory is
    laid out by experiment (`bnlab reproduce`), all of them otherwise."""
    if "sweep" in runs and runs["sweep"].isin(EXPERIMENTS).any():
        return runs[runs["sweep"].isin(claim.experiments)]
    return runs


def _set_name(part: pd.DataFrame, index: int) -> str:
    """A seed set's name: its seeds, per experiment where the claim's runs span
    several with their own seed counts (C3: "seeds 0-4 (generalization), 0-2
    (learning_rate)")."""
    if not len(part):
        return f"seed set {index + 1}"
    seeds = pd.to_numeric(part["seed"]).astype(int)
    if "sweep" not in part or part["sweep"].nunique() < 2:
        return _seeds(list(seeds.unique()))
    return "seeds " + ", ".join(
        f"{_seeds(list(seeds[part['sweep'] == sweep].unique()))[len('seeds '):]} ({sweep})"
        for sweep in dict.fromkeys(part["sweep"]))


def _seeds(seeds: list[int]) -> str:
    ordered = sorted(seeds)
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 2:
        return f"seeds {ordered[0]}-{ordered[-1]}"
    return "seeds " + ", ".join(map(str, ordered))


def replicated(claim: Claim, per_set: list[Verdict], pooled: Verdict,
               sets: list[str]) -> Verdict:
    """A claim judged on each disjoint seed set alone: the verdict stands where every
    set says the same, and is INCONCLUSIVE otherwise (a verdict one set gives and
    another does not is not one a rerun would keep). The estimate, details and
    figure are the pooled ones (every set's seeds together); each set's verdict,
    estimate, half-width and what decided it are in `details["replicates"]`. `sets`
    names each set (its seeds, in words)."""
    if pooled.verdict == NOT_MEASURED:
        return pooled
    verdicts = [v.verdict for v in per_set]
    entries = [{"verdict": v.verdict, "seeds": seeds,
                "estimate": v.estimate.jsonable() if v.estimate else None,
                **{k: claim.summary(v)[k] for k in ("half_width", "half_width_that_decides")
                   if k in claim.summary(v)},
                **({"reason": v.reason} if v.reason else {})}
               for seeds, v in zip(sets, per_set, strict=True)]
    out = dataclasses.replace(pooled, details={**pooled.details, "replicates": entries})
    reasons = list(dict.fromkeys(v.reason for v in per_set if v.reason))
    reason = reasons[0] if len(reasons) == 1 else "; ".join(
        f"{name}: {v.reason}" for name, v in zip(sets, per_set, strict=True) if v.reason)
    out.verdict, out.reason = _agreed(verdicts, sets, reason)
    # A rule that judges further settings alone (C5's models, C2's BN on fc1 too):
    # each replicated the same way, by setting.
    others = []
    for other in pooled.details.get("other_settings", []):
        mine = [next((o for o in v.details.get("other_settings", [])
                      if o["setting"] == other["setting"]), None) for v in per_set]
        verdict, reason = _agreed([o["verdict"] if o else NOT_MEASURED for o in mine], sets)
        others.append({**other, "verdict": verdict, **({"reason": reason} if reason else {}),
                       "replicates": [{"verdict": o["verdict"] if o else NOT_MEASURED,
                                       "seeds": seeds}
                                      for seeds, o in zip(sets, mine, strict=True)]})
    if others:
        out.details["other_settings"] = others
    return out


def _agreed(verdicts: list[str], sets: list[str], reason: str = "") -> tuple[str, str]:
    """The verdict every seed set gave (and `reason`), or INCONCLUSIVE and why."""
    if len(set(verdicts)) == 1:
        return verdicts[0], reason
    return INCONCLUSIVE, "it did not replicate: " + ", ".join(
        f"{seeds} say {v}" for seeds, v in zip(sets, verdicts, strict=True))


def _replicate_of(runs: pd.DataFrame,
                  seed_sets: dict[str, list[list[int]]] | list[list[int]]) -> pd.Series:
    """Each run's seed set (0, 1, …; NaN for a seed in none): `seed_sets` per
    experiment (a run's `sweep`), or one list of sets for every run."""
    def index(sets, seed):
        return next((r for r, one in enumerate(sets) if seed in one), math.nan)

    seeds = pd.to_numeric(runs["seed"], errors="coerce")
    if isinstance(seed_sets, dict):
        sweeps = runs["sweep"] if "sweep" in runs else pd.Series(None, index=runs.index)
        return pd.Series([index(seed_sets.get(str(sweep), []), seed)
                          for sweep, seed in zip(sweeps, seeds, strict=True)], index=runs.index)
    return seeds.map(lambda seed: index(seed_sets, seed))


def evaluate(runs: pd.DataFrame, claims: tuple[Claim, ...] = CLAIMS,
             seed_sets: dict[str, list[list[int]]] | list[list[int]] | None = None
             ) -> list[Verdict]:
    """A verdict per claim from the runs (one `analysis.load_runs` frame); with
    `seed_sets` (a reproduction's: {experiment: two disjoint sets or more}, or one
    list for all), each claim judged on each set alone (`replicated`), the runs of
    other seeds left out."""
    count = (max((len(v) for v in seed_sets.values()), default=0)
             if isinstance(seed_sets, dict) else len(seed_sets or []))
    replicate = count >= 2 and "seed" in runs
    out = []
    for claim in claims:
        if claim.rule is None:
            out.append(_not_measured(claim.id, "no rule yet"))
            continue
        mine = _runs_of(claim, runs)
        if not replicate or not claim.experiments:  # C7 is computed: no seeds
            out.append(claim.rule(mine))
            continue
        which = _replicate_of(mine, seed_sets)
        parts = [mine[which == r] for r in range(count)]
        names = [_set_name(part, r) for r, part in enumerate(parts)]
        per_set = [claim.rule(part) for part in parts]
        out.append(replicated(claim, per_set, claim.rule(mine[which.notna()]), names))
    return out
