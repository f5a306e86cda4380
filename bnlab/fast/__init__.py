"""The seam for speed: faster computations of what `bnlab.models` and
`bnlab.norms` define as math, chosen once per run for the backend (`choose`).

- `conv`: a CPU's first convolution as one matmul over patches.
- `pool`: the 2×2 max pool with a backward cheaper than XLA's select-and-scatter.
- `norms`: every norm's training-mode forward and backward in the fewest passes.
- `xla_cpu`: per-step compile options on a CPU (YNNPACK's fusions; `cpu_fusion`).
- `heap`: glibc's malloc set to keep freed memory (a CPU process's setting).

Each gives the reference's numbers: the pool bit for bit, the convolution and
the norms within float32 rounding (tests/test_fast.py). What each gained, and
where it lost: docs/PERFORMANCE.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bnlab import models

# The kernels import JAX and Flax; this package's namespace does not, so that a
# command sets `heap` (and answers --help) before any of them loads.


def choose(backend: str | None = None) -> models.Ops:
    """The operations a run computes with on `backend` (default: JAX's). On a CPU
    it also keeps freed memory in the process (`heap`); `bnlab`'s commands set that
    before JAX starts, and a later call keeps most of its gain (heap's docstring)."""
    import jax

    from bnlab import models
    from bnlab.fast import heap
    from bnlab.fast.conv import cpu_conv3x3
    from bnlab.fast.norms import fused_normalize
    from bnlab.fast.pool import max_pool_2x2

    backend = backend or jax.default_backend()
    if backend == "cpu":
        heap.keep_freed_memory()
    return models.Ops(conv=cpu_conv3x3 if backend == "cpu" else models.conv3x3,
                      pool=max_pool_2x2, normalize=fused_normalize)
