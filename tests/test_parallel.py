"""Cross-device batch statistics on 8 simulated CPU devices (conftest sets XLA_FLAGS).

Tolerances. Float32 values reduced in another order (8 partial means and a pmean,
against one mean over 32 examples) differ by ~1e-7 relative; one forward/backward
pass stays within 2e-5. Over 20 SGD steps the loss curves are held to 1e-4
relative at learning rate 0.001 (momentum 0.9), where the measured gap stays below
1.1e-6 (every scope, shard_map and pmap alike), while getting the statistics' scope
wrong moves the curve by 6e-3 to 1e-2 (5e-3 already at the first step). Training
with ghost batches of 4 to 8 is chaotic at higher rates: at 0.01 a 1e-6 relative
change of BN's epsilon alone moves the step-19 loss by 3.7e-4 on one device, so
a 1e-7 rounding difference between two layouts' programs (the fused norm reduces
in another order for 4 than for 32 examples) grows to 3.6e-3, and a curve test
there would measure the chaos, not the statistics' scope.
"""

import os
import socket
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import BNLAB, ROOT, assert_one_line_error, bnlab

from bnlab import data, fast, models, parallel, probes, tracking, train
from bnlab import steps as steps_lib

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")

PER_DEVICE, DEVICES = 4, 8
GLOBAL = PER_DEVICE * DEVICES


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(GLOBAL, 12, 12, 3)).astype(np.float32)
    labels = rng.integers(0, 10, GLOBAL).astype(np.int32)
    return images, labels


