"""The step functions of a run and where they are compiled.

The steps are module-level pure functions of (model, optimizer, layout, state,
batch): `train_step`, `eval_step`, `batch_stats_step`, and `train_many` (K train
steps in one `lax.scan`). `step_functions` compiles them once per (model,
optimizer shape, layout): learning rate, weight decay and seed are values, not part
of the program. `packed_functions` compiles the same functions vmapped over a
leading member axis: a packed group of runs computes exactly what its members
compute one by one (members never exchange values).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from bnlab import data, parallel
from bnlab.fast import xla_cpu
from bnlab.optim import OptimizerSpec, make_optimizer
from bnlab.tracking import layer_names

# Tracing a step function counts here: tests and the sweep report compilations.
TRACE_COUNTS: dict[str, int] = {"train_step": 0, "eval_step": 0}


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def global_norm(tree) -> jax.Array:
    """The L2 norm of all of a tree's values together, in float32."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def grad_norms(grads) -> jax.Array:
    """The L2 norm of each top-level layer's gradient, in `layer_names` order."""
    return jnp.stack([global_norm(grads[name]) for name in layer_names(grads)])


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


# ---------------------------------------------------------------- the steps

def init_state(model, tx, rng, sample, learning_rate, weight_decay) -> TrainState:
    variables = model.init(rng, sample, train=True)
    params = variables["params"]
    opt_state = tx.init(params)
    opt_state.hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
    opt_state.hyperparams["weight_decay"] = jnp.asarray(weight_decay, jnp.float32)
    return TrainState(jnp.zeros((), jnp.int32), params, variables.get("batch_stats", {}),
                      opt_state)


def noise_rngs(step: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """The "noise" rng of a training forward pass (noisy BN's; a model without noise
    never draws it): from the step and the batch's labels, so that each step draws
    anew and runs that differ only in their seed (their data order) draw apart, with
    no seed inside the compiled step (runs of different seeds share it)."""
    weights = jnp.arange(1, labels.size + 1, dtype=jnp.uint32)
    digest = jnp.sum(labels.reshape(-1).astype(jnp.uint32) * weights)
    return {"noise": jax.random.fold_in(jax.random.fold_in(jax.random.key(0), step), digest)}


def train_step(model, tx, layout: parallel.Layout, log_grad_norms: bool,
               state: TrainState, totals, images, labels):
    """One SGD step; adds the step's loss, accuracy and (optionally) gradient norms
    to `totals` and marks the first step whose loss is NaN/Inf."""
    TRACE_COUNTS["train_step"] += 1

    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                      images, train=True, mutable=["batch_stats"],
                                      rngs=noise_rngs(state.step, labels))
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


def train_many(one_step, unroll: bool, state: TrainState, totals, images, labels,
               batch_indices):
    """K steps of `one_step` in one call (lax.scan), each batch gathered from a
    dataset held on the device by a row of `batch_indices` (K×B)."""
    def body(carry, index):
        return one_step(*carry, images[index], labels[index]), None

    return jax.lax.scan(body, (state, totals), batch_indices, unroll=unroll)[0]


def eval_step(model, layout: parallel.Layout, state: TrainState, images, labels, mask):
    """(loss sum, correct) over the unmasked examples, BN with its running averages."""
    TRACE_COUNTS["eval_step"] += 1
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                         images, train=False)
    losses = jnp.where(mask, cross_entropy(logits, labels), 0.0)
    correct = jnp.where(mask, jnp.argmax(logits, -1) == labels, False)
    return layout.sum((jnp.sum(losses), jnp.sum(correct)))


def batch_stats_step(model, layout: parallel.Layout, state: TrainState, images, labels):
    """This batch's BN statistics as the running averages take them (BN with
    momentum 0 stores exactly them as its running ones: the variance unbiased when
    the run's is), with the batch's loss sum and correct count."""
    stats_model = model.clone(norm_options=tuple(
        (k, 0.0 if k == "momentum" else v) for k, v in model.norm_options))
    logits, updates = stats_model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, images, train=True,
        mutable=["batch_stats"])
    loss_sum = jnp.sum(cross_entropy(logits, labels))
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    return updates.get("batch_stats", {}), *layout.sum((loss_sum, correct))


# ---------------------------------------------------------------- compilation

@dataclasses.dataclass(frozen=True)
class Steps:
    """The compiled steps of one (model, optimizer, layout)."""

    init: Any  # (rng, sample, learning_rate, weight_decay) → TrainState, on one device
    train: Any  # (state, totals, images, labels) → (state, totals)
    # (state, totals, all images, all labels, indices K×B) → (state, totals); None
    # where the layout spans several devices.
    train_many: Any
    evaluate: Any  # (state, images, labels, mask) → (loss sum, correct)
    batch_stats: Any  # (state, images, labels) → (this batch's BN stats, loss sum, correct)


