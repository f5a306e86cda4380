"""A 2×2 max pool with Flax's values and gradient, bit for bit, and a cheaper
backward (docs/PERFORMANCE.md): Flax's gradient is XLA's select-and-scatter."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _pool_windows(x: jax.Array) -> jax.Array:
    """N×H×W×C as N×H/2×2×W/2×2×C; an odd last row or column is dropped, as a
    VALID 2×2 pool with stride 2 drops it."""
    n, h, w, c = x.shape
    return x[:, : h - h % 2, : w - w % 2].reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """`nn.max_pool(x, (2, 2), strides=(2, 2))` with the same values and the same
    gradient, ties included: the first maximum of a window in row-major order takes
    the window's gradient (as in Flax and PyTorch)."""
    return _max_pool_forward(x)[0]  # XLA drops the unused index


def _max_pool_forward(x):
    windows = _pool_windows(x)
    y = jnp.max(windows, (2, 4))
    # Index (row-major, 0..3) of each window's first maximum, kept for the backward
    # as PyTorch keeps its indices: one int8 per output, so the backward needs
    # neither x nor Flax's select-and-scatter. (XLA's CPU backend may still fuse
    # the index's computation into the backward and re-derive it from the layers
    # before; `fast.norms._per_cell` says what that cost GN and how it is avoided.)
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
