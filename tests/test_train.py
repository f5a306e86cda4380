"""Real training steps on small real data, and the optimizer against hand formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnlab import models, optim, tracking, train
from bnlab import steps as steps_lib


def _rows(run_dir):
    return tracking.read_metrics(run_dir / "metrics.jsonl")


def test_a_real_run_learns_fashion_mnist(small_config, tmp_path):
    small_config.train_size = 2048
    small_config.num_steps = 60
    summary = train.train_and_evaluate(small_config, str(tmp_path))
    assert summary["status"] == "done" and summary["step"] == 60
    # 10 classes: chance is 0.1. 60 SGD steps of the BN SimpleCNN get far past it.
    assert summary["test_accuracy"] > 0.6, summary
    correct = summary["test_accuracy"] * 2000  # evaluated on config.test_size examples
    assert abs(correct - round(correct)) < 1e-6
    assert summary["sgd_batch_size"] == 32 and summary["norm_batch_size"] == 32
    # Smallest normalized layer: conv2's 14×14 map over 32 examples.
    assert summary["values_per_statistic"] == 32 * 14 * 14
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(5, 61, 5))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["test_accuracy"] == summary["test_accuracy"]
    assert tracking.read_json(tmp_path / "status.json")["status"] == "done"


def test_same_config_and_seed_give_identical_metrics(small_config, tmp_path):
    small_config.augment = True  # the augmentation's randomness must be seeded too
    train.train_and_evaluate(small_config, str(tmp_path / "a"))
    train.train_and_evaluate(small_config, str(tmp_path / "b"))
    small_config.seed = 1
    train.train_and_evaluate(small_config, str(tmp_path / "c"))
    a, b, c = (_rows(tmp_path / n) for n in "abc")
    without_time = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert without_time(a) == without_time(b)  # bit for bit: exact float equality
    assert without_time(a) != without_time(c)


def test_learning_rate_weight_decay_and_seed_reuse_one_compiled_step(synthetic_config, tmp_path):
    steps_lib.step_functions.cache_clear()
    before = dict(steps_lib.TRACE_COUNTS)
    results = []
    for i, (lr, wd, seed) in enumerate([(0.05, 0.0, 0), (0.2, 5e-4, 0), (0.01, 1e-3, 3)]):
        synthetic_config.learning_rate, synthetic_config.weight_decay = lr, wd
        synthetic_config.seed = seed
        results.append(train.train_and_evaluate(synthetic_config, str(tmp_path / str(i))))
    assert steps_lib.TRACE_COUNTS["train_step"] - before["train_step"] == 1
    assert steps_lib.TRACE_COUNTS["eval_step"] - before["eval_step"] == 1
    assert len({r["train_loss"] for r in results}) == 3  # the values did reach the step
    assert [_rows(tmp_path / str(i))[0]["learning_rate"] for i in range(3)] == [0.05, 0.2, 0.01]


def test_a_diverging_run_is_recorded_not_raised(synthetic_config, tmp_path):
    synthetic_config.norm = "none"
    synthetic_config.learning_rate = 1e4
    summary = train.train_and_evaluate(synthetic_config, str(tmp_path))
    assert summary["status"] == "diverged"
    assert 1 <= summary["diverged_step"] <= synthetic_config.num_steps
    status = tracking.read_json(tmp_path / "status.json")
    assert status["status"] == "diverged" and status["diverged_step"] == summary["diverged_step"]
    written = tracking.read_json(tmp_path / "summary.json")
    assert written["status"] == "diverged" and written["test_accuracy"] is None


def test_steps_to_target_is_the_first_eval_reaching_it(small_config, tmp_path):
    small_config.target_accuracy = 0.5
    small_config.num_steps = 40
    summary = train.train_and_evaluate(small_config, str(tmp_path))
    evals = [(r["step"], r["test_accuracy"]) for r in _rows(tmp_path) if "test_accuracy" in r]
    assert [s for s, _ in evals] == list(range(5, 41, 5))  # every log step when a target is set
    reached = [s for s, acc in evals if acc >= 0.5]
    assert reached, evals
    assert summary["steps_to_target"] == reached[0]
    assert summary["best_test_accuracy"] == max(acc for _, acc in evals)


def test_ghost_bn_run_reports_its_normalization_batch(synthetic_config, tmp_path):
    synthetic_config.virtual_batch_size = 4
    summary = train.train_and_evaluate(synthetic_config, str(tmp_path))
    assert summary["sgd_batch_size"] == 32 and summary["norm_batch_size"] == 4
    assert summary["values_per_statistic"] == 4 * 14 * 14


@pytest.mark.parametrize("model", [pytest.param("resnet20", marks=pytest.mark.slow),
                                   "plain_cnn", "mlp"])
def test_other_models_train(synthetic_config, tmp_path, model):
    synthetic_config.model = model
    synthetic_config.depth = 6
    synthetic_config.num_steps = 10
    synthetic_config.optimizer = "adamw"
    synthetic_config.learning_rate = 1e-3
    summary = train.train_and_evaluate(synthetic_config, str(tmp_path))
    assert summary["status"] == "done" and summary["test_accuracy"] is not None


# ---------------------------------------------------------------- optimizer

def _spec(**changes):
    base = dict(name="sgd", momentum=0.0, nesterov=False, schedule="constant", total_steps=20,
                warmup_steps=0, step_boundaries=(0.5, 0.75), step_decay=0.1,
                decay_norm_params=False)
    return optim.OptimizerSpec(**{**base, **changes})


def _applied_rates(spec, lr=0.3):
    """Runs the optimizer on a unit gradient: with momentum 0 and no decay, each
    update is exactly -lr_t, the learning rate the optimizer really used."""
    tx = optim.make_optimizer(spec)
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    state.hyperparams["learning_rate"] = jnp.asarray(lr)
    rates = []
    for _ in range(spec.total_steps):
        updates, state = tx.update({"w": jnp.ones(())}, state, params)
        rates.append(-float(updates["w"]))
    return rates


def test_cosine_schedule_with_warmup_matches_the_formula():
    total, warmup, lr = 20, 5, 0.3
    rates = _applied_rates(_spec(schedule="cosine", warmup_steps=warmup), lr)
    expected = [lr * t / warmup if t < warmup
                else lr * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))
                for t in range(total)]
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-7)


def test_step_schedule_matches_the_formula():
    rates = _applied_rates(_spec(schedule="step", warmup_steps=2), 0.3)
    expected = [0.3 * t / 2 if t < 2 else 0.3 if t < 10 else 0.03 if t < 15 else 0.003
                for t in range(20)]
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-7)


def test_constant_schedule_and_sgd_momentum():
    np.testing.assert_allclose(_applied_rates(_spec(), 0.3), [0.3] * 20, rtol=1e-6)
    # Heavy-ball momentum on a constant gradient: lr · (1 + m + … + m^t).
    rates = _applied_rates(_spec(momentum=0.9, total_steps=4), 0.1)
    np.testing.assert_allclose(rates, [0.1 * sum(0.9**k for k in range(t + 1)) for t in range(4)],
                               rtol=1e-5)


@pytest.mark.parametrize("decay_norm_params", [False, True])
def test_weight_decay_and_the_norm_parameter_exclusion(decay_norm_params):
    model = models.make("simple_cnn", norm="bn")
    params = model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), train=True)["params"]
    params = jax.tree.map(lambda p: p + 1.0, params)  # norm biases start at 0: shift all
    tx = optim.make_optimizer(_spec(decay_norm_params=decay_norm_params))
    state = tx.init(params)
    state.hyperparams["learning_rate"] = jnp.asarray(0.5)
    state.hyperparams["weight_decay"] = jnp.asarray(0.01)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, state, params)
    # SGD with coupled decay: update = -lr · wd · param.
    np.testing.assert_allclose(updates["conv1"]["kernel"], -0.5 * 0.01 * params["conv1"]["kernel"],
                               rtol=1e-6)
    norm_update = updates["norm1"]["BatchNorm_0"]["scale"]
    norm_scale = params["norm1"]["BatchNorm_0"]["scale"]
    if decay_norm_params:
        np.testing.assert_allclose(norm_update, -0.5 * 0.01 * norm_scale, rtol=1e-6)
    else:
        np.testing.assert_array_equal(norm_update, 0.0)


def test_fused_steps_train_like_one_step_per_call(small_config, tmp_path):
    """K steps per call (lax.scan over a dataset on the device) against one step per
    call: the same batches and math. Observed bit-identical on this CPU (the scan is
    unrolled here); held to 1e-5 relative, far inside the 0.1 a change of batch
    order or init makes (another seed)."""
    small_config.update(num_steps=10, log_every=2, learning_rate=0.01)
    plain = train.train_and_evaluate(small_config, str(tmp_path / "plain"))
    for k in (2, 5):
        small_config.steps_per_call = k
        fused = train.train_and_evaluate(small_config, str(tmp_path / f"k{k}"))
        np.testing.assert_allclose([r["train_loss"] for r in _rows(tmp_path / f"k{k}")],
                                   [r["train_loss"] for r in _rows(tmp_path / "plain")],
                                   rtol=1e-5)
        assert [r["step"] for r in _rows(tmp_path / f"k{k}")] == list(range(2, 11, 2))
        assert fused["test_accuracy"] == pytest.approx(plain["test_accuracy"], abs=1e-3)
        assert fused["steps_per_call"] == k
    # How many steps a call runs is not what the run computes: one run id for all K.
    names = set()
    for k in (0, 1, 5):
        small_config.steps_per_call = k
        names.add(train.run_name(small_config, ["steps_per_call", "learning_rate"]))
    assert len(names) == 1 and "steps_per_call" not in names.pop()
    # Automatic (0, the default) is one step per call on a CPU backend.
    assert plain["steps_per_call"] == 1


@pytest.mark.slow
def test_logged_gradient_norms_equal_a_hand_computed_gradient(small_config, tmp_path):
    """log_grad_norms with log_every=1: step 1's grad_norm/LAYER is the L2 norm of
    that layer's gradient at the initial parameters on the first batch, computed
    here with jax.grad and NumPy, outside bnlab's train step."""
    from bnlab import data

    small_config.update(log_grad_norms=True, log_every=1, num_steps=2, norm="bn")
    run = train.prepare(small_config)
    train.run_prepared(run, str(tmp_path))
    first = _rows(tmp_path)[0]
    variables = run.model.init(jax.random.key(small_config.seed),
                               jnp.zeros((32,) + run.train_set.image_shape), train=True)
    images, labels = next(data.train_batches(run.train_set, 32, small_config.seed))

    def loss(params):
        logits, _ = run.model.apply({"params": params,
                                     "batch_stats": variables["batch_stats"]},
                                    images, train=True, mutable=["batch_stats"])
        log_p = jax.nn.log_softmax(logits)
        return -jnp.mean(log_p[jnp.arange(len(labels)), labels])

    grads = jax.grad(loss)(variables["params"])
    expected = {name: math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2))
                                    for g in jax.tree.leaves(grads[name])))
                for name in grads}
    logged = {k.split("/", 1)[1]: v for k, v in first.items() if k.startswith("grad_norm/")}
    assert set(logged) == {"conv1", "conv2", "fc1", "fc2", "norm1", "norm2"}
    for name, value in expected.items():
        assert logged[name] == pytest.approx(value, rel=1e-4), name
    assert steps_lib.layer_names({"Conv_10": 0, "Conv_2": 0, "Dense_0": 0}) == [
        "Conv_2", "Conv_10", "Dense_0"]  # depth order for plain_cnn's layers