@dataclasses.dataclass(frozen=True)
class PackedSteps:
    """The same steps vmapped over a leading member axis of the state, the totals,
    the batch indices and the init values; the data is shared."""

    init: Any  # (rngs, sample, learning_rates, weight_decays) → states
    train_many: Any  # (states, totals, all images, all labels, indices M×K×B)
    evaluate: Any  # (states, images, labels, mask) → (loss sums, corrects), one per member


# XLA's CPU backend runs a rolled scan of these steps ~3.6× slower than the same
# steps unrolled; accelerators keep the loop rolled, which compiles once for any length.
def _unroll() -> bool:
    return jax.default_backend() == "cpu"


def _donate() -> tuple[int, ...]:
    """The state's buffers are reused for the new one; XLA's CPU backend cannot
    donate and would warn on every call."""
    return () if jax.default_backend() == "cpu" else (0,)


@functools.lru_cache(maxsize=64)
def step_functions(model, spec: OptimizerSpec, layout: parallel.Layout,
                   log_grad_norms: bool = False, cpu_fusion: str = "auto") -> Steps:
    """Compiled steps shared by every run with the same model, optimizer shape and
    layout. With `log_grad_norms` the totals carry each layer's summed gradient norm
    (`new_totals(len(layer_names(params)))`). On one CPU device each step compiles
    with XLA's fusions or YNNPACK's as `cpu_fusion` says (`bnlab.fast.xla_cpu`)."""
    tx = make_optimizer(spec)
    one_step = functools.partial(train_step, model, tx, layout, log_grad_norms)
    evaluate = functools.partial(eval_step, model, layout)
    stats = functools.partial(batch_stats_step, model, layout)
    init = jax.jit(functools.partial(init_state, model, tx))
    if layout.mode != "none":
        return Steps(init, layout.compile(one_step, 2, replicated_args=2), None,
                     layout.compile(evaluate, 3), layout.compile(stats, 2))
    many = functools.partial(train_many, one_step, _unroll())
    return Steps(init, xla_cpu.jit(one_step, cpu_fusion, 2),
                 xla_cpu.jit(many, cpu_fusion, 2, repeat_arg=4, donate_argnums=_donate()),
                 xla_cpu.jit(evaluate, cpu_fusion, 1), xla_cpu.jit(stats, cpu_fusion, 1))


@functools.lru_cache(maxsize=16)
def packed_functions(model, spec: OptimizerSpec, log_grad_norms: bool = False,
                     cpu_fusion: str = "auto") -> PackedSteps:
    """`step_functions` on one device, vmapped over members. On a CPU the fusion
    choice is the one a single member's step would get (its FLOPs are the packed
    program's over members and steps), so a member computes as it would alone."""
    tx = make_optimizer(spec)
    layout = parallel.Layout()
    one_step = functools.partial(train_step, model, tx, layout, log_grad_norms)
    many = functools.partial(train_many, one_step, _unroll())
    evaluate = functools.partial(eval_step, model, layout)
    return PackedSteps(
        jax.jit(jax.vmap(functools.partial(init_state, model, tx), in_axes=(0, None, 0, 0))),
        xla_cpu.jit(jax.vmap(many, in_axes=(0, 0, None, None, 0)), cpu_fusion, 2,
                    repeat_arg=4, repeat_axes=2, donate_argnums=_donate()),
        # Every argument keys its cache: groups of another size need another program.
        xla_cpu.jit(jax.vmap(evaluate, in_axes=(0, None, None, None)), cpu_fusion, 0,
                    repeat_arg=0, repeat_axes=1))


# ---------------------------------------------------------------- evaluation

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


def evaluate_packed(steps: PackedSteps, states: TrainState, dataset: data.Dataset,
                    batch_size: int) -> list[dict[str, float]]:
    """`evaluate` for every member at once, summed in the same order: one dict each."""
    members = jax.tree.leaves(states)[0].shape[0]
    loss_sum, correct = [0.0] * members, [0] * members
    for arrays in data.eval_batches(dataset, min(batch_size, len(dataset))):
        batch_loss, batch_correct = jax.device_get(steps.evaluate(states, *arrays))
        loss_sum = [total + float(x) for total, x in zip(loss_sum, batch_loss, strict=True)]
        correct = [total + int(x) for total, x in zip(correct, batch_correct, strict=True)]
    return [{"loss": s / len(dataset), "accuracy": c / len(dataset)}
            for s, c in zip(loss_sum, correct, strict=True)]


def member(tree, i: int):
    """Member i of a packed tree."""
    return jax.tree.map(lambda x: x[i], tree)


def stack(trees: list) -> Any:
    """Trees of the same structure as one packed tree (leading member axis)."""
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)

