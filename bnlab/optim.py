"""The optimizer: SGD or AdamW, the learning-rate schedule, the weight-decay mask.

The learning rate and weight decay are values in the optimizer state (injected
hyperparameters), so runs that differ only in them share one compiled step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import optax

from bnlab import norms


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


def spec_from_config(config: ml_collections.ConfigDict, total_steps: int) -> OptimizerSpec:
    return OptimizerSpec(config.optimizer, config.momentum, config.nesterov, config.schedule,
                         total_steps, config.warmup_steps, tuple(config.step_boundaries),
                         config.step_decay, config.decay_norm_params)


def _step_schedule(spec: OptimizerSpec) -> optax.Schedule:
    return optax.piecewise_constant_schedule(
        1.0, {int(b * spec.total_steps) - spec.warmup_steps: spec.step_decay
              for b in spec.step_boundaries})


# The schedules by config name, each the rate's shape after warmup (peak 1).
SCHEDULES: dict[str, Any] = {
    "constant": lambda spec: optax.constant_schedule(1.0),
    "cosine": lambda spec: optax.cosine_decay_schedule(
        1.0, max(1, spec.total_steps - spec.warmup_steps)),
    "step": _step_schedule,
}


def schedule_factor(spec: OptimizerSpec) -> optax.Schedule:
    """The learning rate's shape over steps, peaking at 1; the base rate multiplies it."""
    main = SCHEDULES[spec.schedule](spec)
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


# The optimizers by config name: each its transformations before the schedule,
# given the weight decay's. SGD adds the decay to the gradient before momentum (as
# PyTorch does); AdamW applies it after Adam's scaling (decoupled).
OPTIMIZERS: dict[str, Any] = {
    "sgd": lambda spec, decay: [decay, optax.trace(decay=spec.momentum,
                                                   nesterov=spec.nesterov)],
    "adamw": lambda spec, decay: [optax.scale_by_adam(), decay],
}


def make_optimizer(spec: OptimizerSpec) -> optax.GradientTransformation:
    """SGD (PyTorch-style: weight decay added to the gradient before momentum) or
    AdamW (decoupled decay), with learning_rate and weight_decay as injected
    hyperparameters: values in the optimizer state, not constants in the program."""
    factor = schedule_factor(spec)
    mask = None if spec.decay_norm_params else _decay_mask

    def build(learning_rate, weight_decay):
        core = OPTIMIZERS[spec.name](spec, optax.add_decayed_weights(weight_decay, mask))
        return optax.chain(*core, optax.scale_by_schedule(factor),
                           optax.scale_by_learning_rate(learning_rate))

    return optax.inject_hyperparams(build)(learning_rate=0.0, weight_decay=0.0)
