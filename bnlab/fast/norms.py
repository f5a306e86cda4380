"""The norms' training-mode forward and backward written to touch the tensor the
fewest times a streaming norm can: the statistics in one read, the output in one
read and one write; the backward's reductions in one read of the output gradient
and the input, the input gradient in one more (docs/PERFORMANCE.md counts the
passes and what XLA makes of them). Equal to each norm's reference formula in
`bnlab.norms` within float32 rounding (tests/test_norms.py).

A norm plugs it in as its `normalize` field; `normalize(x, scale, bias, sets,
epsilon)` returns the output and the per-set (mean, var).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

# Every norm of bnlab.norms averages over *cells*, the spatial values of one (sample, channel)
# pair, and a statistic's set is a union of cells: BN all samples of a channel, LN
# all channels of a sample, GN a group of channels of a sample, IN one cell. So
# the tensor is only ever reduced over its spatial axes, to N×C cell sums (keeping
# the channels minor: no GN reshape of the big tensor), and the sets are formed
# from those small arrays. `sets = (shape, axes)` views the N×C cells as
# A×B×G×K (A·B = N, G·K = C) and names the axes (of 1 and 3) a set spans.


def _cell_axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim - 1))


def _per_cell(sets, x: jax.Array, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Per-set arrays (the `sets` view, reduced axes kept) broadcast to the cells
    and shaped to broadcast against x: N×1…×C each.

    For GN on the CPU the N×C arrays are built by `_expanded_groups` instead. XLA
    fuses a per-cell array's small computation into every consumer of the big
    tensor and, for a group→channel broadcast, runs that index arithmetic per
    element; SimpleCNN's pool backward re-derives the normalized value four times
    per element, so GN cost over twice BN's time (docs/PERFORMANCE.md). Built by a
    reduction, the arrays are computed once, all of one pass's in one op."""
    groups, size = sets[0][2], sets[0][3]
    stacked = jnp.stack(arrays)
    expand = functools.partial(_broadcast_cells, sets=sets, x=x)
    if groups > 1 and size > 1 and arrays[0].shape[0] == x.shape[0]:
        expand = functools.partial(jax.lax.platform_dependent, cpu=functools.partial(
            _expanded_groups, sets=sets, x=x), default=expand)
    return tuple(expand(stacked))


def _broadcast_cells(stacked: jax.Array, sets, x: jax.Array) -> jax.Array:
    n, c = x.shape[0], x.shape[-1]
    m = stacked.shape[0]
    return jnp.broadcast_to(stacked, (m,) + sets[0]).reshape(
        (m, n) + (1,) * (x.ndim - 2) + (c,))


def _expanded_groups(stacked: jax.Array, sets, x: jax.Array) -> jax.Array:
    """`_broadcast_cells` of per-(sample, group) arrays, bit for bit, as a maximum
    over the groups of a select: each channel takes its group's value and -inf
    from every other group; max(v, -inf) is v for every v, -0.0 and NaN included
    (a sum would need -0.0 as its filler, and JAX turns a sum from -0.0 into one
    from +0.0, which loses a -0.0)."""
    n, c = x.shape[0], x.shape[-1]
    m, groups, size = stacked.shape[0], sets[0][2], sets[0][3]
    owner = jnp.arange(c) // size == jnp.arange(groups)[:, None]
    picked = jnp.where(owner, stacked.reshape(m, n, groups, 1), -jnp.inf)
    cells = jnp.max(picked, axis=2)
    return cells.reshape((m, n) + (1,) * (x.ndim - 2) + (c,))


def _set_mean(cells: jax.Array, sets) -> jax.Array:
    shape, axes = sets
    return jnp.mean(cells.reshape(shape), axes, keepdims=True)


def _fused_moments(x: jax.Array, sets) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance per set, reading x once. Each cell's sums are taken
    about the cell's first value (x[n, 0, 0, c]), which keeps E[d²]-E[d]² from
    cancelling unless that one value sits many cell deviations away from the cell's
    mean; cells then combine exactly (Chan et al.'s pairwise formula)."""
    xf = x.astype(jnp.float32)
    shift = jax.lax.stop_gradient(xf[(slice(None),) + (slice(0, 1),) * (x.ndim - 2)])
    d = xf - shift
    axes = _cell_axes(x)
    # Two sibling reductions of one input, for XLA's GPU backend to fuse into one
    # read (its CPU backend does not; `bnlab bench norms` counts the passes).
    s1, s2 = (jnp.sum(d, axes), jnp.sum(d * d, axes)) if axes else (d, d * d)
    size = math.prod(x.shape[1:-1])
    offset = s1 / size
    cell_mean = shift.reshape(offset.shape) + offset
    cell_var = jnp.maximum(s2 / size - offset * offset, 0.0)
    mean = _set_mean(cell_mean, sets)
    spread = jnp.square(cell_mean.reshape(sets[0]) - mean)
    var = _set_mean(cell_var, sets) + jnp.mean(spread, sets[1], keepdims=True)
    return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def fused_normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, sets, epsilon: float
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(x - mean) / sqrt(var + epsilon) * scale + bias` and the per-set (mean, var)
    (shaped as `sets[0]` with the set axes kept), with a hand-written VJP."""
    return _fused_forward(x, scale, bias, sets, epsilon)[0]


def _fused_forward(x, scale, bias, sets, epsilon):
    mean, var = _fused_moments(x, sets)
    inv = jax.lax.rsqrt(var + epsilon)
    inv_cells, mean_cells = _per_cell(sets, x, inv, mean)
    a = inv_cells * scale
    b = bias - mean_cells * a
    y = (x.astype(jnp.float32) * a + b).astype(x.dtype)
    return (y, mean, var), (x, mean, inv, scale)


def _fused_backward(sets, epsilon, residuals, cotangents):
    """With x̂ = (x-μ)·r and g = dy·scale, per set S of M values:
    dx = r·(g - mean_S(g) - x̂·mean_S(g·x̂)) + dμ/M + 2·dσ²·(x-μ)/M. The sums over S
    come from two per-cell sums, of dy and of dy·(x-μ), in one read of dy and x."""
    x, mean, inv, scale = residuals
    dy, dmean, dvar = cotangents
    n, c = x.shape[0], x.shape[-1]
    size = math.prod(x.shape[1:-1])
    values = size * math.prod(sets[0][a] for a in sets[1])
    mean_cells, inv_cells = _per_cell(sets, x, mean, inv)
    centered = x.astype(jnp.float32) - mean_cells
    dyf = dy.astype(jnp.float32)
    axes = _cell_axes(x)
    sum_dy, sum_dyc = ((jnp.sum(dyf, axes), jnp.sum(dyf * centered, axes)) if axes
                       else (dyf, dyf * centered))
    inv_nc = inv_cells.reshape(n, c)
    dbias = jnp.sum(sum_dy, 0)
    dscale = jnp.sum(inv_nc * sum_dyc, 0)
    mean_g = _set_mean(scale * sum_dy, sets) / size
    mean_gx = _set_mean(scale * inv_nc * sum_dyc, sets) / size
    constant = -inv * mean_g + dmean / values
    slope = -inv * inv * mean_gx + 2 * dvar / values
    slope_cells, constant_cells = _per_cell(sets, x, slope, constant)
    dx = dyf * (inv_cells * scale) + centered * slope_cells + constant_cells
    return dx.astype(x.dtype), dscale, dbias


fused_normalize.defvjp(lambda x, scale, bias, sets, epsilon:
                       _fused_forward(x, scale, bias, sets, epsilon), _fused_backward)
