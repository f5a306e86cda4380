"""One training run: validate, load, init, train, evaluate, track.

`train_and_evaluate(config, workdir)` checks everything (config values, dataset,
model shapes) before it writes a byte or compiles a step, then trains with the
learning rate and weight decay as runtime values inside the optimizer state, so
runs that differ only in those (or in seed) reuse one compiled step.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from bnlab import config as config_lib
from bnlab import data, models, norms, parallel, tracking, xla_cpu

# Tracing a step function counts here: tests and the sweep report compilations.
TRACE_COUNTS: dict[str, int] = {"train_step": 0, "eval_step": 0}


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """What shapes the optimizer's program; learning rate and weight decay do not."""

    name: str
    momentum: float
    nesterov: bool
    schedule: str
    total_steps: int
    warmup_steps: int
    step_boundaries: tuple[float, ...]
    step_decay: float
    decay_norm_params: bool


@dataclasses.dataclass
class Prepared:
    """Everything a run needs, built and checked before anything is written."""

    config: ml_collections.ConfigDict
    train_set: data.Dataset
    test_set: data.Dataset
    model: Any
    optimizer: OptimizerSpec
    layout: parallel.Layout
    total_steps: int
    norm_layers: list[dict[str, Any]]
    facts: dict[str, Any]  # what the run reports about its own shape


def prepare(config: ml_collections.ConfigDict) -> Prepared:
    """Validates the config, loads the data and traces the model (no compile).
    Raises `ConfigError` on anything that cannot run."""
    parallel.initialize_distributed(config)  # before anything touches the devices
    config_lib.validate(config)
    layout = parallel.layout_from_config(config)
    options = {"data_dir": config.data_dir}
    if config.dataset == "synthetic":
        options.update(config.get("synthetic", {}))
    train_set = data.load(config.dataset, "train", train_size=config.train_size, **options)
    test_set = data.load(config.dataset, "test", **options)
    if config.get("test_size") is not None:
        test_set = dataclasses.replace(test_set, images=test_set.images[:config.test_size],
                                       labels=test_set.labels[:config.test_size])
    if len(train_set) < config.batch_size:
        raise config_lib.ConfigError("batch_size", config.batch_size,
                                     f"larger than the {len(train_set)} training examples")
    norm_options = config_lib.norm_options(config)
    if config.norm == "bn":
        norm_options.update(layout.bn_options())
    model_options: dict[str, Any] = {"norm_placement": config.norm_placement}
    if config.model == "plain_cnn":
        model_options.update(depth=config.depth, width=config.width)
    if config.model == "seq_cnn":
        model_options.update(mask_padding=config.mask_padding)
    model = models.make(config.model, norm=config.norm, num_classes=train_set.num_classes,
                        norm_options=norm_options, dtype=config.dtype, **model_options)
    # Tracing init at the per-device batch shape finds shape errors (GN groups that do
    # not divide a layer's channels, IN on an MLP, a ghost batch that does not divide
    # the per-device batch) before anything is compiled or written.
    per_device = config.batch_size // layout.num_devices
    norm_layers = models.normalized_layers(model, (per_device,) + train_set.image_shape)
    steps_per_epoch = len(train_set) // config.batch_size
    total_steps = config.num_steps or max(1, round(config.num_epochs * steps_per_epoch))
    spec = OptimizerSpec(config.optimizer, config.momentum, config.nesterov, config.schedule,
                         total_steps, config.warmup_steps, tuple(config.step_boundaries),
                         config.step_decay, config.decay_norm_params)
    # BN layers pool sync_size devices' statistics; other norms are per example.
    per_stat = [layer["values_per_statistic"] * (layout.sync_size if config.norm == "bn" else 1)
                for layer in norm_layers]
    facts = {**batch_sizes(config, layout),
             "values_per_statistic": min(per_stat) if per_stat else None,
             "num_devices": layout.num_devices, "total_steps": total_steps,
             "steps_per_call": steps_per_call(config),
             "train_examples": len(train_set)}
    return Prepared(config, train_set, test_set, model, spec, layout, total_steps,
                    norm_layers, facts)


def steps_per_call(config: ml_collections.ConfigDict) -> int:
    """Steps per call: `config.steps_per_call`, or when it is 0 (automatic) the
    fused loop up to each log point on an accelerator where the run allows it (one
    device, no augmentation), and one step per call otherwise: on the 2-core CPU
    fusing was slower."""
    if config.get("steps_per_call", 0):
        return config.steps_per_call
    if jax.default_backend() == "cpu" or config.parallel != "none" or config.augment:
        return 1
    return config.log_every


def batch_sizes(config: ml_collections.ConfigDict,
                layout: parallel.Layout | None = None) -> dict[str, int]:
    """The SGD batch and the normalization batch (1 for per-example norms), from
    the config alone: cheap enough to name runs before any data is loaded."""
    layout = layout or parallel.layout_from_config(config)
    norm_batch = parallel.norm_batch_size(config, layout) if config.norm == "bn" else 1
    return {"sgd_batch_size": config.batch_size, "norm_batch_size": norm_batch}


