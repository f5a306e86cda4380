"""Every normalization layer behind one factory: `make(name, **options)`.

All layers take NHWC (or N×features) input, keep one scale and bias per channel
(as the BN, LN and GN papers do), compute their statistics in float32 whatever
the compute dtype, and return the input's dtype. Call them as `layer(x, train=...)`;
only BN looks at `train`.

Each layer computes the textbook two-pass formula, differentiated by JAX. A
faster computation of the same numbers (within float32 rounding) plugs in as the
`normalize` field: `bnlab.fast` gives one, which a run chooses once
(`fast.ops`); the layer then only says which values a statistic spans (`sets`).
Cross-device (synced) BN and masked BN always use the formula.

Which values one statistic averages over (x of shape N×H×W×C):
  bn  over (N, H, W) per channel; N is the ghost batch when `virtual_batch_size`
  ln  over (H, W, C) per sample: the article's and the GN paper's LN, not Flax's
      `nn.LayerNorm()` default (last axis only)
  in  over (H, W) per sample and channel
  gn  over (H, W, C/G) per sample and group of C/G channels
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import Any, ClassVar

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


# A faster `normalize` sees the N×C *cells* (the spatial values of one sample and
# channel) and a statistic's set as a union of them: `sets = (shape, axes)` views
# the cells as A×B×G×K (A·B = N, G·K = C) and names the axes (of 1 and 3) a set
# spans. BN: all samples of a channel (of a ghost batch: A ghost batches of B);
# LN: all channels of a sample; GN: a group of K channels of a sample; IN: a cell.
Normalize = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]


def _params(module: nn.Module, features: int) -> tuple[jax.Array, jax.Array]:
    scale = module.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = module.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    return scale, bias


def _affine(module: nn.Module, y: jax.Array, features: int, dtype: Any) -> jax.Array:
    scale, bias = _params(module, features)
    return (y * scale + bias).astype(dtype)


def _bessel(values: int | jax.Array, unbiased: bool) -> float | jax.Array:
    """m/(m−1), the factor that turns a biased variance over m values into the
    unbiased one; 1 when not `unbiased`, and 1 for m <= 1. At m = 1 (an MLP at batch
    1, a 1×1 map, one real step of a masked batch) the unbiased variance is 0/0:
    PyTorch raises there, but this layer keeps the biased 0 instead: m is known only
    at trace time (per layer, after the device sync) or at run time (masked BN),
    so no config check could catch every case, and runs that trained before keep
    training (BN's output at m = 1 is its bias whichever variance is stored)."""
    if not unbiased:
        return 1.0
    if isinstance(values, int):
        return values / (values - 1) if values > 1 else 1.0
    return jnp.where(values > 1, values / jnp.maximum(values - 1, 1), 1.0)


class BatchNorm(nn.Module):
    """BN over (N, H, W) per channel, or over each ghost batch of `virtual_batch_size`
    examples. Running averages (one set, also with ghost batches):
    `running = momentum * running + (1 - momentum) * batch`; momentum 0.9 is
    PyTorch's `momentum=0.1`. The batch's variance there is, with
    `unbiased_running_var`, the unbiased one, σ²_B·m/(m−1) for the m values a
    statistic averages (the BN paper's Alg. 2, Var[x] = m/(m−1)·E_B[σ²_B], and
    PyTorch's running_var), else the biased σ²_B (Flax's convention). Runs take it
    from `config.bn_unbiased_running_var` (True by default); the layer's own
    default stays biased so that with momentum 0 it stores exactly the batch's
    statistics, as `bnlab.claims` (C7) reads them. Normalization always uses σ²_B.

    Across devices (inside `pmap` or `shard_map`): `sync_axis_name` (with
    `sync_groups` under pmap) names the devices whose examples pool into one
    statistic; without it each device normalizes with its own. `axis_name` names
    the data-parallel axes the sync does not cover: the running averages are
    averaged over them every step, so every replica holds the same running
    statistics whatever the sync (`parallel.Layout.bn_options` sets both).
    """

    # Its options, and the config field each comes from (`options`).
    CONFIG: ClassVar[dict[str, str]] = {"epsilon": "norm_epsilon", "momentum": "bn_momentum",
                                        "virtual_batch_size": "virtual_batch_size",
                                        "unbiased_running_var": "bn_unbiased_running_var",
                                        "noise": "bn_noise", "noise_static": "bn_noise_static"}

    momentum: float = 0.9
    epsilon: float = 1e-5
    virtual_batch_size: int | None = None
    unbiased_running_var: bool = False  # runs: config.bn_unbiased_running_var (True)
    axis_name: str | tuple[str, ...] | None = None
    sync_axis_name: str | tuple[str, ...] | None = None
    sync_groups: tuple[tuple[int, ...], ...] | None = None
    normalize: Normalize | None = None  # the fast formulation, or None: the formula
    # Noisy BN (Santurkar et al. 2018, §2.1): in training, each output value of each
    # example becomes s·y + m, s ~ U(1, 1 + noise) and m ~ U(−noise, noise) drawn
    # anew at every step: BN's outputs no longer keep a steady mean and variance (the
    # internal covariate shift BN is said to remove comes back). Drawn only where the
    # caller passes a "noise" rng (the train step and the diagnostics); 0: plain BN.
    noise: float = 0.0
    # The control: the same noise, drawn once (a fixed draw per layer and position of
    # the batch): as much noise, but nothing that moves from one step to the next.
    noise_static: bool = False

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
        if self.normalize is not None and sync is None:
            sets = ((x.shape[0] // ghost, ghost, 1, features), (1,))
            y, mean, var = self.normalize(x, *_params(self, features), sets, self.epsilon)
        else:
            # Ghost batches as a leading axis: statistics per group, one reshape, no loop.
            xg = x.reshape((x.shape[0] // ghost, ghost) + x.shape[1:])
            mean, var = _moments(xg, tuple(range(1, xg.ndim - 1)), sync, self.sync_groups)
            y = ((xg.astype(jnp.float32) - mean)
                 * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
            y = _affine(self, y, features, x.dtype)
        if self.noise and not self.is_initializing() and self.has_rng("noise"):
            y = self._perturb(y)
        if not self.is_initializing():
            # Equal-sized ghost batches and devices: the mean of their statistics is one
            # update (each ghost batch's variance unbiased over its own m values).
            batch_mean = jnp.mean(mean.reshape(-1, features), axis=0)
            values = self.values_per_statistic(x.shape) * self._sync_size(sync)
            batch_var = jnp.mean(var.reshape(-1, features), axis=0) * _bessel(
                values, self.unbiased_running_var)
            if self.axis_name is not None:
                batch_mean, batch_var = jax.lax.pmean((batch_mean, batch_var), self.axis_name)
            self._update_running(ra_mean, ra_var, batch_mean, batch_var)
        return y

    def _perturb(self, y: jax.Array) -> jax.Array:
        if self.noise_static:  # the layer's own fixed key, whatever the step
            key = jax.random.fold_in(jax.random.key(0),
                                     zlib.crc32("/".join(self.scope.path).encode()))
        else:
            key = self.make_rng("noise")
        scale_key, shift_key = jax.random.split(key)
        scale = jax.random.uniform(scale_key, y.shape, jnp.float32, 1.0, 1.0 + self.noise)
        shift = jax.random.uniform(shift_key, y.shape, jnp.float32, -self.noise, self.noise)
        return (y.astype(jnp.float32) * scale + shift).astype(y.dtype)

    def _sync_size(self, sync) -> int:
        """The devices whose examples pool into one statistic (1 without a sync)."""
        if sync is None:
            return 1
        if self.sync_groups is not None:
            return len(self.sync_groups[0])
        names = sync if isinstance(sync, tuple) else (sync,)
        return math.prod(jax.lax.axis_size(name) for name in names)

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
            # m: the real positions of this batch, known only when it runs.
            self._update_running(ra_mean, ra_var, mean,
                                 var * _bessel(count, self.unbiased_running_var))
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
        return _affine(self, y, features, x.dtype)

    def values_per_statistic(self, shape: tuple[int, ...]) -> int:
        spatial = math.prod(shape[1:-1])
        return (self.virtual_batch_size or shape[0]) * spatial


class LayerNorm(nn.Module):
    """LN over all of a sample's features: (H, W, C) for images, (C,) for vectors."""

    CONFIG: ClassVar[dict[str, str]] = {"epsilon": "norm_epsilon"}

    epsilon: float = 1e-5
    normalize: Normalize | None = None  # the fast formulation, or None: the formula

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        if self.normalize is not None:
            sets = ((x.shape[0], 1, 1, x.shape[-1]), (3,))
            return self.normalize(x, *_params(self, x.shape[-1]), sets, self.epsilon)[0]
        mean, var = _moments(x, tuple(range(1, x.ndim)))
        y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
        return _affine(self, y, x.shape[-1], x.dtype)

    def values_per_statistic(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape[1:])


class InstanceNorm(nn.Module):
    """IN over (H, W) of each sample and channel."""

    CONFIG: ClassVar[dict[str, str]] = {"epsilon": "norm_epsilon"}

    epsilon: float = 1e-5
    normalize: Normalize | None = None  # the fast formulation, or None: the formula

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        if x.ndim < 3:
            raise ConfigError("norm", "in", "instance norm needs feature maps with spatial "
                              f"axes; this layer's input has shape {x.shape} (use ln or gn)")
        if self.normalize is not None:
            sets = ((x.shape[0], 1, 1, x.shape[-1]), ())
            return self.normalize(x, *_params(self, x.shape[-1]), sets, self.epsilon)[0]
        mean, var = _moments(x, tuple(range(1, x.ndim - 1)))
        y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
        return _affine(self, y, x.shape[-1], x.dtype)

    def values_per_statistic(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape[1:-1])


class GroupNorm(nn.Module):
    """GN over (H, W) and each group of channels: `group_size` channels per group
    when given, else `num_groups` groups."""

    CONFIG: ClassVar[dict[str, str]] = {"epsilon": "norm_epsilon", "num_groups": "num_groups",
                                        "group_size": "group_size"}

    num_groups: int | None = None
    group_size: int | None = None
    epsilon: float = 1e-5
    normalize: Normalize | None = None  # the fast formulation, or None: the formula

    def groups(self, channels: int) -> int:
        if self.num_groups is None and self.group_size is None:
            raise ConfigError("num_groups", None, "give num_groups or group_size")
        field, value = (("group_size", self.group_size) if self.group_size is not None
                        else ("num_groups", self.num_groups))
        if value <= 0 or channels % value:
            raise ConfigError(field, value,
                              f"must divide the {channels} channels of every normalized layer")
        return channels // self.group_size if self.group_size is not None else self.num_groups

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        channels = x.shape[-1]
        groups = self.groups(channels)
        if self.normalize is not None:
            sets = ((x.shape[0], 1, groups, channels // groups), (3,))
            return self.normalize(x, *_params(self, channels), sets, self.epsilon)[0]
        xg = x.reshape(x.shape[:-1] + (groups, channels // groups))
        axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
        mean, var = _moments(xg, axes)
        y = ((xg.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        return _affine(self, y, channels, x.dtype)

    def values_per_statistic(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape[1:-1]) * shape[-1] // self.groups(shape[-1])


class Identity(nn.Module):
    """The no-norm baseline: keeps the same call signature, no parameters."""

    CONFIG: ClassVar[dict[str, str]] = {}

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        return x

    def values_per_statistic(self, shape: tuple[int, ...]) -> int:
        return 0


# The norms by config name: the one list of them (config.validate's too).
LAYERS: dict[str, type[nn.Module]] = {
    "bn": BatchNorm, "ln": LayerNorm, "in": InstanceNorm, "gn": GroupNorm, "none": Identity,
}
NORM_LAYERS = tuple(LAYERS.values())


def options(config: Any) -> dict[str, Any]:
    """The `make` options of `config.norm` that a config sets: each layer's
    `CONFIG` says which fields it reads. A field the config lacks (a run's
    config.json written before the field existed, resumed) takes the layer's own
    default, which is what that run computed (e.g. BN's biased running variance)."""
    layer = LAYERS[config.norm]
    return {option: config[field] if field in config else layer.__dataclass_fields__[option].default
            for option, field in layer.CONFIG.items()}


def fields(name: str) -> set[str]:
    """The config fields the norm layer `name` reads (its `CONFIG`): no other field
    of the norms' changes what a run of it computes (`config.canonical` leaves them
    out of its identity)."""
    return set(LAYERS[name].CONFIG.values())


def make(name: str, normalize: Normalize | None = None, **options: Any) -> nn.Module:
    """A normalization layer by name: 'bn', 'ln', 'in', 'gn' or 'none'.

    Options: BN `momentum`, `epsilon`, `virtual_batch_size` (ghost BN),
    `unbiased_running_var` (False unless given: see `BatchNorm`), `noise` and
    `noise_static` (noisy BN); GN
    `num_groups` or `group_size`, `epsilon`; LN and IN `epsilon`. Options that
    the chosen layer does not take are an error, not silently dropped.
    `normalize`: a faster computation of the formula (`bnlab.fast`) for the
    layers that normalize; None: the formula itself.
    """
    if name not in LAYERS:
        raise ConfigError("norm", name, f"allowed: {', '.join(LAYERS)}")
    layer = LAYERS[name]
    unknown = set(options) - (set(layer.__dataclass_fields__) - {"parent", "name", "normalize"})
    if unknown:
        raise ConfigError("norm", name, f"takes no option(s) {', '.join(sorted(unknown))}")
    if layer is not Identity:
        options["normalize"] = normalize
    return layer(**options)
