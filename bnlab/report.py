"""The claims' report: report.md (a table of verdicts, then a section per claim with
what its rule measured and its details), claims.json (the same, for machines) and
a PNG per measured claim, drawn by the figure the claim declares
(`claims.Claim.figure`). Judges nothing itself: the verdicts are `claims.evaluate`'s.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from bnlab import analysis, tracking
from bnlab.claims import CLAIMS, NOT_MEASURED, Claim, Verdict, evaluate
from bnlab.stats import Estimate


def _figure(claim: Claim, verdict: Verdict) -> bytes | None:
    """The claim's figure of a measured verdict as PNG bytes (written with the report,
    by `tracking`); None when the claim declares none."""
    if claim.figure is None or verdict.verdict == NOT_MEASURED:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, whatever the backend configured
    import matplotlib.pyplot as plt

    fig = plt.figure()
    try:
        claim.figure(verdict, fig)
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=80, bbox_inches="tight")
        return png.getvalue()
    finally:
        plt.close(fig)


def _format(estimate: Estimate | None) -> str:
    if estimate is None:
        return ""
    return f"{estimate.value:.3g}" + ("" if math.isnan(estimate.low)
                                      else f" [{estimate.low:.3g}, {estimate.high:.3g}]")


def _detail_lines(details: dict[str, Any], indent: str = "") -> list[str]:
    """The rule's details as a nested Markdown list, intervals written as intervals."""
    lines = []
    for key, value in details.items():
        name = str(key).replace("_", " ")
        if isinstance(value, dict) and {"value", "low", "high"} <= set(value):
            lines.append(f"{indent}- {name}: {_format(Estimate(**value))}")
        elif isinstance(value, dict):
            lines.append(f"{indent}- {name}:")
            lines += _detail_lines(value, indent + "  ")
        elif isinstance(value, list) and not value:
            continue
        elif isinstance(value, list) and isinstance(value[0], dict):
            for item in value:
                lines.append(f"{indent}- {name}: {item.get('verdict', '')}")
                lines += _detail_lines({k: v for k, v in item.items() if k != "verdict"},
                                       indent + "  ")
        elif isinstance(value, float):
            lines.append(f"{indent}- {name}: {value:.4g}")
        elif isinstance(value, list) and all(isinstance(v, float) for v in value):
            lines.append(f"{indent}- {name}: " + ", ".join(f"{v:.4g}" for v in value))
        else:
            lines.append(f"{indent}- {name}: {value}")
    return lines


def provenance(runs, about: dict[str, Any] | None) -> dict[str, Any]:
    """Where the numbers come from: the commits, versions, devices and hosts the
    runs recorded (env.json; each value with its count of runs), and the scale and
    overrides of the reproduction."""
    envs = [tracking.RunDir(path).env() for path in runs["path"]]
    out: dict[str, Any] = {
        key: dict(Counter(str(env.get(key) or "unknown") for env in envs).most_common())
        for key in ("git_commit", "python", "jax", "flax", "optax", "platform", "host",
                    "machine")}
    # The rules that judged them: the report may be rebuilt by a later bnlab.
    out["report_commit"] = tracking.git_commit() or "unknown"
    if about:
        out.update(scale=about.get("scale"), overrides=about.get("overrides") or {})
    return out


def _provenance_lines(facts: dict[str, Any]) -> list[str]:
    def counted(key) -> str:
        values = facts[key]
        return ", ".join(f"{v} ({n} runs)" if len(values) > 1 else v for v, n in values.items())

    lines = ["## Provenance", "",
             f"- bnlab commit of the runs: {counted('git_commit')}; of this report's "
             f"rules: {facts['report_commit']}",
             f"- versions: python {counted('python')}, jax {counted('jax')}, flax "
             f"{counted('flax')}, optax {counted('optax')}",
             f"- platform: {counted('platform')} on {counted('host')} ({counted('machine')})"]
    if "scale" in facts:
        lines.append(f"- `bnlab reproduce --scale {facts['scale']}`, overrides: "
                     f"{facts['overrides'] or 'none'}")
    return lines


def _wall(about: dict[str, Any] | None) -> str:
    """The reproduction's wall clock, in words: every launch's, summed (a relaunch
    that added runs, or resumed killed ones, took its share)."""
    if not about:
        return ""
    walls = [launch["wall_s"] for launch in about.get("launches", []) if launch.get("wall_s")]
    if not walls:
        return f"{about['wall_s'] / 60:.1f} min" if about.get("wall_s") else ""
    text = f"{sum(walls) / 60:.1f} min"
    if len(walls) > 1:
        text += (f" over {len(walls)} launches: "
                 + " + ".join(f"{wall / 60:.1f}" for wall in walls))
    return text