def run_name(config: ml_collections.ConfigDict, varied: list[str]) -> str:
    """The run's directory name: the varied fields, both batch sizes, a config hash."""
    sizes = batch_sizes(config)
    return tracking.run_id(config_lib.identity(config),
                           [k for k in varied if k not in config_lib.LAUNCH_FIELDS],
                           sizes["sgd_batch_size"], sizes["norm_batch_size"])


# ---------------------------------------------------------------- optimizer

def schedule_factor(spec: OptimizerSpec) -> optax.Schedule:
    """The learning rate's shape over steps, peaking at 1; the base rate multiplies it."""
    if spec.schedule == "constant":
        main = optax.constant_schedule(1.0)
    elif spec.schedule == "cosine":
        main = optax.cosine_decay_schedule(1.0, max(1, spec.total_steps - spec.warmup_steps))
    else:
        main = optax.piecewise_constant_schedule(
            1.0, {int(b * spec.total_steps) - spec.warmup_steps: spec.step_decay
                  for b in spec.step_boundaries})
    if spec.warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, 1.0, spec.warmup_steps)
    return optax.join_schedules([warmup, main], [spec.warmup_steps])


def _decay_mask(params) -> Any:
    """False for the scale and bias of norm layers (their module names are the class names)."""
    norm_names = tuple(cls.__name__ for cls in norms.NORM_LAYERS)

    def keep(path, _):
        return not any(getattr(p, "key", "").startswith(norm_names) for p in path)

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(spec: OptimizerSpec) -> optax.GradientTransformation:
    """SGD (PyTorch-style: weight decay added to the gradient before momentum) or
    AdamW (decoupled decay), with learning_rate and weight_decay as injected
    hyperparameters: values in the optimizer state, not constants in the program."""
    factor = schedule_factor(spec)
    mask = None if spec.decay_norm_params else _decay_mask

    def build(learning_rate, weight_decay):
        if spec.name == "sgd":
            core = [optax.add_decayed_weights(weight_decay, mask),
                    optax.trace(decay=spec.momentum, nesterov=spec.nesterov)]
        else:
            core = [optax.scale_by_adam(), optax.add_decayed_weights(weight_decay, mask)]
        return optax.chain(*core, optax.scale_by_schedule(factor),
                           optax.scale_by_learning_rate(learning_rate))

    return optax.inject_hyperparams(build)(learning_rate=0.0, weight_decay=0.0)


# ---------------------------------------------------------------- steps

def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


@dataclasses.dataclass(frozen=True)
class Steps:
    """The compiled functions of one (model, optimizer, layout)."""

    init: Any  # (rng, sample, learning_rate, weight_decay) → TrainState, on one device
    train: Any  # (state, totals, images, labels) → (state, totals)
    # (state, totals, all images, all labels, indices K×B) → (state, totals): K steps in
    # one call (lax.scan), each batch gathered from a dataset held on the device.
    train_many: Any
    evaluate: Any  # (state, images, labels, mask) → (loss sum, correct), running averages
    batch_stats: Any  # (state, images, labels) → (this batch's BN stats, loss sum, correct)
    # Packing (one device): the same functions vmapped over a leading member axis of
    # the state, the totals, the batch indices and the init values; data is shared.
    init_packed: Any = None  # (rngs, sample, learning_rates, weight_decays) → states
    train_packed: Any = None  # train_many over members
    evaluate_packed: Any = None  # evaluate over members, on the same test batch


def layer_names(params) -> list[str]:
    """The top-level layers of a model's parameters in natural order (conv2 before
    conv10): the order of `grad_norm` values."""
    return sorted(params, key=lambda name: [int(t) if t.isdigit() else t
                                            for t in re.split(r"(\d+)", name)])


def _global_norm(tree) -> jax.Array:
    """The L2 norm of all of a tree's values together, in float32."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def grad_norms(grads) -> jax.Array:
    """The L2 norm of each top-level layer's gradient, in `layer_names` order."""
    return jnp.stack([_global_norm(grads[name]) for name in layer_names(grads)])


# Step sizes, in multiples of the learning rate, at which the loss landscape is probed
# along the gradient (Santurkar et al. 2018, §3.1: ½× to 4× the training step).
LANDSCAPE_STEPS = (0.5, 1.0, 2.0, 4.0)


