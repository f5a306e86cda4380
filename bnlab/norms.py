"""Every normalization layer behind one factory: `make(name, **options)`.

All layers take NHWC (or N×features) input, keep one scale and bias per channel
(as the BN, LN and GN papers do), compute their statistics in float32 whatever
the compute dtype, and return the input's dtype. Call them as `layer(x, train=...)`;
only BN looks at `train`.

Two formulations of the training-mode forward and backward, equal within float32
rounding (tests/test_norms.py): `fused=True` (the default) is `fused_normalize`, a
hand-written VJP written to touch the tensor the fewest times a streaming norm can
(statistics in one read, the output in one read and one write; the backward's
reductions in one read of the output gradient and the input, the input gradient in
one more: 8 passes, docs/PERFORMANCE.md, which also has what XLA makes of it);
`fused=False` is the textbook two-pass formula differentiated by JAX, kept as the
reference. Cross-device (synced) BN and masked BN use the reference.

Which values one statistic averages over (x of shape N×H×W×C):
  bn  over (N, H, W) per channel; N is the ghost batch when `virtual_batch_size`
  ln  over (H, W, C) per sample: the article's and the GN paper's LN, not Flax's
      `nn.LayerNorm()` default (last axis only)
  in  over (H, W) per sample and channel
  gn  over (H, W, C/G) per sample and group of C/G channels
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnlab.config import ConfigError


def _moments(x: jax.Array, axes: tuple[int, ...], axis_name=None,
             axis_index_groups=None) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance in float32, two-pass: E[(x-μ)²] stays accurate where
    E[x²]-μ² loses digits to cancellation. With `axis_name`, over the examples of
    all those devices: exact for equal per-device batches (one pmean per pass)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axes, keepdims=True)
    if axis_name is not None:
        mean = jax.lax.pmean(mean, axis_name, axis_index_groups=axis_index_groups)
    var = jnp.mean(jnp.square(x - mean), axes, keepdims=True)
    if axis_name is not None:
        var = jax.lax.pmean(var, axis_name, axis_index_groups=axis_index_groups)
    return mean, var


# ---------------------------------------------------------------- fused formulation
#
# Every norm here averages over *cells*, the spatial values of one (sample, channel)
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
    per element, so GN cost 2.3× BN's time over no norm (8.6 against 3.7 ms of
    a 22 ms step at batch 128). Built by a reduction, the arrays are computed once,
    all of one pass's in one op (docs/PERFORMANCE.md)."""
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
    size = _prod(x.shape[1:-1])
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
    size = _prod(x.shape[1:-1])
    values = size * _prod(sets[0][a] for a in sets[1])
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


def _params(module: nn.Module, features: int) -> tuple[jax.Array, jax.Array]:
    scale = module.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = module.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    return scale, bias


def _affine(module: nn.Module, y: jax.Array, features: int, dtype: Any) -> jax.Array:
    scale, bias = _params(module, features)
    return (y * scale + bias).astype(dtype)


class BatchNorm(nn.Module):
    """BN over (N, H, W) per channel, or over each ghost batch of `virtual_batch_size`
    examples. Running averages (one set, also with ghost batches) follow Flax's
    convention: `running = momentum * running + (1 - momentum) * batch` with the
    biased batch variance; momentum 0.9 is PyTorch's `momentum=0.1`.

    Across devices (inside `pmap` or `shard_map`): `sync_axis_name` (with
    `sync_groups` under pmap) names the devices whose examples pool into one
    statistic; without it each device normalizes with its own. `axis_name` names
    the data-parallel axes the sync does not cover: the running averages are
    averaged over them every step, so every replica holds the same running
    statistics whatever the sync (`parallel.Layout.bn_options` sets both).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    virtual_batch_size: int | None = None
    axis_name: str | tuple[str, ...] | None = None
    sync_axis_name: str | tuple[str, ...] | None = None
    sync_groups: tuple[tuple[int, ...], ...] | None = None
    fused: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True,
                 mask: jax.Array | None = None) -> jax.Array:
        """`mask` (x.shape[:-1], 1 for a real value, 0 for padding): statistics over
        the real values only (masked BN for padded sequences); one device, no ghost
        batches."""
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if not train:
            y = (x.astype(jnp.float32) - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.epsilon)
            return _affine(self, y, features, x.dtype)
        if mask is not None:
            if self.virtual_batch_size or self.sync_axis_name or self.axis_name:
                raise ConfigError("mask_padding", True, "masked BN runs on one device "
                                  "without ghost batches")
            return self._masked(x, mask, ra_mean, ra_var)

        ghost = self.virtual_batch_size or x.shape[0]
        if x.shape[0] % ghost:
            raise ConfigError("virtual_batch_size", ghost,
                              f"must divide the batch of {x.shape[0]} examples")
        # Collectives only inside a parallel step; init runs on one device.
        sync = None if self.is_initializing() else self.sync_axis_name
        if self.fused and sync is None:
            # Ghost batches are sets of `ghost` samples' cells (see fused_normalize).
            sets = ((x.shape[0] // ghost, ghost, 1, features), (1,))
            y, mean, var = fused_normalize(x, *_params(self, features), sets, self.epsilon)
        else:
            # Ghost batches as a leading axis: statistics per group, one reshape, no loop.
            xg = x.reshape((x.shape[0] // ghost, ghost) + x.shape[1:])
            mean, var = _moments(xg, tuple(range(1, xg.ndim - 1)), sync, self.sync_groups)
            y = ((xg.astype(jnp.float32) - mean)
                 * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
            y = _affine(self, y, features, x.dtype)
        if not self.is_initializing():
            # Equal-sized ghost batches and devices: the mean of their statistics is one update.
            batch_mean = jnp.mean(mean.reshape(-1, features), axis=0)
            batch_var = jnp.mean(var.reshape(-1, features), axis=0)
            if self.axis_name is not None:
                batch_mean, batch_var = jax.lax.pmean((batch_mean, batch_var), self.axis_name)
            self._update_running(ra_mean, ra_var, batch_mean, batch_var)
        return y

    def _update_running(self, ra_mean, ra_var, mean, var) -> None:
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var

    def _masked(self, x, mask, ra_mean, ra_var):
        """Two-pass weighted moments over every axis but the channels."""
        features, axes = x.shape[-1], tuple(range(x.ndim - 1))
        weight = mask.astype(jnp.float32)[..., None]
        count = jnp.maximum(jnp.sum(weight), 1.0)
        xf = x.astype(jnp.float32)
        mean = jnp.sum(xf * weight, axes) / count
        var = jnp.sum(jnp.square(xf - mean) * weight, axes) / count
        if not self.is_initializing():
            self._update_running(ra_mean, ra_var, mean, var)
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
        return _affine(self, y, features, x.dtype)

    def values_per_statistic(self, shape: tuple[int, ...]) -> int:
        spatial = _prod(shape[1:-1])
        return (self.virtual_batch_size or shape[0]) * spatial


class LayerNorm(nn.Module):
    """LN over all of a sample's features: (H, W, C) for images, (C,) for vectors."""

    epsilon: float = 1e-5
    fused: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        if self.fused:
            sets = ((x.shape[0], 1, 1, x.shape[-1]), (3,))
            return fused_normalize(x, *_params(self, x.shape[-1]), sets, self.epsilon)[0]
        mean, var = _moments(x, tuple(range(1, x.ndim)))
        y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
        return _affine(self, y, x.shape[-1], x.dtype)

    def values_per_statistic(self, shape: tuple[int, ...]) -> int:
        return _prod(shape[1:])