def _forward_backward(layout: parallel.Layout, norm_options: dict, images, labels):
    """Logits (all examples, in order), gradients and new running statistics of
    SimpleCNN+BN on one batch, computed in `layout`."""
    options = {"momentum": 0.9, **norm_options, **layout.bn_options()}
    model = models.make("simple_cnn", norm="bn", norm_options=options, ops=fast.choose())
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=True))(
        images[:GLOBAL // layout.num_devices])

    def body(params, batch_stats, images, labels):
        def loss_fn(p):
            logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, images,
                                          train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), (
                logits, updates["batch_stats"])

        (_, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            layout.vary(params))
        if layout.mode != "none":
            # Gather every device's logits in batch order, as a replicated value:
            # each device fills its own slot, a psum joins them.
            slot = jax.lax.axis_index(layout.data_axes)
            slots = jnp.zeros((layout.num_devices,) + logits.shape).at[slot].set(logits)
            logits = jax.lax.psum(slots, layout.data_axes).reshape(-1, logits.shape[-1])
        return logits, layout.mean(grads), stats

    step = layout.compile(body, 2, replicated_args=2)
    params, batch_stats = layout.replicate((variables["params"], variables["batch_stats"]))
    return layout.fetch(step(params, batch_stats, *layout.shard(images, labels)))


def _assert_same(a, b, atol=2e-5, rtol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_global_bn_equals_one_device_bn_over_the_whole_batch(mode):
    images, labels = _batch()
    reference = _forward_backward(parallel.Layout(), {}, images, labels)
    result = _forward_backward(parallel.Layout(mode, DEVICES, DEVICES), {}, images, labels)
    _assert_same(result, reference)
    # The check is not vacuous: per-device statistics give other numbers.
    local = _forward_backward(parallel.Layout(mode, DEVICES, 1), {}, images, labels)
    assert np.abs(np.asarray(local[0]) - np.asarray(reference[0])).max() > 1e-2


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
@pytest.mark.parametrize("sync_size,ghost", [(1, 4), (2, 8), (4, 16)])
def test_local_and_grouped_bn_equal_one_device_ghost_bn(mode, sync_size, ghost):
    images, labels = _batch(1)
    reference = _forward_backward(parallel.Layout(), {"virtual_batch_size": ghost},
                                  images, labels)
    result = _forward_backward(parallel.Layout(mode, DEVICES, sync_size), {}, images, labels)
    _assert_same(result, reference)


def _config(small_config, **changes):
    config = small_config
    config.num_steps, config.log_every, config.batch_size = 20, 1, 32
    config.learning_rate = 0.001  # see the module docstring
    for key, value in changes.items():
        config[key] = value
    return config


def _losses(config, workdir):
    summary = train.train_and_evaluate(config, str(workdir))
    rows = tracking.read_metrics(workdir / "metrics.jsonl")
    return np.array([r["train_loss"] for r in rows]), summary


@pytest.mark.slow
@pytest.mark.parametrize("sync,ghost", [("global", None), ("local", 4), ("2", 8)])
def test_twenty_steps_give_the_same_loss_curve_everywhere(small_config, tmp_path, sync, ghost):
    reference, ref_summary = _losses(_config(small_config, virtual_batch_size=ghost),
                                     tmp_path / "one")
    for mode in ("pmap", "shard_map"):
        config = _config(small_config, parallel=mode, bn_sync=sync, virtual_batch_size=None)
        curve, summary = _losses(config, tmp_path / mode)
        assert len(curve) == 20
        np.testing.assert_allclose(curve, reference, rtol=1e-4)
        assert summary["norm_batch_size"] == ref_summary["norm_batch_size"]
        assert summary["test_accuracy"] == pytest.approx(ref_summary["test_accuracy"], abs=2e-3)
    # The tolerance separates: another statistics scope leaves it far behind.
    other = "local" if sync != "local" else "global"
    wrong, _ = _losses(_config(small_config, parallel="shard_map", bn_sync=other,
                               virtual_batch_size=None), tmp_path / "wrong")
    assert np.max(np.abs(wrong - reference) / reference) > 3e-3


@pytest.mark.parametrize("norm", ["ln", "in", "gn"])
def test_per_example_norms_ignore_the_device_count(small_config, tmp_path, norm):
    reference, _ = _losses(_config(small_config, norm=norm), tmp_path / "one")
    curve, summary = _losses(_config(small_config, norm=norm, parallel="shard_map",
                                     bn_sync="local"), tmp_path / "eight")
    np.testing.assert_allclose(curve, reference, rtol=1e-4)
    assert summary["norm_batch_size"] == 1


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_running_statistics_identical_on_every_replica_after_every_step(small_config, mode):
    config = _config(small_config, parallel=mode, bn_sync="local")
    run = train.prepare(config)
    steps = steps_lib.step_functions(run.model, run.optimizer, run.layout)
    state = steps.init(jax.random.key(0), jnp.zeros((4, 28, 28, 1)), 0.05, 0.0)
    state = run.layout.replicate(state)
    totals = run.layout.replicate(steps_lib.new_totals())
    batches = data.train_batches(run.train_set, 32, seed=0)
    previous = None
    for _ in range(5):
        state, totals = steps.train(state, totals, *run.layout.shard(*next(batches)))
        replicas = run.layout.replicas(state.batch_stats)
        assert len(replicas) == DEVICES
        for replica in replicas[1:]:
            jax.tree.map(np.testing.assert_array_equal, replica, replicas[0])  # bit for bit
        assert previous is None or not np.array_equal(
            replicas[0]["norm1"]["BatchNorm_0"]["mean"], previous)
        previous = replicas[0]["norm1"]["BatchNorm_0"]["mean"]


def test_local_sync_with_per_device_batch_two_on_fashion_mnist(small_config, tmp_path):
    config = _config(small_config, parallel="shard_map", bn_sync="local", batch_size=16,
                     log_every=10)
    summary = train.train_and_evaluate(config, str(tmp_path))
    assert summary["status"] == "done"
    assert summary["sgd_batch_size"] == 16 and summary["norm_batch_size"] == 2
    assert summary["values_per_statistic"] == 2 * 14 * 14 and summary["num_devices"] == 8
    assert tracking.read_json(tmp_path / "summary.json")["norm_batch_size"] == 2


def test_ghost_batches_inside_each_device(tmp_path):
    images, labels = _batch(2)
    reference = _forward_backward(parallel.Layout(), {"virtual_batch_size": 2}, images, labels)
    result = _forward_backward(parallel.Layout("shard_map", DEVICES, 1),
                               {"virtual_batch_size": 2}, images, labels)
    _assert_same(result, reference)


@pytest.mark.slow
def test_the_cli_names_runs_by_both_batch_sizes(tmp_path):
    result = bnlab("train", "--config.parallel=shard_map", "--config.bn_sync=2",
                   "--config.batch_size=32", "--config.virtual_batch_size=2",
                   "--config.num_steps=2", "--config.train_size=64", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    # Ghost batches of 2 in each device, pooled over groups of 2 devices: 4 examples.
    assert "-sgd32-nb4-" in run_dir.name
    summary = tracking.read_json(run_dir / "summary.json")
    assert summary["norm_batch_size"] == 4 and summary["sgd_batch_size"] == 32


def _mlp_forward(params, images, stats=None, eps=1e-5):
    """The BN MLP in NumPy (float64): batch statistics when `stats` is None, else the
    given per-layer (mean, var). Returns logits and each layer's batch (mean, var)."""
    a = images.reshape(len(images), -1).astype(np.float64)
    seen = []
    for i in range(3):
        dense = params[f"Dense_{i}"]
        h = a @ np.asarray(dense["kernel"], np.float64) + np.asarray(dense["bias"])
        mean, var = (h.mean(0), h.var(0)) if stats is None else stats[i]
        seen.append((h.mean(0), h.var(0)))
        bn = params[f"_NormAct_{i}"]["BatchNorm_0"]
        y = (h - mean) / np.sqrt(var + eps) * np.asarray(bn["scale"]) + np.asarray(bn["bias"])
        a = 1 / (1 + np.exp(-y))
    out = params["Dense_3"]
    return a @ np.asarray(out["kernel"], np.float64) + np.asarray(out["bias"]), seen


@pytest.mark.parametrize("mode", ["none", "shard_map"])
def test_precise_bn_and_batch_statistics_against_numpy(small_config, mode):
    config = _config(small_config, model="mlp", parallel=mode, bn_sync="global",
                     learning_rate=0.5)
    run = train.prepare(config)
    layout = run.layout
    steps = steps_lib.step_functions(run.model, run.optimizer, layout)
    state = steps.init(jax.random.key(0), jnp.zeros((32 // layout.num_devices, 28, 28, 1)),
                       0.5, 0.0)
    state = layout.replicate(state)
    totals = layout.replicate(steps_lib.new_totals())
    batches = data.train_batches(run.train_set, 32, seed=0)
    for _ in range(10):
        state, totals = steps.train(state, totals, *layout.shard(*next(batches)))
    params = layout.fetch(state.params)

    # PreciseBN: the equal-weight mean of each layer's batch statistics over 6 batches,
    # the variances unbiased over the 32 examples of a batch (fvcore's PreciseBN).
    stat_batches = [next(batches) for _ in range(6)]
    precise = layout.fetch(probes.precise_bn_statistics(steps, layout, state,
                                                       iter(stat_batches), 6))
    per_batch = [_mlp_forward(params, images)[1] for images, _ in stat_batches]
    for layer in range(3):
        got = precise[f"_NormAct_{layer}"]["BatchNorm_0"]
        np.testing.assert_allclose(got["mean"], np.mean([b[layer][0] for b in per_batch], 0),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["var"],
                                   np.mean([b[layer][1] for b in per_batch], 0) * 32 / 31,
                                   rtol=1e-4, atol=1e-6)

    # Batch statistics at evaluation: each test batch of 32 normalized by its own.
    test = data.Dataset("t", "test", run.test_set.images[:96], run.test_set.labels[:96], 10)
    result = probes.evaluate_with_batch_statistics(steps, layout, state, test, 32)
    correct = sum(int((_mlp_forward(params, test.images[i:i + 32])[0].argmax(1)
                       == test.labels[i:i + 32]).sum()) for i in range(0, 96, 32))
    assert result["accuracy"] == correct / 96


@pytest.mark.parametrize("overrides,message", [
    (["--config.parallel=shard_map", "--config.batch_size=20"],
     "config.batch_size=20: must divide over the 8 devices"),
    (["--config.parallel=pmap", "--config.bn_sync=3"],
     "config.bn_sync='3': groups of 3 must divide the 8 devices"),
    (["--config.parallel=shard_map", "--config.bn_sync=some"], "config.bn_sync='some'"),
    (["--config.parallel=pmap", "--config.num_devices=9"], "config.num_devices=9"),
    (["--config.parallel=shard_map", "--config.virtual_batch_size=16"],
     "config.virtual_batch_size=16: must divide the batch of 8"),
    (["--config.parallel=jit"], "config.parallel='jit': allowed: none, pmap, shard_map"),
])
def test_layouts_that_cannot_run_fail_in_one_line(cli, tmp_path, overrides, message):
    assert_one_line_error(cli("train", *overrides, f"--workdir={tmp_path / 'w'}"), message)
    assert not (tmp_path / "w").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_eight_devices(tmp_path):
    common = ["train", "--config.train_size=512", "--config.batch_size=32",
              "--config.num_steps=8", "--config.log_every=2", "--config.parallel=shard_map",
              "--config.bn_sync=global"]
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    workers = [subprocess.Popen(
        [*BNLAB, *common, f"--workdir={tmp_path / 'two'}",
         f"--config.coordinator_address=127.0.0.1:{port}", "--config.num_processes=2",
         f"--config.process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-2000:]
    single = bnlab(*common, f"--workdir={tmp_path / 'one'}",
                   env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert single.returncode == 0, single.stderr[-2000:]
    (two_dir,) = (tmp_path / "two" / "runs").iterdir()  # process 1 wrote nothing of its own
    (one_dir,) = (tmp_path / "one" / "runs").iterdir()
    two = tracking.read_metrics(two_dir / "metrics.jsonl")
    one = tracking.read_metrics(one_dir / "metrics.jsonl")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [2, 4, 6, 8]
    np.testing.assert_allclose([r["train_loss"] for r in two], [r["train_loss"] for r in one],
                               rtol=1e-4)
    assert tracking.read_json(two_dir / "env.json")["process_count"] == 2
    summary = tracking.read_json(two_dir / "summary.json")
    assert summary["num_devices"] == 8
    assert summary["test_accuracy"] == pytest.approx(
        tracking.read_json(one_dir / "summary.json")["test_accuracy"], abs=2e-3)


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
@pytest.mark.parametrize("sync_size", [8, 2, 1])
def test_running_variance_unbiased_over_each_sync_group(mode, sync_size):
    """BN's running variance over 8 devices after one and after three steps, against
    NumPy: each statistic's m is per-device batch × H × W × the devices of its sync
    group; groups that do not sync average their (unbiased) updates."""
    from bnlab import norms

    layout = parallel.Layout(mode, DEVICES, sync_size)
    layer = norms.make("bn", momentum=0.9, unbiased_running_var=True, **layout.bn_options())
    rng = np.random.default_rng(7)
    x_steps = [rng.normal(i, 1 + i, (GLOBAL, 3, 2, 5)).astype(np.float32) for i in range(3)]
    variables = layer.init(jax.random.key(0), x_steps[0][:PER_DEVICE])

    def body(variables, x):
        _, updates = layer.apply(variables, x, mutable=["batch_stats"])
        return {**variables, **updates}

    step = layout.compile(body, 1)
    state = layout.replicate(variables)
    m = PER_DEVICE * sync_size * 3 * 2
    ra_mean, ra_var = np.zeros(5), np.ones(5)
    for i, x in enumerate(x_steps):
        state = step(state, *layout.shard(x))
        groups = x.astype(np.float64).reshape(DEVICES // sync_size, -1, 3, 2, 5)
        ra_mean = 0.9 * ra_mean + 0.1 * groups.mean((1, 2, 3)).mean(0)
        ra_var = 0.9 * ra_var + 0.1 * (groups.var((1, 2, 3)) * m / (m - 1)).mean(0)
        for replica in layout.replicas(state["batch_stats"]):
            np.testing.assert_allclose(replica["mean"], ra_mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(replica["var"], ra_var, rtol=1e-5, err_msg=f"step {i}")
