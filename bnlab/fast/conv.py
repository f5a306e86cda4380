"""Faster computations of a 3×3, padding-1 convolution, with nn.Conv's parameters
(same names and shapes) and its result up to float32 rounding.

- "patches" (`conv_patches`): one matmul over all taps' patches (im2col) forward,
  XLA's convolution gradients backward. A first layer's few input channels leave
  XLA's CPU convolution far from the machine's speed; the patches win there and
  lose from 16 channels on (docs/PERFORMANCE.md), hence `MAX_PATCH_CHANNELS`.
- "shifts": one matmul per kernel tap over a shifted view of the padded input.
  Under vmap over packed members these stay batched matmuls, where vmap turns
  `lax.conv` into a grouped convolution that GPUs run slowly (docs/PERFORMANCE.md).
  No run uses it yet: a packed member must compute what it computes alone, so a
  run that packs with it must say so in its id.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

MAX_PATCH_CHANNELS = 4  # the most input channels a CPU layer takes the patches for


class Conv(nn.Module):
    """nn.Conv(features, kernel_size, strides, padding=1) computed by `method`
    ("shifts" or "patches"; see the module). Named Conv so that its parameters are
    named as nn.Conv's."""

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
    Its gradients are XLA's convolution gradients, not the matmul's: faster for a
    first layer, and the patches need not be kept for the backward."""
    h, w, c = x.shape[1:]
    kh, kw = kernel.shape[:2]
    padded = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    # The column taps, then the row taps of those: the same patches as one concat
    # of all kh·kw shifted views, but faster to run and to compile.
    rows = jnp.concatenate([padded[:, :, dx:dx + w] for dx in range(kw)], axis=-1)
    patches = jnp.concatenate([rows[:, dy:dy + h] for dy in range(kh)], axis=-1)
    return patches @ kernel.reshape(kh * kw * c, -1)


def _conv_patches_forward(x, kernel):
    return conv_patches(x, kernel), (x, kernel)


def _conv_patches_backward(residuals, g):
    return jax.vjp(_conv_same, *residuals)[1](g)


conv_patches.defvjp(_conv_patches_forward, _conv_patches_backward)


def cpu_conv3x3(features: int, in_features: int, strides: int = 1, **options: Any) -> nn.Module:
    """`models.conv3x3` for XLA's CPU backend: the patches for a stride-1 layer of at
    most `MAX_PATCH_CHANNELS` input channels, XLA's convolution for the others."""
    if strides == 1 and in_features <= MAX_PATCH_CHANNELS:
        return Conv(features, method="patches", **options)
    return nn.Conv(features, (3, 3), strides=strides, padding=1, **options)