@functools.lru_cache(maxsize=16)
def diagnostics_function(model, order: tuple[str, ...], activations: bool, landscape: bool):
    """(params, batch_stats, images, labels, learning_rate) → {metric: value}, jitted:
    the diagnostics logged at a log step on one training batch, the network in
    training mode (BN with this batch's statistics; nothing is updated).

    activations: `act_mean/LAYER`, `act_std/LAYER` of each top-level layer's output.
    landscape (Santurkar et al. 2018): with g the gradient and η the learning rate,
    over the steps w − s·η·g, s in LANDSCAPE_STEPS: `landscape/loss_range` (largest
    minus smallest loss), `landscape/grad_change` (largest ‖g(w − s·η·g) − g‖, the
    gradient's predictiveness: small is predictive) and `landscape/beta` (largest
    ‖Δg‖/‖Δw‖, the effective β-smoothness). And the internal covariate shift of
    each layer with parameters but the first (their Definition 2.1): G, its
    gradient, against G', its gradient after every layer before it (in `order`)
    took the step w − η·g on the same batch: `ics/LAYER` = ‖G − G'‖/‖G‖ and
    `ics_cos/LAYER` = cos(G, G'). The step is plain gradient descent, not the
    run's optimizer (momentum left out)."""

    def loss_fn(params, batch_stats, images, labels):
        logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                train=True, mutable=["batch_stats"])
        return jnp.mean(cross_entropy(logits, labels))

    gradient = jax.value_and_grad(loss_fn)

    def diagnose(params, batch_stats, images, labels, learning_rate):
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
            changes.append(_global_norm(jax.tree.map(jnp.subtract, moved_grads, grads)))
        losses, changes = jnp.stack(losses), jnp.stack(changes)
        distances = jnp.asarray(LANDSCAPE_STEPS) * learning_rate * _global_norm(grads)
        out.update({"landscape/loss_range": jnp.max(losses) - jnp.min(losses),
                    "landscape/grad_change": jnp.max(changes),
                    "landscape/beta": jnp.max(changes / distances)})
        weighted = [name for name in order if name in params]
        for i, name in enumerate(weighted[1:], start=1):
            before = set(weighted[:i])
            moved = {k: (jax.tree.map(lambda w, g: w - learning_rate * g, v, grads[k])
                         if k in before else v) for k, v in params.items()}
            _, shifted = gradient(moved, batch_stats, images, labels)
            g, g2 = grads[name], shifted[name]
            dot = sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g2),
                                                     strict=True))
            out[f"ics/{name}"] = (_global_norm(jax.tree.map(jnp.subtract, g, g2))
                                  / _global_norm(g))
            out[f"ics_cos/{name}"] = dot / (_global_norm(g) * _global_norm(g2))
        return out

    return jax.jit(diagnose)


@functools.lru_cache(maxsize=64)
def step_functions(model, spec: OptimizerSpec, layout: parallel.Layout,
                   log_grad_norms: bool = False, cpu_fusion: str = "auto") -> Steps:
    """Compiled steps shared by every run with the same model, optimizer shape and
    layout: learning rate, weight decay and seed are values, not part of the key.
    With `log_grad_norms` the totals carry each layer's summed gradient norm
    (`new_totals(len(layer_names(params)))`). On one CPU device each step compiles
    with XLA's fusions or YNNPACK's as `cpu_fusion` says (`bnlab.xla_cpu`)."""
    tx = make_optimizer(spec)

    def init(rng, sample, learning_rate, weight_decay):
        variables = model.init(rng, sample, train=True)
        params = variables["params"]
        opt_state = tx.init(params)
        opt_state.hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
        opt_state.hyperparams["weight_decay"] = jnp.asarray(weight_decay, jnp.float32)
        return TrainState(jnp.zeros((), jnp.int32), params,
                          variables.get("batch_stats", {}), opt_state)

    def train_step(state: TrainState, totals, images, labels):
        TRACE_COUNTS["train_step"] += 1

        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                          images, train=True, mutable=["batch_stats"])
            return jnp.mean(cross_entropy(logits, labels)), (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            layout.vary(state.params))
        # Each device's loss is the mean over its own examples; equal per-device
        # batches make the mean over devices the gradient of the global batch.
        grads, loss = layout.mean((grads, loss))
        deltas, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, deltas)
        bad = ~jnp.isfinite(loss)
        totals = {
            "loss": totals["loss"] + loss,
            "correct": totals["correct"] + layout.sum(jnp.sum(jnp.argmax(logits, -1) == labels)),
            "count": totals["count"] + labels.shape[0] * layout.num_devices,
            "steps": totals["steps"] + 1,
            # The first step whose loss was NaN/Inf, found without a host sync per step.
            "diverged_step": jnp.where(bad & (totals["diverged_step"] < 0), state.step,
                                       totals["diverged_step"]),
            "grad_norm": (totals["grad_norm"] + grad_norms(grads) if log_grad_norms
                          else totals["grad_norm"]),
        }
        new_state = TrainState(state.step + 1, params,
                               updates.get("batch_stats", state.batch_stats), opt_state)
        return new_state, totals

    def eval_step(state: TrainState, images, labels, mask):
        TRACE_COUNTS["eval_step"] += 1
        logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                             images, train=False)
        losses = jnp.where(mask, cross_entropy(logits, labels), 0.0)
        correct = jnp.where(mask, jnp.argmax(logits, -1) == labels, False)
        return layout.sum((jnp.sum(losses), jnp.sum(correct)))

    # BN with momentum 0 stores exactly this batch's statistics as its running ones.
    stats_model = model.clone(norm_options=tuple(
        (k, 0.0 if k == "momentum" else v) for k, v in model.norm_options))

    def batch_stats_step(state: TrainState, images, labels):
        logits, updates = stats_model.apply(
            {"params": state.params, "batch_stats": state.batch_stats}, images, train=True,
            mutable=["batch_stats"])
        loss_sum = jnp.sum(cross_entropy(logits, labels))
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        return updates.get("batch_stats", {}), *layout.sum((loss_sum, correct))

    # XLA's CPU backend runs a rolled scan of these steps ~3.6× slower than the same
    # steps unrolled (measured on the 2-core CPU: 11.6 vs 2.9 ms/step at batch 8);
    # accelerators keep the loop rolled, which compiles once for any length.
    unroll = jax.default_backend() == "cpu"

    def train_many(state: TrainState, totals, images, labels, batch_indices):
        def one_step(carry, index):
            return train_step(*carry, images[index], labels[index]), None

        return jax.lax.scan(one_step, (state, totals), batch_indices, unroll=unroll)[0]

    if layout.mode != "none":
        return Steps(jax.jit(init), layout.compile(train_step, 2, replicated_args=2),
                     None, layout.compile(eval_step, 3), layout.compile(batch_stats_step, 2))
    steps = Steps(jax.jit(init), xla_cpu.jit(train_step, cpu_fusion, 2), None,
                  xla_cpu.jit(eval_step, cpu_fusion, 1),
                  xla_cpu.jit(batch_stats_step, cpu_fusion, 1))
    # One loop: a single run's fused steps and a packed group's are train_many, the
    # latter vmapped; members never exchange values, so one member's NaN stays its own.
    # The old state's buffers are reused for the new one (XLA's CPU backend cannot
    # donate and would warn on every call).
    donate = () if jax.default_backend() == "cpu" else (0,)
    return dataclasses.replace(
        steps, train_many=xla_cpu.jit(train_many, cpu_fusion, 2, steps_arg=4,
                                         donate_argnums=donate),
        init_packed=jax.jit(jax.vmap(init, in_axes=(0, None, 0, 0))),
        train_packed=jax.jit(jax.vmap(train_many, in_axes=(0, 0, None, None, 0)),
                             donate_argnums=donate),
        evaluate_packed=jax.jit(jax.vmap(eval_step, in_axes=(0, None, None, None))))


