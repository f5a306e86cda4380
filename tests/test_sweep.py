"""Sweeps: grids, claims, resume after a kill, concurrent workers, compile counts."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import BNLAB, ROOT, assert_one_line_error, bnlab

from bnlab import steps as steps_lib
from bnlab import sweep, tracking
from bnlab.config import ConfigError, load_config_file

SWEEP_FILE = '''
from bnlab.config import load_config_file
from bnlab.sweep import axis, product

def get_config():
    config = load_config_file("{root}/configs/default.py")
    config.dataset = "synthetic"
    config.batch_size = 16
    config.num_steps = {steps}
    config.log_every = 10
{extra}    return config

def get_sweep():
    return product(axis("norm", ["bn", "none"]), axis("learning_rate", {rates}))
'''


def _sweep_file(tmp_path, steps=30, rates=(0.01, 0.02, 0.05), **fields):
    """A sweep file: bn and none × `rates`, `steps` steps of synthetic data; `fields`
    set further config fields."""
    extra = "".join(f"    config.{k} = {v!r}\n" for k, v in fields.items())
    path = tmp_path / "sweep.py"
    path.write_text(SWEEP_FILE.format(root=ROOT, steps=steps, rates=list(rates), extra=extra))
    return path


def _events(workdir):
    return [json.loads(line) for line in (workdir / "events.jsonl").read_text().splitlines()]


def _assert_every_run_finished_once(workdir, expected_runs):
    run_dirs = sorted((workdir / "runs").iterdir())
    assert len(run_dirs) == expected_runs
    finished = Counter(e["run"] for e in _events(workdir)
                       if e["event"] == "end" and e["outcome"] in ("done", "diverged"))
    assert sorted(finished) == sorted(d.name for d in run_dirs)
    assert set(finished.values()) == {1}, finished  # no run finished twice
    for run_dir in run_dirs:
        summary = tracking.read_json(run_dir / "summary.json")  # parses: not corrupt
        assert summary["status"] in ("done", "diverged")
        assert not (run_dir / "claim.json").exists()
        assert not list(run_dir.glob(".*.tmp"))
        rows = tracking.read_metrics(run_dir / "metrics.jsonl")
        assert [r["step"] for r in rows][-1] == summary["step"]


def test_grid_helpers():
    grid = sweep.product(sweep.axis("norm", ["bn", "gn"]),
                         sweep.zipped(batch_size=[2, 4], learning_rate=[0.1, 0.2]))
    assert grid == [{"norm": "bn", "batch_size": 2, "learning_rate": 0.1},
                    {"norm": "bn", "batch_size": 4, "learning_rate": 0.2},
                    {"norm": "gn", "batch_size": 2, "learning_rate": 0.1},
                    {"norm": "gn", "batch_size": 4, "learning_rate": 0.2}]
    assert sweep.chain(sweep.axis("seed", [0]), sweep.axis("seed", [1])) == [{"seed": 0},
                                                                             {"seed": 1}]
    with pytest.raises(ValueError, match="differ in length"):
        sweep.zipped(a=[1, 2], b=[1])


def test_plan_validates_every_run_and_overrides_win(tmp_path):
    base = load_config_file(ROOT / "configs" / "default.py")
    runs = sweep.plan(base, sweep.axis("batch_size", [8, 16]), {"num_steps": 3})
    assert [r.config.num_steps for r in runs] == [3, 3]
    assert runs[0].run_id.startswith("batch_size=8-sgd8-nb8-")
    with pytest.raises(ConfigError, match=r"config\.norm='bad'"):
        sweep.plan(base, sweep.axis("norm", ["bn", "bad"]))
    with pytest.raises(ConfigError, match="no such config field"):
        sweep.plan(base, [{"nrom": "gn"}])
    assert len(sweep.select(runs, only="batch_size=16")) == 1
    assert len(sweep.select(runs, limit=1)) == 1


def test_dry_run_lists_runs_and_writes_nothing(cli, tmp_path):
    result = cli("sweep", str(_sweep_file(tmp_path)), "--dry_run", f"--workdir={tmp_path}/w")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "6 runs" and lines[0].startswith("norm=bn,learning_rate=0.01-sgd16-nb16-")
    assert not (tmp_path / "w").exists()


def test_a_learning_rate_sweep_compiles_its_train_step_once(synthetic_config, tmp_path):
    steps_lib.step_functions.cache_clear()
    synthetic_config.update(batch_size=16, num_steps=10, log_every=5, norm="none")
    grid = sweep.axis("learning_rate", [0.01, 0.03, 0.1, 1e6])  # the last one diverges
    runs = sweep.plan(synthetic_config, grid)
    launch = sweep.write_plan(tmp_path, runs, {})
    compiles = sweep.run_local(tmp_path, launch, jobs=1, progress=False)
    assert compiles["train_step"] == 1
    counts = sweep.statuses(tmp_path, [r.run_id for r in runs])
    assert counts["done"] == 3 and counts["diverged"] == 1  # and the sweep went on
    sweep_json = tracking.read_json(tmp_path / "sweep.json")
    assert sweep_json["launches"][0]["id"] == launch


@pytest.mark.slow
def test_a_killed_sweep_relaunched_finishes_every_run_once(tmp_path):
    sweep_file = _sweep_file(tmp_path, steps=60)
    workdir = tmp_path / "w"
    args = [*BNLAB, "sweep", str(sweep_file), f"--workdir={workdir}"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill it in the middle of its third run
        if (workdir / "events.jsonl").exists() and sum(
                e["event"] == "start" for e in _events(workdir)) >= 3:
            break
        assert process.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    states = sweep.statuses(workdir, [d.name for d in (workdir / "runs").iterdir()])
    assert states["done"] + states["diverged"] < 6
    relaunch = bnlab("sweep", str(sweep_file), f"--workdir={workdir}", timeout=600)
    assert relaunch.returncode == 0, relaunch.stderr
    assert '"done": 6' in relaunch.stdout
    _assert_every_run_finished_once(workdir, 6)
    assert len(tracking.read_json(workdir / "sweep.json")["launches"]) == 2


@pytest.mark.slow
def test_two_concurrent_sweeps_never_run_the_same_run(tmp_path):
    sweep_file = _sweep_file(tmp_path, steps=20, rates=(0.01, 0.02, 0.03, 0.05))
    workdir = tmp_path / "w"
    args = [*BNLAB, "sweep", str(sweep_file), f"--workdir={workdir}",
            "--jobs=2"]
    sweeps = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(2)]
    for process in sweeps:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-2000:]
    starts = Counter(e["run"] for e in _events(workdir) if e["event"] == "start")
    assert len(starts) == 8 and set(starts.values()) == {1}, starts  # 4 workers, no overlap
    assert len({e["pid"] for e in _events(workdir)}) >= 2  # the work was really shared
    _assert_every_run_finished_once(workdir, 8)


def test_stale_claims_are_taken_over(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    run = tracking.RunDir(run_dir)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    import socket
    tracking.write_json_atomic(run_dir / "claim.json",
                               {"host": socket.gethostname(), "pid": int(dead)})
    assert run.claim_is_stale()
    assert run.claim("L")
    assert tracking.read_json(run_dir / "claim.json")["pid"] == os.getpid()
    assert not run.claim("L")  # ours now: nobody takes it twice
    # Another host's claim is stale only once its heartbeat is old.
    tracking.write_json_atomic(run_dir / "claim.json", {"host": "elsewhere", "pid": 1})
    assert not run.claim_is_stale()
    old = time.time() - tracking.STALE_AFTER_S - 5
    os.utime(run_dir / "claim.json", (old, old))
    assert run.claim_is_stale()


def test_ls_prints_the_status_table(cli, synthetic_config, tmp_path):
    base = synthetic_config
    base.update(batch_size=16, num_steps=3, log_every=3)
    runs = sweep.plan(base, sweep.axis("norm", ["bn", "gn"]))
    sweep.run_local(tmp_path, sweep.write_plan(tmp_path, runs, {}), 1, progress=False)
    pending = sweep.plan(base, sweep.axis("norm", ["ln"]))
    sweep.write_plan(tmp_path, pending, {})
    result = cli("ls", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    # A column for each field that varies across the runs (here the norm).
    assert lines[0].split() == ["run", "status", "step", "test_acc", "sgd", "nb", "wall_s",
                                "norm"]
    table = {line.split()[0]: line.split() for line in lines[1:]}
    first = tracking.SweepDir(tmp_path).run(runs[0].run_id).summary()
    # Three steps on synthetic data test at chance: listed as collapsed, not done.
    assert table[f"runs/{runs[0].run_id}"][1:3] == [
        "collapsed" if first["collapsed"] else "done", "3"]
    assert table[f"runs/{runs[1].run_id}"][5] == "1"  # gn: per-example statistics
    assert table[f"runs/{pending[0].run_id}"][1] == "pending"
    assert_one_line_error(cli("ls", str(tmp_path / "nothing")), "no runs under")


# ---------------------------------------------------------------- --grid

def test_a_command_line_grid_plans_what_the_same_sweep_file_plans(cli, tmp_path):
    """`sweep --grid norm=bn,none --grid learning_rate=...` on a base config: the runs
    (ids and all) of a sweep file with that base and product(axis(...), axis(...))."""
    base = tmp_path / "base.py"
    base.write_text(SWEEP_FILE.split("def get_sweep")[0].format(root=ROOT, steps=30,
                                                                   extra=""))
    result = cli("sweep", str(base), "--grid", "norm=bn,none", "--grid",
                 "learning_rate=0.01,0.02,0.05", "--dry_run", f"--workdir={tmp_path}/w")
    assert result.returncode == 0, result.stderr
    from_file = cli("sweep", str(_sweep_file(tmp_path)), "--dry_run")
    assert result.stdout == from_file.stdout and from_file.stdout.endswith("\n6 runs\n")
    assert not (tmp_path / "w").exists()
    # Without a file: the default config, overridden as any sweep is.
    result = cli("sweep", "--grid", "norm=bn,gn", "--grid", "batch_size=2,32",
                 "--config.dataset=synthetic", "--dry_run")
    ids = result.stdout.splitlines()
    assert ids[-1] == "4 runs" and [i.split("-")[0] for i in ids[:-1]] == [
        "norm=bn,batch_size=2", "norm=bn,batch_size=32", "norm=gn,batch_size=2",
        "norm=gn,batch_size=32"]
    # With a sweep file, --grid adds an axis: 6 × 2 runs.
    result = cli("sweep", str(_sweep_file(tmp_path)), "--grid", "batch_size=8,32", "--dry_run")
    assert result.stdout.splitlines()[-1] == "12 runs"


def test_grid_values_parse_as_config_overrides_do():
    from bnlab import cli as cli_lib

    config = load_config_file(ROOT / "configs" / "default.py")
    axes = cli_lib.parse_grid(config, [
        "learning_rate=1,0.1", "batch_size=8", "train_size=256,1024",
        "step_boundaries=(0.3,0.6),'(0.5, 0.75)'", 'bn_eval="ema,batch",ema', "nesterov=true"])
    assert axes == [("learning_rate", [1.0, 0.1]), ("batch_size", [8]),
                    ("train_size", [256, 1024]),
                    ("step_boundaries", [(0.3, 0.6), (0.5, 0.75)]),
                    ("bn_eval", ["ema,batch", "ema"]), ("nesterov", [True])]
    assert type(axes[0][1][0]) is float  # a float field: 1 is 1.0, as --config.learning_rate=1


@pytest.mark.parametrize("args,message", [
    (["--grid", "nrom=bn,gn"], "--grid nrom=bn,gn: unknown config field 'nrom'; did you "
                               "mean 'norm'?"),
    (["--grid", "batch_size=2,abc"], "--grid batch_size=2,abc: invalid literal for int()"),
    (["--grid", "norm=bn,bad"], "config.norm='bad': allowed: bn, ln, in, gn, none"),
    (["--grid", "norm"], "--grid norm: use FIELD=V1,V2,..."),
    (["--grid", "norm=bn,,gn"], "--grid norm=bn,,gn: an empty value"),
    (["--grid", "norm=bn", "--grid", "norm=gn"], "--grid norm given twice"),
    (["--grid", "norm=bn,gn", "--config.norm=gn"], "the sweep's grid sets norm"),
    (["--grid", "num_groups=8,3", "--config.norm=gn", "--config.dataset=synthetic"],
     "config.num_groups=3: must divide the 16 channels"),  # train's checks, before writing
    ([], "usage: python -m bnlab sweep FILE --workdir DIR [flags], or sweep --grid"),
    (["FILE", "--grid", "norm=gn"], "the grid of"),
])
def test_a_bad_command_line_grid_is_one_line_and_writes_nothing(cli, tmp_path, args, message):
    args = [str(_sweep_file(tmp_path)) if a == "FILE" else a for a in args]
    result = cli("sweep", *args, f"--workdir={tmp_path}/w")
    assert_one_line_error(result, message)
    assert not (tmp_path / "w").exists()


def test_a_command_line_grid_sweeps_and_resumes(tmp_path):
    workdir = tmp_path / "w"
    args = ("sweep", "--grid", "norm=bn,none", "--grid", "learning_rate=0.01,0.02",
            "--config.dataset=synthetic", "--config.num_steps=4", "--config.batch_size=16",
            "--config.log_every=2", "--workdir", workdir)
    result = bnlab(*args)
    assert result.returncode == 0, result.stderr
    _assert_every_run_finished_once(workdir, 4)
    configs = [tracking.read_json(d / "config.json") for d in (workdir / "runs").iterdir()]
    assert sorted((c["norm"], c["learning_rate"]) for c in configs) == [
        ("bn", 0.01), ("bn", 0.02), ("none", 0.01), ("none", 0.02)]
    recorded = tracking.read_json(workdir / "sweep.json")
    assert recorded["sweep_file"] is None and len(recorded["grid"]) == 4
    assert recorded["grid_flags"] == ["norm=bn,none", "learning_rate=0.01,0.02"]
    again = bnlab(*args)  # a relaunch: every run finished before, none trains again
    assert again.returncode == 0 and "4 runs, 4 finished before" in again.stdout
    _assert_every_run_finished_once(workdir, 4)
