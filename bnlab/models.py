"""The networks, each with its normalization layer injected by name.

Every model is called as `model.apply(variables, x, train=...)` on NHWC images.
`norm_placement` puts each norm before the activation (the article's
conv → norm → ReLU) or after it (conv → ReLU → norm).
"""

from __future__ import annotations

import math
from typing import Any

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


# A first layer's few input channels (an image's 1 or 3) leave XLA's CPU
# convolution far from the machine's speed: SimpleCNN's conv1 at batch 128 took
# 4.4-4.6 ms forward on 32×32×3 and 2.8-3.2 ms on 28×28×1 on the 2-core CI machine,
# against 2.4-2.7 and 0.95 ms as one matmul over the 3×3 patches. With 16 input
# channels the patches are 9× the input and the matmul lost (SimpleCNN's conv2 as
# well: 0.81× for the step), so only layers with at most this many input channels
# take them.
MAX_PATCH_CHANNELS = 4


class Conv(nn.Module):
    """`nn.Conv` with padding 1 (same parameters, same result up to float rounding),
    computed another way (`method`):

    - "shifts": one matmul per kernel tap over a shifted view of the padded input.
      Packed runs use it: under vmap over members these are batched matmuls, where
      vmap turns `lax.conv` into a grouped convolution that GPUs run slowly (on an
      H100, SimpleCNN's convs at 16 members × batch 8: 0.45 against 0.14 ms, and at
      128 × 2: 1.4 against 0.25 ms, forward+backward; scripts/gpu/packed_conv.py).
    - "patches": one matmul over all taps' patches (im2col) forward, XLA's
      convolution gradients backward (`conv_patches`); for a CPU's first layer.

    The class is named Conv so its parameters are named as nn.Conv's."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: int = 1
    use_bias: bool = True
    dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    method: str = "shifts"

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        s = self.strides
        if self.method not in ("shifts", "patches"):
            raise ValueError(f"Conv(method={self.method!r}): allowed: shifts, patches")
        if self.method == "patches":
            if s != 1:
                raise ValueError("Conv(method='patches') takes strides=1 only")
            out = conv_patches(x, kernel)
        else:
            padded = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
            height = (x.shape[1] + 2 * (kh // 2) - kh) // s + 1
            width = (x.shape[2] + 2 * (kw // 2) - kw) // s + 1
            out = sum(padded[:, dy:dy + s * (height - 1) + 1:s, dx:dx + s * (width - 1) + 1:s]
                      @ kernel[dy, dx] for dy in range(kh) for dx in range(kw))
        if self.use_bias:
            out = out + self.param("bias", self.bias_init, (self.features,)).astype(self.dtype)
        return out


def _conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """XLA's convolution, stride 1, zero padding that keeps the size (as nn.Conv's)."""
    kh, kw = kernel.shape[:2]
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((kh // 2, kh // 2), (kw // 2, kw // 2)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def conv_patches(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`_conv_same(x, kernel)` as one matmul over the padded input's patches
    (N×H×W×(kh·kw·C), ordered as the kernel's rows: row tap, column tap, channel).
    Its gradients are XLA's convolution gradients, not the matmul's: the weight
    gradient as a matmul over the patches took 5.4 against 1.5 ms for conv1 at
    batch 128 (32×32×3), and the patches need not be kept for the backward."""
    h, w, c = x.shape[1:]
    kh, kw = kernel.shape[:2]
    padded = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    # The column taps, then the row taps of those: the same patches as one concat
    # of all kh·kw shifted views, but 2.4-2.7 against 2.9-4.9 ms forward for
    # conv1 at batch 128 (32×32×3), and 0.19-0.22 against 0.27-0.29 s to compile.
    rows = jnp.concatenate([padded[:, :, dx:dx + w] for dx in range(kw)], axis=-1)
    patches = jnp.concatenate([rows[:, dy:dy + h] for dy in range(kh)], axis=-1)
    return patches @ kernel.reshape(kh * kw * c, -1)


def _conv_patches_forward(x, kernel):
    return conv_patches(x, kernel), (x, kernel)


def _conv_patches_backward(residuals, g):
    return jax.vjp(_conv_same, *residuals)[1](g)


conv_patches.defvjp(_conv_patches_forward, _conv_patches_backward)

CONVS = ("auto", "xla", "shifts")


def _conv(kind: str, features: int, in_features: int, **options) -> nn.Module:
    """A 3×3 convolution with padding 1: XLA's (`nn.Conv`), or `Conv`'s shifted
    matmuls ("shifts"); "auto" is XLA's but on a CPU backend for a
    stride-1 layer of at most `MAX_PATCH_CHANNELS` input channels, which takes
    `Conv`'s patches."""
    if kind not in CONVS:
        raise ConfigError("conv", kind, f"allowed: {', '.join(CONVS)}")
    strides = options.pop("strides", 1)
    if kind == "shifts":
        return Conv(features, strides=strides, **options)
    if (kind == "auto" and strides == 1 and in_features <= MAX_PATCH_CHANNELS
            and jax.default_backend() == "cpu"):
        return Conv(features, strides=strides, method="patches", **options)
    return nn.Conv(features, (3, 3), strides=strides, padding=1, **options)


