"""`python -m bnlab bench`: measured speed, as ratios within one run (docs/PERFORMANCE.md).

Three benchmarks, each a list of JSON records and a table on screen:

- `step`: the train step of (model, norm, batch size, dtype) through bnlab (one
  step per call, and K steps per call with the data on the device) against a plain
  baseline written here (one jitted Flax step per Python call, host-fed batches,
  float32, the two-pass norms under autodiff and Flax's max pool), and against
  the article's PyTorch code (eager and `torch.compile`) when torch is installed.
- `norms`: forward+backward of each norm layer (fused and two-pass reference) on
  one activation tensor against an elementwise affine over the same tensor (the
  memory-bandwidth reference), with XLA's count of memory passes.
- `load`: seconds for `analysis.load_runs` / `load_curves` on 1,000 runs.
- `pack`: member-steps/s of N runs (same shapes, different learning rate and seed)
  packed into one program, against the same runs one after another.

Times exclude the first call (compilation), which is reported on its own. The
loops of one step or norm record are timed in interleaved rounds, best round
kept (`_interleaved`), so their ratios survive a shared machine's changing load.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bnlab import data, models, norms, tracking, train
from bnlab import steps as steps_lib
from bnlab.config import DEFAULT_CONFIG_FILE, load_config_file
from bnlab.fast import heap
from bnlab.fast.norms import fused_normalize

IMAGE_SHAPE = (32, 32, 3)  # the article's CIFAR-sized input


def _backend_defaults() -> dict[str, Any]:
    cpu = jax.default_backend() == "cpu"
    return {"steps": 100 if cpu else 300, "steps_per_call": 10 if cpu else 100,
            "norm_shape": (32, 32, 32, 16) if cpu else (256, 32, 32, 64)}


def _config(model: str, norm: str, batch_size: int, dtype: str = "float32",
            examples: int = 4096, cpu_fusion: str = "auto") -> ml_collections.ConfigDict:
    config = load_config_file(DEFAULT_CONFIG_FILE)
    config.update(dataset="synthetic", model=model, norm=norm, batch_size=batch_size,
                  dtype=dtype, train_size=None, num_steps=10**6, bn_eval="ema",
                  cpu_fusion=cpu_fusion)
    config.synthetic = ml_collections.ConfigDict(
        {"num_examples": max(examples, batch_size), "image_shape": IMAGE_SHAPE})
    return config


def _peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _timed(call: Callable[[], Any], steps_per_call: int, steps: int) -> dict[str, float]:
    """Runs `call` once (compile), then enough calls for `steps` steps; the result
    must be ready before the clock stops."""
    return _interleaved({"only": (call, steps_per_call)}, steps, rounds=1)["only"]


def _interleaved(calls: dict[str, tuple[Callable[[], Any], int]], steps: int,
                 rounds: int = 5) -> dict[str, dict[str, float]]:
    """Times several loops against each other: each `(call, steps_per_call)` is
    called once (compile, timed on its own), then `rounds` rounds each run every loop
    for about steps/rounds steps in turn. A loop's rate is its best round; a load
    that comes and goes on a shared machine then slows every loop's worst rounds,
    not one loop's whole measurement (run one after another, two loops of one
    benchmark moved by 15% against each other between runs). `steps_per_s_median`
    keeps the median round."""
    compile_s = {}
    for name, (call, _) in calls.items():
        start = time.perf_counter()
        jax.block_until_ready(call())
        compile_s[name] = time.perf_counter() - start
    rates: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (call, per_call) in calls.items():
            count = max(1, steps // (per_call * rounds))
            start = time.perf_counter()
            out = None
            for _ in range(count):
                out = call()
            jax.block_until_ready(out)
            rates[name].append(count * per_call / (time.perf_counter() - start))
    return {name: {"compile_s": compile_s[name], "steps_per_s": max(rates[name]),
                   "steps_per_s_median": float(np.median(rates[name])), "rounds": rounds}
            for name in calls}


# ---------------------------------------------------------------- plain baseline

def plain_flax_call(model, dataset: data.Dataset, batch_size: int,
                    learning_rate: float = 0.05) -> Callable[[], Any]:
    """One step of the loop a user writes first: SGD with momentum, one jitted step
    per Python call, each batch copied from the host."""
    variables = model.init(jax.random.key(0), jnp.zeros((batch_size,) + dataset.image_shape),
                           train=True)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    tx = optax.sgd(learning_rate, momentum=0.9)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, batch_stats, opt_state, images, labels):
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                          images, train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        deltas, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, deltas), updates.get("batch_stats", batch_stats),
                opt_state, loss)

    batches = data.train_batches(dataset, batch_size, seed=0)
    carry = [params, batch_stats, opt_state]

    def call():
        out = step(*carry, *next(batches))
        carry[:] = out[:3]
        return out[3]

    return call


# ---------------------------------------------------------------- bnlab's loops

def _bnlab_call(fns: steps_lib.Steps, run: train.Prepared, per_call: int, seed: int = 0,
                learning_rate: float = 0.05, device_data=None) -> Callable[[], Any]:
    """One run's call of bnlab's train step: one host-fed step (per_call 1), or
    `per_call` steps of `train_many` over the dataset held on the device
    (`device_data`: (images, labels) already there, else put there now)."""
    batch_size = run.config.batch_size
    sample = jnp.zeros((batch_size,) + run.train_set.image_shape)
    state = [fns.init(jax.random.key(seed), sample, learning_rate, 0.0), steps_lib.new_totals()]
    if per_call == 1:
        batches = data.train_batches(run.train_set, batch_size, seed)

        def one():
            state[:] = fns.train(*state, *next(batches))
            return state[0].step

        return one
    images, labels = device_data or (jax.device_put(run.train_set.images),
                                     jax.device_put(run.train_set.labels))
    order = data.train_batch_indices(len(run.train_set), batch_size, seed)

    def many():
        chunk = np.stack([next(order) for _ in range(per_call)])
        state[:] = fns.train_many(*state, images, labels, chunk)
        return state[0].step

    return many


def bnlab_calls(config: ml_collections.ConfigDict, steps_per_call: int
                ) -> dict[str, tuple[Callable[[], Any], int]]:
    """bnlab's own train step: one step per call (host-fed), and `steps_per_call`
    steps per call over the dataset held on the device (`train_many`)."""
    run = train.prepare(config)
    fns = steps_lib.step_functions(run.model, run.optimizer, run.layout,
                                   cpu_fusion=config.get("cpu_fusion", "auto"))
    return {f"bnlab_{k}": (_bnlab_call(fns, run, k), k) for k in (1, steps_per_call)}


# ---------------------------------------------------------------- PyTorch

def torch_calls(model_name: str, norm: str, batch_size: int) -> dict[str, Any]:
    """The article's network in PyTorch (eager, then `torch.compile`), SGD with
    momentum, on the device JAX uses (cuda when JAX is on a GPU): one step per call,
    compiled by its first call, or `{"error": ...}` where that failed."""
    try:
        import torch
    except ImportError as error:
        if error.name == "torch":
            return {}  # not installed: nothing to compare with
        return {"torch_eager": {"error": f"torch does not import: {error}"[:200]}}
    from bnlab import torch_models

    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    out: dict[str, Any] = {}
    for compiled in (False, True):
        name = "torch_compile" if compiled else "torch_eager"
        try:
            call = _torch_call(torch, torch_models.make(model_name, norm).to(device),
                               batch_size, device, compiled)
            start = time.perf_counter()
            call()  # compiles here, where a failing compiler raises
            out[name] = (call, 1, time.perf_counter() - start)
        except Exception as error:  # no compiler toolchain, say: recorded, not fatal
            out[name] = {"error": str(error).splitlines()[0][:200]}
    return out


def _torch_call(torch, net, batch_size: int, device: str,
                compiled: bool) -> Callable[[], Any]:
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    images = torch.randn((batch_size, 3) + IMAGE_SHAPE[:2], device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(images), labels)
        loss.backward()
        opt.step()
        return loss

    if compiled:
        step = torch.compile(step)

    def call():
        loss = step()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss

    return call


# ---------------------------------------------------------------- benchmarks

def step_benchmark(model: str, norm: str, batch_size: int, dtype: str = "float32",
                   steps: int | None = None, steps_per_call: int | None = None,
                   with_torch: bool = True, cpu_fusion: str = "auto") -> dict[str, Any]:
    defaults = _backend_defaults()
    steps = steps or defaults["steps"]
    steps_per_call = steps_per_call or defaults["steps_per_call"]
    config = _config(model, norm, batch_size, dtype, cpu_fusion=cpu_fusion)
    run = train.prepare(config)
    record: dict[str, Any] = {"bench": "step", "model": model, "norm": norm,
                              "batch_size": batch_size, "dtype": dtype,
                              "cpu_fusion": cpu_fusion,
                              # every loop's, PyTorch's too: one process (fast/heap.py)
                              "malloc": "kept" if heap.kept else "system",
                              "device": jax.devices()[0].device_kind, "steps": steps}
    # The network as a user first writes it, the math without bnlab.fast: the
    # textbook two-pass norm left to JAX's autodiff, Flax's max pool and nn.Conv.
    plain_model = models.make(model, norm=norm, num_classes=10,
                              norm_options=dict(run.model.norm_options or ()))
    calls = {"plain_flax": (plain_flax_call(plain_model, run.train_set, batch_size), 1)}
    calls.update(bnlab_calls(config, steps_per_call))
    failed, torch_compile_s = {}, {}
    if with_torch and dtype == "float32":
        for name, made in torch_calls(model, norm, batch_size).items():
            if isinstance(made, dict):
                failed[name] = made
            else:
                calls[name], torch_compile_s[name] = made[:2], made[2]
    loops: dict[str, Any] = _interleaved(calls, steps)
    for name, seconds in torch_compile_s.items():
        loops[name]["compile_s"] = seconds  # its first call; `_interleaved`'s is a rerun
    loops.update(failed)
    record["peak_bytes"] = _peak_bytes()
    base = loops["plain_flax"]["steps_per_s"]
    for result in loops.values():
        if "steps_per_s" in result:
            result["images_per_s"] = result["steps_per_s"] * batch_size
            result["vs_plain"] = result["steps_per_s"] / base
    record["loops"] = loops
    return record


def _memory_passes(compiled, tensor_bytes: int) -> float | None:
    """Bytes the compiled program reads and writes (XLA's cost analysis of the
    optimized, fused program), in units of the activation tensor."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    moved = (analysis or {}).get("bytes accessed")
    return None if moved is None else moved / tensor_bytes


