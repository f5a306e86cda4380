"""The claims' report: report.md (a table of verdicts, then a section per claim with
what its rule measured and its details), claims.json (the same, for machines) and
a PNG per measured claim, drawn by the figure the claim declares
(`claims.Claim.figure`). Judges nothing itself: the verdicts are `claims.evaluate`'s.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

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
        name = key.replace("_", " ")
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


def write_report(workdir: str | Path, out: str | Path | None = None,
                 claims: tuple[Claim, ...] = CLAIMS) -> list[Verdict]:
    """report.md, claims.json and a PNG per measured claim, in `out` (default: the
    tracking directory itself), from the runs under `workdir`; trains nothing. All
    are written at the end, each whole (`tracking.Unwritable` where the disk refuses)."""
    out = Path(out or workdir)
    runs = analysis.load_runs(workdir)
    verdicts = evaluate(runs, claims)
    about = tracking.SweepDir(workdir).read_reproduce()
    header = f"{len(runs)} runs under `{workdir}`"
    if about:
        header += (f", `bnlab reproduce --scale {about['scale']}`"
                   + (f" ({about['wall_s'] / 60:.1f} min)" if about.get("wall_s") else ""))
    lines = ["# bnlab: the article's claims", "",
             header + ". Intervals are 95% over seeds (Welch); each claim's section below "
             "says what was compared.", "",
             "| claim | verdict | effect | estimate [95% interval] | the article says |",
             "|---|---|---|---|---|"]
    sections, figures = [], {}
    for claim, verdict in zip(claims, verdicts, strict=True):
        figure = f"{claim.id}.png"
        drawn = _figure(claim, verdict)
        if drawn:
            figures[figure] = drawn
        effect, estimate = verdict.effect, _format(verdict.estimate)
        for other in verdict.details.get("other_models", []):  # C5 on each model it ran
            effect += f"; {other['model']}: {other['verdict']}"
            estimate += f"; {other['model']}: {_format(Estimate(**other['estimate']))}"
        lines.append(f"| [{claim.id} {claim.short}](#{claim.id.lower()}) | {verdict.verdict} | "
                     f"{effect} | {estimate} | {claim.text} |")
        sections += ["", f"## {claim.id}", "", f"**{claim.text}** — {verdict.verdict}.", ""]
        if verdict.verdict == NOT_MEASURED:
            sections.append(f"Not measured: {verdict.effect}.")
        else:
            sections.append(f"Measured: {verdict.effect}: {_format(verdict.estimate)}.")
        if claim.experiments:
            sections.append("Experiments: " + ", ".join(f"`experiments/{e}.py`"
                                                        for e in claim.experiments) + ".")
        else:
            sections.append("Computed when the report is written; nothing is trained.")
        if claim.reference:
            sections.append(f"Reference: {claim.reference}.")
        if verdict.details:
            sections += [""] + _detail_lines(verdict.details)
        if drawn:
            sections += ["", f"![{claim.id}]({figure})"]
    # NaN (an interval that could not be computed) is written as null.
    tracking.SweepDir(out).write_report("\n".join(lines + sections) + "\n", [
        {"id": c.id, "text": c.text, "experiments": list(c.experiments),
         "reference": c.reference, **v.jsonable()}
        for c, v in zip(claims, verdicts, strict=True)], figures)
    return verdicts