def _pool_windows(x: jax.Array) -> jax.Array:
    """N×H×W×C as N×H/2×2×W/2×2×C; an odd last row or column is dropped, as a
    VALID 2×2 pool with stride 2 drops it."""
    n, h, w, c = x.shape
    return x[:, : h - h % 2, : w - w % 2].reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """`nn.max_pool(x, (2, 2), strides=(2, 2))` with the same values and the same
    gradient, bit for bit, ties included: the first maximum of a window in row-major
    order takes the window's gradient (as in Flax and PyTorch). Flax's gradient is
    XLA's select-and-scatter: forward+backward of SimpleCNN's first pool at batch
    128 took 26 ms on the 2-core CPU, against 4.7 ms for this elementwise one."""
    return _max_pool_forward(x)[0]  # XLA drops the unused index


def _max_pool_forward(x):
    windows = _pool_windows(x)
    y = jnp.max(windows, (2, 4))
    # Index (row-major, 0..3) of each window's first maximum, kept for the backward
    # as PyTorch keeps its indices: one int8 per output, so the backward needs
    # neither x nor Flax's select-and-scatter. (XLA's CPU backend may still fuse
    # the index's computation into the backward and re-derive it from the layers
    # before; `norms._per_cell` says what that cost GN and how it is avoided.)
    first = jnp.full(y.shape, 3, jnp.int8)
    for index in (2, 1, 0):
        i, j = divmod(index, 2)
        first = jnp.where(windows[:, :, i, :, j] == y, jnp.int8(index), first)
    return y, (first, x.shape)


def _max_pool_backward(residuals, g):
    first, (n, h, w, c) = residuals
    position = (2 * jax.lax.broadcasted_iota(jnp.int8, (1, 1, 2, 1, 2, 1), 2)
                + jax.lax.broadcasted_iota(jnp.int8, (1, 1, 2, 1, 2, 1), 4))
    dx = jnp.where(position == first[:, :, None, :, None, :], g[:, :, None, :, None, :], 0)
    dx = dx.astype(g.dtype).reshape(n, h - h % 2, w - w % 2, c)
    return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_forward, _max_pool_backward)


class _NormAct(nn.Module):
    """Norm and activation in the configured order."""

    norm: str
    norm_options: tuple
    placement: str
    activation: Any = nn.relu

    @nn.compact
    def __call__(self, x, train: bool):
        layer = norms.make(self.norm, **dict(self.norm_options))
        if self.placement == "before_activation":
            return self.activation(layer(x, train=train))
        return layer(self.activation(x), train=train)


class SimpleCNN(nn.Module):
    """The article's SimpleCNN: conv16-norm-ReLU-pool, conv32-norm-ReLU-pool, fc128, fc.
    For 32×32×3 input the fc input is 32·8·8, as in the article's PyTorch code; the
    same layers size themselves from other inputs (28×28×1 gives 32·7·7). Conv and
    linear layers keep their biases and PyTorch's default init, as the article's do."""

    num_classes: int = 10
    norm: str = "bn"
    norm_options: tuple = ()
    norm_placement: str = "before_activation"
    dtype: Any = jnp.float32
    conv: str = "auto"  # or "xla", "shifts": see `_conv`
    pool: str = "fast"  # `max_pool_2x2`, or "flax": `nn.max_pool` (same numbers, slower)

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.astype(self.dtype)
        pools = {"fast": max_pool_2x2, "flax": lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))}
        if self.pool not in pools:
            raise ConfigError("pool", self.pool, f"allowed: {', '.join(pools)}")
        pool = pools[self.pool]
        for i, features in enumerate((16, 32), start=1):
            fan_in = 9 * x.shape[-1]
            x = _conv(self.conv, features, x.shape[-1], dtype=self.dtype, name=f"conv{i}",
                        kernel_init=_torch_default_kernel,
                        bias_init=_torch_default_bias(fan_in))(x)
            x = _NormAct(self.norm, self.norm_options, self.norm_placement,
                         name=f"norm{i}")(x, train)
            x = pool(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(128, dtype=self.dtype, kernel_init=_torch_default_kernel,
                             bias_init=_torch_default_bias(x.shape[-1]), name="fc1")(x))
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_torch_default_kernel,
                     bias_init=_torch_default_bias(128), name="fc2")(x)
        return x.astype(jnp.float32)


