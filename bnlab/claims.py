"""The article's claims (DESIGN.md §1) and the rules that turn a tracking directory
into a verdict for each: SUPPORTED, NOT SUPPORTED or INCONCLUSIVE, from several
seeds with a 95% interval, never from one run.

Each rule reads the runs `analysis.load_runs` gives, picks those of its
experiment, and returns a `Verdict` with the effect it measured and its interval.
A claim without a rule yet, or a directory without its runs, is reported as
"not measured": never a verdict.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "SUPPORTED", "NOT SUPPORTED", "INCONCLUSIVE"
NOT_MEASURED = "not measured"


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A linear combination of group means with its Welch 95% interval."""

    value: float
    low: float
    high: float
    dof: float

    def jsonable(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def contrast(groups: list[tuple[float, np.ndarray]], confidence: float = 0.95) -> Estimate:
    """Σ cᵢ·mean(xᵢ) over independent groups (c, values), with the interval
    ± t(ν)·√(Σ cᵢ² sᵢ²/nᵢ), ν by Welch–Satterthwaite. NaN bounds when a group has
    fewer than two values."""
    from bnlab.analysis import t_quantile

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


@dataclasses.dataclass
class Verdict:
    claim: str
    verdict: str
    effect: str  # what was measured, in words
    estimate: Estimate | None
    details: dict[str, Any]
    runs: pd.DataFrame | None = None  # the runs the rule compared (for the figure)

    def jsonable(self) -> dict[str, Any]:
        return {"claim": self.claim, "verdict": self.verdict, "effect": self.effect,
                "estimate": self.estimate.jsonable() if self.estimate else None,
                "details": self.details}


@dataclasses.dataclass(frozen=True)
class Claim:
    id: str
    short: str
    text: str  # the article's claim, in English
    experiment: str  # the sweep file that tests it
    rule: Callable[[pd.DataFrame], Verdict] | None = None


def _finished(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"].isin(("done", "diverged"))]


def _values(runs: pd.DataFrame, metric: str) -> np.ndarray:
    return pd.to_numeric(runs[metric], errors="coerce").to_numpy(dtype=float)


def _not_measured(claim: str, why: str) -> Verdict:
    return Verdict(claim, NOT_MEASURED, why, None, {})


@functools.cache
def _config_fields() -> tuple[str, ...]:
    """The config's field names (read once: every rule asks)."""
    from bnlab.config import DEFAULT_CONFIG_FILE, flatten, load_config_file

    return tuple(flatten(load_config_file(DEFAULT_CONFIG_FILE)))


# Fields that never make two runs' settings differ (where they ran, how they logged).
_INCIDENTAL = {"data_dir", "coordinator_address", "num_processes", "process_id",
               "log_every", "eval_every", "checkpoint_every", "log_grad_norms",
               "steps_per_call", "eval_batch_size"}


def _comparable(runs: pd.DataFrame, free: tuple[str, ...]) -> list[pd.DataFrame]:
    """The runs split into groups that share every config field except `norm`,
    `seed` and the `free` ones: within a group, only those differ. Largest first."""
    fields = [f for f in _config_fields() if f in runs and f not in _INCIDENTAL
              and f not in ("norm", "seed", *free)]
    if not fields:
        return [runs]
    # repr: NaN, None and tuples all become plain, comparable text.
    keys = pd.Series(["|".join(map(repr, row)) for row in runs[fields].itertuples(index=False)],
                     index=runs.index)
    groups = [group for _, group in runs.groupby(keys, sort=False)]
    return sorted(groups, key=len, reverse=True)


# ---------------------------------------------------------------- rules

def _judge(estimate: Estimate, margin: float, also_supported: bool = True,
           also_not_supported: bool = False, defined: bool = True) -> str:
    """SUPPORTED when the whole interval lies above 0 (and `also_supported`); NOT
    SUPPORTED when it lies below `margin`, an effect too small to matter (or
    `also_not_supported`); INCONCLUSIVE otherwise, and without an interval."""
    if not defined or math.isnan(estimate.low):
        return INCONCLUSIVE
    if estimate.low > 0 and also_supported:
        return SUPPORTED
    if estimate.high < margin or also_not_supported:
        return NOT_SUPPORTED
    return INCONCLUSIVE


# An effect smaller than this (accuracy, absolute) is too small to matter here: a
# claim of a benefit is NOT SUPPORTED when the whole interval lies below it.
ACCURACY_MARGIN = 0.01


def small_batch_rule(runs: pd.DataFrame) -> Verdict:
    """C5: BN's test accuracy drops from the largest batch to the smallest, and by
    more than GN's (the Group Norm paper's Figure 1). Effect: BN's drop minus GN's,
    each a difference of means over seeds."""
    candidates = [g for g in _comparable(_finished(runs), ("batch_size", "learning_rate"))
                  if {"bn", "gn"} <= set(g["norm"]) and g["batch_size"].nunique() >= 2]
    if not candidates:
        return _not_measured("C5", "needs bn and gn runs at two batch sizes or more")
    runs = candidates[0]
    small, large = runs["batch_size"].min(), runs["batch_size"].max()

    def accuracy(norm, size):
        return _values(runs[(runs["norm"] == norm) & (runs["batch_size"] == size)],
                       "test_accuracy")

    bn_drop = contrast([(1, accuracy("bn", large)), (-1, accuracy("bn", small))])
    gn_drop = contrast([(1, accuracy("gn", large)), (-1, accuracy("gn", small))])
    excess = contrast([(1, accuracy("bn", large)), (-1, accuracy("bn", small)),
                       (-1, accuracy("gn", large)), (1, accuracy("gn", small))])
    details = {"small_batch": int(small), "large_batch": int(large),
               "bn_drop": bn_drop.jsonable(), "gn_drop": gn_drop.jsonable()}
    effect = f"BN's accuracy drop from batch {large} to {small}, minus GN's"
    verdict = _judge(excess, ACCURACY_MARGIN, also_supported=bn_drop.low > 0,
                     also_not_supported=bn_drop.high < ACCURACY_MARGIN)
    return Verdict("C5", verdict, effect, excess, details, runs)


def learning_rate_rule(runs: pd.DataFrame, rate_step: float = 3.0) -> Verdict:
    """C2: BN trains at larger learning rates than no norm. A rate trains for a norm
    when no seed diverged and the mean test accuracy is within 5 points of that
    norm's best rate. Effect: the ratio of the highest rates that train, BN's over
    no norm's. SUPPORTED from one grid step up (`rate_step`), NOT SUPPORTED at 1 or
    below; INCONCLUSIVE with fewer than 2 seeds per rate."""
    # Rates compared where only the rate differs (a batch-size sweep that scales the
    # rate with the batch has one rate per setting).
    candidates = [g for g in _comparable(_finished(runs), ("learning_rate",))
                  if {"bn", "none"} <= set(g["norm"])
                  and min(g[g["norm"] == n]["learning_rate"].nunique()
                          for n in ("bn", "none")) >= 2]
    if not candidates:
        return _not_measured("C2", "needs bn and none runs at two learning rates or more, "
                             "all else equal")
    runs = candidates[0]
    size = runs["batch_size"].iloc[0]
    highest, seeds = {}, []
    for norm in ("bn", "none"):
        table = []
        for rate, group in runs[runs["norm"] == norm].groupby("learning_rate"):
            seeds.append(len(group))
            table.append((rate, (group["status"] == "diverged").any(),
                          np.nanmean(_values(group, "test_accuracy"))
                          if (group["status"] == "done").any() else math.nan))
        best = max((acc for _, _, acc in table if not math.isnan(acc)), default=math.nan)
        trains = [rate for rate, diverged, acc in table
                  if not diverged and not math.isnan(acc) and acc >= best - 0.05]
        highest[norm] = max(trains) if trains else math.nan
    ratio = highest["bn"] / highest["none"]
    details = {"highest_training_rate": highest, "min_seeds_per_rate": min(seeds),
               "batch_size": int(size)}
    effect = f"highest learning rate that trains: BN's ÷ no norm's (batch {size})"
    if min(seeds) < 2 or math.isnan(ratio):
        verdict = INCONCLUSIVE
    elif ratio >= rate_step * 0.999:
        verdict = SUPPORTED
    elif ratio <= 1:
        verdict = NOT_SUPPORTED
    else:
        verdict = INCONCLUSIVE
    return Verdict("C2", verdict, effect, Estimate(ratio, math.nan, math.nan, math.nan),
                   details, runs)


def generalization_rule(runs: pd.DataFrame) -> Verdict:
    """C3: BN generalizes better than no norm. Effect: test accuracy of BN minus no
    norm at one setting (batch size and learning rate) both ran, means over seeds.
    SUPPORTED needs BN's train-minus-test gap to be narrower too; NOT SUPPORTED when
    BN's test accuracy is not 1 point better."""
    runs = runs[runs["status"] == "done"]
    # One setting both norms ran: the one with the most seeds of each, then the
    # largest batch, then the smallest learning rate (where both are likely to train).
    candidates = [g for g in _comparable(runs, ()) if {"bn", "none"} <= set(g["norm"])]
    if not candidates:
        return _not_measured("C3", "needs finished bn and none runs, all else equal")

    def preference(group):
        seeds = min((group["norm"] == n).sum() for n in ("bn", "none"))
        return seeds, group["batch_size"].iloc[0], -group["learning_rate"].iloc[0]

    at = max(candidates, key=preference)
    size, rate = at["batch_size"].iloc[0], at["learning_rate"].iloc[0]
    bn, none = at[at["norm"] == "bn"], at[at["norm"] == "none"]
    estimate = contrast([(1, _values(bn, "test_accuracy")), (-1, _values(none, "test_accuracy"))])

    def gap(group):  # train accuracy is the last log window's, on training batches
        return _values(group, "train_accuracy") - _values(group, "test_accuracy")

    narrower = contrast([(1, gap(none)), (-1, gap(bn))])
    details = {"batch_size": int(size), "learning_rate": float(rate),
               "gap_none_minus_bn": narrower.jsonable()}
    effect = f"test accuracy, BN minus no norm (batch {size}, lr {rate:g})"
    # Regularizing means generalizing better, not only fitting faster: BN must both
    # test higher and show a narrower train-test gap.
    verdict = _judge(estimate, ACCURACY_MARGIN, also_supported=narrower.low > 0,
                     defined=not math.isnan(narrower.low))
    return Verdict("C3", verdict, effect, estimate, details, at)


def _gradient_spread(run_path: str) -> float:
    """The widest spread, over the run's logs, of its weight layers' gradient norms:
    log10(largest / smallest) across layers. Vanishing (the input side far below the
    output side) and exploding (one layer far above the rest) both widen it; NaN
    without `grad_norm/` metrics."""
    from pathlib import Path

    from bnlab import tracking

    widest = math.nan
    for row in tracking.read_metrics(Path(run_path) / "metrics.jsonl"):
        norms = [v for k, v in row.items() if k.startswith("grad_norm/")
                 and "norm" not in k[len("grad_norm/"):].lower()
                 and isinstance(v, int | float) and math.isfinite(v) and v > 0]
        if len(norms) >= 2:
            spread = math.log10(max(norms) / min(norms))
            widest = spread if math.isnan(widest) else max(widest, spread)
    return widest


# A difference in spread below this many decades is too small to matter.
SPREAD_MARGIN = 0.5


def gradient_rule(runs: pd.DataFrame) -> Verdict:
    """C4: BN keeps gradient norms even across depth. Effect: the widest spread of
    the weight layers' gradient norms over training (decades, `_gradient_spread`),
    no norm's minus BN's, means over seeds, for runs that logged `log_grad_norms`."""
    candidates = [g for g in _comparable(_finished(runs), ()) if {"bn", "none"} <= set(g["norm"])
                  and np.isfinite([_gradient_spread(p) for p in g["path"][:1]]).all()]
    if not candidates:
        return _not_measured("C4", "needs bn and none runs with log_grad_norms=True, "
                             "all else equal")
    runs = candidates[0]
    spreads = {norm: np.array([_gradient_spread(p) for p in runs.loc[runs["norm"] == norm,
                                                                      "path"]])
               for norm in ("bn", "none")}
    spreads = {n: v[np.isfinite(v)] for n, v in spreads.items()}
    if min(len(v) for v in spreads.values()) == 0:
        return _not_measured("C4", "needs bn and none runs with log_grad_norms=True")
    estimate = contrast([(1, spreads["none"]), (-1, spreads["bn"])])
    details = {"mean_spread_decades": {n: float(v.mean()) for n, v in spreads.items()},
               "runs": {n: len(v) for n, v in spreads.items()}}
    effect = "gradient-norm spread across layers (decades), no norm's minus BN's"
    return Verdict("C4", _judge(estimate, SPREAD_MARGIN), effect, estimate, details, runs)


CLAIMS: tuple[Claim, ...] = (
    Claim("C1", "speed", "BN speeds training up: fewer steps to a given accuracy",
          "experiments/learning_rate.py"),
    Claim("C2", "lr", "BN tolerates much larger learning rates",
          "experiments/learning_rate.py", learning_rate_rule),
    Claim("C3", "regularize", "BN regularizes: better generalization",
          "experiments/batch_size.py", generalization_rule),
    Claim("C4", "gradients", "BN relieves vanishing and exploding gradients",
          "experiments/gradient_flow.py", gradient_rule),
    Claim("C5", "small batch", "BN degrades at small batch; GN, LN and IN do not",
          "experiments/batch_size.py", small_batch_rule),
    Claim("C6", "placement", "BN goes after the convolution, before the activation", ""),
    Claim("C7", "stats", "μ_B and σ²_B are per-channel vectors over the batch",
          "tests/test_norms.py"),
    Claim("C8", "sequences", "BN suits variable-length sequences badly; LN suits them", ""),
    Claim("C9", "alternatives", "GN sits between BN and LN and works in both regimes", ""),
    Claim("C10", "mechanism", "BN works by reducing internal covariate shift", ""),
)


def evaluate(runs: pd.DataFrame, claims: tuple[Claim, ...] = CLAIMS) -> list[Verdict]:
    """A verdict per claim from the runs (one `analysis.load_runs` frame)."""
    out = []
    for claim in claims:
        if claim.rule is None:
            out.append(_not_measured(claim.id, "no rule yet"))
        else:
            out.append(claim.rule(runs))
    return out


# ---------------------------------------------------------------- the report

def _figure(verdict: Verdict, path) -> bool:
    """The claim's figure, drawn from the runs its rule compared."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bnlab import analysis

    runs = verdict.runs
    if runs is None or verdict.claim not in ("C2", "C3", "C4", "C5"):
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        if verdict.claim == "C5":
            analysis.plot_vs_batch_size(runs[runs["norm"] != "none"], ax=ax)
        elif verdict.claim == "C2":
            analysis.plot_lr_sensitivity(runs[runs["norm"].isin(("bn", "none"))], ax=ax)
        elif verdict.claim == "C3":
            for x, metric in enumerate(("train_accuracy", "test_accuracy")):
                table = analysis.aggregate(runs, "norm", metric)
                for offset, row in enumerate(table.itertuples()):
                    ax.errorbar(x + 0.15 * offset, row.mean, fmt="o", capsize=3,
                                yerr=[[row.mean - row.ci_low], [row.ci_high - row.mean]],
                                color=f"C{offset}", label=row.norm if x == 0 else None)
            ax.set_xticks([0.08, 1.08], ["train (last log)", "test"])
            ax.set_ylabel("accuracy")
            ax.legend(title="norm")
        else:
            curves = pd.concat([analysis.load_curves(p) for p in runs["path"]])
            analysis.plot_grad_norms(curves, ax=ax, layers="Conv|Dense")
        ax.set_title(f"{verdict.claim}: {verdict.verdict}")
        fig.savefig(path, dpi=90, bbox_inches="tight")
        return True
    finally:
        plt.close(fig)


def write_report(workdir, out=None) -> list[Verdict]:
    """report.md, claims.json and a PNG per measured claim, in `out` (default: the
    tracking directory itself), from the runs under `workdir`; trains nothing."""
    from pathlib import Path

    from bnlab import analysis, tracking

    out = Path(out or workdir)
    out.mkdir(parents=True, exist_ok=True)
    runs = analysis.load_runs(workdir)
    verdicts = evaluate(runs)
    lines = ["# bnlab: the article's claims", "",
             f"{len(runs)} runs under `{workdir}`. Intervals are 95% over seeds (Welch).", "",
             "| claim | verdict | effect | estimate [95% interval] | the article says |",
             "|---|---|---|---|---|"]
    for claim, verdict in zip(CLAIMS, verdicts, strict=True):
        estimate = ""
        if verdict.estimate is not None:
            e = verdict.estimate
            estimate = f"{e.value:.3f}" + ("" if math.isnan(e.low)
                                           else f" [{e.low:.3f}, {e.high:.3f}]")
        figure = f"{claim.id}.png"
        if verdict.verdict != NOT_MEASURED and _figure(verdict, out / figure):
            estimate += f" ([figure]({figure}))"
        lines.append(f"| {claim.id} {claim.short} | {verdict.verdict} | {verdict.effect} | "
                     f"{estimate} | {claim.text} |")
    tracking._write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    # NaN (an interval that could not be computed) is written as null.
    tracking.write_json_atomic(out / "claims.json", [
        {"id": c.id, "text": c.text, "experiment": c.experiment, **v.jsonable()}
        for c, v in zip(CLAIMS, verdicts, strict=True)])
    return verdicts
