"""Norm layers against hand-written NumPy formulas (float64) and against each other."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnlab import norms
from bnlab.config import ConfigError

EPS = 1e-5


def _x(shape=(8, 5, 6, 12), seed=0, scale=3.0, shift=2.0):
    return np.random.default_rng(seed).normal(shift, scale, size=shape).astype(np.float32)


def _apply(layer, x, train=True, variables=None):
    variables = variables or layer.init(jax.random.key(0), jnp.asarray(x), train=train)
    y, updates = layer.apply(variables, jnp.asarray(x), train=train, mutable=["batch_stats"])
    return np.asarray(y), variables, updates


def _normalize(x, axes):
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)  # biased, as in the papers
    return (x - mean) / np.sqrt(var + EPS)


def test_bn_output_and_per_channel_batch_statistics():
    x = _x()
    layer = norms.make("bn", momentum=0.0, epsilon=EPS)  # momentum 0: running = batch stats
    y, _, updates = _apply(layer, x)
    np.testing.assert_allclose(y, _normalize(x, (0, 1, 2)), atol=2e-5)
    mu_b = x.astype(np.float64).mean(axis=(0, 1, 2))
    var_b = x.astype(np.float64).var(axis=(0, 1, 2))
    stats = updates["batch_stats"]
    # μ_B and σ²_B are vectors with one entry per channel (the article's point, C7).
    assert stats["mean"].shape == (12,) and stats["var"].shape == (12,)
    np.testing.assert_allclose(stats["mean"], mu_b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["var"], var_b, rtol=1e-5)


def test_bn_running_average_updates_and_eval_uses_them():
    layer = norms.make("bn", momentum=0.9, epsilon=EPS)
    x1, x2 = _x(seed=1), _x(seed=2, shift=-1.0, scale=0.5)
    _, variables, updates = _apply(layer, x1)
    variables = {**variables, **updates}
    _, _, updates = _apply(layer, x2, variables=variables)
    ra_mean, ra_var = np.zeros(12), np.ones(12)
    for x in (x1, x2):
        x64 = x.astype(np.float64)
        ra_mean = 0.9 * ra_mean + 0.1 * x64.mean(axis=(0, 1, 2))
        ra_var = 0.9 * ra_var + 0.1 * x64.var(axis=(0, 1, 2))
    np.testing.assert_allclose(updates["batch_stats"]["mean"], ra_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["var"], ra_var, rtol=1e-5)
    # Evaluation normalizes with the running averages, not the batch.
    y_eval, _, _ = _apply(layer, x2, train=False, variables={**variables, **updates})
    expected = (x2 - ra_mean) / np.sqrt(ra_var + EPS)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-4, atol=1e-4)


def test_ln_over_all_features_of_a_sample():
    x = _x()
    y, _, _ = _apply(norms.make("ln", epsilon=EPS), x)
    np.testing.assert_allclose(y, _normalize(x, (1, 2, 3)), atol=2e-5)
    # Not Flax's default LayerNorm, which normalizes over channels only.
    assert np.abs(y - _normalize(x, (3,))).max() > 0.1


def test_in_over_spatial_axes_per_channel():
    x = _x()
    y, _, _ = _apply(norms.make("in", epsilon=EPS), x)
    np.testing.assert_allclose(y, _normalize(x, (1, 2)), atol=2e-5)


def test_gn_over_groups_of_channels():
    x = _x()
    y, _, _ = _apply(norms.make("gn", num_groups=3, epsilon=EPS), x)
    grouped = x.reshape(8, 5, 6, 3, 4)
    expected = _normalize(grouped, (1, 2, 4)).reshape(x.shape)
    np.testing.assert_allclose(y, expected, atol=2e-5)


def test_gn_group_size_one_is_in_and_one_group_is_ln():
    x = _x(seed=3)
    gn_in, _, _ = _apply(norms.make("gn", group_size=1, epsilon=EPS), x)
    in_, _, _ = _apply(norms.make("in", epsilon=EPS), x)
    np.testing.assert_allclose(gn_in, in_, atol=1e-6)
    gn_ln, _, _ = _apply(norms.make("gn", num_groups=1, epsilon=EPS), x)
    ln, _, _ = _apply(norms.make("ln", epsilon=EPS), x)
    np.testing.assert_allclose(gn_ln, ln, atol=1e-6)


def test_ghost_bn_equals_bn_on_each_slice():
    x = _x(shape=(12, 4, 4, 6), seed=4)
    ghost = norms.make("bn", virtual_batch_size=4, momentum=0.9)
    y, _, updates = _apply(ghost, x)
    plain = norms.make("bn", momentum=0.9)
    slice_means, slice_vars = [], []
    for i in range(3):
        part = x[4 * i: 4 * (i + 1)]
        y_part, _, part_updates = _apply(plain, part)
        np.testing.assert_allclose(y[4 * i: 4 * (i + 1)], y_part, atol=1e-5)
        slice_means.append(part_updates["batch_stats"]["mean"])
        slice_vars.append(part_updates["batch_stats"]["var"])
    # One set of running averages: the mean of the slices' updates.
    np.testing.assert_allclose(updates["batch_stats"]["mean"], np.mean(slice_means, 0), atol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["var"], np.mean(slice_vars, 0), atol=1e-6)
    # And ghost statistics differ from whole-batch ones.
    y_whole, _, _ = _apply(plain, x)
    assert np.abs(y - y_whole).max() > 1e-2


def test_affine_parameters_are_per_channel():
    x = _x(shape=(4, 3, 3, 6))
    for name, options in [("bn", {}), ("ln", {}), ("in", {}), ("gn", {"num_groups": 2})]:
        layer = norms.make(name, **options)
        variables = layer.init(jax.random.key(0), jnp.asarray(x))
        assert variables["params"]["scale"].shape == (6,), name
        assert variables["params"]["bias"].shape == (6,), name
        scale = jnp.arange(1.0, 7.0)
        bias = jnp.arange(6.0)
        new = {**variables, "params": {"scale": scale, "bias": bias}}
        y, _ = layer.apply(new, jnp.asarray(x), mutable=["batch_stats"])
        y0, _ = layer.apply(variables, jnp.asarray(x), mutable=["batch_stats"])
        np.testing.assert_allclose(y, y0 * np.asarray(scale) + np.asarray(bias), atol=1e-5)


@pytest.mark.parametrize("name,options", [("bn", {}), ("ln", {}), ("in", {}),
                                          ("gn", {"num_groups": 4})])
def test_statistics_in_float32_under_bfloat16(name, options):
    # A large common offset: bf16 statistics (8 mantissa bits) would lose the signal.
    x = _x(shape=(8, 4, 4, 8), shift=100.0, scale=1.0)
    layer = norms.make(name, **options)
    y16, _, _ = _apply(layer, x.astype(jnp.bfloat16))
    y32, _, _ = _apply(layer, x.astype(jnp.bfloat16).astype(np.float32))
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(y16.astype(np.float32), y32, atol=0.05)


def test_norms_on_vectors_for_the_mlp():
    x = _x(shape=(16, 10))
    y, _, _ = _apply(norms.make("bn", epsilon=EPS), x)
    np.testing.assert_allclose(y, _normalize(x, (0,)), atol=2e-5)
    y, _, _ = _apply(norms.make("ln", epsilon=EPS), x)
    np.testing.assert_allclose(y, _normalize(x, (1,)), atol=2e-5)
    with pytest.raises(ConfigError, match="spatial"):
        _apply(norms.make("in"), x)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="allowed"):
        norms.make("batchnorm")
    with pytest.raises(ConfigError, match="num_groups"):
        norms.make("ln", num_groups=2)
    with pytest.raises(ConfigError, match="must divide the 12 channels"):
        _apply(norms.make("gn", num_groups=5), _x())
    with pytest.raises(ConfigError, match="must divide the batch"):
        _apply(norms.make("bn", virtual_batch_size=3), _x())


def test_none_is_identity():
    x = _x()
    y, variables, _ = _apply(norms.make("none"), x)
    np.testing.assert_array_equal(y, x)
    assert not jax.tree.leaves(variables)


def test_masked_bn_uses_only_the_real_values():
    """Masked BN (padded sequences) normalizes with the mean and biased variance of
    the unmasked rows, by hand in NumPy, and keeps those as its running statistics."""
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, (40, 5)).astype(np.float32)
    mask = (rng.random(40) < 0.6).astype(np.float32)
    x[mask == 0] = 0.0  # padding, as the sequence model zeroes it
    layer = norms.make("bn", momentum=0.0)
    variables = layer.init(jax.random.key(0), jnp.asarray(x))
    y, updates = layer.apply(variables, jnp.asarray(x), mask=jnp.asarray(mask),
                             mutable=["batch_stats"])
    real = x[mask == 1].astype(np.float64)
    mean, var = real.mean(0), real.var(0)
    np.testing.assert_allclose(np.asarray(y)[mask == 1], (real - mean) / np.sqrt(var + 1e-5),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], var, rtol=1e-5)
    # Unmasked, the zeros pull the statistics: the naive way differs.
    naive, _ = layer.apply(variables, jnp.asarray(x), mutable=["batch_stats"])
    assert np.abs(np.asarray(naive)[mask == 1] - np.asarray(y)[mask == 1]).max() > 0.1


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
    fused = norms.make(name, **options)
    reference = norms.make(name, fused=False, **options)
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

    fused = total(lambda *a: norms.fused_normalize(*a, sets, EPS))
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
        y, _, _ = _apply(norms.make(name, epsilon=EPS, fused=fused, **options), x)
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
    got = np.asarray(norms._expanded_groups(jnp.asarray(stacked), sets, x))
    want = np.asarray(norms._broadcast_cells(jnp.asarray(stacked), sets, x))
    assert got.shape == want.shape == (2, 5, 1, 1, 12)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))

    x = jnp.asarray(_x(shape=(6, 5, 4, 8)))
    cotangent = jnp.asarray(_x(shape=(6, 5, 4, 8), seed=4))
    scale, bias = jnp.linspace(0.5, 1.5, 8), jnp.linspace(-1, 1, 8)
    gn_sets = ((6, 1, 4, 2), (3,))

    def value_and_grads():
        fn = jax.jit(lambda x, s, b: jnp.sum(
            norms.fused_normalize(x, s, b, gn_sets, EPS)[0] * cotangent))
        return jax.value_and_grad(fn, (0, 1, 2))(x, scale, bias)

    expanded = value_and_grads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(norms, "_expanded_groups", norms._broadcast_cells)
        broadcast = value_and_grads()
    for got, want in zip(jax.tree.leaves(expanded), jax.tree.leaves(broadcast), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
