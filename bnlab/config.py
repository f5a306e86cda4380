"""Config loading and validation: every bad value fails here, before compile or write."""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import Any

import ml_collections

from bnlab import resource_dir
from bnlab.tracking import jsonable  # stdlib only: no JAX, and no import of this module

CPU_FUSIONS = ("auto", "xla", "ynnpack")  # see bnlab/fast/xla_cpu.py


class ConfigError(ValueError):
    """A config value that cannot run; `str()` is the one line shown to the user."""

    def __init__(self, field: str, value: Any, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"config.{field}={value!r}: {allowed}")


def load_module(path: str | Path):
    """Imports a config or sweep file by path."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("file", str(path), "no such file")
    spec = importlib.util.spec_from_file_location(f"bnlab_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # a syntax error, a failed import: the user's file
        raise ConfigError("file", str(path), cannot_load(error)) from None
    return module


def cannot_load(error: Exception) -> str:
    """What a user's config or sweep file raised, as the end of one error line."""
    return "cannot be loaded: " + f"{type(error).__name__}: {error}".splitlines()[0]


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    """Calls `get_config()` of a config file, as absl's config_flags does."""
    module = load_module(path)
    if not hasattr(module, "get_config"):
        raise ConfigError("file", str(path), "a config file needs get_config()")
    try:
        return module.get_config()
    except Exception as error:
        raise ConfigError("file", str(path), cannot_load(error)) from None


