"""One training loop for a single run, a sharded run and a packed group of runs.

`prepare(config)` checks everything (config values, dataset, model shapes) before
anything is written or compiled. `train_group` then trains a group of prepared runs
that share one compiled program: a single run (on one device or sharded) is a group
of one; runs that differ only in `PACK_FIELDS` train as a packed group, the vmap of
the same step functions (`bnlab.steps`). The group's members compute what each
would compute alone, so how runs are scheduled never changes a number.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bnlab import config as config_lib
from bnlab import data, fast, models, norms, optim, parallel, probes, tracking
from bnlab import progress as progress_lib
from bnlab.steps import (
    PackedSteps,
    TrainState,
    evaluate,
    evaluate_packed,
    layer_names,
    member,
    new_totals,
    packed_functions,
    stack,
    step_functions,
)


@dataclasses.dataclass
class Prepared:
    """Everything a run needs, built and checked before anything is written."""

    config: ml_collections.ConfigDict
    train_set: data.Dataset
    test_set: data.Dataset
    model: Any
    optimizer: optim.OptimizerSpec
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
    train_set, test_set = _datasets(config)
    # The config reaches the norm and the network as their options: each says
    # which fields it reads (norms.LAYERS[...].CONFIG, models.MODELS[...].CONFIG).
    norm_options = norms.options(config)
    if config.norm == "bn":
        norm_options.update(layout.bn_options())
    model_options = models.options(config)
    # The fast kernels compute the math's numbers (within float32 rounding) for
    # this backend: chosen here, once, so every step of the run uses the same.
    model = models.make(config.model, norm=config.norm, num_classes=train_set.num_classes,
                        norm_options=norm_options, dtype=config.dtype, ops=fast.choose(),
                        **model_options)
    # Tracing init at the per-device batch shape finds shape errors (GN groups that do
    # not divide a layer's channels, IN on an MLP, a ghost batch that does not divide
    # the per-device batch) before anything is compiled or written.
    per_device = config.batch_size // layout.num_devices
    norm_layers = models.normalized_layers(model, (per_device,) + train_set.image_shape)
    total_steps = config_lib.total_steps(config, len(train_set))
    spec = optim.spec_from_config(config, total_steps)
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


def check_portable(config: ml_collections.ConfigDict) -> None:
    """What `prepare` checks that holds on any machine, for a launcher whose runs
    train elsewhere (a Slurm login node): every value, the data (the same path must
    hold it where the runs train), and every layer's shapes, traced at the
    per-device batch where the config fixes the devices (`num_devices`), else at
    the whole batch. It neither joins a cluster nor asks this machine's devices
    (the workers check those); the layers' formula stands in for the kernels of
    the backend, which take the same shapes. Raises `ConfigError`."""
    config_lib.validate(config)
    train_set, _ = _datasets(config)
    devices = (config.num_devices or 1) if config.parallel != "none" else 1
    if config.batch_size % devices:  # as `parallel.layout_from_config` says it
        raise config_lib.ConfigError("batch_size", config.batch_size,
                                     f"must divide over the {devices} devices")
    model = models.make(config.model, norm=config.norm, num_classes=train_set.num_classes,
                        norm_options=norms.options(config), dtype=config.dtype,
                        **models.options(config))
    models.normalized_layers(model, (config.batch_size // devices,) + train_set.image_shape)


def _datasets(config: ml_collections.ConfigDict) -> tuple[data.Dataset, data.Dataset]:
    """The run's train and test sets, checked against the batch and test sizes."""
    options = {"data_dir": config.data_dir}
    if config.dataset == "synthetic":
        options.update(config.get("synthetic", {}))
    train_set = data.load(config.dataset, "train", train_size=config.train_size, **options)
    test_set = data.load(config.dataset, "test", **options)
    if config.get("test_size") is not None:
        if config.test_size > len(test_set):
            raise config_lib.ConfigError("test_size", config.test_size,
                                         f"larger than the {len(test_set)} test examples")
        test_set = dataclasses.replace(test_set, images=test_set.images[:config.test_size],
                                       labels=test_set.labels[:config.test_size])
    if len(train_set) < config.batch_size:
        raise config_lib.ConfigError("batch_size", config.batch_size,
                                     f"larger than the {len(train_set)} training examples")
    return train_set, test_set


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


