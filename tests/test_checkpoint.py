"""Orbax checkpoints: an interrupted run resumes and ends exactly where an
uninterrupted one does (same CPU, same config and seed: bit for bit)."""

import os
import signal
import subprocess
import time

import pytest
from conftest import BNLAB, ROOT, bnlab
from tensorboard.backend.event_processing import event_accumulator

from bnlab import data, tracking, train


def _rows(run_dir):
    return [{k: v for k, v in r.items() if k != "time"}
            for r in tracking.read_metrics(run_dir / "metrics.jsonl")]


@pytest.fixture
def checkpointed(synthetic_config):
    synthetic_config.update(num_steps=40, batch_size=16, log_every=5, checkpoint_every=10,
                            target_accuracy=0.2)
    return synthetic_config


@pytest.mark.parametrize("cpu_fusion", ["auto", "ynnpack"])
def test_a_crashed_run_resumes_to_the_same_metrics(checkpointed, tmp_path, monkeypatch,
                                                   cpu_fusion):
    """Bit for bit, also where the steps are compiled ahead of time with YNNPACK's
    fusions (`xla_cpu.TunedJit`; the resumed state comes back as host arrays)."""
    checkpointed.cpu_fusion = cpu_fusion
    reference = train.train_and_evaluate(checkpointed, str(tmp_path / "whole"))
    real_batches = data.train_batches

    def crash_at_step_25(*args, **kwargs):
        for i, batch in enumerate(real_batches(*args, **kwargs)):
            if kwargs.get("start_step", 0) == 0 and i == 24:
                raise RuntimeError("simulated crash")
            yield batch

    monkeypatch.setattr(data, "train_batches", crash_at_step_25)
    run_dir = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.train_and_evaluate(checkpointed, str(run_dir))
    assert tracking.read_json(run_dir / "status.json")["status"] == "failed"
    assert max(r["step"] for r in tracking.read_metrics(run_dir / "metrics.jsonl")) == 20

    resumed = train.train_and_evaluate(checkpointed, str(run_dir))
    assert resumed["resumed_from_step"] == 20
    assert _rows(run_dir) == _rows(tmp_path / "whole")  # bit for bit
    for key in ("test_accuracy", "test_loss", "train_loss", "best_test_accuracy",
                "steps_to_target"):
        assert resumed[key] == reference[key], key
    # TensorBoard holds each step once: the file was rebuilt from the kept rows.
    accumulator = event_accumulator.EventAccumulator(str(run_dir))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("train/loss")] == list(range(5, 41, 5))


def test_a_changed_config_starts_afresh(checkpointed, tmp_path, monkeypatch):
    real_batches = data.train_batches

    def crash_at_step_15(*args, **kwargs):
        for i, batch in enumerate(real_batches(*args, **kwargs)):
            if i == 14:
                raise RuntimeError("simulated crash")
            yield batch

    monkeypatch.setattr(data, "train_batches", crash_at_step_15)
    with pytest.raises(RuntimeError):
        train.train_and_evaluate(checkpointed, str(tmp_path))
    monkeypatch.setattr(data, "train_batches", real_batches)
    checkpointed.learning_rate = 0.02  # another run now: its checkpoint is no start
    summary = train.train_and_evaluate(checkpointed, str(tmp_path))
    assert summary["resumed_from_step"] is None and summary["step"] == 40


@pytest.mark.slow
def test_a_killed_cli_run_resumes_when_relaunched(tmp_path):
    args = ["train", "--config.dataset=synthetic",
            "--config.batch_size=8", "--config.num_steps=600", "--config.log_every=20",
            "--config.checkpoint_every=100"]
    workdir = tmp_path / "killed"
    process = subprocess.Popen([*BNLAB, *args, f"--workdir={workdir}"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        if list(workdir.glob("runs/*/checkpoint/100")):
            break
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    (run_dir,) = (workdir / "runs").iterdir()
    assert not (run_dir / "summary.json").exists()

    relaunch = bnlab(*args, f"--workdir={workdir}")
    assert relaunch.returncode == 0, relaunch.stderr[-2000:]
    summary = tracking.read_json(run_dir / "summary.json")
    assert summary["status"] == "done" and summary["resumed_from_step"] >= 100
    whole = bnlab(*args, f"--workdir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-2000:]
    (whole_dir,) = (tmp_path / "whole" / "runs").iterdir()
    assert _rows(run_dir) == _rows(whole_dir)
