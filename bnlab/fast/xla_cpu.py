"""Compile options for XLA's CPU backend, chosen per compiled step.

XLA's CPU backend can hand elementwise ops and reductions to YNNPACK
(`xla_cpu_experimental_ynn_fusion_type`; jaxlib 0.10 leaves them to its own
fusions). Where XLA fuses them itself it also fuses producers into the transposes
in front of the weight-gradient convolutions, and a ResNet's residual stream is
then re-derived block after block. With YNNPACK's fusions ResNet-20's train step
ran up to 1.7× faster on the 2-core CI machine, while steps with little work per
op lost, as each fused op pays YNNPACK's dispatch (docs/PERFORMANCE.md, "YNNPACK's
fusions on the CPU"). The work XLA counts in a step (its FLOPs) separated the two
on every case measured, so `auto` compiles a step with YNNPACK's fusions from
`MIN_FLOPS` up.

The option is set per compilation (`Lowered.compile(compiler_options=...)`), not
in XLA_FLAGS: another step of the same process keeps XLA's own fusions, and a
jaxlib that no longer knows the option raises an error here (caught: the step
then compiles without it) where an unknown XLA flag would abort the process.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from bnlab.config import CPU_FUSIONS as MODES

OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
           "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"}
# Between the largest step that lost (476 MFLOP, PlainCNN-20 at batch 2: 0.92×)
# and the smallest that gained (664 MFLOP, SimpleCNN at batch 64: 1.08×); XLA's
# count for one train step (forward, backward, update).
MIN_FLOPS = 6e8


def flops(lowered: jax.stages.Lowered) -> float | None:
    """XLA's FLOP count of a lowered computation, or None where it gives none."""
    try:
        analysis = lowered.cost_analysis()
    except Exception:  # an estimate only: without one the step keeps XLA's fusions
        return None
    if isinstance(analysis, list):  # older JAX: one dict per computation
        analysis = analysis[0] if analysis else None
    value = (analysis or {}).get("flops")
    return float(value) if value is not None else None


def wants_ynnpack(mode: str, step_flops: float | None) -> bool:
    """Whether a step of `step_flops` compiles with YNNPACK's fusions under `mode`."""
    if mode not in MODES:
        raise ValueError(f"cpu_fusion={mode!r}: allowed: {', '.join(MODES)}")
    if mode == "auto":
        return step_flops is not None and step_flops >= MIN_FLOPS
    return mode == "ynnpack"


class TunedJit:
    """`jax.jit(fun, **jit_options)`, with each new input shape compiled with or
    without `OPTIONS` as `wants_ynnpack` says for that shape's FLOPs.

    The first `fixed_args` arguments (a train state, running totals) must take
    their shapes from the others (the model and the batch): only the rest key the
    cache, which keeps the per-call cost to a few microseconds. A wrong guess is
    loud, not silent: a compiled step refuses inputs of another shape. Where one
    call runs a step several times (K steps; packed members), the product of the
    first `repeat_axes` axes of argument `repeat_arg` counts them, and the FLOPs
    compared are one step's of one run: a run compiles alike alone or packed.
    """

    _warned = False

    def __init__(self, fun: Callable[..., Any], mode: str, fixed_args: int,
                 repeat_arg: int | None = None, repeat_axes: int = 1, **jit_options: Any):
        wants_ynnpack(mode, None)  # a bad mode fails here, not at the first step
        self.jitted = jax.jit(fun, **jit_options)
        self.mode, self.fixed_args = mode, fixed_args
        self.repeat_arg, self.repeat_axes = repeat_arg, repeat_axes
        self._calls: dict[tuple, Callable[..., Any]] = {}
        self.ynnpack: dict[tuple, bool] = {}  # per shape key: compiled with OPTIONS

    def _key(self, args) -> tuple:
        return tuple((np.shape(a), getattr(a, "dtype", type(a)))
                     for a in jax.tree.leaves(args[self.fixed_args:]))

    def _call_for(self, args) -> Callable[..., Any]:
        key = self._key(args)
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = self._compile(key, args)
        return call

    def __call__(self, *args):
        return self._call_for(args)(*args)

    def compiled(self, *args) -> jax.stages.Compiled:
        """The executable that `self(*args)` runs (to read its HLO)."""
        call = self._call_for(args)
        return call.lower(*args).compile() if call is self.jitted else call

    def _compile(self, key: tuple, args) -> Callable[..., Any]:
        self.ynnpack[key] = False
        if self.mode == "xla":
            return self.jitted
        # Lowering here is not extra work: jit's own call would trace and lower the
        # same way, and shares this trace.
        lowered = self.jitted.lower(*args)
        step_flops = flops(lowered)
        if step_flops is not None and self.repeat_arg is not None:
            leading = np.shape(jax.tree.leaves(args[self.repeat_arg])[0])[:self.repeat_axes]
            step_flops /= max(1, int(np.prod(leading)))
        if not wants_ynnpack(self.mode, step_flops):
            return self.jitted
        try:
            compiled = lowered.compile(compiler_options=OPTIONS)
        except jax.errors.JaxRuntimeError as error:
            if not TunedJit._warned:
                TunedJit._warned = True
                warnings.warn(f"XLA's CPU backend refused {OPTIONS}; compiling with its "
                              f"own fusions ({str(error).splitlines()[0]})", stacklevel=3)
            return self.jitted
        self.ynnpack[key] = True
        return compiled


def jit(fun: Callable[..., Any], mode: str, fixed_args: int, repeat_arg: int | None = None,
        repeat_axes: int = 1, **jit_options: Any) -> Callable[..., Any]:
    """`TunedJit` on a CPU backend; plain `jax.jit` elsewhere (the option is the CPU's)."""
    if jax.default_backend() != "cpu":
        return jax.jit(fun, **jit_options)
    return TunedJit(fun, mode, fixed_args, repeat_arg, repeat_axes, **jit_options)
