"""Norm layers against hand-written NumPy formulas (float64) and against each other,
each test for the formula (`norms.make(name)`) and for the fast computation every
run uses (`bnlab.fast.norms.fused_normalize`, plugged in as `normalize`)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnlab import norms
from bnlab.config import ConfigError
from bnlab.fast.norms import fused_normalize

EPS = 1e-5


@pytest.fixture(params=["formula", "fast"])
def make(request):
    """`norms.make` as the formula, and with the fast computation plugged in."""
    if request.param == "formula":
        return norms.make
    return functools.partial(norms.make, normalize=fused_normalize)


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


def test_bn_output_and_per_channel_batch_statistics(make):
    x = _x()
    layer = make("bn", momentum=0.0, epsilon=EPS)  # momentum 0: running = batch stats
    y, _, updates = _apply(layer, x)
    np.testing.assert_allclose(y, _normalize(x, (0, 1, 2)), atol=2e-5)
    mu_b = x.astype(np.float64).mean(axis=(0, 1, 2))
    var_b = x.astype(np.float64).var(axis=(0, 1, 2))
    stats = updates["batch_stats"]
    # μ_B and σ²_B are vectors with one entry per channel (the article's point, C7).
    assert stats["mean"].shape == (12,) and stats["var"].shape == (12,)
    np.testing.assert_allclose(stats["mean"], mu_b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["var"], var_b, rtol=1e-5)


def test_bn_running_average_updates_and_eval_uses_them(make):
    layer = make("bn", momentum=0.9, epsilon=EPS)
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


def test_ln_over_all_features_of_a_sample(make):
    x = _x()
    y, _, _ = _apply(make("ln", epsilon=EPS), x)
    np.testing.assert_allclose(y, _normalize(x, (1, 2, 3)), atol=2e-5)
    # Not Flax's default LayerNorm, which normalizes over channels only.
    assert np.abs(y - _normalize(x, (3,))).max() > 0.1


def test_in_over_spatial_axes_per_channel(make):
    x = _x()
    y, _, _ = _apply(make("in", epsilon=EPS), x)
    np.testing.assert_allclose(y, _normalize(x, (1, 2)), atol=2e-5)


def test_gn_over_groups_of_channels(make):
    x = _x()
    y, _, _ = _apply(make("gn", num_groups=3, epsilon=EPS), x)
    grouped = x.reshape(8, 5, 6, 3, 4)
    expected = _normalize(grouped, (1, 2, 4)).reshape(x.shape)
    np.testing.assert_allclose(y, expected, atol=2e-5)


def test_gn_group_size_one_is_in_and_one_group_is_ln(make):
    x = _x(seed=3)
    gn_in, _, _ = _apply(make("gn", group_size=1, epsilon=EPS), x)
    in_, _, _ = _apply(make("in", epsilon=EPS), x)
    np.testing.assert_allclose(gn_in, in_, atol=1e-6)
    gn_ln, _, _ = _apply(make("gn", num_groups=1, epsilon=EPS), x)
    ln, _, _ = _apply(make("ln", epsilon=EPS), x)
    np.testing.assert_allclose(gn_ln, ln, atol=1e-6)


def test_ghost_bn_equals_bn_on_each_slice(make):
    x = _x(shape=(12, 4, 4, 6), seed=4)
    ghost = make("bn", virtual_batch_size=4, momentum=0.9)
    y, _, updates = _apply(ghost, x)
    plain = make("bn", momentum=0.9)
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


def test_affine_parameters_are_per_channel(make):
    x = _x(shape=(4, 3, 3, 6))
    for name, options in [("bn", {}), ("ln", {}), ("in", {}), ("gn", {"num_groups": 2})]:
        layer = make(name, **options)
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
def test_statistics_in_float32_under_bfloat16(name, options, make):
    # A large common offset: bf16 statistics (8 mantissa bits) would lose the signal.
    x = _x(shape=(8, 4, 4, 8), shift=100.0, scale=1.0)
    layer = make(name, **options)
    y16, _, _ = _apply(layer, x.astype(jnp.bfloat16))
    y32, _, _ = _apply(layer, x.astype(jnp.bfloat16).astype(np.float32))
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(y16.astype(np.float32), y32, atol=0.05)


def test_norms_on_vectors_for_the_mlp(make):
    x = _x(shape=(16, 10))
    y, _, _ = _apply(make("bn", epsilon=EPS), x)
    np.testing.assert_allclose(y, _normalize(x, (0,)), atol=2e-5)
    y, _, _ = _apply(make("ln", epsilon=EPS), x)
    np.testing.assert_allclose(y, _normalize(x, (1,)), atol=2e-5)
    with pytest.raises(ConfigError, match="spatial"):
        _apply(make("in"), x)


def test_bad_options_are_config_errors(make):
    with pytest.raises(ConfigError, match="allowed"):
        make("batchnorm")
    with pytest.raises(ConfigError, match="num_groups"):
        make("ln", num_groups=2)
    with pytest.raises(ConfigError, match="must divide the 12 channels"):
        _apply(make("gn", num_groups=5), _x())
    with pytest.raises(ConfigError, match="must divide the batch"):
        _apply(make("bn", virtual_batch_size=3), _x())


def test_none_is_identity(make):
    x = _x()
    y, variables, _ = _apply(make("none"), x)
    np.testing.assert_array_equal(y, x)
    assert not jax.tree.leaves(variables)


def test_masked_bn_uses_only_the_real_values(make):
    """Masked BN (padded sequences) normalizes with the mean and biased variance of
    the unmasked rows, by hand in NumPy, and keeps those as its running statistics."""
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, (40, 5)).astype(np.float32)
    mask = (rng.random(40) < 0.6).astype(np.float32)
    x[mask == 0] = 0.0  # padding, as the sequence model zeroes it
    layer = make("bn", momentum=0.0)
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