def _time_lines(runs, about: dict[str, Any] | None) -> list[str]:
    """Where the time went, per experiment: the runs' own seconds (summed over runs;
    parallel workers overlap them), split into the first call (it compiles, or loads
    the compiled program from the cache), evaluations (test sets, diagnostics,
    PreciseBN) and the training steps."""
    needed = ("wall_time_s", "first_step_s", "eval_time_s")
    if not len(runs) or not all(c in runs for c in needed):
        return []
    table = runs.assign(**{c: pd.to_numeric(runs[c], errors="coerce") for c in needed})
    by = table.groupby("sweep" if "sweep" in table else (lambda _: "runs"), sort=False)
    lines = ["## Time", ""]
    if _wall(about):
        lines.append(f"The reproduction took {_wall(about)} of wall "
                     "clock. The runs' own seconds, summed over each experiment's runs "
                     "(parallel workers overlap them; starting the workers, loading the "
                     "data and the checks before the runs are outside them):")
        lines.append("")
    lines += ["| experiment | runs | run seconds | first call (compile) | evaluation | "
              "training |", "|---|---|---|---|---|---|"]
    for name, group in list(by) + [("all", table)]:
        wall, first, evaluation = (group[c].sum() for c in needed)
        train = wall - first - evaluation
        lines.append(f"| {name} | {len(group)} | {wall:.0f} | {first:.0f} ({first / wall:.0%}) "
                     f"| {evaluation:.0f} ({evaluation / wall:.0%}) | {train:.0f} "
                     f"({train / wall:.0%}) |" if wall > 0 else f"| {name} | {len(group)} "
                     "| | | | |")
    return lines


def _limitations(runs, facts: dict[str, Any], about: dict[str, Any] | None) -> list[str]:
    """What the results cannot say, from what the runs were: their data sets, models,
    platforms and training lengths (not a fixed text that could go stale)."""
    def listed(column) -> str:
        if column not in runs or not len(runs):
            return "unknown"
        return ", ".join(str(v) for v in dict.fromkeys(runs[column].dropna()))

    steps = pd.to_numeric(runs["step"], errors="coerce") if "step" in runs else None
    length = ("" if steps is None or steps.isna().all()
              else f", {int(steps.min())} to {int(steps.max())} steps a run")
    wall = f" in {_wall(about).split(' over ')[0]}" if _wall(about) else ""
    return [
        "## Limitations", "",
        f"- Data: {listed('dataset')}. The papers behind the claims trained on ImageNet "
        "and CIFAR-10; effects that need harder data may not show here.",
        f"- Models: {listed('model')}{length}, trained{wall} on "
        f"{', '.join(facts['platform'])}: effects that need long training or large "
        "models may not show here, and effects absent here do not refute them there.",
        "- The normalization batch equals the SGD batch unless an experiment separates "
        "them (ghost BN); the GN paper's batch is per GPU, not the SGD batch.",
        "- Each claim's interval is over seeds; the margins it is judged against were "
        "fixed before the runs (`bnlab.claims.MARGINS`), and each says why it is that "
        "size."]


SMOKE_WARNING = ("**Smoke scale: these verdicts check the machinery (every experiment "
                 "runs, every rule reads its runs). They are not evidence about the "
                 "article.**")


def _decision(claim: Claim, verdict: Verdict) -> str:
    """The margin, the half-width and what would have decided, in words (for each
    seed set, where the claim was judged on each alone)."""
    summary = claim.summary(verdict)
    if not summary:
        return ""
    text = (f"Judged against a smallest effect of interest of {claim.margin} "
            f"({claim.margin.why}). ")
    replicates = verdict.details.get("replicates")
    if not replicates:
        return text + _interval_text(claim, verdict.verdict, summary, verdict.reason)
    factor = "×/÷ " if summary["log_scale"] else "± "
    text += "Judged on each seed set alone, and standing only where they agree: "
    for one in replicates:
        if "half_width" not in one:  # not measured on this set: nothing to say of it
            text += f"{one['seeds']}: {one['verdict']}. "
            continue
        said = _interval_text(claim, one["verdict"], {"log_scale": summary["log_scale"], **one},
                              one.get("reason", ""))
        text += f"{one['seeds']}: {one['verdict']}; {said[0].lower()}{said[1:]} "
    if verdict.reason.startswith("it did not replicate"):
        text += f"{verdict.reason[0].upper()}{verdict.reason[1:]}."
    half = summary["half_width"]
    if not math.isnan(half) and not math.isinf(half):
        text += f" All seeds together: an interval {factor}{half:.3g} wide."
    return text.rstrip()


def _interval_text(claim: Claim, verdict: str, summary: dict[str, Any], reason: str) -> str:
    """One interval's half-width, what would have decided it, and `reason`."""
    factor = "×/÷ " if summary["log_scale"] else "± "
    text = ""
    half = summary.get("half_width", math.nan)
    if math.isnan(half):
        text += "No interval: too few seeds shared by the arms compared."
    elif math.isinf(half):
        text += "The interval is open on one side"
    else:
        text += f"The interval is {factor}{half:.3g} wide"
        if verdict == "INCONCLUSIVE" and not reason:
            text += (f"; it decides at {factor}{summary['half_width_that_decides']:.3g} "
                     "(the distance from the estimate to the margin)")
    if not math.isnan(half):
        text += "."
    if reason:
        text += f" {reason[0].upper()}{reason[1:]}."
    return text


