"""bnlab.fast: each fast kernel computes what the math it replaces computes (the
reference in bnlab.models and bnlab.norms): the pool bit for bit, the
convolutions and the norms within float32 rounding; and `fast.choose` picks them
per backend."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_norms import EPS, _apply, _normalize, _x

from bnlab import fast, models, norms
from bnlab.fast import conv as fast_conv
from bnlab.fast import norms as fast_norms
from bnlab.fast.norms import fused_normalize
from bnlab.fast.pool import _pool_windows, max_pool_2x2

# ---------------------------------------------------------------- convolutions


@pytest.mark.parametrize("method,strides,use_bias,channels", [
    ("shifts", 1, True, 3), ("shifts", 2, False, 16), ("patches", 1, True, 3),
    ("patches", 1, False, 1)])
def test_matmul_convs_equal_flax_conv(method, strides, use_bias, channels):
    """fast.conv.Conv (shifted matmuls; the patches of a CPU's first layer)
    against nn.Conv: same parameters, same outputs and gradients (the input's too)
    up to float32 rounding."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, channels))
    ours = fast_conv.Conv(8, strides=strides, use_bias=use_bias, method=method)
    flax_conv = nn.Conv(8, (3, 3), strides=strides, padding=1, use_bias=use_bias)
    variables = flax_conv.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(
        jnp.shape, variables)

    def loss(module, variables, x):
        return jnp.sum(jnp.sin(module.apply(variables, x)))

    np.testing.assert_allclose(ours.apply(variables, x), flax_conv.apply(variables, x),
                               rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.grad(loss, argnums=(1, 2))(ours, variables, x)),
                    jax.tree.leaves(jax.grad(loss, argnums=(1, 2))(flax_conv, variables, x)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_cpu_takes_patches_for_its_first_layer_only():
    """`fast.choose("cpu")`: SimpleCNN's conv1 (3 input channels) is one matmul over
    patches, conv2 (16) stays XLA's convolution; the network's parameters, outputs
    and gradients are those of the same network with Flax's convolutions, up to
    rounding. Other backends keep Flax's convolution throughout."""
    x = jax.random.normal(jax.random.key(0), (4, 12, 12, 3))
    cpu = fast.choose("cpu")
    flax_convs = models.Ops(pool=cpu.pool, normalize=cpu.normalize)
    assert fast.choose("gpu").conv is models.conv3x3
    fast_model, flax_model = (
        models.make("simple_cnn", norm="gn", norm_options={"num_groups": 8}, ops=ops)
        for ops in (cpu, flax_convs))
    variables = flax_model.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, fast_model.init(jax.random.key(1), x)) == jax.tree.map(
        jnp.shape, variables)

    def convolutions(model):
        jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, x))(variables))
        return jaxpr.count("conv_general_dilated")

    assert (convolutions(fast_model), convolutions(flax_model)) == (1, 2)
    np.testing.assert_allclose(fast_model.apply(variables, x), flax_model.apply(variables, x),
                               rtol=1e-5, atol=1e-5)
    grads = [jax.jit(jax.grad(lambda v, m=m: jnp.sum(jnp.sin(m.apply(v, x)))))(variables)
             for m in (fast_model, flax_model)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model,norm", [("simple_cnn", "bn"), ("resnet20", "gn"),
                                        ("plain_cnn", "ln"), ("mlp", "bn")])
def test_a_network_computes_the_same_with_the_fast_kernels_as_with_the_math(model, norm):
    """The whole network, training mode: `fast.choose("cpu")` against `models.Ops()`
    (Flax's conv and pool, each norm's formula): same parameters, outputs, batch
    statistics and gradients within float32 rounding."""
    x = jax.random.normal(jax.random.key(0), (4, 12, 12, 3))
    options = {"depth": 4} if model == "plain_cnn" else {}
    norm_options = {"num_groups": 4} if norm == "gn" else {}
    fast_model, math_model = (models.make(model, norm=norm, norm_options=norm_options,
                                          ops=ops, **options)
                              for ops in (fast.choose("cpu"), models.Ops()))
    variables = math_model.init(jax.random.key(1), x)

    def loss(params, model):
        y, state = model.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y)), (y, state)

    results = [jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)(variables["params"], m)
               for m in (fast_model, math_model)]
    # Gradients, outputs, batch statistics: each held to 1e-4 of its largest value
    # (a bias before BN has a gradient of zero but for rounding, so not per leaf).
    for part in range(3):
        got, want = ([np.ravel(leaf) for leaf in jax.tree.leaves((r[0], *r[1])[part])]
                     for r in results)
        if want:  # no batch statistics without BN
            got, want = np.concatenate(got), np.concatenate(want)
            np.testing.assert_allclose(got, want, rtol=0,
                                       atol=1e-4 * float(np.max(np.abs(want))))


