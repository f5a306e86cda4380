"""What a run measures beside its loss and accuracy: the diagnostics logged during
training (activations, the loss landscape, internal covariate shift) and the
final evaluations (PreciseBN, BN with batch statistics, padded sequences,
robustness to small input changes)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from bnlab import data, optim, parallel
from bnlab.steps import Steps, TrainState, cross_entropy, evaluate, global_norm, noise_rngs

# Step sizes, in multiples of the learning rate, at which the loss landscape is probed
# along the gradient (Santurkar et al. 2018, §3.1: ½× to 4× the training step).
LANDSCAPE_STEPS = (0.5, 1.0, 2.0, 4.0)


@functools.lru_cache(maxsize=16)
def diagnostics_function(model, order: tuple[str, ...], activations: bool, landscape: bool,
                         optimizer: optim.OptimizerSpec | None = None):
    """(params, batch_stats, opt_state, images, labels, learning_rate) → {metric: value},
    jitted: the diagnostics logged at a log step on one training batch, the network
    in training mode (BN with this batch's statistics; nothing is updated).

    activations: `act_mean/LAYER`, `act_std/LAYER` of each top-level layer's output.
    landscape (Santurkar et al. 2018): with g the gradient and η the learning rate,
    over the steps w − s·η·g, s in LANDSCAPE_STEPS: `landscape/loss_range` (largest
    minus smallest loss), `landscape/grad_change` (largest ‖g(w − s·η·g) − g‖, the
    gradient's predictiveness: small is predictive) and `landscape/beta` (largest
    ‖Δg‖/‖Δw‖, the effective β-smoothness). And the internal covariate shift of
    each layer with parameters but the first (their Definition 2.1): G, its
    gradient, against G', its gradient after every layer before it (in `order`)
    took the step the run's optimizer takes from this state on this batch (with
    its momentum, weight decay and schedule; plain w − η·g when `optimizer` is
    None): `ics_l2/LAYER` = ‖G − G'‖ (their measure), `ics/LAYER` = ‖G − G'‖/‖G‖
    (the same, relative to the gradient's size) and `ics_cos/LAYER` = cos(G, G').
    With noisy BN, G' is taken with the next draw of the noise: what the layer sees
    change by the next step (their Figure 2's noisy BN)."""
    tx = None if optimizer is None else optim.make_optimizer(optimizer)

    def loss_fn(params, batch_stats, images, labels, draw=0):
        # Noisy BN draws its noise here as in a train step; `draw` 1 is the next
        # step's draw, which the layers above see after the update (no effect
        # without noise).
        logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                train=True, mutable=["batch_stats"],
                                rngs=noise_rngs(jnp.asarray(draw, jnp.int32), labels))
        return jnp.mean(cross_entropy(logits, labels))

    gradient = jax.value_and_grad(loss_fn)

    def diagnose(params, batch_stats, opt_state, images, labels, learning_rate):
        out = {}
        if activations:
            _, captured = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                      train=True, mutable=["batch_stats", "intermediates"],
                                      capture_intermediates=True)
            for name in order:
                value = captured["intermediates"][name]["__call__"][0].astype(jnp.float32)
                out[f"act_mean/{name}"] = jnp.mean(value)
                out[f"act_std/{name}"] = jnp.std(value)
        if not landscape:
            return out
        _, grads = gradient(params, batch_stats, images, labels)
        losses, changes = [], []
        for size in LANDSCAPE_STEPS:
            moved = jax.tree.map(lambda w, g, s=size: w - s * learning_rate * g, params, grads)
            loss, moved_grads = gradient(moved, batch_stats, images, labels)
            losses.append(loss)
            changes.append(global_norm(jax.tree.map(jnp.subtract, moved_grads, grads)))
        losses, changes = jnp.stack(losses), jnp.stack(changes)
        distances = jnp.asarray(LANDSCAPE_STEPS) * learning_rate * global_norm(grads)
        out.update({"landscape/loss_range": jnp.max(losses) - jnp.min(losses),
                    "landscape/grad_change": jnp.max(changes),
                    "landscape/beta": jnp.max(changes / distances)})
        if tx is None:
            stepped = jax.tree.map(lambda w, g: w - learning_rate * g, params, grads)
        else:  # the update the run would take now: what its layers really see move
            updates, _ = tx.update(grads, opt_state, params)
            stepped = jax.tree.map(jnp.add, params, updates)
        weighted = [name for name in order if name in params]
        for i, name in enumerate(weighted[1:], start=1):
            before = set(weighted[:i])
            moved = {k: stepped[k] if k in before else v for k, v in params.items()}
            _, shifted = gradient(moved, batch_stats, images, labels, 1)
            g, g2 = grads[name], shifted[name]
            dot = sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g2),
                                                     strict=True))
            shift = global_norm(jax.tree.map(jnp.subtract, g, g2))
            out[f"ics_l2/{name}"] = shift
            out[f"ics/{name}"] = shift / global_norm(g)
            out[f"ics_cos/{name}"] = dot / (global_norm(g) * global_norm(g2))
        return out

    return jax.jit(diagnose)


def precise_bn_statistics(steps: Steps, layout: parallel.Layout, state: TrainState,
                          batches, num_batches: int):
    """PreciseBN (Wu & Johnson 2021; fvcore's precise_bn): with frozen weights, the
    equal-weight average of the BN statistics of `num_batches` training batches,
    each computed exactly as in training (same normalization batch). The variance
    averaged is the one the running average takes (`config.bn_unbiased_running_var`,
    unbiased by default), as fvcore does: it averages PyTorch's running_var at
    momentum 1, the Bessel-corrected batch variance ("simple average of
    bessel-corrected batch variance"), so that EMA and PreciseBN estimate the same
    population variance and differ only in which batches they weigh how."""
    total = None
    for _ in range(num_batches):
        stats, _, _ = steps.batch_stats(state, *layout.shard(*next(batches)))
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    return jax.tree.map(lambda x: x / num_batches, total)


def evaluate_with_batch_statistics(steps: Steps, layout: parallel.Layout, state: TrainState,
                                   dataset: data.Dataset, batch_size: int) -> dict[str, float]:
    """Test loss and accuracy when BN normalizes each test batch by its own statistics,
    in batches of the training batch size (the remainder of the split is left out:
    padding would change the statistics)."""
    loss_sum, correct, seen = 0.0, 0, 0
    for start in range(0, len(dataset) - batch_size + 1, batch_size):
        images = dataset.images[start:start + batch_size]
        labels = dataset.labels[start:start + batch_size]
        _, batch_loss, batch_correct = layout.fetch(
            steps.batch_stats(state, *layout.shard(images, labels)))
        loss_sum += float(batch_loss)
        correct += int(batch_correct)
        seen += batch_size
    return {"loss": loss_sum / seen, "accuracy": correct / seen}


def final_bn_evaluations(config: ml_collections.ConfigDict, steps: Steps,
                         layout: parallel.Layout, state: TrainState, train_set: data.Dataset,
                         test_set: data.Dataset) -> dict[str, float]:
    """The extra BN evaluation modes of `config.bn_eval` beside the EMA one."""
    out: dict[str, float] = {}
    modes = {m.strip() for m in config.bn_eval.split(",")}
    if config.norm != "bn":
        return out
    if "precise" in modes:
        batches = data.train_batches(train_set, config.batch_size, config.seed + 1,
                                     config.augment)
        stats = precise_bn_statistics(steps, layout, state, batches, config.precise_bn_batches)
        test = evaluate(steps, layout, state.replace(batch_stats=stats), test_set,
                        config.eval_batch_size)
        out.update(test_loss_precise_bn=test["loss"], test_accuracy_precise_bn=test["accuracy"])
    if "batch" in modes:
        test = evaluate_with_batch_statistics(steps, layout, state, test_set, config.batch_size)
        out.update(test_loss_batch_stats=test["loss"],
                   test_accuracy_batch_stats=test["accuracy"])
    return out


@functools.lru_cache(maxsize=16)
def _predict_function(model, train: bool):
    """(state, images) → predicted classes; with `train`, BN uses each batch's own
    statistics (and nothing is updated)."""
    def predict(state: TrainState, images):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        if train:
            logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
        else:
            logits = model.apply(variables, images, train=False)
        return jnp.argmax(logits, -1)
    return jax.jit(predict)