def _require(config, field: str, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(field, config[field], allowed)


def _positive_int(config, field: str) -> None:
    value = config[field]
    _require(config, field, isinstance(value, int) and not isinstance(value, bool)
             and value > 0, "must be a positive integer")


def _number(config, field: str, low: float, high: float = math.inf, *,
            open_low: bool = False, open_high: bool = False, integer: bool = False,
            optional: bool = False) -> None:
    """A finite number (an integer with `integer`) in the range given; None too when
    `optional`. Checked whatever the mode: a value the run would ignore is still one
    the user meant."""
    value = config.get(field)
    if value is None and optional:
        return
    kinds = int if integer else int | float
    ok = (isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
          and (value > low if open_low else value >= low)
          and (value < high if open_high else value <= high))
    what = "an integer" if integer else "a finite number"
    if high == math.inf:
        bounds = f"{'>' if open_low else '>='} {low:g}"
    else:
        bounds = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    _require(config, field, ok, f"must be {what} {bounds}")


def _boolean(config, field: str) -> None:
    _require(config, field, isinstance(config.get(field, False), bool), "True or False")


def _one_of(config, field: str, registry) -> None:
    _require(config, field, config[field] in registry, f"allowed: {', '.join(registry)}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Static checks of every field a run reads. The names a field allows come from
    the registry of what it names (norms, models, optimizers, schedules), a model's
    own fields from the model (`models.options`). Shape checks (e.g. GN groups vs
    the channels of each layer) happen when the model is traced, see `train.prepare`."""
    from bnlab import models, norms, optim, parallel  # the registries (they import JAX)

    _one_of(config, "norm", norms.LAYERS)
    _one_of(config, "model", models.MODELS)
    _one_of(config, "optimizer", optim.OPTIMIZERS)
    _one_of(config, "schedule", optim.SCHEDULES)
    _one_of(config, "norm_placement", models.PLACEMENTS)
    _one_of(config, "dtype", models.DTYPES)
    for field in ("batch_size", "eval_batch_size", "log_every"):
        _positive_int(config, field)
    if config.num_steps is not None:
        _positive_int(config, "num_steps")
    _require(config, "seed", isinstance(config.seed, int) and not isinstance(config.seed, bool)
             and 0 <= config.seed < 2**32, "must be an integer in [0, 2^32)")
    _number(config, "learning_rate", 0, open_low=True)
    _number(config, "weight_decay", 0)
    _number(config, "momentum", 0, 1, open_high=True)
    _number(config, "bn_momentum", 0, 1, open_high=True)
    _number(config, "norm_epsilon", 0, open_low=True)
    _number(config, "warmup_steps", 0, integer=True)
    _number(config, "step_decay", 0, open_low=True)
    _number(config, "num_epochs", 0, open_low=True)
    _number(config, "target_accuracy", 0, 1, open_low=True, optional=True)
    for field in ("nesterov", "decay_norm_params", "augment", "mask_padding",
                  "bn_unbiased_running_var", "bn_noise_static"):
        _boolean(config, field)
    for field in ("num_groups", "group_size", "num_devices", "num_processes"):
        _number(config, field, 1, integer=True, optional=field != "num_groups")
    _number(config, "process_id", 0, integer=True, optional=True)
    _one_of(config, "parallel", parallel.MODES)
    sync = str(config.bn_sync)
    _require(config, "bn_sync", sync in ("global", "local") or (sync.isdigit() and int(sync) >= 1),
             "allowed: global, local, or a group size k (e.g. 2)")
    bounds = config.step_boundaries
    _require(config, "step_boundaries",
             isinstance(bounds, tuple | list) and all(
                 isinstance(b, int | float) and not isinstance(b, bool) and 0 < b < 1
                 for b in bounds) and list(bounds) == sorted(bounds),
             "must be increasing fractions of the run in (0, 1)")
    for field in ("train_size", "test_size", "curve_test_size"):
        if config.get(field) is not None:
            _positive_int(config, field)
    if config.eval_every is not None:
        _positive_int(config, "eval_every")
    steps_per_call = config.get("steps_per_call", 0)
    _require(config, "steps_per_call", isinstance(steps_per_call, int) and steps_per_call >= 0,
             "0 (automatic) or a positive int")
    if steps_per_call > 1:
        _require(config, "steps_per_call", config.parallel == "none",
                 "fused steps run on one device (parallel='none') for now")
        _require(config, "steps_per_call", not config.augment,
                 "fused steps need augment=False: augmentation runs on the host")
    _require(config, "cpu_fusion", config.get("cpu_fusion", "auto") in CPU_FUSIONS,
             f"allowed: {', '.join(CPU_FUSIONS)}")
    if config.get("checkpoint_every") is not None:
        _positive_int(config, "checkpoint_every")
        _require(config, "checkpoint_every", config.checkpoint_every % config.log_every == 0,
                 f"must be a multiple of config.log_every={config.log_every}")
    modes = [m.strip() for m in str(config.bn_eval).split(",")]
    _require(config, "bn_eval", bool(modes) and set(modes) <= {"ema", "precise", "batch"},
             "a comma list of: ema, precise, batch")
    _positive_int(config, "precise_bn_batches")
    for field in ("log_grad_norms", "log_activations", "log_landscape"):
        _boolean(config, field)
        if field != "log_grad_norms" and config.get(field):
            _require(config, field, config.parallel == "none",
                     "diagnostics run on one device (parallel='none')")
    if "bn_noise" in config:  # a run's config.json from before noisy BN lacks it
        _number(config, "bn_noise", 0)
    if config.get("bn_noise"):
        _require(config, "bn_noise", config.norm == "bn" and config.parallel == "none"
                 and not config.get("mask_padding", False),
                 "noisy BN applies to norm='bn' on one device (parallel='none'), unmasked")
    _require(config, "bn_noise_static", not config.get("bn_noise_static")
             or config.get("bn_noise", 0) > 0,
             "fixes noisy BN's draw: needs bn_noise > 0")
    from bnlab import data  # data imports this module: not at the top

    sizes = config.get("stat_error_batches") or ()
    _require(config, "stat_error_batches",
             isinstance(sizes, tuple | list) and all(
                 isinstance(s, int) and not isinstance(s, bool) and 2 <= s <= 4096
                 for s in sizes),
             "batch sizes from 2 to 4096, e.g. (2, 8, 32, 128)")
    if sizes:
        _require(config, "stat_error_batches", config.parallel == "none",
                 "batch statistics are measured on one device (parallel='none')")
        _require(config, "stat_error_batches", config.norm == "bn",
                 "measures BN's statistics: needs norm='bn'")
        examples = data.train_examples(config)
        _require(config, "stat_error_batches", examples is None or max(sizes) <= examples,
                 f"a batch larger than the {examples} training examples")
    for field in ("robust_noise", "robust_fgsm"):
        if field in config:  # a run's config.json from before C12 lacks them
            _number(config, field, 0, 1)
        if config.get(field):
            _require(config, field, config.dataset in data.PIXEL_DATASETS,
                     "perturbs pixels on the 0-1 scale: needs a dataset of known pixel "
                     f"statistics ({', '.join(data.PIXEL_DATASETS)})")
            _require(config, field, config.parallel == "none",
                     "robustness is evaluated on one device (parallel='none')")
    if config.virtual_batch_size is not None:
        _positive_int(config, "virtual_batch_size")
        _require(config, "virtual_batch_size", config.norm == "bn",
                 "ghost batches apply to norm='bn' only")
        _require(config, "virtual_batch_size", config.batch_size % config.virtual_batch_size == 0,
                 f"must divide config.batch_size={config.batch_size}")
    models.options(config)
    # Sequences go to the sequence model and nothing else does.
    _require(config, "model", (config.model == "seq_cnn")
             == (config.dataset == "fashion_mnist_rows"),
             "seq_cnn and dataset fashion_mnist_rows go together")
    if config.get("mask_padding", False):
        _require(config, "mask_padding", config.model == "seq_cnn" and config.norm == "bn",
                 "masks BN's statistics in seq_cnn (norm='bn')")
        _require(config, "mask_padding", config.parallel == "none"
                 and config.virtual_batch_size is None,
                 "masked BN runs on one device without ghost batches")


# The default config file every run starts from (configs/default.py; in an installed
# bnlab, its copy inside the package: `bnlab.resource_dir`).
DEFAULT_CONFIG_FILE = resource_dir("configs") / "default.py"


# How a run was launched or executed, not what it computes: left out of its
# identity (run id). steps_per_call changes how many steps one call runs, not the
# steps (tested equal to one step per call); cpu_fusion how XLA fuses them (tested
# equal within float rounding).
LAUNCH_FIELDS = ("coordinator_address", "num_processes", "process_id", "steps_per_call",
                 "cpu_fusion")


# Fields that never tell two runs' results apart: how a run was launched, where it
# read its data, how often it logged, evaluated and saved, what it measured beside
# its training (diagnostics on batches of their own, curves on part of the test set,
# the training set evaluated at the end), the same fields the claims' rules hold
# incidental. `ls` leaves them out of its columns and `analysis.varied_columns` out
# of what a group must hold fixed.
BOOKKEEPING_FIELDS = (*LAUNCH_FIELDS, "data_dir", "log_every", "eval_every",
                      "checkpoint_every", "eval_batch_size", "log_grad_norms",
                      "log_activations", "log_landscape", "curve_test_size", "eval_train_set")


def total_steps(config, train_examples: int | None) -> int | None:
    """The steps a run trains (a ConfigDict or a flat config.json): `num_steps`,
    else `num_epochs` epochs of `train_examples // batch_size` steps (at least one),
    as `train.prepare` counts them; None where neither says (no num_steps, and the
    dataset's size unknown)."""
    if config.get("num_steps"):
        return int(config["num_steps"])
    if not train_examples or not config.get("batch_size") or config.get("num_epochs") is None:
        return None
    return max(1, round(config["num_epochs"] * (train_examples // config["batch_size"])))


def identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The flattened fields that define what a run computes."""
    return {k: v for k, v in flatten(config).items() if k not in LAUNCH_FIELDS}


# Fields added to bnlab with a default that computes differently from the code before
# them: the value a config.json written before the field existed stands for. A
# field added with a default that changes nothing needs no entry.
ABSENT_MEANS: dict[str, Any] = {
    # 2026-12-04: BN's running variance became the unbiased one by default; a run
    # planned before kept the biased one (norms.options gives the layer's default).
    "bn_unbiased_running_var": False,
}


@functools.cache
def defaults() -> dict[str, Any]:
    """The flattened identity of configs/default.py: what every run starts from."""
    return identity(load_config_file(DEFAULT_CONFIG_FILE))


def unread_fields(norm: str, model: str) -> set[str]:
    """The norm and model fields (those some norm layer or model reads: their
    `CONFIG`) that this run's norm and model do not read, so that no value of them
    changes what it computes: BN's fields in a GN run, plain_cnn's depth in a
    SimpleCNN. From the registries themselves, so it cannot drift from what reads
    what; a name that is not in them (a damaged config.json) leaves nothing out."""
    from bnlab import models, norms  # the registries (they import JAX)

    if not (isinstance(norm, str) and isinstance(model, str)) \
            or norm not in norms.LAYERS or model not in models.MODELS:
        return set()
    every = {field for name in norms.LAYERS for field in norms.fields(name)}
    every |= {field for name in models.MODELS for field in models.fields(name)}
    return every - norms.fields(norm) - models.fields(model)


def normalized(flat: dict[str, Any]) -> dict[str, Any]:
    """A flat config (`identity`, or a config.json) as what its run computes: JSON's
    values (numpy scalars as Python's, tuples as lists: a config built with numpy
    is the run its config.json holds), launch fields and the fields its norm and
    model do not read (`unread_fields`) left out, a field it lacks as
    `ABSENT_MEANS` says, numbers as the default's type (an int learning rate is a
    float)."""
    flat = {k: jsonable(v) for k, v in flat.items() if k not in LAUNCH_FIELDS}
    for field, value in ABSENT_MEANS.items():
        flat.setdefault(field, value)
    base = defaults()
    unread = unread_fields(flat.get("norm", base["norm"]), flat.get("model", base["model"]))
    out = {}
    for key, value in flat.items():
        if key in unread:
            continue
        if key in base and isinstance(base[key], float) and isinstance(value, int) \
                and not isinstance(value, bool):
            value = float(value)
        out[key] = value
    return out


def canonical(flat: dict[str, Any]) -> dict[str, Any]:
    """The fields of `normalized(flat)` that differ from the defaults. What a run id
    hashes: a field added to bnlab with its default, an override that sets a
    default, or a field the run's norm or model does not read leaves a run's id as
    it was."""
    base = defaults()
    return {key: value for key, value in normalized(flat).items()
            if key not in base or not _same(value, base[key])}


def _same(value: Any, default: Any) -> bool:
    """`value` as JSON holds it (`normalized`): a tuple default is the list
    config.json holds; True is not 1."""
    if isinstance(value, tuple | list) and isinstance(default, tuple | list):
        return list(value) == list(default)
    return type(value) is type(default) and value == default


def flatten(config: ml_collections.ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
    """Nested config → {'a.b': value}; tuples become lists so JSON round-trips."""
    items = config.items() if isinstance(config, dict) else config.to_dict().items()
    flat: dict[str, Any] = {}
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict | ml_collections.ConfigDict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat
