"""The networks, each with its normalization layer injected by name.

Every model is called as `model.apply(variables, x, train=...)` on NHWC images.
`norm_placement` puts each norm before the activation (the article's
conv → norm → ReLU) or after it (conv → ReLU → norm).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnlab import norms
from bnlab.config import ConfigError

# He et al. 2015 init for the deep nets: keeps activations' scale with depth in
# ReLU nets, so the no-norm baselines of C4 fail for depth, not for a bad init.
_he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _torch_default_kernel(key, shape, dtype=jnp.float32):
    """PyTorch's default Conv2d/Linear init (kaiming_uniform, a=√5): U(±1/√fan_in)."""
    fan_in = math.prod(shape[:-1])
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _torch_default_bias(fan_in: int):
    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / math.sqrt(fan_in)
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def conv3x3(features: int, in_features: int, strides: int = 1, **options: Any) -> nn.Module:
    """A 3×3 convolution with padding 1: Flax's. (`in_features` is for the faster
    versions in `bnlab.fast`, which depend on it.)"""
    return nn.Conv(features, (3, 3), strides=strides, padding=1, **options)


def max_pool(x: jax.Array) -> jax.Array:
    """A 2×2 max pool with stride 2: Flax's."""
    return nn.max_pool(x, (2, 2), strides=(2, 2))


@dataclasses.dataclass(frozen=True)
class Ops:
    """The operations a network is built from, as the math says them: Flax's 3×3
    convolution and max pool, and each norm's own formula. `bnlab.fast.ops`
    gives faster computations of the same numbers for a backend; a run chooses
    once (`train.prepare`)."""

    conv: Callable[..., nn.Module] = conv3x3  # (features, in_features, strides, **options)
    pool: Callable[[jax.Array], jax.Array] = max_pool
    normalize: norms.Normalize | None = None  # each norm layer's `normalize`

    def norm(self, name: str, options: tuple) -> nn.Module:
        return norms.make(name, normalize=self.normalize, **dict(options))


class _NormAct(nn.Module):
    """Norm and activation in the configured order."""

    norm: str
    norm_options: tuple
    placement: str
    ops: Ops
    activation: Any = nn.relu

    @nn.compact
    def __call__(self, x, train: bool):
        layer = self.ops.norm(self.norm, self.norm_options)
        if self.placement == "before_activation":
            return self.activation(layer(x, train=train))
        return layer(self.activation(x), train=train)


class SimpleCNN(nn.Module):
    """The article's SimpleCNN: conv16-norm-ReLU-pool, conv32-norm-ReLU-pool, fc128, fc.
    For 32×32×3 input the fc input is 32·8·8, as in the article's PyTorch code; the
    same layers size themselves from other inputs (28×28×1 gives 32·7·7). Conv and
    linear layers keep their biases and PyTorch's default init, as the article's do."""

    # The config fields it reads.
    CONFIG: ClassVar[tuple[str, ...]] = ("norm_placement", "norm_fc1")

    num_classes: int = 10
    norm: str = "bn"
    norm_options: tuple = ()
    norm_placement: str = "before_activation"
    # The article's net normalizes its convolutions only; fc1 holds 200,832 of its
    # 207,018 parameters (28×28 input), so a rate that fc1 cannot take diverges the
    # net whatever the convolutions' norm does. True: fc1's output normalized too.
    norm_fc1: bool = False
    dtype: Any = jnp.float32
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.astype(self.dtype)
        for i, features in enumerate((16, 32), start=1):
            fan_in = 9 * x.shape[-1]
            x = self.ops.conv(features, x.shape[-1], dtype=self.dtype, name=f"conv{i}",
                              kernel_init=_torch_default_kernel,
                              bias_init=_torch_default_bias(fan_in))(x)
            x = _NormAct(self.norm, self.norm_options, self.norm_placement, self.ops,
                         name=f"norm{i}")(x, train)
            x = self.ops.pool(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(128, dtype=self.dtype, kernel_init=_torch_default_kernel,
                     bias_init=_torch_default_bias(x.shape[-1]), name="fc1")(x)
        if self.norm_fc1:
            x = _NormAct(self.norm, self.norm_options, self.norm_placement, self.ops,
                         name="norm_fc1")(x, train)
        else:
            x = nn.relu(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_torch_default_kernel,
                     bias_init=_torch_default_bias(128), name="fc2")(x)
        return x.astype(jnp.float32)


class _BasicBlock(nn.Module):
    features: int
    strides: int
    norm: str
    norm_options: tuple
    dtype: Any
    ops: Ops

    @nn.compact
    def __call__(self, x, train: bool):
        def conv(strides, inputs):
            return self.ops.conv(self.features, inputs.shape[-1], strides=strides,
                                 use_bias=False, kernel_init=_he_normal, dtype=self.dtype)(inputs)

        y = nn.relu(self.ops.norm(self.norm, self.norm_options)(conv(self.strides, x),
                                                                 train=train))
        y = self.ops.norm(self.norm, self.norm_options)(conv(1, y), train=train)
        if x.shape != y.shape:
            # He et al.'s CIFAR option A: subsample, zero-pad the new channels; no params.
            x = x[:, ::self.strides, ::self.strides, :]
            pad = self.features - x.shape[-1]
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))
        return nn.relu(x + y)


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016 §4.2): 3 stages × 3 basic blocks at 16/32/64
    channels, option-A shortcuts, global average pool, fc. ~0.27 M parameters."""

    CONFIG: ClassVar[tuple[str, ...]] = ("norm_placement",)

    num_classes: int = 10
    norm: str = "bn"
    norm_options: tuple = ()
    blocks_per_stage: int = 3
    norm_placement: str = "before_activation"
    dtype: Any = jnp.float32
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, x, train: bool = True):
        if self.norm_placement != "before_activation":
            raise ConfigError("norm_placement", self.norm_placement,
                              "resnet20 places its norms as He et al. do: only 'before_activation'")
        x = x.astype(self.dtype)
        x = self.ops.conv(16, x.shape[-1], use_bias=False, kernel_init=_he_normal,
                          dtype=self.dtype)(x)
        x = nn.relu(self.ops.norm(self.norm, self.norm_options)(x, train=train))
        for stage, features in enumerate((16, 32, 64)):
            for block in range(self.blocks_per_stage):
                strides = 2 if stage > 0 and block == 0 else 1
                x = _BasicBlock(features, strides, self.norm, self.norm_options,
                                self.dtype, self.ops)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class PlainCNN(nn.Module):
    """A deep CNN without skip connections (the 'plain' nets of He et al. 2016):
    `depth` 3×3 conv layers, each conv-norm-ReLU, in three stages of width,
    2·width and 4·width channels (stride 2 entering stages 2 and 3), global
    average pool, fc. For the gradient claim: depth 10–50, bn vs none."""

    CONFIG: ClassVar[tuple[str, ...]] = ("norm_placement", "depth", "width")

    num_classes: int = 10
    depth: int = 20
    width: int = 16
    norm: str = "bn"
    norm_options: tuple = ()
    norm_placement: str = "before_activation"
    dtype: Any = jnp.float32
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.astype(self.dtype)
        per_stage = [self.depth // 3 + (1 if i < self.depth % 3 else 0) for i in range(3)]
        for stage, count in enumerate(per_stage):
            for layer in range(count):
                strides = 2 if stage > 0 and layer == 0 else 1
                x = self.ops.conv(self.width * 2**stage, x.shape[-1], strides=strides,
                                  use_bias=self.norm == "none", kernel_init=_he_normal,
                                  dtype=self.dtype)(x)
                x = _NormAct(self.norm, self.norm_options, self.norm_placement,
                             self.ops)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class MLP(nn.Module):
    """The BN paper's MNIST net (Ioffe & Szegedy 2015 §4.1): 3 hidden layers of 100
    sigmoid units, the norm before each sigmoid, small Gaussian initial weights."""

    CONFIG: ClassVar[tuple[str, ...]] = ("norm_placement",)

    num_classes: int = 10
    hidden: tuple = (100, 100, 100)
    norm: str = "bn"
    norm_options: tuple = ()
    norm_placement: str = "before_activation"
    dtype: Any = jnp.float32
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        for features in self.hidden:
            x = nn.Dense(features, dtype=self.dtype,
                         kernel_init=nn.initializers.normal(0.1))(x)
            x = _NormAct(self.norm, self.norm_options, self.norm_placement, self.ops,
                         activation=nn.sigmoid)(x, train)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class SequenceCNN(nn.Module):
    """For padded variable-length sequences (data 'fashion_mnist_rows': T steps of
    features, the last feature the mask): two 1-D convolutions over time (kernel 3,
    `width` channels), each conv → norm → ReLU with padded steps zeroed, then the
    mean over the real steps and a linear classifier.

    The norms see a (batch·time) × channels tensor: LN and GN normalize each step's
    own channels, as in sequence models, and never see padding; BN's statistics are
    over batch and time, padding included (the naive way) or, with `mask_padding`,
    over the real steps only (masked BN)."""

    CONFIG: ClassVar[tuple[str, ...]] = ("norm_placement", "mask_padding")

    num_classes: int = 10
    width: int = 64
    norm: str = "bn"
    norm_options: tuple = ()
    norm_placement: str = "before_activation"
    mask_padding: bool = False
    dtype: Any = jnp.float32
    ops: Ops = Ops()

    @nn.compact
    def __call__(self, x, train: bool = True):
        if x.ndim != 3:
            raise ConfigError("model", "seq_cnn", f"takes sequences (batch × time × features); "
                              f"got input of shape {x.shape} (use dataset fashion_mnist_rows)")
        mask = x[..., -1].astype(jnp.float32)
        h = x[..., :-1].astype(self.dtype)
        n, steps = mask.shape
        for i in range(2):
            h = nn.Conv(self.width, (3,), padding=1, dtype=self.dtype, name=f"conv{i + 1}")(h)
            h = h * mask[..., None].astype(h.dtype)
            flat = h.reshape((n * steps, self.width))
            layer = self.ops.norm(self.norm, self.norm_options)
            extra = ({"mask": mask.reshape(-1)} if self.mask_padding and self.norm == "bn"
                     else {})
            if self.norm_placement == "before_activation":
                flat = nn.relu(layer(flat, train=train, **extra))
            else:
                flat = layer(nn.relu(flat), train=train, **extra)
            h = flat.reshape((n, steps, self.width)) * mask[..., None].astype(h.dtype)
        pooled = jnp.sum(h.astype(jnp.float32), axis=1) / jnp.maximum(
            jnp.sum(mask, axis=1, keepdims=True), 1.0)
        return nn.Dense(self.num_classes, name="fc")(pooled)


# The networks by config name: the one list of them (config.validate's too).
MODELS: dict[str, type[nn.Module]] = {
    "simple_cnn": SimpleCNN, "resnet20": ResNet20, "plain_cnn": PlainCNN, "mlp": MLP,
    "seq_cnn": SequenceCNN,
}
PLACEMENTS = ("before_activation", "after_activation")  # `norm_placement`
DTYPES = ("float32", "bfloat16")  # compute dtypes


def options(config: Any) -> dict[str, Any]:
    """The `make` options of `config.model` that a config sets (its `CONFIG`
    fields), checked. Every model's fields are checked, whatever the model: a bad
    value the chosen model ignores is still one the user meant. A `ConfigError`."""
    every = {field: config[field] for model in MODELS.values() for field in model.CONFIG
             if field in config}
    if every.get("norm_placement", PLACEMENTS[0]) not in PLACEMENTS:
        raise ConfigError("norm_placement", every["norm_placement"],
                          f"allowed: {', '.join(PLACEMENTS)}")
    for flag in ("mask_padding", "norm_fc1"):
        if not isinstance(every.get(flag, False), bool):
            raise ConfigError(flag, every[flag], "True or False")
    depth, width = every.get("depth", 3), every.get("width", 1)
    if not (isinstance(depth, int) and not isinstance(depth, bool) and depth >= 3):
        raise ConfigError("depth", depth, "must be an integer >= 3 (plain_cnn's conv layers)")
    if not (isinstance(width, int) and not isinstance(width, bool) and width >= 1):
        raise ConfigError("width", width, "must be a positive integer (plain_cnn's channels)")
    return {field: config[field] for field in MODELS[config.model].CONFIG}


def fields(name: str) -> set[str]:
    """The config fields the model `name` reads (its `CONFIG`): no other model's
    field changes what a run of it computes (`config.canonical` leaves them out of
    its identity)."""
    return set(MODELS[name].CONFIG)


def make(name: str, norm: str = "bn", num_classes: int = 10,
         norm_options: dict[str, Any] | None = None, dtype: str = "float32",
         ops: Ops | None = None, **options: Any) -> nn.Module:
    """A model by name: 'simple_cnn', 'resnet20', 'plain_cnn', 'mlp' or 'seq_cnn'.

    `norm` and `norm_options` go to `bnlab.norms.make` for every normalized layer;
    `dtype` is the compute dtype (parameters and norm statistics stay float32);
    `ops` how it computes (default: as the math says; `bnlab.fast.ops` for speed);
    other options are the model's own fields (e.g. `depth` and `width` of plain_cnn,
    `norm_placement`).
    """
    if name not in MODELS:
        raise ConfigError("model", name, f"allowed: {', '.join(MODELS)}")
    norms.make(norm, **(norm_options or {}))  # fail on a bad norm before building
    model = MODELS[name]
    unknown = set(options) - (set(model.__dataclass_fields__) - {"parent", "name", "ops"})
    if unknown:
        raise ConfigError("model", name, f"takes no option(s) {', '.join(sorted(unknown))}")
    frozen = tuple(sorted((norm_options or {}).items()))
    return model(num_classes=num_classes, norm=norm, norm_options=frozen,
                 dtype=jnp.dtype(dtype), ops=ops or Ops(), **options)


def normalized_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """Traces `model.init` (no compile) and lists every norm layer with its input
    shape and the number of values one of its statistics averages over."""
    found: list[dict[str, Any]] = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, norms.NORM_LAYERS) and context.method_name == "__call__":
            shape = tuple(args[0].shape)
            found.append({"layer": "/".join(module.path), "shape": shape,
                          "values_per_statistic": module.values_per_statistic(shape)})
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=True))
    return found


def layer_order(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """The model's top-level layers in the order its forward pass calls them (input
    side first): the order "the layers before it" means for internal covariate shift.
    Traced, not compiled; parameter dicts do not keep this order (JAX sorts keys)."""
    order: list[str] = []

    def record(next_fun, args, kwargs, context):
        path = context.module.path
        if len(path) == 1 and path[0] not in order:
            order.append(path[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=True))
    return order
