"""Packed execution: members vmapped in one program equal the same runs one by one,
and a packed sweep killed and relaunched equals the same sweep uninterrupted."""

import copy
import math
import os
import signal
import subprocess
import time

import pytest
from conftest import BNLAB, ROOT, bnlab
from test_sweep import _assert_every_run_finished_once, _events, _sweep_file

from bnlab import steps as steps_lib
from bnlab import sweep, tracking, train

# A packed member computes what it would compute alone: the same convolution, the
# same fusion choice, its own batch order. On a CPU a group runs its members' own
# programs in turn, so every logged metric but the wall-clock `time` must match bit
# for bit. As one vmapped program (accelerators; forced here with vmap=True) XLA may
# vectorize a reduction across members (on this CPU at 4 members, not 2 or 3),
# which moves a member's parameters by ~1 ulp per step (measured: ≤ 3.3e-7 absolute
# after 5 steps): held to 1e-5 relative in loss at a small learning rate, and an
# accuracy may flip one borderline test example.
UNTIMED = ("time",)
VMAP_LOSS_RTOL = 1e-5


def _members(config, points):
    out = []
    for point in points:
        member = copy.deepcopy(config)
        member.update(point)
        out.append(member)
    return out


def assert_same_metrics(dir_a, dir_b):
    """Every row and every logged metric of two runs equal (but the time column)."""
    rows_a = tracking.read_metrics(dir_a / "metrics.jsonl")
    rows_b = tracking.read_metrics(dir_b / "metrics.jsonl")
    assert rows_a and [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for a, b in zip(rows_a, rows_b, strict=True):
        assert set(a) == set(b), (a, b)
        for key in a:
            if key not in UNTIMED:
                assert a[key] == b[key], (key, a["step"], a[key], b[key])
    summary_a = tracking.read_json(dir_a / "summary.json")
    summary_b = tracking.read_json(dir_b / "summary.json")
    for key in ("status", "step", "diverged_step", "test_accuracy", "test_loss", "train_loss",
                "best_test_accuracy", "steps_to_target"):
        assert summary_a[key] == summary_b[key], key


def test_a_packed_group_of_four_equals_the_four_runs_one_by_one(small_config, tmp_path):
    small_config.update(bn_eval="ema,precise,batch", precise_bn_batches=5, test_size=500,
                        num_steps=15, target_accuracy=0.3, eval_every=5, log_grad_norms=True)
    configs = _members(small_config, [{"learning_rate": 0.05, "weight_decay": 0.0, "seed": 0},
                                      {"learning_rate": 0.2, "weight_decay": 5e-4, "seed": 1},
                                      {"learning_rate": 0.01, "weight_decay": 0.0, "seed": 2},
                                      {"learning_rate": 0.1, "weight_decay": 1e-3, "seed": 3}])
    before = steps_lib.TRACE_COUNTS["train_step"]
    packed = train.train_packed(configs, [str(tmp_path / f"p{i}") for i in range(4)])
    assert steps_lib.TRACE_COUNTS["train_step"] - before <= 1  # one program for the four
    for i, config in enumerate(configs):
        single = train.train_and_evaluate(config, str(tmp_path / f"s{i}"))
        assert packed[i]["status"] == single["status"] == "done"
        assert packed[i]["packed_members"] == 4
        assert_same_metrics(tmp_path / f"p{i}", tmp_path / f"s{i}")
        written = tracking.read_json(tmp_path / f"p{i}" / "summary.json")
        assert written["test_accuracy"] == packed[i]["test_accuracy"]
        assert tracking.read_json(tmp_path / f"p{i}" / "config.json")["seed"] == config.seed
    rows = tracking.read_metrics(tmp_path / "p0" / "metrics.jsonl")
    assert {"test_accuracy_precise_bn", "test_accuracy_batch_stats"} <= set(rows[-1])
    assert any(k.startswith("grad_norm/") for k in rows[-1])
    # The members really differ: a different seed and learning rate train differently.
    assert packed[0]["train_loss"] != pytest.approx(packed[1]["train_loss"], rel=1e-2)


def test_a_diverging_member_is_recorded_and_does_not_disturb_the_others(synthetic_config,
                                                                        tmp_path):
    synthetic_config.norm = "none"
    configs = _members(synthetic_config, [{"learning_rate": 0.05}, {"learning_rate": 1e4},
                                          {"learning_rate": 0.02}])
    packed = train.train_packed(configs, [str(tmp_path / f"p{i}") for i in range(3)])
    assert [p["status"] for p in packed] == ["done", "diverged", "done"]
    assert tracking.read_json(tmp_path / "p1" / "status.json")["status"] == "diverged"
    for i in range(3):
        single = train.train_and_evaluate(configs[i], str(tmp_path / f"s{i}"))
        assert packed[i]["diverged_step"] == single["diverged_step"]
        assert_same_metrics(tmp_path / f"p{i}", tmp_path / f"s{i}")
    for i in (0, 2):
        assert math.isfinite(packed[i]["test_loss"])


def test_runs_that_differ_in_shape_are_not_packed(synthetic_config, tmp_path):
    configs = _members(synthetic_config, [{"norm": "bn"}, {"norm": "gn"}])
    with pytest.raises(ValueError, match="share everything but"):
        train.train_packed(configs, [str(tmp_path / "a"), str(tmp_path / "b")])
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_a_packed_sweep_writes_every_run_once_with_its_own_metrics(synthetic_config, tmp_path):
    # 2 norms × 3 learning rates: two packs of three.
    workdir = tmp_path / "w"
    result = bnlab("sweep", str(_sweep_file(tmp_path, steps=20)), "--workdir", str(workdir),
                   "--pack", "--pack_on_cpu", timeout=600)
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
    synthetic_config.update(batch_size=16, num_steps=4, log_every=2)
    launch = sweep.write_plan(tmp_path / "w2", sweep.plan(
        synthetic_config, sweep.axis("learning_rate", [0.01, 0.02])), {})
    sweep.work(tmp_path / "w2", launch, pack=True)
    _assert_every_run_finished_once(tmp_path / "w2", 2)
    assert all("packed" not in e for e in _events(tmp_path / "w2"))


@pytest.mark.slow
def test_a_vmapped_group_agrees_with_the_runs_alone_to_float32_rounding(small_config,
                                                                         tmp_path):
    """The accelerators' packing, one vmapped program, forced on this CPU: 4 members,
    where XLA vectorizes across members and rounding moves by ~1 ulp a step."""
    small_config.update(bn_eval="ema,precise", precise_bn_batches=5, test_size=500,
                        num_steps=10)
    configs = _members(small_config, [{"learning_rate": r, "seed": s}
                                      for s, r in enumerate((0.01, 0.005, 0.02, 0.01))])
    packed = train.train_packed(configs, [str(tmp_path / f"p{i}") for i in range(4)], vmap=True)
    for i, config in enumerate(configs):
        assert packed[i]["packed_vmap"] and packed[i]["steps_per_call"] == config.log_every
        train.train_and_evaluate(config, str(tmp_path / f"s{i}"))
        rows_p = tracking.read_metrics(tmp_path / f"p{i}" / "metrics.jsonl")
        rows_s = tracking.read_metrics(tmp_path / f"s{i}" / "metrics.jsonl")
        assert [r["step"] for r in rows_p] == [r["step"] for r in rows_s]
        for a, b in zip(rows_p, rows_s, strict=True):
            assert a["learning_rate"] == b["learning_rate"]
            for key in ("train_loss", "test_loss", "test_loss_precise_bn"):
                if key in b:
                    assert a[key] == pytest.approx(b[key], rel=VMAP_LOSS_RTOL), (key, a, b)
            for key in ("train_accuracy", "test_accuracy", "test_accuracy_precise_bn"):
                if key in b:
                    assert abs(a[key] - b[key]) <= 1.0 / small_config.test_size + 1e-12


@pytest.mark.slow
def test_a_packed_sweep_killed_and_relaunched_equals_it_uninterrupted(tmp_path):
    """SIGKILL in the middle of a pack, past a checkpoint: the relaunch resumes the
    members (from their checkpoints, one by one) and every logged metric of every
    run equals the same sweep run without interruption."""
    sweep_file = _sweep_file(tmp_path, steps=150, rates=(0.01, 0.05, 0.2), eval_every=30,
                             checkpoint_every=40)
    flags = ["--pack", "--pack_on_cpu"]
    reference = bnlab("sweep", str(sweep_file), f"--workdir={tmp_path / 'ref'}", *flags,
                      timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]
    workdir = tmp_path / "killed"
    process = subprocess.Popen([*BNLAB, "sweep", str(sweep_file), f"--workdir={workdir}",
                                *flags], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240

    def past_a_checkpoint() -> bool:  # a run that logged step 50 and has not finished
        for run_dir in (workdir / "runs").glob("*"):
            rows = tracking.read_metrics(run_dir / "metrics.jsonl")
            if rows and rows[-1]["step"] >= 50 and not (run_dir / "summary.json").exists():
                return True
        return False

    while not past_a_checkpoint():
        assert process.poll() is None and time.time() < deadline, "not killed mid-run"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    unfinished = [d for d in (workdir / "runs").iterdir() if not (d / "summary.json").exists()]
    assert unfinished
    relaunch = bnlab("sweep", str(sweep_file), f"--workdir={workdir}", *flags, timeout=600)
    assert relaunch.returncode == 0, relaunch.stderr[-2000:]
    _assert_every_run_finished_once(workdir, 6)
    resumed = [d for d in unfinished
               if tracking.read_json(d / "summary.json").get("resumed_from_step")]
    assert resumed  # the kill came after a checkpoint: some member resumed from it
    for run_dir in sorted((tmp_path / "ref" / "runs").iterdir()):
        assert_same_metrics(workdir / "runs" / run_dir.name, run_dir)
