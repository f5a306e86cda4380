"""Every normalization layer behind one factory: `make(name, **options)`.

All layers take NHWC (or N×features) input, keep one scale and bias per channel
(as the BN, LN and GN papers do), compute their statistics in float32 whatever
the compute dtype, and return the input's dtype. Call them as `layer(x, train=...)`;
only BN looks at `train`.

Which values one statistic averages over (x of shape N×H×W×C):
  bn  over (N, H, W) per channel; N is the ghost batch when `virtual_batch_size`
  ln  over (H, W, C) per sample: the article's and the GN paper's LN, not Flax's
      `nn.LayerNorm()` default (last axis only)
  in  over (H, W) per sample and channel
  gn  over (H, W, C/G) per sample and group of C/G channels
"""

from __future__ import annotations

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


def _affine(module: nn.Module, y: jax.Array, features: int, dtype: Any) -> jax.Array:
    scale = module.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = module.param("bias", nn.initializers.zeros, (features,), jnp.float32)
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
        # Ghost batches as a leading axis: statistics per group, one reshape, no loop.
        xg = x.reshape((x.shape[0] // ghost, ghost) + x.shape[1:])
        axes = tuple(range(1, xg.ndim - 1))
        # Collectives only inside a parallel step; init runs on one device.
        sync = None if self.is_initializing() else self.sync_axis_name
        mean, var = _moments(xg, axes, sync, self.sync_groups)
        y = ((xg.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        if not self.is_initializing():
            # Equal-sized ghost batches and devices: the mean of their statistics is one update.
            batch_mean = jnp.mean(mean.reshape(-1, features), axis=0)
            batch_var = jnp.mean(var.reshape(-1, features), axis=0)
            if self.axis_name is not None:
                batch_mean, batch_var = jax.lax.pmean((batch_mean, batch_var), self.axis_name)
            self._update_running(ra_mean, ra_var, batch_mean, batch_var)
        return _affine(self, y, features, x.dtype)

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

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        mean, var = _moments(x, tuple(range(1, x.ndim)))
        y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
        return _affine(self, y, x.shape[-1], x.dtype)

    def values_per_statistic(self, shape: tuple[int, ...]) -> int:
        return _prod(shape[1:])


class InstanceNorm(nn.Module):
    """IN over (H, W) of each sample and channel."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        if x.ndim < 3:
            raise ConfigError("norm", "in", "instance norm needs feature maps with spatial "
                              f"axes; this layer's input has shape {x.shape} (use ln or gn)")
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
    `num_groups` or `group_size`, `epsilon`; LN and IN `epsilon`. Options that
    the chosen layer does not take are an error, not silently dropped.
    """
    if name not in _LAYERS:
        raise ConfigError("norm", name, f"allowed: {', '.join(_LAYERS)}")
    layer = _LAYERS[name]
    unknown = set(options) - (set(layer.__dataclass_fields__) - {"parent", "name"})
    if unknown:
        raise ConfigError("norm", name, f"takes no option(s) {', '.join(sorted(unknown))}")
    return layer(**options)