def norm_benchmark(shape: tuple[int, ...] | None = None, dtype: str = "float32",
                   repeats: int = 50) -> dict[str, Any]:
    """Forward+backward (the output, and the gradients for the input and the norm's
    parameters) of each norm in training mode, in bnlab's fused formulation and in
    the two-pass reference (`NAME_reference`), against `x * scale + bias` over the
    same tensor. `passes`: XLA's count of bytes moved, in tensors."""
    shape = tuple(shape or _backend_defaults()["norm_shape"])
    x = jax.random.normal(jax.random.key(0), shape, jnp.dtype(dtype))
    cotangent = jax.random.normal(jax.random.key(1), shape, jnp.dtype(dtype))
    tensor_bytes = x.size * x.dtype.itemsize

    class Affine(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            scale = self.param("scale", jax.nn.initializers.ones, (x.shape[-1],))
            bias = self.param("bias", jax.nn.initializers.zeros, (x.shape[-1],))
            return x * scale.astype(x.dtype) + bias.astype(x.dtype)

    layers: dict[str, nn.Module] = {"affine": Affine()}
    for name, options in (("bn", {}), ("ln", {}), ("in", {}), ("gn", {"num_groups": 8})):
        layers[name] = norms.make(name, normalize=fused_normalize, **options)
        layers[name + "_reference"] = norms.make(name, **options)
    record: dict[str, Any] = {"bench": "norms", "shape": list(shape), "dtype": dtype,
                              "device": jax.devices()[0].device_kind, "layers": {}}
    calls, passes = {}, {}
    for name, layer in layers.items():
        variables = layer.init(jax.random.key(0), x, train=True)

        @jax.jit
        def fwd_bwd(params, x, layer=layer, variables=variables):
            def f(params, x):
                return layer.apply({**variables, "params": params}, x, train=True,
                                   mutable=["batch_stats"])[0]

            # The output is returned too: a network reads it, and without it XLA
            # would drop the forward's write from the measurement.
            y, vjp = jax.vjp(f, params, x)
            return y, vjp(cotangent)

        params = variables.get("params", {})
        # The program whose passes are counted is the one timed (one compile, not two).
        compiled = fwd_bwd.lower(params, x).compile()
        calls[name] = (lambda compiled=compiled, params=params: compiled(params, x), 1)
        passes[name] = _memory_passes(compiled, tensor_bytes)
    for name, result in _interleaved(calls, repeats).items():
        record["layers"][name] = {"ms": 1e3 / result["steps_per_s"], "passes": passes[name]}
    reference = record["layers"]["affine"]["ms"]
    for result in record["layers"].values():
        result["vs_affine"] = result["ms"] / reference
    return record


def pack_benchmark(members: int = 16, batch_size: int = 8, model: str = "simple_cnn",
                   norm: str = "bn", steps: int | None = None,
                   steps_per_call: int | None = None) -> dict[str, Any]:
    """N runs of one shape, differing in learning rate and seed: packed into one
    program (K steps per call), against the same runs one after another with one
    step per call (the plain loop) and with K steps per call."""
    defaults = _backend_defaults()
    steps = steps or defaults["steps"]
    steps_per_call = steps_per_call or defaults["steps_per_call"]
    config = _config(model, norm, batch_size)
    run = train.prepare(config)
    fns = steps_lib.step_functions(run.model, run.optimizer, run.layout)
    sample = jnp.zeros((batch_size,) + run.train_set.image_shape)
    images, labels = jax.device_put(run.train_set.images), jax.device_put(run.train_set.labels)
    packed_fns = steps_lib.packed_functions(run.model, run.optimizer)
    rates = np.geomspace(0.01, 0.1, members).astype(np.float32)
    record: dict[str, Any] = {"bench": "pack", "model": model, "norm": norm,
                              "members": members, "batch_size": batch_size, "steps": steps,
                              "steps_per_call": steps_per_call,
                              "device": jax.devices()[0].device_kind, "loops": {}}

    def sequential(per_call: int) -> dict[str, float]:
        compile_s, elapsed = 0.0, 0.0
        for m in range(members):
            call = _bnlab_call(fns, run, per_call, seed=m, learning_rate=rates[m],
                               device_data=(images, labels))
            result = _timed(call, per_call, steps)
            compile_s += result["compile_s"]
            elapsed += steps / result["steps_per_s"]
        return {"compile_s": compile_s, "member_steps_per_s": members * steps / elapsed}

    record["loops"]["sequential_1"] = sequential(1)
    record["loops"][f"sequential_{steps_per_call}"] = sequential(steps_per_call)
    state = [packed_fns.init(jax.vmap(jax.random.key)(jnp.arange(members)), sample,
                                    jnp.asarray(rates), jnp.zeros(members)),
             steps_lib.new_totals(members=members)]
    orders = [data.train_batch_indices(len(run.train_set), batch_size, m) for m in range(members)]

    def packed():
        chunk = np.stack([np.stack([next(o) for _ in range(steps_per_call)]) for o in orders])
        state[:] = packed_fns.train_many(*state, images, labels, chunk)
        return state[0].step

    result = _timed(packed, steps_per_call, steps)
    record["loops"]["packed"] = {"compile_s": result["compile_s"],
                                 "member_steps_per_s": members * result["steps_per_s"]}
    base = record["loops"]["sequential_1"]["member_steps_per_s"]
    for loop in record["loops"].values():
        loop["vs_sequential_1"] = loop["member_steps_per_s"] / base
    record["peak_bytes"] = _peak_bytes()
    return record


def load_benchmark(runs: int = 1000, steps: int = 100, log_every: int = 10) -> dict[str, Any]:
    """Seconds for `analysis.load_runs` and `load_curves` on a tracking directory of
    `runs` runs: one real (synthetic-data) run of `steps` steps, copied under
    distinct names, in a temporary folder."""
    import shutil
    import tempfile
    from pathlib import Path

    from bnlab import analysis

    config = _config("simple_cnn", "bn", 8, examples=256)
    config.update(num_steps=steps, log_every=log_every)
    record: dict[str, Any] = {"bench": "load", "runs": runs, "rows_per_run": steps // log_every}
    with tempfile.TemporaryDirectory() as folder:
        template = Path(folder) / "template"
        train.train_and_evaluate(config, str(template))
        copies = tracking.SweepDir(Path(folder) / "sweep")
        for i in range(runs):
            shutil.copytree(template, copies.run(f"run-{i:05d}").path,
                            ignore=shutil.ignore_patterns("events.out.*"))
        for name, load in (("load_runs", analysis.load_runs),
                           ("load_curves", analysis.load_curves)):
            start = time.perf_counter()
            frame = load(Path(folder) / "sweep")
            record[f"{name}_s"] = time.perf_counter() - start
            record[f"{name}_rows"] = len(frame)
    return record


# ---------------------------------------------------------------- screen

def table(records: list[dict[str, Any]]) -> str:
    """The records as aligned text, one line per loop or layer."""
    lines = []
    for r in records:
        if r["bench"] == "step":
            head = f"{r['model']}/{r['norm']} b{r['batch_size']} {r['dtype']}"
            for name, loop in r["loops"].items():
                if "error" in loop:
                    lines.append(f"step  {head:28} {name:14} error: {loop['error']}")
                    continue
                lines.append(f"step  {head:28} {name:14} {loop['steps_per_s']:10.1f} steps/s "
                             f"{loop['images_per_s']:12.0f} img/s  ×{loop['vs_plain']:.2f} plain"
                             f"  compile {loop['compile_s']:.1f} s")
        elif r["bench"] == "norms":
            head = "×".join(map(str, r["shape"])) + f" {r['dtype']}"
            for name, layer in r["layers"].items():
                passes = "" if layer.get("passes") is None else f"  {layer['passes']:.1f} passes"
                lines.append(f"norms {head:28} {name:14} {layer['ms']:10.3f} ms fwd+bwd  "
                             f"×{layer['vs_affine']:.2f} affine{passes}")
        elif r["bench"] == "load":
            for name in ("load_runs", "load_curves"):
                lines.append(f"load  {r['runs']} runs{'':19} {name:14} {r[name + '_s']:10.2f} s "
                             f"for {r[name + '_rows']} rows")
        else:
            head = f"{r['members']}×{r['model']}/{r['norm']} b{r['batch_size']}"
            for name, loop in r["loops"].items():
                lines.append(f"pack  {head:28} {name:14} {loop['member_steps_per_s']:10.1f} "
                             f"member-steps/s  ×{loop['vs_sequential_1']:.2f} sequential"
                             f"  compile {loop['compile_s']:.1f} s")
    return "\n".join(lines)


def run(which: str, models_: list[str], norm_names: list[str], batch_sizes: list[int],
        dtype: str, steps: int | None, steps_per_call: int | None, members: int,
        with_torch: bool, on_record: Callable[[list], None] | None = None,
        cpu_fusion: str = "auto") -> list[dict[str, Any]]:
    """The benchmarks `which` (step, norms, pack, load or all); each record is printed as
    soon as it is measured, and `on_record(records so far)` called (to save them)."""
    records = []

    def done(record):
        records.append(record)
        print(table([record]), flush=True)
        if on_record:
            on_record(records)

    if which in ("step", "all"):
        for model in models_:
            for norm in norm_names:
                for batch_size in batch_sizes:
                    done(step_benchmark(model, norm, batch_size, dtype, steps, steps_per_call,
                                        with_torch, cpu_fusion))
    if which in ("norms", "all"):
        done(norm_benchmark(dtype=dtype))
    if which in ("pack", "all"):
        done(pack_benchmark(members, 8, steps=steps, steps_per_call=steps_per_call))
    if which in ("load", "all"):
        done(load_benchmark())
    return records


def to_json(records: list[dict[str, Any]]) -> str:
    return json.dumps({"backend": jax.default_backend(),
                       "jax": jax.__version__, "records": records}, indent=1,
                      default=lambda o: dataclasses.asdict(o) if dataclasses.is_dataclass(o)
                      else str(o))