class _BasicBlock(nn.Module):
    features: int
    strides: int
    norm: str
    norm_options: tuple
    dtype: Any
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool):
        def norm_layer():
            return norms.make(self.norm, **dict(self.norm_options))

        conv = lambda s, inputs: _conv(  # noqa: E731
            self.conv, self.features, inputs.shape[-1], strides=s, use_bias=False,
            kernel_init=_he_normal, dtype=self.dtype)(inputs)
        y = nn.relu(norm_layer()(conv(self.strides, x), train=train))
        y = norm_layer()(conv(1, y), train=train)
        if x.shape != y.shape:
            # He et al.'s CIFAR option A: subsample, zero-pad the new channels; no params.
            x = x[:, ::self.strides, ::self.strides, :]
            pad = self.features - x.shape[-1]
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))
        return nn.relu(x + y)


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016 §4.2): 3 stages × 3 basic blocks at 16/32/64
    channels, option-A shortcuts, global average pool, fc. ~0.27 M parameters."""

    num_classes: int = 10
    norm: str = "bn"
    norm_options: tuple = ()
    blocks_per_stage: int = 3
    norm_placement: str = "before_activation"
    dtype: Any = jnp.float32
    conv: str = "auto"  # or "xla", "shifts": see `_conv`

    @nn.compact
    def __call__(self, x, train: bool = True):
        if self.norm_placement != "before_activation":
            raise ConfigError("norm_placement", self.norm_placement,
                              "resnet20 places its norms as He et al. do: only 'before_activation'")
        x = x.astype(self.dtype)
        x = _conv(self.conv, 16, x.shape[-1], use_bias=False, kernel_init=_he_normal,
                  dtype=self.dtype)(x)
        x = nn.relu(norms.make(self.norm, **dict(self.norm_options))(x, train=train))
        for stage, features in enumerate((16, 32, 64)):
            for block in range(self.blocks_per_stage):
                strides = 2 if stage > 0 and block == 0 else 1
                x = _BasicBlock(features, strides, self.norm, self.norm_options,
                                self.dtype, self.conv)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class PlainCNN(nn.Module):
    """A deep CNN without skip connections (the 'plain' nets of He et al. 2016):
    `depth` 3×3 conv layers, each conv-norm-ReLU, in three stages of width,
    2·width and 4·width channels (stride 2 entering stages 2 and 3), global
    average pool, fc. For the gradient claim: depth 10–50, bn vs none."""

    num_classes: int = 10
    depth: int = 20
    width: int = 16
    norm: str = "bn"
    norm_options: tuple = ()
    norm_placement: str = "before_activation"
    dtype: Any = jnp.float32
    conv: str = "auto"  # or "xla", "shifts": see `_conv`

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.astype(self.dtype)
        per_stage = [self.depth // 3 + (1 if i < self.depth % 3 else 0) for i in range(3)]
        for stage, count in enumerate(per_stage):
            for layer in range(count):
                strides = 2 if stage > 0 and layer == 0 else 1
                x = _conv(self.conv, self.width * 2**stage, x.shape[-1], strides=strides,
                          use_bias=self.norm == "none", kernel_init=_he_normal,
                          dtype=self.dtype)(x)
                x = _NormAct(self.norm, self.norm_options, self.norm_placement)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class MLP(nn.Module):
    """The BN paper's MNIST net (Ioffe & Szegedy 2015 §4.1): 3 hidden layers of 100
    sigmoid units, the norm before each sigmoid, small Gaussian initial weights."""

    num_classes: int = 10
    hidden: tuple = (100, 100, 100)
    norm: str = "bn"
    norm_options: tuple = ()
    norm_placement: str = "before_activation"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        for features in self.hidden:
            x = nn.Dense(features, dtype=self.dtype,
                         kernel_init=nn.initializers.normal(0.1))(x)
            x = _NormAct(self.norm, self.norm_options, self.norm_placement,
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

    num_classes: int = 10
    width: int = 64
    norm: str = "bn"
    norm_options: tuple = ()
    norm_placement: str = "before_activation"
    mask_padding: bool = False
    dtype: Any = jnp.float32

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
            layer = norms.make(self.norm, **dict(self.norm_options))
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


_MODELS: dict[str, type[nn.Module]] = {
    "simple_cnn": SimpleCNN, "resnet20": ResNet20, "plain_cnn": PlainCNN, "mlp": MLP,
    "seq_cnn": SequenceCNN,
}


def make(name: str, norm: str = "bn", num_classes: int = 10,
         norm_options: dict[str, Any] | None = None, dtype: str = "float32",
         **options: Any) -> nn.Module:
    """A model by name: 'simple_cnn', 'resnet20', 'plain_cnn', 'mlp' or 'seq_cnn'.

    `norm` and `norm_options` go to `bnlab.norms.make` for every normalized layer;
    `dtype` is the compute dtype (parameters and norm statistics stay float32);
    other options are the model's own fields (e.g. `depth` and `width` of plain_cnn,
    `norm_placement`).
    """
    if name not in _MODELS:
        raise ConfigError("model", name, f"allowed: {', '.join(_MODELS)}")
    norms.make(norm, **(norm_options or {}))  # fail on a bad norm before building
    model = _MODELS[name]
    unknown = set(options) - (set(model.__dataclass_fields__) - {"parent", "name"})
    if unknown:
        raise ConfigError("model", name, f"takes no option(s) {', '.join(sorted(unknown))}")
    frozen = tuple(sorted((norm_options or {}).items()))
    return model(num_classes=num_classes, norm=norm, norm_options=frozen,
                 dtype=jnp.dtype(dtype), **options)


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