@pytest.mark.slow
def test_diagnostics_equal_a_hand_computation_and_leave_training_alone(small_config, tmp_path):
    """log_activations and log_landscape with log_every=1: step 1's values are
    recomputed here from the state after step 1 on the probe batch (seed + 2), with
    jax.grad, a hand-written convolution and NumPy; the training metrics equal those
    of the same run without diagnostics, bit for bit."""
    from bnlab import data

    small_config.update(log_every=1, num_steps=2, norm="bn", learning_rate=0.05)
    train.run_prepared(train.prepare(small_config), str(tmp_path / "plain"))
    small_config.update(log_activations=True, log_landscape=True)
    run = train.prepare(small_config)
    train.run_prepared(run, str(tmp_path / "diag"))
    plain, diag = _rows(tmp_path / "plain"), _rows(tmp_path / "diag")
    for a, b in zip(plain, diag, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["train_accuracy"] == b["train_accuracy"]
    first = diag[0]

    # The state after step 1: SGD with momentum 0.9 from zero momentum is w − η·g.
    variables = run.model.init(jax.random.key(small_config.seed),
                               jnp.zeros((32,) + run.train_set.image_shape), train=True)
    images, labels = next(data.train_batches(run.train_set, 32, small_config.seed))

    def loss(params, images, labels, batch_stats=variables["batch_stats"]):
        logits, updates = run.model.apply({"params": params, "batch_stats": batch_stats},
                                          images, train=True, mutable=["batch_stats"])
        log_p = jax.nn.log_softmax(logits)
        return -jnp.mean(log_p[jnp.arange(len(labels)), labels]), updates

    grads, updates = jax.grad(loss, has_aux=True)(variables["params"], images, labels)
    params = jax.tree.map(lambda w, g: w - 0.05 * g, variables["params"], grads)
    stats = updates["batch_stats"]
    probe, probe_labels = next(data.train_batches(run.train_set, 32, small_config.seed + 2))

    # conv1's output by hand: 3×3, padding 1, plus bias.
    kernel, bias = (np.asarray(params["conv1"][k], np.float64) for k in ("kernel", "bias"))
    padded = np.pad(np.asarray(probe, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = sum(np.einsum("nhwc,cf->nhwf", padded[:, i:i + 28, j:j + 28], kernel[i, j])
              for i in range(3) for j in range(3)) + bias
    assert first["act_mean/conv1"] == pytest.approx(out.mean(), rel=1e-4, abs=1e-6)
    assert first["act_std/conv1"] == pytest.approx(out.std(), rel=1e-4)

    def flat(tree):
        return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])

    def grad_at(p):
        return jax.grad(lambda q: loss(q, probe, probe_labels, stats)[0])(p)

    g = grad_at(params)
    # ICS of fc2: every layer before it takes the step SGD would take now, fc2 stays;
    # its gradient moves. The step has momentum: the trace after step 1 is step 1's
    # gradient, so the update is −η·(0.9·g₁ + g), not the plain −η·g.
    moved = {k: (v if k == "fc2" else
                 jax.tree.map(lambda w, d, d1: w - 0.05 * (0.9 * d1 + d), v, g[k], grads[k]))
             for k, v in params.items()}
    before, after = flat(g["fc2"]), flat(grad_at(moved)["fc2"])
    assert first["ics_l2/fc2"] == pytest.approx(np.linalg.norm(before - after), rel=1e-3)
    assert first["ics/fc2"] == pytest.approx(
        np.linalg.norm(before - after) / np.linalg.norm(before), rel=1e-3)
    plain = {k: (v if k == "fc2" else jax.tree.map(lambda w, d: w - 0.05 * d, v, g[k]))
             for k, v in params.items()}
    without_momentum = np.linalg.norm(before - flat(grad_at(plain)["fc2"]))
    assert abs(first["ics_l2/fc2"] - without_momentum) > 1e-2 * without_momentum
    assert first["ics_cos/fc2"] == pytest.approx(
        before @ after / np.linalg.norm(before) / np.linalg.norm(after), rel=1e-4)
    assert "ics/conv1" not in first  # nothing comes before the first layer
    # β-smoothness along the gradient: the largest ‖Δg‖ / ‖Δw‖ over ½η..4η.
    betas = []
    for size in (0.5, 1.0, 2.0, 4.0):
        step = jax.tree.map(lambda w, d, s=size: w - s * 0.05 * d, params, g)
        betas.append(np.linalg.norm(flat(grad_at(step)) - flat(g))
                     / (size * 0.05 * np.linalg.norm(flat(g))))
    assert first["landscape/beta"] == pytest.approx(max(betas), rel=1e-3)


def test_curve_evaluations_use_the_first_curve_test_size_examples(small_config, tmp_path):
    """The evaluations along the way on the first 300 test examples, the last on all
    2,000: the same numbers as runs evaluated on those test sets throughout (the
    training is the same)."""
    small_config.update(num_steps=10, eval_every=5)
    curve = small_config.copy_and_resolve_references()
    curve.curve_test_size = 300
    on_300 = small_config.copy_and_resolve_references()
    on_300.test_size = 300

    def rows(config, name):
        train.train_and_evaluate(config, str(tmp_path / name))
        return {r["step"]: r for r in tracking.read_metrics(tmp_path / name / "metrics.jsonl")}

    both, small, whole = rows(curve, "curve"), rows(on_300, "300"), rows(small_config, "all")
    assert both[5]["test_accuracy"] == small[5]["test_accuracy"]
    assert both[5]["test_accuracy"] != whole[5]["test_accuracy"]  # really another test set
    assert both[10]["test_accuracy"] == whole[10]["test_accuracy"]
    assert both[10]["test_loss"] == whole[10]["test_loss"]


def test_eval_train_set_scores_the_model_on_its_whole_training_set(small_config, tmp_path):
    """final_train_accuracy/loss: the model evaluated on every training example at the
    end. With a learning rate of 1e-12 (and no norm, so nothing else moves) the model
    is its initialization to float32's precision, scored here by hand in NumPy on the
    same examples."""
    small_config.update(norm="none", learning_rate=1e-12, momentum=0.0, num_steps=3,
                        train_size=300, eval_train_set=True)
    summary = train.train_and_evaluate(small_config, str(tmp_path / "run"))
    run = train.prepare(small_config)
    variables = run.model.init(jax.random.key(small_config.seed),
                               jnp.zeros((small_config.batch_size,) + run.train_set.image_shape),
                               train=True)
    logits = np.asarray(run.model.apply(variables, jnp.asarray(run.train_set.images),
                                        train=False), np.float64)
    labels = run.train_set.labels
    log_softmax = logits - logits.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    assert summary["final_train_accuracy"] == np.mean(logits.argmax(1) == labels)
    assert summary["final_train_loss"] == pytest.approx(
        -log_softmax[np.arange(len(labels)), labels].mean(), rel=1e-5)
    # Not evaluated unless asked: the summary of a run without it has neither.
    small_config.eval_train_set = False
    assert "final_train_accuracy" not in train.train_and_evaluate(small_config,
                                                                  str(tmp_path / "plain"))


def test_robustness_evaluations_equal_a_hand_computation_in_pixel_space(small_config,
                                                                         tmp_path):
    """C12's final evaluations on the curves' first 300 test examples: accuracy as
    they are, with Gaussian noise of std 0.2 and after one FGSM step of 0.02, both on
    the 0-1 pixel scale. With a learning rate of 1e-12 and no norm the model is its
    initialization; here the images are taken back to pixels, perturbed and clipped
    there, and normalized again, by hand."""
    small_config.update(norm="none", learning_rate=1e-12, momentum=0.0, num_steps=3,
                        curve_test_size=300, robust_noise=0.2, robust_fgsm=0.02)
    summary = train.train_and_evaluate(small_config, str(tmp_path / "run"))
    run = train.prepare(small_config)
    variables = run.model.init(jax.random.key(small_config.seed),
                               jnp.zeros((small_config.batch_size,) + run.train_set.image_shape),
                               train=True)
    images, labels = run.test_set.images[:300], run.test_set.labels[:300]
    mean, std = 0.2860, 0.3530  # Fashion-MNIST's train-split pixel statistics
    pixels = images * std + mean

    def accuracy(pixel_images):
        normalized = ((pixel_images - mean) / std).astype(np.float32)
        logits = run.model.apply(variables, jnp.asarray(normalized), train=False)
        return np.mean(np.asarray(logits).argmax(1) == labels)

    def loss(pixel_images):
        logits = run.model.apply(variables, (pixel_images - mean) / std, train=False)
        return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    noise = np.random.default_rng([small_config.seed, 12]).standard_normal(
        images.shape, np.float32)  # the run's seed draws it: paired across norms
    noisy = np.clip(pixels + 0.2 * noise, 0.0, 1.0)
    stepped = np.clip(pixels + 0.02 * np.sign(np.asarray(jax.grad(loss)(jnp.asarray(pixels)))),
                      0.0, 1.0)
    assert summary["robust_test_examples"] == 300
    assert summary["robust_clean_accuracy"] == accuracy(pixels)
    assert summary["robust_noise_accuracy"] == accuracy(noisy)
    assert summary["robust_fgsm_accuracy"] == accuracy(stepped)
    # A perturbation that changes the input: the step really moved the predictions.
    assert accuracy(stepped) < accuracy(pixels)


def test_batch_statistic_errors_equal_numpy_on_the_first_bn_layer(small_config):
    """C11's measurement on the BN paper's MLP at initialization: its first BN layer
    normalizes x·W + b, which NumPy computes alone. For batches of 4 and 64 of 1,024
    images: the mean over channels and batches of |μ_B − μ|/σ and |σ²_B/σ² − 1|
    against the 1,024 images' own mean and (biased) variance."""
    from bnlab import probes

    small_config.update(model="mlp", norm="bn", train_size=1024)
    run = train.prepare(small_config)
    images = run.train_set.images[:1024]
    variables = run.model.init(jax.random.key(0), jnp.zeros((32,) + run.train_set.image_shape),
                               train=True)
    state = steps_lib.TrainState(jnp.int32(0), variables["params"], variables["batch_stats"],
                                 None)
    dense = variables["params"]["Dense_0"]
    h = (images.reshape(1024, -1).astype(np.float64) @ np.asarray(dense["kernel"], np.float64)
         + np.asarray(dense["bias"], np.float64))
    # 1,024 examples: two chunks of 512; 1,000: chunks of 512 and 488, pooled by size.
    for population in (1024, 1000):
        errors = probes.batch_statistic_errors(run.model, state, images, (4, 64),
                                               population=population)
        first = next(k for k in errors[4] if k.startswith("_NormAct_0/"))
        mean, var = h[:population].mean(0), h[:population].var(0)
        for size in (4, 64):
            batches = h[:min(64, population // size) * size].reshape(-1, size, h.shape[1])
            mean_error = np.mean(np.abs(batches.mean(1) - mean) / np.sqrt(var))
            var_error = np.mean(np.abs(batches.var(1) / var - 1))
            assert errors[size][first] == pytest.approx((mean_error, var_error), rel=2e-4)
    # Larger batches lie closer, about as 1/√B (16× the batch, about a quarter).
    assert errors[64][first][0] < errors[4][first][0] / 2.5