def run_digest(config: ml_collections.ConfigDict | dict[str, Any]) -> str:
    """The hash of what a run computes: its fields that differ from the defaults
    (`config.canonical`). The same for a config and for the config.json it wrote."""
    flat = config if isinstance(config, dict) else config_lib.flatten(config)
    return tracking.config_hash(config_lib.canonical(flat))


def full_digest(config: ml_collections.ConfigDict | dict[str, Any]) -> str:
    """The hash of every field of what a run computes (`config.normalized`), defaults
    included: it tells apart two runs that differ only in a default's value, one made
    before configs/default.py changed it and one after."""
    flat = config if isinstance(config, dict) else config_lib.flatten(config)
    return tracking.config_hash(config_lib.normalized(flat))


@dataclasses.dataclass
class ExistingRuns:
    """The run directories of a tracking directory by what they compute
    (`existing_runs`)."""

    names: dict[str, str] = dataclasses.field(default_factory=dict)  # digest → a name
    digests: dict[str, str] = dataclasses.field(default_factory=dict)  # name → its digest

    def __bool__(self) -> bool:
        return bool(self.digests)


def run_name(config: ml_collections.ConfigDict, varied: list[str],
             existing: ExistingRuns | None = None) -> str:
    """The run's directory name: the varied fields, both batch sizes, the run's
    digest; or, from `existing` (`existing_runs`), the name of a run directory that
    already holds the same computation under another name.

    A digest hashes the fields that differ from configs/default.py, so when a default
    changes, a run of the new default gets the name a run of the old one got. Where
    `existing` has a directory of that name holding another computation, this run
    is named with `full_digest` added: never resumed from, nor taken for, the old run,
    which keeps its directory; names of runs whose computation did not change stay."""
    digest = run_digest(config)
    if existing and digest in existing.names:
        return existing.names[digest]
    sizes = batch_sizes(config)
    name = tracking.run_id(config_lib.identity(config),
                           [k for k in varied if k not in config_lib.LAUNCH_FIELDS],
                           sizes["sgd_batch_size"], sizes["norm_batch_size"], digest)
    if existing and existing.digests.get(name, digest) != digest:
        name = f"{name}-{full_digest(config)}"
    return name


def existing_runs(workdir: str | Path) -> ExistingRuns:
    """The run directories of a tracking directory by their config.json's digest: a
    run planned again under another name is the run already there. That covers an
    override that sets a default (`--config.learning_rate=0.05`, named for it) and
    the ids of bnlab before 2026-12, which hashed every field; a finished directory
    wins over an unfinished one of the same digest. A directory without a readable
    config.json is in neither map."""
    found = ExistingRuns()
    for run_dir in sorted(tracking.SweepDir(workdir).runs(), key=lambda d: not d.finished()):
        flat = run_dir.config()
        if flat:
            digest = run_digest(flat)
            found.names.setdefault(digest, run_dir.name)
            found.digests[run_dir.name] = digest
    return found


def resumable_step(run_dir: tracking.RunDir, config, checkpoints) -> int | None:
    """The checkpoint step to resume from: an unfinished run of the same computation
    (`config.canonical`: JSON's values, so numpy's scalars are Python's)."""
    if checkpoints is None or run_dir.finished():
        return None
    written = run_dir.config()  # {} when missing or damaged: no match
    if not written or config_lib.canonical(written) != config_lib.canonical(
            config_lib.flatten(config)):
        return None
    return checkpoints.latest_step() or None


def _train_row(host: dict[str, Any], learning_rate: float, elapsed: float,
               names: list[str]) -> dict[str, Any]:
    """A metrics row from the totals since the last log (one member's, when packed)."""
    steps = max(1, int(host["steps"]))
    return {"train_loss": float(host["loss"]) / steps,
            "train_accuracy": float(host["correct"]) / max(1, host["count"]),
            "learning_rate": learning_rate, "time": elapsed,
            **{f"grad_norm/{name}": float(value) / steps
               for name, value in zip(names, host["grad_norm"], strict=True)}}