# ---------------------------------------------------------------- pool


@pytest.mark.parametrize("shape", [(4, 8, 8, 3), (3, 7, 6, 2), (2, 5, 9, 4)])
def test_max_pool_equals_flax_bit_for_bit_ties_included(shape):
    """Values rounded to integers and passed through ReLU: most windows hold ties
    (zeros, equal ones), where the gradient must go to the first maximum in
    row-major order, as Flax's select-and-scatter sends it. Odd sizes drop the
    last row or column, whose gradient is zero."""
    x = jax.nn.relu(jnp.round(jax.random.normal(jax.random.key(0), shape)))
    y, flax_vjp = jax.vjp(models.max_pool, x)
    g = jax.random.normal(jax.random.key(1), y.shape)
    got, vjp = jax.vjp(max_pool_2x2, x)
    np.testing.assert_array_equal(got, y)
    np.testing.assert_array_equal(vjp(g)[0], flax_vjp(g)[0])
    ties = np.sum(np.asarray(_pool_windows(x) == got[:, :, None, :, None, :]), (2, 4))
    assert (ties > 1).mean() > 0.3  # the case that tells the rules apart is there

# ---------------------------------------------------------------- norms


FUSED_CASES = [
    ("bn", {}, (6, 5, 4, 8)), ("bn", {"virtual_batch_size": 2}, (6, 5, 4, 8)),
    ("ln", {}, (6, 5, 4, 8)), ("in", {}, (6, 5, 4, 8)), ("gn", {"num_groups": 4}, (6, 5, 4, 8)),
    ("bn", {}, (16, 8)), ("ln", {}, (16, 8)), ("gn", {"num_groups": 2}, (16, 8)),
    ("bn", {}, (4, 7, 6)),  # sequences: N×T×C
]


@pytest.mark.parametrize("name,options,shape", FUSED_CASES)
def test_fused_formulation_equals_the_two_pass_reference(name, options, shape):
    """Output, running statistics and every gradient (input, scale, bias) of the
    fused formulation (one-pass shifted statistics, hand-written VJP) against the
    two-pass formula differentiated by JAX. Channels get different offsets and
    spreads so that a statistic taken over the wrong axes would show. Tolerance:
    1e-5 relative to each quantity's largest value (float32 rounding; measured
    ≤ 2e-6)."""
    rng = np.random.default_rng(1)
    channels = np.arange(shape[-1], dtype=np.float32)
    x = jnp.asarray(rng.normal(size=shape).astype(np.float32) * (1 + channels) + 3 * channels)
    cotangent = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    fused = norms.make(name, normalize=fused_normalize, **options)
    reference = norms.make(name, **options)
    variables = reference.init(jax.random.key(0), x)
    params = {"scale": jnp.linspace(0.5, 1.5, shape[-1]), "bias": jnp.linspace(-1, 1, shape[-1])}

    def loss(params, x, layer):
        y, state = layer.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(y * cotangent), (y, state)

    results = [jax.grad(loss, argnums=(0, 1), has_aux=True)(params, x, layer)
               for layer in (fused, reference)]
    for got, want in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
        scale = float(np.max(np.abs(want)))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)