def new_totals(grad_layers: int = 0, members: int | None = None) -> dict[str, jax.Array]:
    """What a train step adds up between logs; `grad_layers`: the number of layers
    whose gradient norms are logged (0 without `log_grad_norms`); `members`: one set
    per member of a packed group, stacked on a leading axis."""
    totals = {"loss": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.int32),
              "count": jnp.zeros((), jnp.int32), "steps": jnp.zeros((), jnp.int32),
              "diverged_step": jnp.full((), -1, jnp.int32),
              "grad_norm": jnp.zeros((grad_layers,), jnp.float32)}
    if members is None:
        return totals
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (members,) + x.shape), totals)


def _chunk_length(config, step: int, total_steps: int, per_call: int) -> int:
    """Steps in the next fused call: at most `per_call`, never past a log point or
    the end, so metrics are logged where one step per call would log them."""
    return min(per_call, config.log_every - step % config.log_every, total_steps - step)


def evaluate(steps: Steps, layout: parallel.Layout, state: TrainState, dataset: data.Dataset,
             batch_size: int) -> dict[str, float]:
    """Test loss and accuracy with the running statistics (BN's EMA)."""
    batch_size = -(-min(batch_size, len(dataset)) // layout.num_devices) * layout.num_devices
    loss_sum, correct = 0.0, 0
    for arrays in data.eval_batches(dataset, batch_size):
        batch_loss, batch_correct = layout.fetch(steps.evaluate(state, *layout.shard(*arrays)))
        loss_sum += float(batch_loss)
        correct += int(batch_correct)
    return {"loss": loss_sum / len(dataset), "accuracy": correct / len(dataset)}


def precise_bn_statistics(steps: Steps, layout: parallel.Layout, state: TrainState,
                          batches, num_batches: int):
    """PreciseBN (Wu & Johnson 2021; fvcore's precise_bn): with frozen weights, the
    equal-weight average of the BN statistics of `num_batches` training batches,
    each computed exactly as in training (same normalization batch)."""
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


# ---------------------------------------------------------------- the run

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains one run into `workdir` (the run's directory) and returns its summary.

    Raises `ConfigError` before writing anything when the config cannot run. A
    NaN/Inf loss ends the run with status 'diverged' and the step it happened at.
    """
    return run_prepared(prepare(config), workdir)


def run_prepared(run: Prepared, workdir: str) -> dict[str, Any]:
    """`train_and_evaluate` after `prepare`: for callers that report between the two.
    Only process 0 writes the run directory. With `config.checkpoint_every`, a run
    that was interrupted resumes from its latest checkpoint."""
    flat = config_lib.flatten(run.config)
    active = jax.process_index() == 0
    writer = tracking.RunWriter(workdir, active=active)
    checkpoints = (tracking.Checkpoints(workdir, active=active)
                   if run.config.get("checkpoint_every") else None)
    hparams = {**flat, **run.facts}
    resume_step = resumable_step(Path(workdir), run.config, checkpoints)
    if resume_step:
        previous = writer.resume(flat, hparams, resume_step)
    else:
        if checkpoints:
            checkpoints.clear()  # from another config, or a run that never logged
        writer.start(flat, hparams)
        previous = []
    try:
        summary = _train(run, writer, checkpoints, resume_step or 0, previous)
    except BaseException as error:
        writer.fail(error)
        raise
    summary.update(run.facts)
    status = "diverged" if summary["diverged_step"] is not None else "done"
    writer.finish(status, summary, step=summary["step"],
                  **({"diverged_step": summary["diverged_step"]} if status == "diverged" else {}))
    return {"status": status, **summary}


def resumable_step(run_dir: Path, config, checkpoints) -> int | None:
    """The checkpoint step to resume from: an unfinished run of the same config."""
    if checkpoints is None or (run_dir / "summary.json").is_file():
        return None
    try:
        written = tracking.read_json(run_dir / "config.json")
    except (OSError, ValueError):
        return None
    ours = tracking.jsonable(config_lib.identity(config))
    theirs = {k: v for k, v in written.items() if k not in config_lib.LAUNCH_FIELDS}
    if ours != theirs:
        return None
    return checkpoints.latest_step() or None


def _final_bn_evaluations(run: Prepared, steps: Steps, state: TrainState) -> dict[str, float]:
    """The extra BN evaluation modes of `config.bn_eval` beside the EMA one."""
    config, layout, out = run.config, run.layout, {}
    modes = {m.strip() for m in config.bn_eval.split(",")}
    if config.norm != "bn":
        return out
    if "precise" in modes:
        batches = data.train_batches(run.train_set, config.batch_size, config.seed + 1,
                                     config.augment)
        stats = precise_bn_statistics(steps, layout, state, batches, config.precise_bn_batches)
        test = evaluate(steps, layout, state.replace(batch_stats=stats), run.test_set,
                        config.eval_batch_size)
        out.update(test_loss_precise_bn=test["loss"], test_accuracy_precise_bn=test["accuracy"])
    if "batch" in modes:
        test = evaluate_with_batch_statistics(steps, layout, state, run.test_set,
                                              config.batch_size)
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


def _final_padding_evaluations(run: Prepared, state: TrainState) -> dict[str, float]:
    """For padded sequences (C8): the test set padded further, to twice its length.
    `test_accuracy_padded`, and `prediction_change_padded`, the fraction of test
    predictions that change, as the model is evaluated; for BN also
    `prediction_change_padded_batch_stats`, with each batch's own statistics (how
    BN computes in training), in batches of the training batch size."""
    config, test = run.config, run.test_set
    if config.dataset != "fashion_mnist_rows":
        return {}
    longer = data.pad_sequences(test.images, 2 * test.images.shape[1])
    size = min(config.eval_batch_size, len(test))
    short = _predictions(run.model, state, test.images, size, False)
    long = _predictions(run.model, state, longer, size, False)
    out = {"test_accuracy_padded": float(np.mean(long == test.labels[:len(long)])),
           "prediction_change_padded": float(np.mean(short != long))}
    if config.norm == "bn":
        short = _predictions(run.model, state, test.images, config.batch_size, True)
        long = _predictions(run.model, state, longer, config.batch_size, True)
        out["prediction_change_padded_batch_stats"] = float(np.mean(short != long))
    return out


def _train(run: Prepared, writer: tracking.RunWriter, checkpoints: tracking.Checkpoints | None,
           start_step: int, previous: list[dict[str, Any]]) -> dict[str, Any]:
    config, layout = run.config, run.layout
    steps = step_functions(run.model, run.optimizer, layout, config.log_grad_norms,
                           config.get("cpu_fusion", "auto"))
    sample = jnp.zeros((config.batch_size // layout.num_devices,) + run.train_set.image_shape,
                       jnp.float32)
    state = steps.init(jax.random.key(config.seed), sample, config.learning_rate,
                       config.weight_decay)
    names = layer_names(state.params) if config.log_grad_norms else []
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    if start_step:
        state = checkpoints.restore(start_step, jax.device_get(state))
    state = layout.replicate(state)
    factor = schedule_factor(run.optimizer)
    eval_every = config.eval_every or (config.log_every if config.target_accuracy else None)

    # Epoch order depends on (seed, epoch) only: a resumed run sees the same batches.
    per_call = steps_per_call(config)
    fused = per_call > 1
    if fused:  # the dataset on the device; K steps per call, each gathering its batch
        indices = data.train_batch_indices(len(run.train_set), config.batch_size, config.seed,
                                           start_step)
        device_images = jax.device_put(run.train_set.images)
        device_labels = jax.device_put(run.train_set.labels)
    else:
        batches = data.train_batches(run.train_set, config.batch_size, config.seed,
                                     config.augment, start_step=start_step)
    totals = layout.replicate(new_totals(len(names)))
    diagnose = None
    if config.get("log_activations") or config.get("log_landscape"):
        order = tuple(models.layer_order(run.model, sample.shape))
        diagnose = diagnostics_function(run.model, order, config.log_activations,
                                        config.log_landscape)
        # Their own batches: the diagnostics leave the training order untouched.
        probes = data.train_batches(run.train_set, config.batch_size, config.seed + 2, False)
    # The time column goes on from where the interrupted attempt left it.
    start = time.perf_counter() - (previous[-1].get("time", 0.0) if previous else 0.0)
    attempt_start = time.perf_counter()
    first_step_s, eval_s = None, 0.0  # eval time is kept out of the speed figures
    first_call_steps = 1
    last: dict[str, Any] = previous[-1] if previous else {}
    evals = [(r["step"], r["test_accuracy"]) for r in previous if "test_accuracy" in r]
    best_test = max((acc for _, acc in evals), default=None)
    steps_to_target = next((s for s, acc in evals if config.target_accuracy
                            and acc >= config.target_accuracy), None)
    diverged_step = None
    progress = tqdm(total=run.total_steps, initial=start_step, unit="step",
                    desc=f"{config.model}/{config.norm}", dynamic_ncols=True,
                    disable=None if jax.process_index() == 0 else True, leave=False)
    step = start_step
    try:
        while step < run.total_steps:
            if fused:  # up to the next log point, at most steps_per_call at once
                count = _chunk_length(config, step, run.total_steps, per_call)
                chunk = np.stack([next(indices) for _ in range(count)])
                state, totals = steps.train_many(state, totals, device_images, device_labels,
                                                 chunk)
            else:
                count = 1
                state, totals = steps.train(state, totals, *layout.shard(*next(batches)))
            step += count
            if first_step_s is None:
                jax.block_until_ready(state.step)
                first_step_s = time.perf_counter() - attempt_start
                first_call_steps = count
            progress.update(count)
            is_last = step == run.total_steps
            if step % config.log_every and not is_last:
                continue
            host = layout.fetch(totals)
            totals = layout.replicate(new_totals(len(names)))
            learning_rate = config.learning_rate * float(factor(step - 1))
            row = _train_row(host, learning_rate, time.perf_counter() - start, names)
            if host["diverged_step"] >= 0:
                diverged_step = int(host["diverged_step"]) + 1  # steps count from 1
                writer.log(step, {**row, "train_loss": float("nan")})
                last = row
                break
            eval_start = time.perf_counter()
            if diagnose is not None:
                values = diagnose(state.params, state.batch_stats, *next(probes),
                                  jnp.float32(learning_rate))
                row.update({k: float(v) for k, v in jax.device_get(values).items()})
            if is_last or (eval_every and step % eval_every == 0):
                test = evaluate(steps, layout, state, run.test_set, config.eval_batch_size)
                row.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
                best_test = max(best_test or 0.0, test["accuracy"])
                if (config.target_accuracy and steps_to_target is None
                        and test["accuracy"] >= config.target_accuracy):
                    steps_to_target = step
            if is_last:
                row.update(_final_bn_evaluations(run, steps, state))
                row.update(_final_padding_evaluations(run, state))
            eval_s += time.perf_counter() - eval_start
            writer.log(step, row)
            last = row
            if checkpoints and step % config.checkpoint_every == 0 and not is_last:
                checkpoints.save(step, layout.fetch(state))
            progress.set_postfix(loss=f"{row['train_loss']:.3f}",
                                 acc=f"{row['train_accuracy']:.3f}",
                                 **({"test": f"{row['test_accuracy']:.3f}"}
                                    if "test_accuracy" in row else {}))
    finally:
        progress.close()
    wall = time.perf_counter() - attempt_start
    return _summary(config, len(run.train_set), diverged_step or run.total_steps, diverged_step,
                    last, best_test, steps_to_target, num_params, start_step,
                    {"wall": wall, "first_step_s": first_step_s, "first_call_steps":
                     first_call_steps, "eval_s": eval_s})


def _train_row(host: dict[str, Any], learning_rate: float, elapsed: float,
               names: list[str]) -> dict[str, Any]:
    """A metrics row from the totals since the last log (one member's, when packed)."""
    steps = max(1, int(host["steps"]))
    return {"train_loss": float(host["loss"]) / steps,
            "train_accuracy": float(host["correct"]) / max(1, host["count"]),
            "learning_rate": learning_rate, "time": elapsed,
            **{f"grad_norm/{name}": float(value) / steps
               for name, value in zip(names, host["grad_norm"], strict=True)}}


def _summary(config, train_examples: int, steps_done: int, diverged_step: int | None,
             last: dict[str, Any], best_test: float | None, steps_to_target: int | None,
             num_params: int, start_step: int, timing: dict[str, Any]) -> dict[str, Any]:
    """What summary.json says of a run (packed or not), from its last metrics row."""
    timed_steps = steps_done - start_step - timing["first_call_steps"]
    train_s = timing["wall"] - timing["first_step_s"] - timing["eval_s"]
    extra_evals = {k: v for k, v in last.items()
                   if k.endswith(("_precise_bn", "_batch_stats", "_padded"))}
    return {
        "step": steps_done,
        "epochs": steps_done * config.batch_size / train_examples,
        "diverged_step": diverged_step,
        "test_accuracy": None if diverged_step else last.get("test_accuracy"),
        "test_loss": None if diverged_step else last.get("test_loss"),
        **extra_evals,
        "best_test_accuracy": best_test,
        "train_loss": None if diverged_step else last.get("train_loss"),
        "train_accuracy": last.get("train_accuracy"),
        "target_accuracy": config.target_accuracy,
        "steps_to_target": steps_to_target,
        "num_params": num_params,
        "wall_time_s": timing["wall"],  # of this attempt; a resumed run counts from its resume
        "resumed_from_step": start_step or None,
        "first_step_s": timing["first_step_s"],  # the first call (includes compilation)
        "eval_time_s": timing["eval_s"],
        # Training steps after the first call, without evaluation (logging included).
        "steps_per_s": timed_steps / train_s if timed_steps > 0 else None,
        "examples_per_s": timed_steps * config.batch_size / train_s if timed_steps > 0 else None,
    }


# ---------------------------------------------------------------- packed runs

# Fields that are values inside the compiled step (optimizer hyperparameters, the init
# key, the batch order): runs that differ only in these can train as one program.
PACK_FIELDS = ("learning_rate", "weight_decay", "seed")


def pack_key(config: ml_collections.ConfigDict) -> str | None:
    """Runs with the same key can be packed together; None for a run that cannot be
    (packing is one device, with the data on the device: no augmentation)."""
    if (config.parallel != "none" or config.augment or config.get("log_activations")
            or config.get("log_landscape")  # diagnostics are logged run by run
            or config.dataset == "fashion_mnist_rows"):  # so are padding evaluations
        return None
    identity = config_lib.identity(config)
    return tracking.config_hash({k: v for k, v in identity.items() if k not in PACK_FIELDS})


def packing_pays() -> bool:
    """Whether packing is faster than one run after another on this backend. On the
    2-core CPU it is not (16 SimpleCNN members at batch 8: 79 against 200
    member-steps/s); on an H100 it is 24× faster. `bnlab bench pack` measures it on
    any machine (docs/PERFORMANCE.md)."""
    return jax.default_backend() != "cpu"


def packed_model(model):
    """The model as packed runs compute it: convolutions as batched matmuls
    (`models.Conv`), which vmap does not turn into grouped convolutions."""
    return model.clone(conv="shifts") if "conv" in model.__dataclass_fields__ else model


def train_packed(configs: list[ml_collections.ConfigDict],
                 workdirs: list[str]) -> list[dict[str, Any]]:
    """Trains runs that differ only in `PACK_FIELDS` as one program: the fused steps
    of `train_many`, vmapped over members. Each member is written as its own run
    (config, metrics, summary) exactly as `train_and_evaluate` would write it; a
    member that diverges is recorded as diverged at its step and the rest go on.
    Packed members start from step 0 (an interrupted one restarts)."""
    keys = {pack_key(c) for c in configs}
    if None in keys or len(keys) != 1:
        raise ValueError("packed runs must share everything but "
                         f"{', '.join(PACK_FIELDS)}, on one device without augmentation")
    first = prepare(configs[0])
    first = dataclasses.replace(first, model=packed_model(first.model))
    for config in configs[1:]:
        config_lib.validate(config)
    facts = {**first.facts, "packed_members": len(configs),
             "steps_per_call": _packed_steps_per_call(first.config)}
    members = [dataclasses.replace(first, config=c, facts=facts) for c in configs]
    writers = [tracking.RunWriter(d) for d in workdirs]
    checkpoints = [tracking.Checkpoints(d) if c.get("checkpoint_every") else None
                   for c, d in zip(configs, workdirs, strict=True)]
    for member, writer, ckpt in zip(members, writers, checkpoints, strict=True):
        if ckpt:
            ckpt.clear()
        writer.start(config_lib.flatten(member.config), {**config_lib.flatten(member.config),
                                                         **member.facts})
    live = list(range(len(members)))
    try:
        summaries = _train_packed(members, writers, checkpoints, live)
    except BaseException as error:
        for i in live:
            writers[i].fail(error)
        raise
    return summaries


def _train_packed(members: list[Prepared], writers: list[tracking.RunWriter],
                  checkpoints: list, live: list[int]) -> list[dict[str, Any]]:
    """The loop of `train_packed`; `live` (the members still training) shrinks as
    members diverge or finish, so the caller knows whose writer to fail on a crash."""
    run, count_members = members[0], len(members)
    config = run.config
    steps = step_functions(run.model, run.optimizer, run.layout, config.log_grad_norms,
                           config.get("cpu_fusion", "auto"))
    sample = jnp.zeros((config.batch_size,) + run.train_set.image_shape, jnp.float32)
    seeds = jnp.asarray([m.config.seed for m in members])
    state = steps.init_packed(jax.vmap(jax.random.key)(seeds), sample,
                              jnp.asarray([m.config.learning_rate for m in members]),
                              jnp.asarray([m.config.weight_decay for m in members]))
    num_params = sum(x.size for x in jax.tree.leaves(state.params)) // count_members
    names = layer_names(state.params) if config.log_grad_norms else []
    zero_totals = new_totals(len(names), count_members)
    totals = zero_totals
    factor = schedule_factor(run.optimizer)
    eval_every = config.eval_every or (config.log_every if config.target_accuracy else None)
    per_call = _packed_steps_per_call(config)
    orders = [data.train_batch_indices(len(run.train_set), config.batch_size, m.config.seed)
              for m in members]
    device_images = jax.device_put(run.train_set.images)
    device_labels = jax.device_put(run.train_set.labels)
    start = time.perf_counter()
    first_step_s, eval_s, first_call_steps = None, 0.0, 1
    last: list[dict[str, Any]] = [{} for _ in members]
    best: list[float | None] = [None] * count_members
    to_target: list[int | None] = [None] * count_members
    diverged: list[int | None] = [None] * count_members
    summaries: list[dict[str, Any] | None] = [None] * count_members
    progress = tqdm(total=run.total_steps, unit="step", dynamic_ncols=True, leave=False,
                    desc=f"{config.model}/{config.norm} ×{count_members} packed", disable=None)
    step = 0

    def finish(i: int) -> None:  # a member is written when it ends, not when all do
        timing = {"wall": time.perf_counter() - start, "first_step_s": first_step_s,
                  "first_call_steps": first_call_steps, "eval_s": eval_s}
        summary = _summary(members[i].config, len(run.train_set), diverged[i] or step,
                           diverged[i], last[i], best[i], to_target[i], num_params, 0, timing)
        summary.update(members[i].facts)
        status = "diverged" if diverged[i] is not None else "done"
        writers[i].finish(status, summary, step=summary["step"],
                          **({"diverged_step": diverged[i]} if diverged[i] else {}))
        summaries[i] = {"status": status, **summary}
        live.remove(i)

    try:
        while step < run.total_steps and live:
            count = _chunk_length(config, step, run.total_steps, per_call)
            chunk = np.stack([np.stack([next(order) for _ in range(count)]) for order in orders])
            state, totals = steps.train_packed(state, totals, device_images, device_labels,
                                               chunk)
            step += count
            if first_step_s is None:
                jax.block_until_ready(state.step)
                first_step_s, first_call_steps = time.perf_counter() - start, count
            progress.update(count)
            is_last = step == run.total_steps
            if step % config.log_every and not is_last:
                continue
            host = jax.device_get(totals)
            totals = zero_totals
            eval_start = time.perf_counter()
            test = None
            if is_last or (eval_every and step % eval_every == 0):
                test = _evaluate_packed(steps, state, run.test_set, config.eval_batch_size)
            eval_s += time.perf_counter() - eval_start
            for i in list(live):
                member = _member(host, i)
                row = _train_row(member, members[i].config.learning_rate
                                 * float(factor(step - 1)), time.perf_counter() - start, names)
                if member["diverged_step"] >= 0:
                    diverged[i] = int(member["diverged_step"]) + 1
                    writers[i].log(step, {**row, "train_loss": float("nan")})
                    last[i] = row
                    finish(i)
                    continue
                if test is not None:
                    accuracy = float(test["accuracy"][i])
                    row.update(test_loss=float(test["loss"][i]), test_accuracy=accuracy)
                    best[i] = max(best[i] or 0.0, accuracy)
                    if (config.target_accuracy and to_target[i] is None
                            and accuracy >= config.target_accuracy):
                        to_target[i] = step
                if is_last:
                    eval_start = time.perf_counter()
                    row.update(_final_bn_evaluations(members[i], steps, _member(state, i)))
                    eval_s += time.perf_counter() - eval_start
                writers[i].log(step, row)
                last[i] = row
                if checkpoints[i] and step % config.checkpoint_every == 0 and not is_last:
                    checkpoints[i].save(step, jax.device_get(_member(state, i)))
            progress.set_postfix(live=len(live))
        for i in list(live):
            finish(i)
    finally:
        progress.close()
    return summaries


def _packed_steps_per_call(config) -> int:
    """Packed runs always fuse steps: `steps_per_call` when set above 1, else up to
    each log point."""
    return config.steps_per_call if config.get("steps_per_call", 0) > 1 else config.log_every


def _member(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def _evaluate_packed(steps: Steps, state: TrainState, dataset: data.Dataset,
                     batch_size: int) -> dict[str, np.ndarray]:
    """`evaluate` for every member at once: test loss and accuracy, one entry each."""
    loss_sum, correct = 0.0, 0
    for arrays in data.eval_batches(dataset, min(batch_size, len(dataset))):
        batch_loss, batch_correct = jax.device_get(steps.evaluate_packed(state, *arrays))
        loss_sum = loss_sum + batch_loss.astype(np.float64)
        correct = correct + batch_correct.astype(np.int64)
    return {"loss": loss_sum / len(dataset), "accuracy": correct / len(dataset)}