def write_report(workdir: str | Path, out: str | Path | None = None,
                 claims: tuple[Claim, ...] = CLAIMS) -> list[Verdict]:
    """report.md, claims.json and a PNG per measured claim, in `out` (default: the
    tracking directory itself), from the runs under `workdir`; trains nothing. All
    are written at the end, each whole (`tracking.Unwritable` where the disk refuses)."""
    out = Path(out or workdir)
    runs = analysis.load_runs(workdir)
    about = tracking.SweepDir(workdir).read_reproduce()
    seed_sets = (about or {}).get("seed_sets")
    verdicts = evaluate(runs, claims, seed_sets)
    header = f"{len(runs)} runs under `{workdir}`"
    if about:
        header += (f", `bnlab reproduce --scale {about['scale']}`"
                   + (f" ({_wall(about)})" if _wall(about) else ""))
    lines = ["# bnlab: the article's claims", ""]
    if about and about.get("scale") == "smoke":
        lines += [SMOKE_WARNING, ""]
    lines += [header + ". Intervals are 95% over seeds, on per-seed differences of arms "
              "that share seeds (paired). A verdict is SUPPORTED when the interval lies "
              "beyond the claim's margin on the side the claim predicts (above it; below "
              "it for a margin written \"below\"), NOT SUPPORTED when it lies on the "
              "other side, INCONCLUSIVE otherwise; each claim's section says what was "
              "compared." + (" Each claim is judged on two disjoint seed sets alone, "
                             "and a verdict stands only where both give it; the estimate is "
                             "all seeds' together." if seed_sets else ""), "",
              "| claim | verdict | effect | estimate [95% interval] | each seed set | "
              "margin | the article says |", "|---|---|---|---|---|---|---|"]
    sections, figures = [], {}
    for claim, verdict in zip(claims, verdicts, strict=True):
        figure = f"{claim.id}.png"
        drawn = _figure(claim, verdict)
        if drawn:
            figures[figure] = drawn
        effect, estimate = verdict.effect, _format(verdict.estimate)
        # Further settings a rule judged alone (C5's models, C2's BN on fc1 too).
        for other in verdict.details.get("other_settings", []):
            effect += f"; {other['setting']}: {other['verdict']}"
            estimate += f"; {other['setting']}: {_format(Estimate(**other['estimate']))}"
        margin = str(claim.margin) if claim.margin else "definition check"
        each = "; ".join(f"{one['seeds']}: {one['verdict']}"
                         + (f" {_format(Estimate(**one['estimate']))}" if one["estimate"]
                            else "") for one in verdict.details.get("replicates", []))
        lines.append(f"| [{claim.id} {claim.short}](#{claim.id.lower()}) | {verdict.verdict} | "
                     f"{effect} | {estimate} | {each} | {margin} | {claim.text} |")
        sections += ["", f"## {claim.id}", "", f"**{claim.text}** — {verdict.verdict}.", ""]
        if verdict.verdict == NOT_MEASURED:
            sections.append(f"Not measured: {verdict.effect}.")
        else:
            sections.append(f"Measured: {verdict.effect}: {_format(verdict.estimate)}.")
        if claim.experiments:
            sections.append("Experiments: " + ", ".join(f"`experiments/{e}.py`"
                                                        for e in claim.experiments) + ".")
        else:
            sections.append("Computed when the report is written; nothing is trained: a "
                            "check of bnlab's own BatchNorm against the definition, not "
                            "evidence about the article's claim.")
        if _decision(claim, verdict):
            sections.append(_decision(claim, verdict))
        if claim.reference:
            sections.append(f"Reference: {claim.reference}.")
        if verdict.details:
            sections += [""] + _detail_lines(verdict.details)
        if drawn:
            sections += ["", f"![{claim.id}]({figure})"]
    # NaN (an interval that could not be computed) is written as null.
    untested = ["", "## Not tested", "",
                "The article's remarks on DCGAN (BN in the generator and discriminator) and "
                "on instance normalization for style transfer are not tested: both need "
                "generative models and a perceptual judgement that bnlab's classifiers on "
                "Fashion-MNIST cannot give honestly."]
    facts = provenance(runs, about)
    timing = _time_lines(runs, about)
    closing = ([""] + _provenance_lines(facts) + ([""] + timing if timing else []) + [""]
               + _limitations(runs, facts, about) + untested)
    tracking.SweepDir(out).write_report("\n".join(lines + sections + closing) + "\n", facts, [
        {"id": c.id, "text": c.text, "experiments": list(c.experiments),
         "reference": c.reference, **v.jsonable(), **c.summary(v),
         **({"margin_why": c.margin.why} if c.margin else {})}
        for c, v in zip(claims, verdicts, strict=True)], figures)
    return verdicts
