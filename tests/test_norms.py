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


# ---------------------------------------------------------------- running variance
# The BN paper (Alg. 2: Var[x] = m/(m−1)·E_B[σ²_B]) and PyTorch (running_var) keep
# the unbiased batch variance in the running average, for the m values a statistic
# averages; every run does (config.bn_unbiased_running_var, True by default).


def _running(x_steps, stats_of, momentum=0.9):
    """The running averages after each step, in NumPy (float64): `stats_of(x)` gives
    the batch's (mean, variance as the running average takes it)."""
    ra_mean, ra_var, seen = 0.0, 1.0, []
    for x in x_steps:
        mean, var = stats_of(x.astype(np.float64))
        ra_mean = momentum * ra_mean + (1 - momentum) * mean
        ra_var = momentum * ra_var + (1 - momentum) * var
        seen.append((ra_mean, ra_var))
    return seen


def _train_steps(layer, x_steps, **kwargs):
    """The layer's running (mean, var) after each training step on `x_steps`."""
    variables = layer.init(jax.random.key(0), jnp.asarray(x_steps[0]))
    seen = []
    for x in x_steps:
        _, updates = layer.apply(variables, jnp.asarray(x), mutable=["batch_stats"],
                                 **{k: jnp.asarray(v[len(seen)]) for k, v in kwargs.items()})
        variables = {**variables, **updates}
        seen.append((np.asarray(updates["batch_stats"]["mean"]),
                     np.asarray(updates["batch_stats"]["var"])))
    return seen


def _assert_running(got, expected):
    assert len(got) == len(expected)
    for (mean, var), (ra_mean, ra_var) in zip(got, expected, strict=True):
        np.testing.assert_allclose(mean, ra_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, ra_var, rtol=1e-5)


def _steps(shape, count=4):
    return [_x(shape, seed=10 + i, shift=i - 1.0, scale=0.5 + i) for i in range(count)]


def test_bn_running_variance_is_the_unbiased_batch_variance_on_a_conv_input(make):
    x_steps = _steps((4, 3, 2, 5))  # m = N·H·W = 24 values per statistic
    m = 4 * 3 * 2

    def unbiased(x):
        return x.mean((0, 1, 2)), x.var((0, 1, 2)) * m / (m - 1)

    got = _train_steps(make("bn", momentum=0.9, unbiased_running_var=True), x_steps)
    expected = _running(x_steps, unbiased)
    _assert_running(got[:1], expected[:1])  # after one step
    _assert_running(got, expected)  # and after several
    # The normalization itself keeps the biased σ²_B (the paper's Alg. 1).
    y, _, _ = _apply(make("bn", unbiased_running_var=True), x_steps[0])
    np.testing.assert_allclose(y, _normalize(x_steps[0], (0, 1, 2)), atol=2e-5)


def test_biased_running_variance_is_an_option(make):
    x_steps = _steps((4, 3, 2, 5))
    got = _train_steps(make("bn", momentum=0.9, unbiased_running_var=False), x_steps)
    _assert_running(got, _running(x_steps, lambda x: (x.mean((0, 1, 2)), x.var((0, 1, 2)))))
    # The two differ by m/(m−1) at momentum 0: 24/23 here.
    _, _, biased = _apply(make("bn", momentum=0.0, unbiased_running_var=False), x_steps[0])
    _, _, unbiased = _apply(make("bn", momentum=0.0, unbiased_running_var=True), x_steps[0])
    np.testing.assert_allclose(unbiased["batch_stats"]["var"],
                               biased["batch_stats"]["var"] * 24 / 23, rtol=1e-6)


def test_ghost_bn_running_variance_unbiased_per_ghost_batch(make):
    x_steps = _steps((12, 2, 2, 6), count=3)
    m = 4 * 2 * 2  # each ghost batch of 4 examples × 2×2 positions

    def ghosts(x):
        parts = x.reshape(3, 4, 2, 2, 6)
        return (parts.mean((1, 2, 3)).mean(0),
                (parts.var((1, 2, 3)) * m / (m - 1)).mean(0))

    layer = make("bn", momentum=0.9, virtual_batch_size=4, unbiased_running_var=True)
    _assert_running(_train_steps(layer, x_steps), _running(x_steps, ghosts))


def test_masked_bn_running_variance_unbiased_over_the_real_positions(make):
    rng = np.random.default_rng(5)
    x_steps = _steps((6, 7, 5), count=3)  # N×T×C sequences, padded
    masks = [(rng.random((6, 7)) < 0.5).astype(np.float32) for _ in x_steps]
    for x, mask in zip(x_steps, masks, strict=True):
        x[mask == 0] = 0.0
    step = iter(masks)

    def real(x):
        values = x[next(step) == 1]  # m = the real positions of this batch
        return values.mean(0), values.var(0) * len(values) / (len(values) - 1)

    layer = make("bn", momentum=0.9, unbiased_running_var=True)
    _assert_running(_train_steps(layer, x_steps, mask=masks), _running(x_steps, real))


@pytest.mark.parametrize("case", ["mlp_batch_1", "ghost_of_1", "one_real_position"])
def test_one_value_per_statistic_keeps_the_biased_variance(make, case):
    """At m = 1 the unbiased variance is 0/0: the layer keeps the biased 0 (no inf or
    NaN in the running statistics), as before the unbiased default."""
    x = _x(shape=(1, 6) if case == "mlp_batch_1" else (4, 6))
    options = {"virtual_batch_size": 1} if case == "ghost_of_1" else {}
    kwargs = {}
    if case == "one_real_position":
        kwargs["mask"] = [np.array([0.0, 1.0, 0.0, 0.0], np.float32)]
    layer = make("bn", momentum=0.9, unbiased_running_var=True, **options)
    ((mean, var),) = _train_steps(layer, [x], **kwargs)
    assert np.isfinite(mean).all() and np.isfinite(var).all()
    np.testing.assert_allclose(var, 0.9, rtol=1e-6)  # 0.9·1 + 0.1·0