def test_fused_gradient_through_the_statistics():
    """`fused_normalize` also returns (mean, var); their gradients (not used by a
    loss in bnlab, whose running averages carry none, but part of the function)
    match JAX's derivative of the two-pass formula, here for GN sets."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(1.0, 2.0, (4, 3, 3, 6)).astype(np.float32))
    scale, bias = jnp.linspace(0.5, 1.5, 6), jnp.linspace(-1, 1, 6)
    weights = [jnp.asarray(rng.normal(size=s).astype(np.float32))
               for s in ((4, 3, 3, 6), (4, 1, 3, 1), (4, 1, 3, 1))]
    sets = ((4, 1, 3, 2), (3,))

    def by_hand(x, scale, bias):
        g = x.reshape(4, 3, 3, 3, 2)
        mean = jnp.mean(g, (1, 2, 4), keepdims=True)
        var = jnp.mean(jnp.square(g - mean), (1, 2, 4), keepdims=True)
        y = ((g - mean) / jnp.sqrt(var + EPS)).reshape(x.shape) * scale + bias
        return y, mean.reshape(4, 1, 3, 1), var.reshape(4, 1, 3, 1)

    def total(f):
        return lambda *args: sum(jnp.sum(o * w) for o, w in zip(f(*args), weights, strict=True))

    fused = total(lambda *a: fused_normalize(*a, sets, EPS))
    got = jax.grad(fused, (0, 1, 2))(x, scale, bias)
    want = jax.grad(total(by_hand), (0, 1, 2))(x, scale, bias)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * float(np.max(np.abs(w))))


@pytest.mark.parametrize("name,options", [("bn", {}), ("ln", {}), ("gn", {"num_groups": 4})])
def test_fused_statistics_stay_accurate_far_from_zero(name, options):
    """One-pass statistics cancel when the mean dwarfs the spread; the shift by each
    cell's first value prevents it. At mean/spread 10⁴ (values 100 ± 0.01) the
    fused output is as close to the float64 formula (applied to the same float32
    inputs) as the two-pass reference's; both are limited by rounding μ itself."""
    x = _x(shape=(8, 6, 6, 8), shift=100.0, scale=0.01)
    axes = {"bn": (0, 1, 2), "ln": (1, 2, 3)}.get(name)
    if name == "gn":
        truth = _normalize(x.reshape(8, 6, 6, 4, 2), (1, 2, 4)).reshape(x.shape)
    else:
        truth = _normalize(x, axes)
    errors = {}
    for fused in (True, False):
        normalize = fused_normalize if fused else None
        y, _, _ = _apply(norms.make(name, epsilon=EPS, normalize=normalize, **options), x)
        errors[fused] = float(np.max(np.abs(y - truth)))
    # Normalized units: μ's own rounding (ulp(100)/2 over σ = 0.01) is 4e-4.
    assert errors[True] <= max(2 * errors[False], 1e-3), errors


def test_gn_cell_expansion_on_the_cpu_is_the_broadcast_bit_for_bit():
    """On the CPU, GN's per-(sample, group) arrays reach the channels through a
    select-and-sum (`_expanded_groups`, which XLA computes once) instead of a
    broadcast (which it re-derives per element in every consumer). The two give the
    same bits, here with -0.0, ±inf and NaN among the values; and the whole layer,
    forward and backward, gives the same bits whichever one `_per_cell` uses."""
    rng = np.random.default_rng(3)
    sets = ((5, 1, 4, 3), (3,))
    x = jnp.zeros((5, 2, 2, 12))
    stacked = rng.normal(size=(2, 5, 1, 4, 1)).astype(np.float32)
    stacked.flat[[0, 3, 7, 12, 21]] = [-0.0, np.inf, -np.inf, np.nan, 0.0]
    got = np.asarray(fast_norms._expanded_groups(jnp.asarray(stacked), sets, x))
    want = np.asarray(fast_norms._broadcast_cells(jnp.asarray(stacked), sets, x))
    assert got.shape == want.shape == (2, 5, 1, 1, 12)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))

    x = jnp.asarray(_x(shape=(6, 5, 4, 8)))
    cotangent = jnp.asarray(_x(shape=(6, 5, 4, 8), seed=4))
    scale, bias = jnp.linspace(0.5, 1.5, 8), jnp.linspace(-1, 1, 8)
    gn_sets = ((6, 1, 4, 2), (3,))

    def value_and_grads():
        fn = jax.jit(lambda x, s, b: jnp.sum(
            fused_normalize(x, s, b, gn_sets, EPS)[0] * cotangent))
        return jax.value_and_grad(fn, (0, 1, 2))(x, scale, bias)

    expanded = value_and_grads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fast_norms, "_expanded_groups", fast_norms._broadcast_cells)
        broadcast = value_and_grads()
    for got, want in zip(jax.tree.leaves(expanded), jax.tree.leaves(broadcast), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
