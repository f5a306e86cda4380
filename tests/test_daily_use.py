"""What a researcher meets daily (issue 20): progress without a terminal (plain lines
a log keeps: tqdm turned its bar off there, and a run printed nothing for its whole
length), `ls` that shows what varies, a word where a multi-device option means less
than it says, help into a closed pipe."""

import os
import re
import socket
import subprocess
import sys

from conftest import ROOT, bnlab
from test_sweep import _sweep_file

from bnlab import progress

LINE = re.compile(r"^(?P<desc>.+): (?P<n>\d+)/(?P<total>\d+) (?P<unit>\w+)s \((?P<pct>\d+)%\)"
                  r"(?P<extra>.*), (?P<rate>\S+) \w+/s, elapsed \S+, left \S+$")


def test_lines_count_rate_and_time_left(capsys):
    shown = progress.Lines(10, "demo", "step", interval=0.0)
    shown.update(4)
    shown.set_postfix({"loss": "0.500"})
    shown.close()  # 4 of 10: cut short, no last line
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(LINE.match(line) for line in lines), lines
    assert LINE.match(lines[-1])["extra"] == " loss=0.500" and "4/10 steps (40%)" in lines[-1]
    whole = progress.Lines(3, "demo", "run", interval=3600.0)
    whole.update(3)  # within the interval: nothing yet
    assert capsys.readouterr().err == ""
    whole.close()
    assert "3/3 runs (100%)" in capsys.readouterr().err


def test_a_train_whose_output_is_not_a_terminal_prints_progress_lines(tmp_path):
    """Captured (as under nohup or Slurm): lines every BNLAB_PROGRESS_SECONDS, the run
    named, steps of the total, loss and accuracy, rate and time left."""
    result = bnlab("train", "--config.dataset=synthetic", "--config.num_steps=12",
                   "--config.log_every=4", "--config.batch_size=16", "--workdir",
                   tmp_path, env={**os.environ, "BNLAB_PROGRESS_SECONDS": "0"})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if LINE.match(line)]
    assert len(lines) >= 3, result.stderr
    last = LINE.match(lines[-1])
    assert (last["n"], last["total"], last["unit"], last["pct"]) == ("12", "12", "step", "100")
    (run,) = (tmp_path / "runs").iterdir()
    assert last["desc"] == run.name and "loss=" in last["extra"]


