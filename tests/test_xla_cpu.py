"""bnlab.fast.xla_cpu: a step compiled with YNNPACK's fusions computes what XLA's own
fusions compute (within float rounding), and is chosen by one step's FLOPs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnlab import steps as steps_lib
from bnlab import tracking, train
from bnlab.fast import xla_cpu


def _chain(x, y):
    return jnp.maximum(x * 2 + y, 0) - jnp.tanh(y)


def _inputs():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((64, 256), np.float32),
            rng.standard_normal((64, 256), np.float32))


def test_the_option_reaches_the_compiler_and_keeps_the_values():
    """An elementwise chain: one loop fusion of XLA's own under 'xla', one YNNPACK
    fusion under 'ynnpack'; both give numpy's values."""
    x, y = _inputs()
    expected = np.maximum(x * 2 + y, 0) - np.tanh(y)
    ynn_fusions = {}
    for mode in ("xla", "ynnpack"):
        tuned = xla_cpu.TunedJit(_chain, mode, fixed_args=0)
        np.testing.assert_allclose(tuned(x, y), expected, rtol=1e-6, atol=1e-6)
        assert list(tuned.ynnpack.values()) == [mode == "ynnpack"]
        ynn_fusions[mode] = tuned.compiled(x, y).as_text().count('"__ynn_fusion"')
    assert ynn_fusions == {"xla": 0, "ynnpack": 1}


def test_auto_compares_one_steps_flops_with_the_threshold(monkeypatch):
    """`repeat_arg` divides a fused call's FLOPs by its steps: four steps of a chain
    under the threshold stay with XLA's fusions though the call as a whole is over."""
    def many(carry, xs):
        return jax.lax.scan(lambda c, x: (c + _chain(x, x), None), carry, xs, unroll=True)[0]

    x, _ = _inputs()
    xs = np.stack([x] * 4)
    one_step = xla_cpu.flops(jax.jit(_chain).lower(x, x))
    assert one_step and one_step > 0
    monkeypatch.setattr(xla_cpu, "MIN_FLOPS", 2 * one_step)
    for repeat_arg, expected in ((1, False), (None, True)):
        tuned = xla_cpu.TunedJit(many, "auto", fixed_args=1, repeat_arg=repeat_arg)
        np.testing.assert_allclose(tuned(np.zeros_like(x), xs), 4 * _chain(x, x), rtol=1e-5)
        assert list(tuned.ynnpack.values()) == [expected]
    monkeypatch.setattr(xla_cpu, "MIN_FLOPS", 0.5 * one_step)
    tuned = xla_cpu.TunedJit(many, "auto", fixed_args=1, repeat_arg=1)
    tuned(np.zeros_like(x), xs)
    tuned(np.zeros_like(x), xs[:2])  # a new length is a new compilation, decided anew
    assert list(tuned.ynnpack.values()) == [True, True]
    assert xla_cpu.wants_ynnpack("auto", None) is False  # no count: XLA's own fusions
    with pytest.raises(ValueError, match="cpu_fusion='fast'"):
        xla_cpu.TunedJit(_chain, "fast", fixed_args=0)


def test_an_option_the_compiler_refuses_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(xla_cpu, "OPTIONS", {"xla_cpu_no_such_option": "1"})
    monkeypatch.setattr(xla_cpu.TunedJit, "_warned", False)
    x, y = _inputs()
    tuned = xla_cpu.TunedJit(_chain, "ynnpack", fixed_args=0)
    with pytest.warns(UserWarning, match="refused"):
        out = tuned(x, y)
    assert list(tuned.ynnpack.values()) == [False]
    np.testing.assert_array_equal(out, jax.jit(_chain)(x, y))


@pytest.mark.slow
def test_training_with_ynnpack_fusions_matches_xlas_own(small_config, tmp_path):
    """SimpleCNN, 10 steps of batch 32 on real Fashion-MNIST, one step per call and
    five: the loss curve within 1e-4 relative of XLA's own fusions (measured 1.7e-5
    after 10 steps: they round in another order; the first 5 steps' mean was
    bit-equal), and K=1 and K=5 under YNNPACK's bit-equal to each other."""
    small_config.update(num_steps=10, log_every=5, test_size=500)
    curves, accuracies = {}, {}
    for mode, per_call in (("xla", 1), ("ynnpack", 1), ("ynnpack", 5)):
        small_config.update(cpu_fusion=mode, steps_per_call=per_call)
        workdir = tmp_path / f"{mode}{per_call}"
        summary = train.train_and_evaluate(small_config, str(workdir))
        (metrics,) = workdir.rglob("metrics.jsonl")
        curves[mode, per_call] = [r["train_loss"] for r in tracking.read_metrics(metrics)]
        accuracies[mode, per_call] = summary["test_accuracy"]
    run = train.prepare(small_config)  # the run's steps, from step_functions' cache
    for mode in ("xla", "ynnpack"):
        steps = steps_lib.step_functions(run.model, run.optimizer, run.layout, False, mode)
        assert set(steps.train.ynnpack.values()) == {mode == "ynnpack"}
        assert set(steps.train_many.ynnpack.values()) == ({True} if mode == "ynnpack" else set())
    np.testing.assert_allclose(curves["ynnpack", 1], curves["xla", 1], rtol=1e-4)
    assert curves["ynnpack", 5] == curves["ynnpack", 1]
    assert accuracies["ynnpack", 1] == pytest.approx(accuracies["xla", 1], abs=0.01)
