"""Packed execution: members vmapped in one program equal the same runs one by one."""

import copy
import dataclasses
import math

import pytest
from conftest import ROOT
from test_sweep import _assert_every_run_finished_once, _bnlab, _events, _sweep_file

from bnlab import sweep, tracking, train
from bnlab.config import load_config_file

# Packed runs compute convolutions as shifted matmuls (models.Conv); the reference is
# the same run unpacked with the same convolution, so only vmap's batching differs:
# measured, losses agree to ~1e-7 relative after 20 steps (float32), so 1e-5 is the
# bar, and an accuracy may flip one borderline test example at most. (Against
# nn.Conv's summation order runs drift further on Fashion-MNIST: its flat
# backgrounds make max-pool ties that rounding breaks either way; 1e-3 relative in
# loss after 6 steps, tested in test_models against nn.Conv call by call instead.)
LOSS_RTOL = 1e-5


def _unpacked(config, run_dir):
    run = train.prepare(config)
    return train.run_prepared(dataclasses.replace(run, model=train.packed_model(run.model)),
                              str(run_dir))


def _members(config, points):
    out = []
    for point in points:
        member = copy.deepcopy(config)
        member.update(point)
        out.append(member)
    return out


def _compare_rows(packed_dir, single_dir, test_size):
    packed = tracking.read_metrics(packed_dir / "metrics.jsonl")
    single = tracking.read_metrics(single_dir / "metrics.jsonl")
    assert [r["step"] for r in packed] == [r["step"] for r in single]
    for a, b in zip(packed, single, strict=True):
        assert a["learning_rate"] == b["learning_rate"]
        for key in ("train_loss", "test_loss"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=LOSS_RTOL, nan_ok=True), (key, a, b)
        for key in ("train_accuracy", "test_accuracy", "test_accuracy_precise_bn",
                    "test_accuracy_batch_stats"):
            if key in b:
                assert abs(a[key] - b[key]) <= 1.0 / test_size + 1e-12, (key, a, b)


def test_packed_members_equal_the_same_runs_one_by_one(small_config, tmp_path):
    small_config.update(bn_eval="ema,precise,batch", precise_bn_batches=5, test_size=500,
                        num_steps=15)
    configs = _members(small_config, [{"learning_rate": 0.05, "weight_decay": 0.0, "seed": 0},
                                      {"learning_rate": 0.2, "weight_decay": 5e-4, "seed": 1},
                                      {"learning_rate": 0.01, "weight_decay": 0.0, "seed": 2}])
    before = train.TRACE_COUNTS["train_step"]
    packed = train.train_packed(configs, [str(tmp_path / f"p{i}") for i in range(3)])
    assert train.TRACE_COUNTS["train_step"] - before <= 1  # one program for the three
    for i, config in enumerate(configs):
        single = _unpacked(config, tmp_path / f"s{i}")
        assert packed[i]["status"] == single["status"] == "done"
        assert packed[i]["packed_members"] == 3
        _compare_rows(tmp_path / f"p{i}", tmp_path / f"s{i}", small_config.test_size)
        written = tracking.read_json(tmp_path / f"p{i}" / "summary.json")
        assert written["test_accuracy"] == packed[i]["test_accuracy"]
        assert tracking.read_json(tmp_path / f"p{i}" / "config.json")["seed"] == config.seed
    # The members really differ: a different seed and learning rate train differently.
    assert packed[0]["train_loss"] != pytest.approx(packed[1]["train_loss"], rel=1e-2)


def test_a_diverging_member_is_recorded_and_does_not_disturb_the_others(synthetic_config,
                                                                        tmp_path):
    synthetic_config.norm = "none"
    configs = _members(synthetic_config, [{"learning_rate": 0.05}, {"learning_rate": 1e4},
                                          {"learning_rate": 0.02}])
    packed = train.train_packed(configs, [str(tmp_path / f"p{i}") for i in range(3)])
    assert [p["status"] for p in packed] == ["done", "diverged", "done"]
    single = _unpacked(configs[1], tmp_path / "s1")
    assert packed[1]["diverged_step"] == single["diverged_step"]
    assert tracking.read_json(tmp_path / "p1" / "status.json")["status"] == "diverged"
    for i in (0, 2):
        _unpacked(configs[i], tmp_path / f"s{i}")
        _compare_rows(tmp_path / f"p{i}", tmp_path / f"s{i}", synthetic_config.test_size)
        assert math.isfinite(packed[i]["test_loss"])


def test_runs_that_differ_in_shape_are_not_packed(synthetic_config, tmp_path):
    configs = _members(synthetic_config, [{"norm": "bn"}, {"norm": "gn"}])
    with pytest.raises(ValueError, match="share everything but"):
        train.train_packed(configs, [str(tmp_path / "a"), str(tmp_path / "b")])
    assert not (tmp_path / "a").exists()


def test_a_packed_sweep_writes_every_run_once_with_its_own_metrics(tmp_path):
    # 2 norms × 3 learning rates: two packs of three.
    workdir = tmp_path / "w"
    result = _bnlab("sweep", str(_sweep_file(tmp_path, steps=20)), "--workdir", str(workdir),
                    "--pack", "--pack_on_cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_every_run_finished_once(workdir, 6)
    starts = [e for e in _events(workdir) if e["event"] == "start"]
    assert sorted(e.get("packed") for e in starts) == [3] * 6
    for run_dir in (workdir / "runs").iterdir():
        config = tracking.read_json(run_dir / "config.json")
        rows = tracking.read_metrics(run_dir / "metrics.jsonl")
        assert rows[0]["learning_rate"] == pytest.approx(config["learning_rate"])
    # Without pack_on_cpu, pack on a CPU backend runs them one by one.
    assert not train.packing_pays()
    base = load_config_file(ROOT / "configs" / "default.py")
    base.update(dataset="synthetic", batch_size=16, num_steps=4, log_every=2)
    launch = sweep.write_plan(tmp_path / "w2", sweep.plan(
        base, sweep.axis("learning_rate", [0.01, 0.02])), {})
    sweep.work(tmp_path / "w2", launch, pack=True)
    _assert_every_run_finished_once(tmp_path / "w2", 2)
    assert all("packed" not in e for e in _events(tmp_path / "w2"))
