"""Model structure against hand counts of the article's and He et al.'s networks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnlab import models
from bnlab.config import ConfigError


def _params(model, shape):
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=True))
    return variables["params"]


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_simple_cnn_matches_the_articles_pytorch_parameter_count():
    # The article's nn.Module, layer by layer (PyTorch convs and linears carry biases;
    # BatchNorm2d has weight and bias per channel):
    conv1 = 3 * 16 * 3 * 3 + 16
    bn1 = 2 * 16
    conv2 = 16 * 32 * 3 * 3 + 32
    bn2 = 2 * 32
    fc1 = 32 * 8 * 8 * 128 + 128
    fc2 = 128 * 10 + 10
    expected = conv1 + bn1 + conv2 + bn2 + fc1 + fc2
    assert expected == 268_746
    params = _params(models.make("simple_cnn", norm="bn"), (2, 32, 32, 3))
    assert _count(params) == expected
    assert params["fc1"]["kernel"].shape == (32 * 8 * 8, 128)


def test_simple_cnn_sizes_itself_from_the_input():
    params = _params(models.make("simple_cnn", norm="bn"), (2, 28, 28, 1))
    assert params["fc1"]["kernel"].shape == (32 * 7 * 7, 128)
    assert params["conv1"]["kernel"].shape == (3, 3, 1, 16)


def test_resnet20_parameter_count():
    convs = (3 * 3 * 3 * 16                            # stem
             + 6 * 3 * 3 * 16 * 16                     # stage 1: 3 blocks × 2 convs
             + 3 * 3 * 16 * 32 + 5 * 3 * 3 * 32 * 32  # stage 2, first conv from 16
             + 3 * 3 * 32 * 64 + 5 * 3 * 3 * 64 * 64)  # stage 3
    norm_affine = 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64)
    fc = 64 * 10 + 10
    params = _params(models.make("resnet20", norm="bn"), (2, 32, 32, 3))
    assert _count(params) == convs + norm_affine + fc  # 269,722: He et al.'s "0.27M"


def test_plain_cnn_has_depth_conv_layers_and_no_skips():
    model = models.make("plain_cnn", norm="bn", depth=10)
    params = _params(model, (2, 32, 32, 3))
    convs = [k for k in params if k.startswith("Conv")]
    assert len(convs) == 10
    layers = models.normalized_layers(model, (2, 32, 32, 3))
    assert len(layers) == 10
    assert {layer["shape"][-1] for layer in layers} == {16, 32, 64}


def test_mlp_is_the_bn_papers_net():
    model = models.make("mlp", norm="bn")
    params = _params(model, (2, 28, 28, 1))
    dense = sorted(k for k in params if k.startswith("Dense"))
    shapes = [params[k]["kernel"].shape for k in dense]
    assert shapes == [(784, 100), (100, 100), (100, 100), (100, 10)]
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    variables = model.init(jax.random.key(0), x, train=True)
    # Sigmoid hidden units: intermediate activations in (0, 1).
    _, state = model.apply(variables, x, train=False, capture_intermediates=True,
                           mutable=["intermediates"])
    hidden = state["intermediates"]["_NormAct_0"]["__call__"][0]
    assert float(hidden.min()) > 0 and float(hidden.max()) < 1


@pytest.mark.parametrize("name", ["simple_cnn", "resnet20", "plain_cnn", "mlp"])
@pytest.mark.parametrize("norm", ["bn", "ln", "gn", "none"])
def test_every_model_runs_with_every_norm(name, norm):
    options = {"num_groups": 4} if norm == "gn" else {}
    extra = {"depth": 6} if name == "plain_cnn" else {}
    model = models.make(name, norm=norm, norm_options=options, num_classes=7, **extra)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    variables = model.init(jax.random.key(0), x, train=True)
    logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (4, 7) and bool(jnp.all(jnp.isfinite(logits)))
    assert ("batch_stats" in variables) == (norm == "bn")


def test_placement_changes_the_function_not_the_parameters():
    x = jax.random.normal(jax.random.key(0), (4, 12, 12, 1))
    before = models.make("simple_cnn", norm="bn", norm_placement="before_activation")
    after = models.make("simple_cnn", norm="bn", norm_placement="after_activation")
    variables = before.init(jax.random.key(0), x, train=True)
    y_before, _ = before.apply(variables, x, train=True, mutable=["batch_stats"])
    y_after, _ = after.apply(variables, x, train=True, mutable=["batch_stats"])
    assert np.abs(np.asarray(y_before - y_after)).max() > 1e-3
    with pytest.raises(ConfigError, match="before_activation"):
        _params(models.make("resnet20", norm_placement="after_activation"), (2, 8, 8, 3))


def test_values_per_statistic_per_layer():
    layers = models.normalized_layers(models.make("simple_cnn", norm="bn"), (2, 28, 28, 1))
    assert [layer["values_per_statistic"] for layer in layers] == [2 * 28 * 28, 2 * 14 * 14]
    ghost = models.make("simple_cnn", norm="bn", norm_options={"virtual_batch_size": 2})
    layers = models.normalized_layers(ghost, (8, 28, 28, 1))
    assert [layer["values_per_statistic"] for layer in layers] == [2 * 28 * 28, 2 * 14 * 14]
    layers = models.normalized_layers(models.make("mlp", norm="bn"), (2, 28, 28, 1))
    assert {layer["values_per_statistic"] for layer in layers} == {2}
    gn = models.make("simple_cnn", norm="gn", norm_options={"num_groups": 8})
    layers = models.normalized_layers(gn, (2, 28, 28, 1))
    assert [layer["values_per_statistic"] for layer in layers] == [28 * 28 * 2, 14 * 14 * 4]


@pytest.mark.parametrize("norm,mask_padding,moves", [
    ("bn", False, True), ("bn", True, False), ("ln", False, False), ("gn", False, False)])
def test_only_naive_bn_depends_on_how_far_sequences_are_padded(norm, mask_padding, moves):
    """seq_cnn in training mode on the same 8 sequences padded to 28 and to 56
    steps: only BN with padding in its statistics gives other outputs."""
    from bnlab import data

    lengths = np.array([7, 10, 14, 18, 21, 24, 27, 28])
    images = np.random.default_rng(0).normal(size=(8, 28, 28, 1)).astype(np.float32)
    short = data.rows_as_sequences(images, lengths, 28)
    assert short.shape == (8, 28, 29)
    np.testing.assert_array_equal(short[..., -1].sum(1), lengths)
    assert not short[0, 7:].any() and np.array_equal(short[0, :7, :-1], images[0, :7, :, 0])
    model = models.make("seq_cnn", norm=norm, mask_padding=mask_padding,
                        norm_options={"num_groups": 8} if norm == "gn" else {})
    variables = model.init(jax.random.key(0), jnp.asarray(short), train=True)
    outputs = [model.apply(variables, jnp.asarray(data.pad_sequences(short, steps)),
                           train=True, mutable=["batch_stats"])[0] for steps in (28, 56)]
    difference = float(jnp.abs(outputs[0] - outputs[1]).max())
    assert (difference > 1e-2) if moves else (difference < 1e-5), difference


def test_a_config_reaches_the_model_and_its_norm_as_their_options(small_config):
    """Each network and norm says which config fields it reads (`CONFIG`); only
    plain_cnn takes depth and width, only seq_cnn mask_padding, and GN's group_size
    overrides num_groups."""
    from bnlab import norms

    config = small_config
    config.update(model="plain_cnn", depth=5, width=8, norm="gn", num_groups=8, group_size=4)
    assert models.options(config) == {"norm_placement": "before_activation", "depth": 5,
                                      "width": 8}
    layer = norms.make(config.norm, **norms.options(config))
    assert (layer.groups(16), layer.epsilon) == (4, config.norm_epsilon)
    config.group_size = None
    assert norms.make(config.norm, **norms.options(config)).groups(16) == 8
    config.update(norm="bn", bn_momentum=0.7, virtual_batch_size=4)
    assert norms.options(config) == {"epsilon": config.norm_epsilon, "momentum": 0.7,
                                     "virtual_batch_size": 4, "unbiased_running_var": True,
                                     "noise": 0.0, "noise_static": False}
    config.update(model="seq_cnn", mask_padding=True)
    assert models.options(config) == {"norm_placement": "before_activation",
                                      "mask_padding": True}
    config.model = "simple_cnn"
    assert models.options(config) == {"norm_placement": "before_activation", "norm_fc1": False}
    config.update(model="plain_cnn", depth=2)
    with pytest.raises(ConfigError, match=r"depth=2: must be an integer >= 3 \(plain_cnn's"):
        models.options(config)
    config.update(model="simple_cnn")  # another model's bad field: still refused
    with pytest.raises(ConfigError, match="depth=2"):
        models.options(config)


def test_norm_fc1_normalizes_simple_cnns_fc1_as_the_formula_says():
    """norm_fc1: fc1's output batch-normalized (per feature over the batch) before its
    ReLU; the logits against that computed by hand in NumPy from fc1's output."""
    x = jax.random.normal(jax.random.key(1), (8, 12, 12, 1))
    model = models.make("simple_cnn", norm="bn", norm_fc1=True)
    variables = model.init(jax.random.key(0), x, train=True)
    assert variables["params"]["norm_fc1"]["BatchNorm_0"]["scale"].shape == (128,)
    logits, state = model.apply(variables, x, train=True,
                                mutable=["batch_stats", "intermediates"],
                                capture_intermediates=lambda module, _: module.name == "fc1")
    fc1 = np.asarray(state["intermediates"]["fc1"]["__call__"][0], np.float64)
    normalized = (fc1 - fc1.mean(0)) / np.sqrt(fc1.var(0) + 1e-5)
    fc2 = variables["params"]["fc2"]
    expected = np.maximum(normalized, 0) @ np.asarray(fc2["kernel"]) + np.asarray(fc2["bias"])
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4)
    # Without it (the article's net), fc1 has no norm.
    plain = models.make("simple_cnn", norm="bn").init(jax.random.key(0), x, train=True)
    assert "norm_fc1" not in plain["params"]