def collapsed(test_accuracy: float | None, num_classes: int, test_examples: int) -> bool:
    """Whether a finished run tests at chance: accuracy within three binomial
    standard errors of 1/num_classes on its test set (a run that trained nothing,
    as no norm at lr 50 does). It is still a result (status done), told apart."""
    if test_accuracy is None:
        return False
    chance = 1 / num_classes
    return test_accuracy <= chance + 3 * math.sqrt(chance * (1 - chance) / test_examples)


def _summary(config, train_examples: int, steps_done: int, diverged_step: int | None,
             last: dict[str, Any], best_test: float | None, steps_to_target: int | None,
             num_params: int, start_step: int, timing: dict[str, Any]) -> dict[str, Any]:
    """What summary.json says of a run (packed or not), from its last metrics row."""
    timed_steps = steps_done - start_step - timing["first_call_steps"]
    train_s = timing["wall"] - timing["first_step_s"] - timing["eval_s"]
    extra_evals = {k: v for k, v in last.items()
                   if k.endswith(("_precise_bn", "_batch_stats", "_padded"))
                   or k.startswith(("final_train_", "robust_", "stat_error_"))}
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


# ---------------------------------------------------------------- packing

# Fields that are values inside the compiled step (optimizer hyperparameters, the init
# key, the batch order): runs that differ only in these can train as one program.
PACK_FIELDS = ("learning_rate", "weight_decay", "seed")


# Fields `prepare` checks no further than `config.validate` does: numbers inside the
# step and its schedule, length and logging. Runs that differ only in these need one
# `prepare` to check them all (`sweep.check`).
UNSHAPED = PACK_FIELDS + (
    "momentum", "nesterov", "bn_momentum", "norm_epsilon", "optimizer", "schedule",
    "warmup_steps", "step_boundaries", "step_decay", "num_epochs", "num_steps", "log_every",
    "eval_every", "target_accuracy", "checkpoint_every", "decay_norm_params", "bn_eval",
    "precise_bn_batches", "log_grad_norms", "log_activations", "log_landscape",
    "robust_noise", "robust_fgsm", "stat_error_batches")


def check_key(config: ml_collections.ConfigDict) -> str:
    """Runs with the same key pass or fail `prepare`'s checks together."""
    identity = config_lib.identity(config)
    return tracking.config_hash({k: v for k, v in identity.items() if k not in UNSHAPED})


def pack_key(config: ml_collections.ConfigDict) -> str | None:
    """Runs with the same key can train as one packed group; None for a run that
    cannot (packing is one device, with the data on the device: no augmentation;
    diagnostics and padding evaluations are computed run by run)."""
    if (config.parallel != "none" or config.augment or config.get("log_activations")
            or config.get("log_landscape") or config.dataset == "fashion_mnist_rows"):
        return None
    identity = config_lib.identity(config)
    return tracking.config_hash({k: v for k, v in identity.items() if k not in PACK_FIELDS})


def _check_packable(configs: list[ml_collections.ConfigDict]) -> None:
    keys = {pack_key(c) for c in configs}
    if None in keys or len(keys) != 1:
        raise ValueError("packed runs must share everything but "
                         f"{', '.join(PACK_FIELDS)}, on one device without augmentation")


def _packed_steps_per_call(config) -> int:
    """Packed runs always fuse steps: `steps_per_call` when set above 1, else up to
    each log point."""
    return config.steps_per_call if config.get("steps_per_call", 0) > 1 else config.log_every


def _chunk_length(config, step: int, total_steps: int, per_call: int) -> int:
    """Steps in the next call: at most `per_call`, never past a log point or the
    end, so metrics are logged where one step per call would log them."""
    return min(per_call, config.log_every - step % config.log_every, total_steps - step)


# ---------------------------------------------------------------- the group's program