def _predictions(model, state: TrainState, images: np.ndarray, batch_size: int,
                 train: bool) -> np.ndarray:
    """Predictions for the first ⌊N / batch_size⌋·batch_size examples."""
    predict = _predict_function(model, train)
    return np.concatenate([np.asarray(predict(state, images[i:i + batch_size]))
                           for i in range(0, len(images) - batch_size + 1, batch_size)])


def final_padding_evaluations(config: ml_collections.ConfigDict, model, state: TrainState,
                              test: data.Dataset) -> dict[str, float]:
    """For padded sequences (C8): the test set padded further, to twice its length.
    `test_accuracy_padded`, and `prediction_change_padded`, the fraction of test
    predictions that change, as the model is evaluated; for BN also
    `prediction_change_padded_batch_stats`, with each batch's own statistics (how
    BN computes in training), in batches of the training batch size."""
    if config.dataset != "fashion_mnist_rows":
        return {}
    longer = data.pad_sequences(test.images, 2 * test.images.shape[1])
    size = min(config.eval_batch_size, len(test))
    short = _predictions(model, state, test.images, size, False)
    long = _predictions(model, state, longer, size, False)
    out = {"test_accuracy_padded": float(np.mean(long == test.labels[:len(long)])),
           "prediction_change_padded": float(np.mean(short != long))}
    if config.norm == "bn":
        short = _predictions(model, state, test.images, config.batch_size, True)
        long = _predictions(model, state, longer, config.batch_size, True)
        out["prediction_change_padded_batch_stats"] = float(np.mean(short != long))
    return out


@functools.lru_cache(maxsize=16)
def _fgsm_function(model):
    """Jitted (state, images, labels, step, low, high) → the images after one FGSM step:
    x + step·sign(∇x loss), clipped to [low, high]; the network as evaluated (running
    statistics)."""
    def fgsm(state: TrainState, images, labels, step, low, high):
        def loss(x):
            logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                                 x, train=False)
            return jnp.sum(cross_entropy(logits, labels))
        return jnp.clip(images + step * jnp.sign(jax.grad(loss)(images)), low, high)

    return jax.jit(fgsm)


def final_robustness_evaluations(config: ml_collections.ConfigDict, model, state: TrainState,
                                 test: data.Dataset) -> dict[str, float]:
    """C12: accuracy on `test` as it is (`robust_clean_accuracy`), with Gaussian noise
    of std `robust_noise` added to every pixel (`robust_noise_accuracy`) and after
    one FGSM step of size `robust_fgsm` (`robust_fgsm_accuracy`), both on the 0-1
    pixel scale and clipped to it. The noise is drawn from the run's seed alone, so
    runs of one seed see the same noise whatever their norm or rate (paired)."""
    if not (config.get("robust_noise") or config.get("robust_fgsm")):
        return {}
    predict = _predict_function(model, False)
    size = min(config.eval_batch_size, len(test))

    def accuracy(images: np.ndarray, perturb=lambda x, y: x) -> float:
        """Of all of `test`'s labels, in batches of `size` (`perturb` each first)."""
        hits = 0
        for i in range(0, len(test), size):
            labels = test.labels[i:i + size]
            hits += int(np.sum(np.asarray(predict(state, perturb(images[i:i + size], labels)))
                               == labels))
        return hits / len(test)

    out = {"robust_clean_accuracy": accuracy(test.images), "robust_test_examples": len(test)}
    if config.get("robust_noise"):
        std, low, high = data.pixel_range(test.name, config.robust_noise)
        noise = np.random.default_rng([int(config.seed), 12]).standard_normal(
            test.images.shape, np.float32) * std
        out["robust_noise_accuracy"] = accuracy(np.clip(test.images + noise, low, high))
    if config.get("robust_fgsm"):
        fgsm = _fgsm_function(model)
        step, low, high = data.pixel_range(test.name, config.robust_fgsm)
        out["robust_fgsm_accuracy"] = accuracy(
            test.images, lambda x, y: fgsm(state, x, y, step, low, high))
    return out


