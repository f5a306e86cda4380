"""Which formulation of a packed (vmapped over members) 3×3 convolution is fastest:
XLA's grouped convolution (what vmap of lax.conv gives), or patches + a batched
matmul. Forward+backward of SimpleCNN's two conv layers, 16 members at batch 8 and
128 at batch 2; prints ms per call.   python3 scripts/gpu/packed_conv.py"""

import time

import jax
import jax.numpy as jnp


def conv(x, w):  # x: B×H×W×C, w: 3×3×C×F
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_patches(x, w):
    patches = jax.lax.conv_general_dilated_patches(
        x, (3, 3), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # patches' features are ordered (C, kh, kw); the kernel is (kh, kw, C).
    k = jnp.transpose(w, (2, 0, 1, 3)).reshape(-1, w.shape[-1])
    return patches @ k


def conv_shifts(x, w):
    """Nine shifted copies of the padded input, each times one tap of the kernel:
    under vmap these are batched matmuls, never a grouped convolution."""
    height, width = x.shape[1], x.shape[2]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = 0.0
    for dy in range(3):
        for dx in range(3):
            out = out + padded[:, dy:dy + height, dx:dx + width, :] @ w[dy, dx]
    return out


def timed(f, *args, reps=200):
    jax.block_until_ready(f(*args))
    start = time.perf_counter()
    for _ in range(reps):
        out = f(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / reps * 1e3


for members, batch in ((16, 8), (128, 2)):
    for size, cin, cout in ((32, 3, 16), (16, 16, 32)):
        key = jax.random.key(0)
        xs = jax.random.normal(key, (2, size, size, cin))
        ws = jax.random.normal(key, (3, 3, cin, cout))
        with jax.default_matmul_precision("highest"):  # GPUs default to TF32
            assert jnp.allclose(conv_shifts(xs, ws), conv(xs, ws), atol=1e-3)
            assert jnp.allclose(conv_patches(xs, ws), conv(xs, ws), atol=1e-3)
        x = jax.random.normal(key, (members, batch, size, size, cin))
        w = jax.random.normal(key, (members, 3, 3, cin, cout)) * 0.1
        for name, impl in (("grouped", conv), ("patches", conv_patches),
                           ("shifts", conv_shifts)):
            def loss(w, x, impl=impl):
                return jnp.sum(jax.vmap(impl)(x, w) ** 2)
            f = jax.jit(jax.grad(loss, argnums=(0, 1)))
            print(f"{members}x b{batch} {size}x{size} {cin}->{cout} {name:8} "
                  f"{timed(f, w, x):.3f} ms fwd+bwd", flush=True)
        single = jax.jit(jax.grad(lambda w, x: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))
        print(f"   one member's conv alone: {timed(single, w[0], x[0]):.3f} ms; "
              f"batch {members * batch} one weight: "
              f"{timed(single, w[0], x.reshape((-1,) + x.shape[2:])):.3f} ms", flush=True)