def test_running_variance_against_torch_batchnorm2d(make):
    torch = pytest.importorskip("torch")
    x_steps = _steps((4, 3, 2, 5))
    bn = torch.nn.BatchNorm2d(5, momentum=0.1, eps=EPS)
    bn.train()
    got = _train_steps(make("bn", momentum=0.9, unbiased_running_var=True), x_steps)
    for x, (mean, var) in zip(x_steps, got, strict=True):
        bn(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))  # NCHW
        np.testing.assert_allclose(mean, bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, bn.running_var.numpy(), rtol=1e-5)


def test_the_config_field_reaches_the_layer(small_config):
    import ml_collections

    from bnlab import config as config_lib

    config = small_config
    assert config.bn_unbiased_running_var is True  # the default
    assert norms.make("bn", **norms.options(config)).unbiased_running_var is True
    config.bn_unbiased_running_var = False
    assert norms.make("bn", **norms.options(config)).unbiased_running_var is False
    # A config file could set a non-boolean (the CLI's flags are typed already).
    bad = ml_collections.ConfigDict({**config.to_dict(), "bn_unbiased_running_var": 1})
    with pytest.raises(ConfigError, match="bn_unbiased_running_var=1: True or False"):
        config_lib.validate(bad)
    # A run's config written before the field existed computed the biased variance.
    del config["bn_unbiased_running_var"]
    assert norms.options(config)["unbiased_running_var"] is False


def test_noisy_bn_draws_a_scale_and_shift_per_value_only_in_training(make):
    """Noisy BN (Santurkar et al.): with a "noise" rng, each output value y becomes
    s·y + m, s ~ U(1, 1 + n), m ~ U(−n, n), a new draw per rng; the statistics and
    their running averages are BN's own; without the rng, or in eval, plain BN."""
    x = _x((16, 4, 4, 8))
    plain_layer, noisy_layer = make("bn"), make("bn", noise=0.5)
    plain, variables, plain_updates = _apply(plain_layer, x)
    quiet, _, _ = _apply(noisy_layer, x, variables=variables)
    np.testing.assert_array_equal(quiet, plain)  # no rng: no noise

    def noisy(key):
        y, updates = noisy_layer.apply(variables, jnp.asarray(x), train=True,
                                       mutable=["batch_stats"], rngs={"noise": key})
        return np.asarray(y, np.float64), updates

    y, updates = noisy(jax.random.key(1))
    for name in ("mean", "var"):
        np.testing.assert_array_equal(updates["batch_stats"][name],
                                      plain_updates["batch_stats"][name])
    p = plain.astype(np.float64)
    low, high = np.minimum(p, 1.5 * p) - 0.5, np.maximum(p, 1.5 * p) + 0.5
    assert np.all((y >= low - 1e-5) & (y <= high + 1e-5))
    # The least-squares fit y ≈ a·plain + b over 2,048 values: a = E[s] = 1.25, b = E[m] = 0.
    a, b = np.polyfit(p.ravel(), y.ravel(), 1)
    assert a == pytest.approx(1.25, abs=0.05) and b == pytest.approx(0.0, abs=0.05)
    assert np.std(y - 1.25 * p) > 0.2  # per-value noise, not one affine map
    assert not np.allclose(noisy(jax.random.key(2))[0], y)  # each draw its own
    evaluated, _, _ = _apply(noisy_layer, x, train=False, variables=variables)
    np.testing.assert_array_equal(evaluated, _apply(plain_layer, x, train=False,
                                                    variables=variables)[0])
    # The control: the same noise whatever the rng (no shift from step to step).
    static = make("bn", noise=0.5, noise_static=True)

    def fixed(key):
        return np.asarray(static.apply(variables, jnp.asarray(x), train=True,
                                       mutable=["batch_stats"], rngs={"noise": key})[0])

    np.testing.assert_array_equal(fixed(jax.random.key(1)), fixed(jax.random.key(2)))
    assert np.std(fixed(jax.random.key(1)) - 1.25 * p) > 0.2


def test_noisy_bn_config_fields(small_config):
    import ml_collections

    from bnlab import config as config_lib

    config = small_config
    assert norms.make("bn", **norms.options(config)).noise == 0.0  # the default: plain BN
    config.update(bn_noise=0.5, bn_noise_static=True)
    layer = norms.make("bn", **norms.options(config))
    assert (layer.noise, layer.noise_static) == (0.5, True)
    config_lib.validate(config)
    for name in ("ln", "in", "gn"):  # noise is BN's alone
        with pytest.raises(ConfigError, match="takes no option"):
            norms.make(name, noise=0.5)
    for field, value, message in [("bn_noise", -0.1, "bn_noise=-0.1: must be a finite number"),
                                  ("norm", "gn", "bn_noise=0.5: noisy BN applies to norm='bn'")]:
        bad = ml_collections.ConfigDict({**config.to_dict(), field: value})
        with pytest.raises(ConfigError, match=message):
            config_lib.validate(bad)
    bad = ml_collections.ConfigDict({**config.to_dict(), "bn_noise": 0.0})
    with pytest.raises(ConfigError, match="bn_noise_static=True: fixes noisy BN's draw"):
        config_lib.validate(bad)
    # A run's config written before the fields existed is plain BN, and still valid.
    del config["bn_noise"], config["bn_noise_static"]
    config_lib.validate(config)
    assert norms.make("bn", **norms.options(config)).noise == 0.0
