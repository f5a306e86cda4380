"""C7: BN's statistics are per-channel vectors over the batch: a definition check,
computed."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bnlab.claims.base import NOT_SUPPORTED, SUPPORTED, Verdict, _panels, _title
from bnlab.stats import Estimate

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def statistics_rule(runs: pd.DataFrame | None = None) -> Verdict:
    """C7: the statistics BN normalizes a conv layer's output with are one mean and
    one variance per channel, over the batch and the spatial positions. Computed,
    not trained: bnlab's BatchNorm on a (8, 5, 5, 4) tensor whose channels have
    different means and scales, against the formula in NumPy (float64). SUPPORTED
    when the running statistics have one value per channel and the layer's output
    and statistics match the formula to float32 rounding (1e-5); NOT SUPPORTED
    otherwise. Effect: the largest absolute difference."""
    import jax
    import jax.numpy as jnp

    from bnlab import fast, norms

    rng = np.random.default_rng(0)
    channels = 4
    x = (rng.standard_normal((8, 5, 5, channels)) * np.arange(1, channels + 1)
         + 3.0 * np.arange(channels)).astype(np.float32)
    # As every run computes it (bnlab.fast); momentum 0: running = this batch's.
    layer = norms.make("bn", momentum=0.0, epsilon=1e-5, normalize=fast.choose().normalize)
    variables = layer.init(jax.random.key(0), jnp.zeros_like(x), train=True)
    y, updates = layer.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
    stats = updates["batch_stats"]
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))  # μ_B, σ²_B (biased)
    expected = (x64 - mean) / np.sqrt(var + 1e-5)
    shapes = {name: list(np.shape(value)) for name, value in stats.items()}
    difference = max(float(np.max(np.abs(np.asarray(y, np.float64) - expected))),
                     float(np.max(np.abs(np.asarray(stats["mean"]) - mean))),
                     float(np.max(np.abs(np.asarray(stats["var"]) - var) / var)))
    per_channel = all(shape == [channels] for shape in shapes.values())
    verdict = SUPPORTED if per_channel and difference < 1e-5 else NOT_SUPPORTED
    details = {"input_shape": list(x.shape), "statistic_shapes": shapes,
               "per_channel": {"mean": {"bnlab": np.asarray(stats["mean"]).tolist(),
                                        "formula": mean.tolist()},
                               "variance": {"bnlab": np.asarray(stats["var"]).tolist(),
                                            "formula": var.tolist()}},
               "max_abs_difference": difference}
    return Verdict("C7", verdict, "largest difference from the per-channel formula "
                   "(output, mean; variance relative)",
                   Estimate(difference, math.nan, math.nan, math.nan), details)


def _statistics_figure(verdict: Verdict, fig: Figure) -> None:
    """μ_B and σ²_B per channel, bnlab's beside the formula's (drawn from the details:
    nothing was trained)."""
    per_channel = verdict.details["per_channel"]
    for ax, (name, values) in zip(_panels(fig, len(per_channel)), per_channel.items(),
                                  strict=True):
        channels = range(len(values["formula"]))
        ax.bar([c - 0.2 for c in channels], values["bnlab"], width=0.4,
               label="bnlab BatchNorm")
        ax.bar([c + 0.2 for c in channels], values["formula"], width=0.4,
               label="formula (NumPy, float64)")
        ax.set_xticks(list(channels), [f"channel {c}" for c in channels])
        ax.set_title(f"{'μ_B' if name == 'mean' else 'σ²_B'} per channel")
        ax.legend()
    fig.suptitle(f"{_title(verdict)} (largest difference "
                 f"{verdict.details['max_abs_difference']:.1e})")