class _Program:
    """What trains a group: one run, a vmapped pack, or members in turn."""

    state: TrainState

    def ready(self) -> None:
        jax.block_until_ready(self.state.step)

    def end(self, i: int) -> None:
        """Member i has ended (diverged): it needs no more training or evaluation."""


class _Single(_Program):
    """A group of one: the run's own compiled steps, on one device or sharded, one
    step per call from host batches or K per call from the dataset on the device."""

    def __init__(self, run: Prepared, start_step: int, checkpoints: tracking.Checkpoints | None):
        config, self.layout, self.run = run.config, run.layout, run
        self.steps = step_functions(run.model, run.optimizer, self.layout, config.log_grad_norms,
                                    config.get("cpu_fusion", "auto"))
        sample = jnp.zeros((config.batch_size // self.layout.num_devices,)
                           + run.train_set.image_shape, jnp.float32)
        state = self.steps.init(jax.random.key(config.seed), sample, config.learning_rate,
                                config.weight_decay)
        self.names = layer_names(state.params) if config.log_grad_norms else []
        self.num_params = sum(x.size for x in jax.tree.leaves(state.params))
        if start_step:
            state = checkpoints.restore(start_step, jax.device_get(state))
        self.state = self.layout.replicate(state)
        self.totals = self.layout.replicate(new_totals(len(self.names)))
        self.per_call = steps_per_call(config)
        # Epoch order depends on (seed, epoch) only: a resumed run sees the same batches.
        if self.per_call > 1:
            self.indices = data.train_batch_indices(len(run.train_set), config.batch_size,
                                                    config.seed, start_step)
            self.images = jax.device_put(run.train_set.images)
            self.labels = jax.device_put(run.train_set.labels)
        else:
            self.batches = data.train_batches(run.train_set, config.batch_size, config.seed,
                                              config.augment, start_step=start_step)

    def train(self, step: int) -> int:
        """Trains from `step` up to the next call's end; returns the steps taken."""
        if self.per_call == 1:
            self.state, self.totals = self.steps.train(self.state, self.totals,
                                                       *self.layout.shard(*next(self.batches)))
            return 1
        count = _chunk_length(self.run.config, step, self.run.total_steps, self.per_call)
        chunk = np.stack([next(self.indices) for _ in range(count)])
        self.state, self.totals = self.steps.train_many(self.state, self.totals, self.images,
                                                        self.labels, chunk)
        return count

    def take_totals(self) -> list[dict[str, Any]]:
        """The totals since the last log, one dict per member; starts new ones."""
        host = self.layout.fetch(self.totals)
        self.totals = self.layout.replicate(new_totals(len(self.names)))
        return [host]

    def evaluate(self, dataset: data.Dataset, batch_size: int) -> list[dict[str, float]]:
        return [evaluate(self.steps, self.layout, self.state, dataset, batch_size)]

    def member_state(self, i: int) -> TrainState:
        """Member i's state as `self.steps` and `self.layout` take it."""
        return self.state

    def host_state(self, i: int) -> TrainState:
        return self.layout.fetch(self.state)


class _Packed(_Program):
    """Runs that differ only in `PACK_FIELDS`: the same steps vmapped over members,
    each with its own batch order from the dataset held on the device."""

    def __init__(self, runs: list[Prepared], start_step: int,
                 checkpoints: list[tracking.Checkpoints | None]):
        run = self.run = runs[0]
        config, self.layout = run.config, run.layout
        cpu_fusion = config.get("cpu_fusion", "auto")
        self.packed: PackedSteps = packed_functions(run.model, run.optimizer,
                                                    config.log_grad_norms, cpu_fusion)
        # The single steps serve each member's final evaluations.
        self.steps = step_functions(run.model, run.optimizer, self.layout, config.log_grad_norms,
                                    cpu_fusion)
        sample = jnp.zeros((config.batch_size,) + run.train_set.image_shape, jnp.float32)
        configs = [r.config for r in runs]
        state = self.packed.init(jax.vmap(jax.random.key)(jnp.asarray([c.seed for c in configs])),
                                 sample, jnp.asarray([c.learning_rate for c in configs]),
                                 jnp.asarray([c.weight_decay for c in configs]))
        self.names = layer_names(state.params) if config.log_grad_norms else []
        self.num_params = sum(x.size for x in jax.tree.leaves(state.params)) // len(runs)
        if start_step:
            state = stack([ckpt.restore(start_step, jax.device_get(member(state, i)))
                           for i, ckpt in enumerate(checkpoints)])
        self.state = state
        self.totals = new_totals(len(self.names), len(runs))
        self.per_call = _packed_steps_per_call(config)
        self.orders = [data.train_batch_indices(len(run.train_set), config.batch_size, c.seed,
                                                start_step) for c in configs]
        self.images = jax.device_put(run.train_set.images)
        self.labels = jax.device_put(run.train_set.labels)

    def train(self, step: int) -> int:
        count = _chunk_length(self.run.config, step, self.run.total_steps, self.per_call)
        chunk = np.stack([np.stack([next(order) for _ in range(count)]) for order in self.orders])
        self.state, self.totals = self.packed.train_many(self.state, self.totals, self.images,
                                                         self.labels, chunk)
        return count

    def take_totals(self) -> list[dict[str, Any]]:
        host = jax.device_get(self.totals)
        self.totals = new_totals(len(self.names), len(self.orders))
        return [member(host, i) for i in range(len(self.orders))]

    def evaluate(self, dataset: data.Dataset, batch_size: int) -> list[dict[str, float]]:
        return evaluate_packed(self.packed, self.state, dataset, batch_size)

    def member_state(self, i: int) -> TrainState:
        return member(self.state, i)

    def host_state(self, i: int) -> TrainState:
        return jax.device_get(member(self.state, i))


class _Interleaved(_Program):
    """Packed members where vmap does not pay (a CPU): each member's own single-run
    program, called in turn, so a member computes bit for bit what it computes alone.
    (On the CPU, vmap was no faster, and XLA vectorizes some reductions across 4
    members, which moves a member's rounding by an ulp a step.)"""

    def __init__(self, runs: list[Prepared], start_step: int,
                 checkpoints: list[tracking.Checkpoints | None]):
        self.parts = [_Single(r, start_step, c) for r, c in zip(runs, checkpoints, strict=True)]
        first = self.parts[0]
        self.run, self.steps, self.layout = first.run, first.steps, first.layout
        self.names, self.num_params = first.names, first.num_params
        self.live = list(self.parts)

    def train(self, step: int) -> int:
        counts = {part.train(step) for part in self.live}  # one config: one count
        return counts.pop()

    def ready(self) -> None:
        for part in self.live:
            part.ready()

    def end(self, i: int) -> None:
        self.live.remove(self.parts[i])

    def take_totals(self) -> list[dict[str, Any]]:
        return [part.take_totals()[0] for part in self.parts]

    def evaluate(self, dataset: data.Dataset, batch_size: int) -> list[dict[str, float] | None]:
        return [part.evaluate(dataset, batch_size)[0] if part in self.live else None
                for part in self.parts]

    def member_state(self, i: int) -> TrainState:
        return self.parts[i].state

    def host_state(self, i: int) -> TrainState:
        return self.parts[i].host_state(0)


def packing_pays() -> bool:
    """Whether a packed group runs as one vmapped program (accelerators), or as its
    members' own programs in turn (a CPU: there vmap was slower than one run after
    another, so sweeps do not pack; `bnlab bench pack` measures it)."""
    return jax.default_backend() != "cpu"


# ---------------------------------------------------------------- the loop

@dataclasses.dataclass
class _Member:
    """One run of a group: where it is written and what it has reached."""

    run: Prepared
    writer: tracking.RunWriter
    checkpoints: tracking.Checkpoints | None
    previous: list[dict[str, Any]]  # the metrics rows kept from an interrupted attempt
    last: dict[str, Any] = dataclasses.field(default_factory=dict)
    best_test: float | None = None
    steps_to_target: int | None = None
    diverged_step: int | None = None
    result: dict[str, Any] | None = None  # the summary, once it has ended
    diagnose: Any = None  # (params, batch_stats, opt_state, images, labels, lr) → metrics
    probe_batches: Any = None

    def __post_init__(self) -> None:
        self.last = self.previous[-1] if self.previous else {}
        target = self.run.config.target_accuracy
        for row in self.previous:
            if "test_accuracy" in row:
                self.reached(row["step"], row["test_accuracy"], target)

    def reached(self, step: int, accuracy: float, target: float | None) -> None:
        self.best_test = max(self.best_test or 0.0, accuracy)
        if target and self.steps_to_target is None and accuracy >= target:
            self.steps_to_target = step

    @property
    def time_offset(self) -> float:
        """The time column goes on from where the interrupted attempt left it."""
        return self.previous[-1].get("time", 0.0) if self.previous else 0.0


@dataclasses.dataclass
class _Chrono:
    """An attempt's timing: the first call (it compiles) and the evaluations are
    kept out of the speed figures."""

    start_step: int = 0  # where this attempt began (a resumed run: its checkpoint)
    start: float = dataclasses.field(default_factory=time.perf_counter)
    first_step_s: float | None = None
    first_call_steps: int = 1
    eval_s: float = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def first_call(self, program: _Program, count: int) -> None:
        if self.first_step_s is None:
            program.ready()
            self.first_step_s, self.first_call_steps = self.elapsed(), count

    @contextlib.contextmanager
    def evaluating(self):
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.eval_s += time.perf_counter() - begin

    def timing(self) -> dict[str, Any]:
        return {"wall": self.elapsed(), "first_step_s": self.first_step_s,
                "first_call_steps": self.first_call_steps, "eval_s": self.eval_s}


def train_group(runs: list[Prepared], workdirs: list[str],
                vmap: bool | None = None) -> list[dict[str, Any]]:
    """Trains prepared runs that share one program into their run directories and
    returns their summaries: one run alone (on one device or sharded), or several
    that differ only in `PACK_FIELDS`, packed. Each member is written as its own run
    (config, metrics, summary); a member that diverges is recorded as diverged at its
    step and the others go on. With `checkpoint_every`, a group whose members all
    have a checkpoint of the same step resumes from it; otherwise it starts anew.
    `vmap`: a packed group as one vmapped program (default: `packing_pays()`); its
    members then agree with their runs alone to float32 rounding, not bit for bit.
    Only process 0 writes."""
    if len(runs) > 1:
        _check_packable([r.config for r in runs])
    active = jax.process_index() == 0
    run_dirs = [tracking.RunDir(d) for d in workdirs]
    checkpoints = [d.checkpoints(active) if r.config.get("checkpoint_every") else None
                   for r, d in zip(runs, run_dirs, strict=True)]
    resumable = {resumable_step(d, r.config, c)
                 for r, d, c in zip(runs, run_dirs, checkpoints, strict=True)}
    start_step = resumable.pop() if len(resumable) == 1 and None not in resumable else 0
    members: list[_Member] = []
    try:
        for run, run_dir, ckpt in zip(runs, run_dirs, checkpoints, strict=True):
            writer = run_dir.writer(active)
            flat = config_lib.flatten(run.config)
            if start_step:
                previous = writer.resume(flat, {**flat, **run.facts}, start_step)
            else:
                if ckpt:
                    ckpt.clear()  # from another config, or a run that never logged
                writer.start(flat, {**flat, **run.facts})
                previous = []
            members.append(_Member(run, writer, ckpt, previous))
        if len(runs) == 1:
            program: _Program = _Single(runs[0], start_step, checkpoints[0])
        elif packing_pays() if vmap is None else vmap:
            program = _Packed(runs, start_step, checkpoints)
        else:
            program = _Interleaved(runs, start_step, checkpoints)
        _loop(program, members, start_step)
    except BaseException as error:
        for m in members:
            if m.result is None:
                m.writer.fail(error)
        raise
    return [m.result for m in members]


# Set by Ctrl-C where a sweep asked for it (`sweep.stop_at_safe_points`): the loop
# then stops between steps. A KeyboardInterrupt raised wherever the main thread
# happens to be can land in a JAX gc callback, where Python prints it as "ignored".
STOP = threading.Event()


def _loop(program: _Program, members: list[_Member], start_step: int) -> None:
    """Trains the group to its end, logging each member's metrics at its log steps
    and writing each member's summary when it ends (diverged, or the last step)."""
    run = program.run
    config = run.config
    factor = optim.schedule_factor(run.optimizer)
    eval_every = config.eval_every or (config.log_every if config.target_accuracy else None)
    if config.get("log_activations") or config.get("log_landscape"):
        order = tuple(models.layer_order(run.model, (config.batch_size,)
                                         + run.train_set.image_shape))
        for m in members:
            m.diagnose = probes.diagnostics_function(run.model, order, config.log_activations,
                                                     config.log_landscape, run.optimizer)
            # Their own batches: the diagnostics leave the training order untouched.
            m.probe_batches = data.train_batches(run.train_set, config.batch_size,
                                                 m.run.config.seed + 2, False)
    chrono = _Chrono(start_step)
    name = members[0].writer.run_dir.name
    desc = f"{len(members)} packed runs from {name}" if len(members) > 1 else name
    # A sweep's worker in a terminal leaves the bar to the sweep (bars of several
    # workers interleave); in a log it writes its run's lines.
    in_sweep = bool(os.environ.get(progress_lib.SWEEP_PARENT_ENV))
    progress = progress_lib.bar(
        run.total_steps, desc, "step", start_step,
        enabled=jax.process_index() == 0 and not (in_sweep and progress_lib.mode() == "bar"))
    step = start_step
    try:
        while step < run.total_steps and any(m.result is None for m in members):
            if STOP.is_set():
                raise KeyboardInterrupt
            count = program.train(step)
            step += count
            chrono.first_call(program, count)
            progress.update(count)
            is_last = step == run.total_steps
            if step % config.log_every and not is_last:
                continue
            _log_step(program, members, step, is_last, factor, eval_every, chrono)
            progress.set_postfix(_postfix(members))
        for m in members:
            if m.result is None:
                _finish(program, m, step, chrono)
    finally:
        progress.close()


def _log_step(program: _Program, members: list[_Member], step: int, is_last: bool, factor,
              eval_every: int | None, chrono: _Chrono) -> None:
    """One log step of the group: each live member's metrics row, its evaluation,
    its checkpoint; a member whose loss went NaN/Inf ends as diverged."""
    run = program.run
    config = run.config
    now = chrono.elapsed()  # the row's time: before this step's evaluations
    hosts = program.take_totals()
    live = [i for i, m in enumerate(members) if m.result is None]
    for i in live:
        m = members[i]
        if hosts[i]["diverged_step"] >= 0:
            m.diverged_step = int(hosts[i]["diverged_step"]) + 1  # steps count from 1
            program.end(i)
    tests = trains = None
    if (is_last or (eval_every and step % eval_every == 0)) and any(
            members[i].diverged_step is None for i in live):
        with chrono.evaluating():
            tests = program.evaluate(run.test_set if is_last else _curve_set(run),
                                     config.eval_batch_size)
            if is_last and config.get("eval_train_set"):
                trains = program.evaluate(run.train_set, config.eval_batch_size)
    for i in live:
        m = members[i]
        learning_rate = m.run.config.learning_rate * float(factor(step - 1))
        row = _train_row(hosts[i], learning_rate, now + m.time_offset, program.names)
        if m.diverged_step is not None:
            m.writer.log(step, {**row, "train_loss": float("nan")})
            m.last = row
            _finish(program, m, step, chrono)
            continue
        with chrono.evaluating():
            if m.diagnose is not None:
                state = program.member_state(i)
                values = m.diagnose(state.params, state.batch_stats, state.opt_state,
                                    *next(m.probe_batches),
                                    jnp.float32(learning_rate))
                row.update({k: float(v) for k, v in jax.device_get(values).items()})
            if tests is not None:
                row.update(test_loss=tests[i]["loss"], test_accuracy=tests[i]["accuracy"])
                m.reached(step, tests[i]["accuracy"], config.target_accuracy)
            if trains is not None:
                row.update(final_train_loss=trains[i]["loss"],
                           final_train_accuracy=trains[i]["accuracy"])
            if is_last:
                state = program.member_state(i)
                row.update(probes.final_bn_evaluations(m.run.config, program.steps,
                                                       program.layout, state, run.train_set,
                                                       run.test_set))
                row.update(probes.final_padding_evaluations(m.run.config, run.model, state,
                                                            run.test_set))
                row.update(probes.final_robustness_evaluations(m.run.config, run.model, state,
                                                               _curve_set(run)))
                row.update(probes.final_statistics_errors(m.run.config, run.model, state,
                                                          run.train_set))
        m.writer.log(step, row)
        m.last = row
        if m.checkpoints and step % config.checkpoint_every == 0 and not is_last:
            m.checkpoints.save(step, program.host_state(i))


def _curve_set(run: Prepared) -> data.Dataset:
    """The test examples of the evaluations along the way: the first
    `curve_test_size` (all without it)."""
    size = run.config.get("curve_test_size")
    if size is None or size >= len(run.test_set):
        return run.test_set
    return dataclasses.replace(run.test_set, images=run.test_set.images[:size],
                               labels=run.test_set.labels[:size])


def _postfix(members: list[_Member]) -> dict[str, str]:
    """The progress bar's numbers: a run's last losses, or how many members still train."""
    if len(members) > 1:
        return {"live": str(sum(m.result is None for m in members))}
    row = members[0].last
    shown = {"loss": row.get("train_loss"), "acc": row.get("train_accuracy"),
             "test": row.get("test_accuracy")}
    return {k: f"{v:.3f}" for k, v in shown.items() if isinstance(v, float)}


def _finish(program: _Program, m: _Member, step: int, chrono: _Chrono) -> None:
    """Writes a member's summary (status first, summary.json last)."""
    run = m.run
    steps_done = m.diverged_step or step
    summary = _summary(run.config, len(run.train_set), steps_done, m.diverged_step, m.last,
                       m.best_test, m.steps_to_target, program.num_params, chrono.start_step,
                       chrono.timing())
    summary.update(run.facts)
    summary["collapsed"] = collapsed(summary["test_accuracy"], run.train_set.num_classes,
                                     len(run.test_set))
    status = "diverged" if m.diverged_step is not None else "done"
    m.writer.finish(status, summary, step=summary["step"],
                    **({"diverged_step": m.diverged_step} if status == "diverged" else {}))
    m.result = {"status": status, **summary}


# ---------------------------------------------------------------- entry points

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains one run into `workdir` (the run's directory) and returns its summary.

    Raises `ConfigError` before writing anything when the config cannot run. A
    NaN/Inf loss ends the run with status 'diverged' and the step it happened at.
    With `config.checkpoint_every`, an interrupted run resumes from its latest
    checkpoint.
    """
    return run_prepared(prepare(config), workdir)


def run_prepared(run: Prepared, workdir: str) -> dict[str, Any]:
    """`train_and_evaluate` after `prepare`: for callers that report between the two."""
    return train_group([run], [workdir])[0]


def train_packed(configs: list[ml_collections.ConfigDict], workdirs: list[str],
                 vmap: bool | None = None) -> list[dict[str, Any]]:
    """Trains runs that differ only in `PACK_FIELDS` as one packed group (see
    `train_group`)."""
    _check_packable(configs)
    first = prepare(configs[0])
    for config in configs[1:]:
        config_lib.validate(config)
    vmap = packing_pays() if vmap is None else vmap
    facts = dict(first.facts)
    if len(configs) > 1:  # one member trains as a single run
        facts.update(packed_members=len(configs), packed_vmap=vmap)
        if vmap:
            facts["steps_per_call"] = _packed_steps_per_call(first.config)
    return train_group([dataclasses.replace(first, config=c, facts=facts) for c in configs],
                       workdirs, vmap)