def _batch_statistics_function(model):
    """Jitted (state, images) → {layer path: (mean, var)}: the BN statistics of this
    batch as training computes them (each BN layer sees the layers below normalized
    by the same batch), the biased σ²_B the layer normalizes with, one batch (no ghost
    batches: the images are the batch). Runs whose models differ only in those
    options (C11's ghost batches) share one compiled function."""
    options = dict(model.norm_options)
    options.update(momentum=0.0, unbiased_running_var=False, virtual_batch_size=None)
    return _statistics_of(model.clone(norm_options=tuple(sorted(options.items()))))


@functools.lru_cache(maxsize=16)
def _statistics_of(plain):
    def statistics(state: TrainState, images):
        _, updates = plain.apply({"params": state.params, "batch_stats": state.batch_stats},
                                 images, train=True, mutable=["batch_stats"])
        flat = traverse_util.flatten_dict(updates["batch_stats"], sep="/")
        layers = sorted({key.rsplit("/", 1)[0] for key in flat})
        return {layer: (flat[f"{layer}/mean"], flat[f"{layer}/var"]) for layer in layers}

    return jax.jit(statistics)


def batch_statistic_errors(model, state: TrainState, images: np.ndarray,
                           sizes: tuple[int, ...], population: int = 4096
                           ) -> dict[int, dict[str, tuple[float, float]]]:
    """C11: how far a batch's BN statistics are from the data set's, per batch size
    and BN layer: for B in `sizes`, over the batches of B of the first
    `population` examples (at most 64 of them), the mean over channels and batches of
    |μ_B − μ|/σ and of |σ²_B/σ² − 1|, where μ and σ² are the statistics of those
    `population` examples (in chunks of up to 512 whose mean and variance are pooled
    exactly; deeper layers see the layers below normalized by each chunk); channels
    constant over those examples are left out."""
    statistics = _batch_statistics_function(model)
    pool = images[:population]
    chunk = min(512, len(pool))
    starts = range(0, len(pool), chunk)
    parts = [jax.device_get(statistics(state, pool[i:i + chunk])) for i in starts]
    weights = np.array([len(pool[i:i + chunk]) for i in starts], np.float64)[:, None]
    weights /= weights.sum()
    population_stats = {}
    for layer in parts[0]:
        means = np.stack([np.asarray(p[layer][0], np.float64) for p in parts])
        variances = np.stack([np.asarray(p[layer][1], np.float64) for p in parts])
        # The pooled mean and (law of total variance) variance, chunks by their size.
        mean = (weights * means).sum(0)
        population_stats[layer] = (mean, (weights * (variances + (means - mean) ** 2)).sum(0))
    out: dict[int, dict[str, tuple[float, float]]] = {}
    for size in sizes:
        count = min(64, len(pool) // size)
        errors = {layer: ([], []) for layer in population_stats}
        for i in range(count):
            batch = jax.device_get(statistics(state, pool[i * size:(i + 1) * size]))
            for layer, (mean, var) in population_stats.items():
                batch_mean, batch_var = (np.asarray(x, np.float64) for x in batch[layer])
                live = var > 0  # a channel constant over the data set has no scale
                errors[layer][0].append(np.mean(np.abs(batch_mean - mean)[live]
                                                / np.sqrt(var[live])))
                errors[layer][1].append(np.mean(np.abs(batch_var[live] / var[live] - 1)))
        out[size] = {layer: (float(np.mean(m)), float(np.mean(v)))
                     for layer, (m, v) in errors.items()}
    return out


def final_statistics_errors(config: ml_collections.ConfigDict, model, state: TrainState,
                            train: data.Dataset) -> dict[str, float]:
    """`batch_statistic_errors` at the end of a BN run, for the batch sizes of
    `config.stat_error_batches`, on up to 4,096 training examples drawn by the run's
    seed, averaged over the BN layers: `stat_error_mean_bB` and
    `stat_error_var_bB`."""
    sizes = tuple(config.get("stat_error_batches") or ())
    if not sizes or config.norm != "bn":
        return {}
    order = np.random.default_rng([int(config.seed), 11]).permutation(len(train))[:4096]
    errors = batch_statistic_errors(model, state, train.images[order], sizes)
    out = {}
    for size, layers in errors.items():
        out[f"stat_error_mean_b{size}"] = float(np.mean([m for m, _ in layers.values()]))
        out[f"stat_error_var_b{size}"] = float(np.mean([v for _, v in layers.values()]))
    return out
