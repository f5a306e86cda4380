"""`bnlab bench` on tiny shapes: the records hold what the docs' tables read, and
the fused norms move fewer bytes than the two-pass reference (XLA's own count)."""

import json
import time

import pytest

from bnlab import bench


def test_interleaved_rounds_time_each_loop_by_its_own_steps():
    """Two loops whose calls sleep 2 and 6 ms, the second doing 3 steps per call:
    the same rate per step, whatever the rounds; compile time is the first call."""
    counts = {"a": 0, "b": 0}

    def sleeper(name, seconds):
        def call():
            counts[name] += 1
            time.sleep(seconds)
        return call

    result = bench._interleaved({"a": (sleeper("a", 0.002), 1), "b": (sleeper("b", 0.006), 3)},
                                steps=30, rounds=3)
    assert counts == {"a": 1 + 30, "b": 1 + 3 * 3}
    for loop in result.values():
        assert loop["rounds"] == 3 and loop["compile_s"] > 0
        assert loop["steps_per_s_median"] <= loop["steps_per_s"] <= 500
    assert 0.7 < result["a"]["steps_per_s"] / result["b"]["steps_per_s"] < 1.3


def test_norm_benchmark_counts_fewer_memory_passes_for_the_fused_norms():
    record = bench.norm_benchmark(shape=(4, 6, 6, 8), repeats=2)
    layers = record["layers"]
    assert set(layers) == {"affine", "bn", "bn_reference", "ln", "ln_reference",
                           "in", "in_reference", "gn", "gn_reference"}
    assert all(layer["ms"] > 0 for layer in layers.values())
    assert layers["affine"]["vs_affine"] == 1.0
    for name in ("bn", "ln", "in", "gn"):
        # The output and the backward's result at least: x read, y and dx written.
        assert 3 <= layers[name]["passes"] < layers[name + "_reference"]["passes"], name
    assert "passes" in bench.table([record])


@pytest.mark.slow
def test_step_benchmark_times_every_loop_against_the_plain_one():
    record = bench.step_benchmark("simple_cnn", "bn", 2, steps=4, steps_per_call=2,
                                  with_torch=False, cpu_fusion="ynnpack")
    assert record["cpu_fusion"] == "ynnpack"
    loops = record["loops"]
    assert set(loops) == {"plain_flax", "bnlab_1", "bnlab_2"}
    assert loops["plain_flax"]["vs_plain"] == 1.0
    for loop in loops.values():
        assert loop["steps_per_s"] > 0 and loop["images_per_s"] == 2 * loop["steps_per_s"]
    assert json.loads(bench.to_json([record]))["records"][0]["bench"] == "step"