def test_a_sweep_in_a_log_counts_its_runs_and_its_workers_name_theirs(tmp_path):
    """--jobs 2 into a log: the sweep's lines count runs ended of the total with the
    states (done, running, pending…), each worker's lines name the run it trains."""
    workdir = tmp_path / "w"
    result = bnlab("sweep", _sweep_file(tmp_path, steps=8, rates=(0.01,)), "--workdir",
                   workdir, "--jobs", "2",
                   env={**os.environ, "BNLAB_PROGRESS_SECONDS": "0"}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    matched = [LINE.match(line) for line in result.stderr.splitlines()]
    sweep = [m for m in matched if m and m["desc"] == "w"]
    assert sweep and (sweep[-1]["n"], sweep[-1]["total"], sweep[-1]["unit"]) == ("2", "2", "run")
    assert any("pending=" in m["extra"] or "running=" in m["extra"] for m in sweep), sweep
    runs = {m["desc"] for m in matched if m and m["unit"] == "step"}
    assert runs == {d.name for d in (workdir / "runs").iterdir()}


def test_a_multi_device_option_on_one_device_says_what_it_means(tmp_path):
    """The README's shard_map example on a one-device machine ran a norm batch of the
    whole batch without a word: it now says so once, and trains."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    result = bnlab("train", "--config.dataset=synthetic", "--config.num_steps=2",
                   "--config.batch_size=16", "--config.parallel=shard_map", "--workdir",
                   tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: parallel=shard_map on 1 device: each BN statistic spans "
                        "the whole batch of 16, not a device's share (on a CPU, XLA_FLAGS="
                        "--xla_force_host_platform_device_count=8 simulates 8 devices)"]


def test_help_into_a_closed_pipe_ends_quietly():
    """`bnlab --help | head`: the reader gone before the help is printed (`true` reads
    nothing) was a BrokenPipeError traceback."""
    done = subprocess.run(f"{sys.executable} -m bnlab --help | true; "
                          "echo ${PIPESTATUS[0]}", shell=True, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, executable="/bin/bash")
    assert done.stderr == "" and done.stdout == "0\n", done.stderr


def test_ls_shows_what_varies_sorted_by_value_how_far_a_run_is_and_why_one_failed(cli,
                                                                                   tmp_path):
    """`ls` named runs by their id only, sorted as text (batch 32 before 4), with an
    empty step for a running run and no word of a failure. Runs written as a sweep
    writes them, without training."""
    from bnlab import tracking

    for batch, state in ((32, "done"), (4, "running"), (16, "failed")):
        run = tracking.RunDir(tmp_path / "runs" / f"r{batch}")
        run.write_pending({"norm": "bn", "batch_size": batch, "seed": 0})
        status = {"status": state}
        if state == "failed":
            status["error"] = "Traceback ...\nValueError: config.num_groups=3: no"
        tracking.write_json_atomic(run.path / tracking.STATUS, status)
        if state == "done":
            tracking.write_json_atomic(run.path / tracking.SUMMARY,
                                       {"status": "done", "step": 10, "test_accuracy": 0.5})
        if state == "running":
            (run.path / tracking.METRICS).write_text('{"step": 7, "train_loss": 1.0}\n')
            tracking.write_json_atomic(run.path / tracking.CLAIM,  # held by this process
                                       {"pid": os.getpid(), "host": socket.gethostname()})
    result = cli("ls", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[-2:] == ["batch_size", "error"]
    rows = [line.split()[:3] for line in lines[1:]]
    assert [row[0] for row in rows] == ["runs/r4", "runs/r16", "runs/r32"]  # by value
    assert rows[0][1:] == ["running", "7…"]  # its last metrics row
    assert "ValueError: config.num_groups=3: no" in lines[2]
    only = cli("ls", str(tmp_path), "--where", "batch_size=16").stdout.splitlines()
    assert len(only) == 2 and only[1].startswith("runs/r16")
    assert "no run has a field 'nrom'" in cli("ls", str(tmp_path), "--where=nrom=bn").stderr


def test_ls_groups_a_grids_seeds_together_and_shows_an_unset_field(cli, tmp_path):
    """On a norm × batch × seed grid `ls` sorted seed first (every seed-0 run, then
    every seed-1 run) and showed an unset ghost batch as a blank cell. Now the seed
    is the last column and the last key, and None reads "-"."""
    from bnlab import tracking

    grid = [(norm, batch, ghost, seed) for norm in ("gn", "bn") for batch in (32, 4)
            for ghost in (None, 2) for seed in (1, 0)]
    for i, (norm, batch, ghost, seed) in enumerate(grid):
        run = tracking.RunDir(tmp_path / "runs" / f"r{i}")
        run.write_pending({"norm": norm, "seed": seed, "batch_size": batch,
                           "virtual_batch_size": ghost})
        tracking.write_json_atomic(run.path / tracking.STATUS, {"status": "pending"})
    result = cli("ls", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[-4:] == ["norm", "batch_size", "virtual_batch_size", "seed"]
    shown = [tuple(line.split()[-4:]) for line in lines[1:]]
    expected = [(norm, str(batch), "-" if ghost is None else str(ghost), str(seed))
                for norm in ("bn", "gn") for batch in (4, 32) for ghost in (2, None)
                for seed in (0, 1)]
    assert shown == expected  # by value: numbers as numbers, "-" after them, seed last


def test_ls_shows_a_running_runs_step_of_its_total(cli, tmp_path):
    """A running run's step read "7…"; where its config gives the total, "7/128", the
    total as `train.prepare` counts it (one epoch of 512 synthetic images in batches
    of 4), or num_steps."""
    from bnlab import config as config_lib
    from bnlab import tracking, train

    config = config_lib.load_config_file(config_lib.DEFAULT_CONFIG_FILE)
    config.update(dataset="synthetic", batch_size=4)
    assert train.prepare(config).total_steps == 128
    for name, overrides in (("epochs", {}), ("steps", {"num_steps": 40, "batch_size": 8})):
        run = tracking.RunDir(tmp_path / "runs" / name)
        run.write_pending({**config_lib.flatten(config), **overrides})
        tracking.write_json_atomic(run.path / tracking.STATUS, {"status": "running"})
        (run.path / tracking.METRICS).write_text('{"step": 7, "train_loss": 1.0}\n')
        tracking.write_json_atomic(run.path / tracking.CLAIM,  # held by this process
                                   {"pid": os.getpid(), "host": socket.gethostname()})
    result = cli("ls", str(tmp_path))
    assert result.returncode == 0, result.stderr
    steps = {line.split()[0]: line.split()[2] for line in result.stdout.splitlines()[1:]}
    assert steps == {"runs/epochs": "7/128", "runs/steps": "7/40"}