class InstanceNorm(nn.Module):
    """IN over (H, W) of each sample and channel."""

    epsilon: float = 1e-5
    fused: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        if x.ndim < 3:
            raise ConfigError("norm", "in", "instance norm needs feature maps with spatial "
                              f"axes; this layer's input has shape {x.shape} (use ln or gn)")
        if self.fused:
            sets = ((x.shape[0], 1, 1, x.shape[-1]), ())
            return fused_normalize(x, *_params(self, x.shape[-1]), sets, self.epsilon)[0]
        mean, var = _moments(x, tuple(range(1, x.ndim - 1)))
        y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
        return _affine(self, y, x.shape[-1], x.dtype)

    def values_per_statistic(self, shape: tuple[int, ...]) -> int:
        return _prod(shape[1:-1])


class GroupNorm(nn.Module):
    """GN over (H, W) and each group of channels; give `num_groups` or `group_size`."""

    num_groups: int | None = None
    group_size: int | None = None
    epsilon: float = 1e-5
    fused: bool = True

    def groups(self, channels: int) -> int:
        if (self.num_groups is None) == (self.group_size is None):
            raise ConfigError("num_groups", self.num_groups,
                              "give exactly one of num_groups and group_size")
        field, value = (("num_groups", self.num_groups) if self.num_groups is not None
                        else ("group_size", self.group_size))
        if value <= 0 or channels % value:
            raise ConfigError(field, value,
                              f"must divide the {channels} channels of every normalized layer")
        return self.num_groups if self.num_groups is not None else channels // self.group_size

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        channels = x.shape[-1]
        groups = self.groups(channels)
        if self.fused:
            sets = ((x.shape[0], 1, groups, channels // groups), (3,))
            return fused_normalize(x, *_params(self, channels), sets, self.epsilon)[0]
        xg = x.reshape(x.shape[:-1] + (groups, channels // groups))
        axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
        mean, var = _moments(xg, axes)
        y = ((xg.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        return _affine(self, y, channels, x.dtype)

    def values_per_statistic(self, shape: tuple[int, ...]) -> int:
        return _prod(shape[1:-1]) * shape[-1] // self.groups(shape[-1])


class Identity(nn.Module):
    """The no-norm baseline: keeps the same call signature, no parameters."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        return x

    def values_per_statistic(self, shape: tuple[int, ...]) -> int:
        return 0


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


_LAYERS: dict[str, type[nn.Module]] = {
    "bn": BatchNorm, "ln": LayerNorm, "in": InstanceNorm, "gn": GroupNorm, "none": Identity,
}
NORM_LAYERS = tuple(_LAYERS.values())


def make(name: str, **options: Any) -> nn.Module:
    """A normalization layer by name: 'bn', 'ln', 'in', 'gn' or 'none'.

    Options: BN `momentum`, `epsilon`, `virtual_batch_size` (ghost BN); GN
    `num_groups` or `group_size`, `epsilon`; LN and IN `epsilon`; all but 'none'
    `fused` (False: the two-pass reference formulation). Options that
    the chosen layer does not take are an error, not silently dropped.
    """
    if name not in _LAYERS:
        raise ConfigError("norm", name, f"allowed: {', '.join(_LAYERS)}")
    layer = _LAYERS[name]
    unknown = set(options) - (set(layer.__dataclass_fields__) - {"parent", "name"})
    if unknown:
        raise ConfigError("norm", name, f"takes no option(s) {', '.join(sorted(unknown))}")
    return layer(**options)
