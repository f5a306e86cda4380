"""Fault injection: concurrent workers and commands, dead owners, damaged claims, a
read-only or full disk. Each test reproduces a failure a probe found and checks what
is on disk after: every run trained once, no launch or metrics row lost."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import BNLAB, ROOT, assert_one_line_error, bnlab

from bnlab import tracking

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # for the scripts run with -c


def _dead_pid() -> int:
    """The pid of a process that has exited (as a crashed worker's)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def _in_processes(script: str, count: int, *args: str) -> list[str]:
    """`script` run by `count` Python processes at once (argv: index, *args); their
    stdouts."""
    runs = [subprocess.Popen([sys.executable, "-c", script, str(i), *args], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(count)]
    outs = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-2000:]
        outs.append(out)
    return outs


CLAIMER = """
import sys
from pathlib import Path
from bnlab import tracking
won = [d.name for d in sorted(Path(sys.argv[2]).iterdir())
       if tracking.RunDir(d).claim(f"worker{sys.argv[1]}")]
print("\\n".join(won + ["END"]), flush=True)
sys.stdin.read()  # alive, holding its claims, until every worker has claimed
"""


def test_workers_taking_over_stale_claims_at_once_win_each_run_once(tmp_path):
    """Probe 2: 4 workers relaunched over 300 runs whose claims a dead worker left
    (a taker used to check staleness, move the claim and create its own, and two
    could both win): each run is won by exactly one."""
    dead = _dead_pid()
    for i in range(300):
        run = tmp_path / f"run{i:03d}"
        run.mkdir()
        (run / tracking.CLAIM).write_text(json.dumps(
            {"host": socket.gethostname(), "pid": dead, "launch": "old"}))
    workers = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(i), str(tmp_path)],
                                env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True) for i in range(4)]
    wins = Counter()
    for worker in workers:  # a dead worker's claims are stale: all stay alive till here
        wins.update(iter(worker.stdout.readline, "END\n"))
    for worker in workers:
        worker.communicate(timeout=60)
    wins = Counter({name.strip(): n for name, n in wins.items()})
    assert len(wins) == 300 and set(wins.values()) == {1}, wins.most_common(3)
    for run in tmp_path.iterdir():  # each claim names the one worker that won it
        assert tracking.RunDir(run).owner()["launch"].startswith("worker")


def test_an_unreadable_claim_is_taken_over_and_an_old_one_reads_interrupted(tmp_path):
    """Probe 3: a claim.json left empty (its writer killed, or a full disk) kept its
    run 'running' for ever and a relaunch never took it."""
    run = tracking.RunDir(tmp_path / "run")
    run.write_pending({"norm": "bn"})
    (run.path / tracking.CLAIM).write_text("")
    old = time.time() - tracking.STALE_AFTER_S - 1
    os.utime(run.path / tracking.CLAIM, (old, old))
    tracking.write_json_atomic(run.path / tracking.STATUS, {"status": "running"})
    assert run.state() == "interrupted"
    assert run.claim("relaunch")
    assert run.owner()["pid"] == os.getpid()


def test_releasing_a_run_never_removes_another_workers_claim(tmp_path):
    """Probe 2: a worker's `finally` removed whatever claim.json was there, possibly
    the one of a worker that had taken the run over since."""
    run = tracking.RunDir(tmp_path / "run")
    other = {"host": socket.gethostname(), "pid": os.getppid(), "launch": "other"}
    run.path.mkdir()
    tracking.write_json_atomic(run.path / tracking.CLAIM, other)
    assert not run.claim("mine")  # a live owner keeps it
    run.release()
    assert run.owner() == other
    (run.path / tracking.CLAIM).unlink()
    assert run.claim("mine")
    run.release()
    assert run.owner() is None


LAUNCHER = """
import sys
from bnlab import tracking
sweep = tracking.SweepDir(sys.argv[2])
for i in range(25):
    sweep.record_launch({f"p{sys.argv[1]}-{i}": {"seed": i}}, {"launch": {"by": sys.argv[1]}})
"""


def test_concurrent_launches_keep_every_entry_of_the_sweep(tmp_path):
    """Probe 4: sweep.json was read, extended and written without a lock: 4
    processes × 50 launches kept 77 of 200."""
    _in_processes(LAUNCHER, 4, str(tmp_path))
    launches = tracking.read_json(tmp_path / tracking.SWEEP)["launches"]
    assert Counter(launch["by"] for launch in launches) == {str(i): 25 for i in range(4)}
    assert len(list((tmp_path / tracking.LAUNCHES).iterdir())) == 100
    assert len(tracking.find_runs(tmp_path)) == 100


def test_a_run_without_its_summary_is_not_done_whatever_its_status_says(tmp_path):
    """Probe 7: killed between writing status 'done' and summary.json, a run read
    'done' in `ls`."""
    run = tracking.RunDir(tmp_path / "runs" / "r")
    run.write_pending({"norm": "bn"})
    tracking.write_json_atomic(run.path / tracking.STATUS, {"status": "done"})
    assert run.state() == "interrupted"
    listed = bnlab("ls", tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[:2] == ["runs/r", "interrupted"]


def _train(workdir, wait=True):
    args = ["train", "--workdir", str(workdir), "--config.dataset=synthetic",
            "--config.num_steps=400", "--config.log_every=20", "--config.batch_size=16",
            "--config.checkpoint_every=100"]
    if wait:
        return bnlab(*args)
    return subprocess.Popen([*BNLAB, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _metrics(workdir):
    (run,) = (workdir / tracking.RUNS).iterdir()
    return [{k: v for k, v in row.items() if k != "time"}
            for row in tracking.RunDir(run).metrics()]


@pytest.mark.slow
def test_a_second_train_of_a_running_run_refuses_in_one_line(tmp_path):
    """Probe 1: two `train` commands on one config and workdir both trained, the
    second replaced the first's metrics, and the first finished 'done' over a file
    missing most of its rows. Now the second refuses while the first holds the run,
    and the first's result equals the same run trained alone."""
    first = _train(tmp_path / "shared", wait=False)
    deadline = time.time() + 120
    while not list((tmp_path / "shared").glob(f"runs/*/{tracking.CLAIM}")):
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)  # held mid-run, however fast it trains
    try:
        second = _train(tmp_path / "shared")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "is being trained by pid" in lines[0], second.stderr
    assert _train(tmp_path / "alone").returncode == 0
    assert _metrics(tmp_path / "shared") == _metrics(tmp_path / "alone")
    assert len(_metrics(tmp_path / "shared")) == 20
    (run,) = (tmp_path / "shared" / tracking.RUNS).iterdir()
    assert tracking.RunDir(run).state() == "done" and tracking.RunDir(run).owner() is None


DAMAGE = {  # run → (file, bytes): each a probe's damage
    "empty_summary": (tracking.SUMMARY, b""),
    "list_summary": (tracking.SUMMARY, b"[]"),
    "null_summary": (tracking.SUMMARY, b"null"),
    "binary_config": (tracking.CONFIG, b"\x00\xff\xfe garbage"),
    "list_config": (tracking.CONFIG, b"[1, 2]"),
    "bad_utf8_metrics": (tracking.METRICS, b'\xff\xfe\n{"step": 5, "train_loss": 1.0}\n'),
    "bare_number_metrics": (tracking.METRICS, b'5\n{"step": 5, "train_loss": 1.0}\n'),
    "stepless_metrics": (tracking.METRICS, b'{}\n{"step": 5, "train_loss": 1.0}\n'),
    "string_accuracy": (tracking.SUMMARY, b'{"status": "done", "test_accuracy": "high"}'),
}


@pytest.mark.slow
def test_damaged_files_are_skipped_with_one_warning_each_never_a_traceback(tmp_path,
                                                                           capsys):
    """Probe 15: `ls`, `report` and a relaunched sweep ended in a traceback on any
    of these. Now each damaged file is named in one warning, the rest is read, and
    a relaunch trains again the runs whose summary or config it cannot read."""
    from test_sweep import _sweep_file

    workdir = tmp_path / "w"
    sweep_file = _sweep_file(tmp_path, steps=10, rates=(0.01,))
    first = bnlab("sweep", sweep_file, f"--workdir={workdir}")
    assert first.returncode == 0, first.stderr[-2000:]
    (good,) = [run for run in (workdir / tracking.RUNS).iterdir() if "none" in run.name]
    for name, (file, content) in DAMAGE.items():
        damaged = workdir / tracking.RUNS / name
        subprocess.run(["cp", "-r", str(good), str(damaged)], check=True)
        (damaged / file).write_bytes(content)
    (workdir / tracking.REPRODUCE).write_text('{"scale": "qu')  # truncated
    summaries = {"empty_summary", "list_summary", "null_summary"}
    configs = {"binary_config", "list_config"}
    # ls reads configs (its columns of what varies), summaries and statuses; report
    # configs, summaries and reproduce.json.
    for command, expected in ((["ls", str(workdir)], summaries | configs),
                              (["report", str(workdir)], summaries | configs | {"w"})):
        done = bnlab(*command)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
        warned = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
        assert len(warned) == len(set(warned))  # one warning per file
        named = {Path(line.split(":")[1].strip()).parent.name for line in warned}
        # (the report's rules read some runs' metrics too: warned as below)
        assert expected <= named <= expected | {n for n in DAMAGE if "metrics" in n}, named
    # Metrics: every valid row is read, each damaged file named once.
    from bnlab import analysis

    curves = analysis.load_curves(workdir, metrics=["train_loss"])
    for name in ("bad_utf8_metrics", "bare_number_metrics", "stepless_metrics"):
        assert (curves[curves["run"] == name]["step"] == 5).sum() == 1
    warned = [line for line in capsys.readouterr().err.splitlines() if tracking.METRICS in line]
    assert sorted(Path(line.split(":")[1].strip()).parent.name for line in warned) == [
        "bad_utf8_metrics", "bare_number_metrics", "stepless_metrics"], warned
    listed = bnlab("ls", workdir).stdout
    assert len(listed.splitlines()) == 1 + 2 + len(DAMAGE)
    # The sweep file truncated too: the relaunch keeps it aside and goes on.
    (workdir / tracking.SWEEP).write_text('{"launches": [{"id"')
    again = bnlab("sweep", sweep_file, f"--workdir={workdir}")
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert list(workdir.glob(f"{tracking.SWEEP}.damaged.*"))
    assert len(tracking.read_json(workdir / tracking.SWEEP)["launches"]) == 1
    for run in (workdir / tracking.RUNS).iterdir():
        state = tracking.RunDir(run).state()
        assert state in ("done", "diverged", "pending", "failed", "interrupted"), (run, state)


def test_a_listing_cut_short_by_its_reader_ends_quietly(tmp_path):
    """Probe 15: `bnlab ls DIR | head` ended in a BrokenPipeError traceback. 4,000
    runs (~100 kB of listing) overfill a pipe (64 kB), so the reader is gone before
    the last write, however fast the writer."""
    for i in range(4000):
        run = tmp_path / tracking.RUNS / f"run{i:05d}"
        run.mkdir(parents=True)
        (run / tracking.CONFIG).write_text(json.dumps({"seed": i}))
        (run / tracking.STATUS).write_text('{"status": "pending"}')
    done = subprocess.run(f"{sys.executable} -m bnlab ls {tmp_path} | head -2", shell=True,
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
                          executable="/bin/bash")
    assert done.stdout.splitlines()[1].split()[:2] == ["runs/run00000", "pending"]
    assert done.stderr == "", done.stderr


SWEEP_HEAD = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from bnlab.config import load_config_file
from bnlab.sweep import axis, zipped
"""


def test_bad_files_and_flags_fail_in_one_line_before_writing(cli, tmp_path):
    """Probe 10: a config file with a syntax error, a sweep file without
    get_config, zipped lists of two lengths and `--only '('` each ended in a
    traceback."""
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    no_config = tmp_path / "no_config.py"
    no_config.write_text(SWEEP_HEAD + "def get_sweep():\n    return axis('seed', [0])\n")
    uneven = tmp_path / "uneven.py"
    uneven.write_text(SWEEP_HEAD + f"def get_config():\n    return load_config_file("
                      f"{str(ROOT / 'configs' / 'default.py')!r})\n"
                      "def get_sweep():\n    return zipped(seed=[0, 1], batch_size=[8])\n")
    cases = [  # (command line, the error's words, the file it names)
        (["train", "--config", broken], "broken.py: SyntaxError: invalid syntax", broken),
        (["sweep", broken], "broken.py: SyntaxError: invalid syntax", broken),
        # (said by the config loader or the sweep loader, whichever reads it first)
        (["sweep", no_config], "get_config()", no_config),
        (["sweep", uneven], "ValueError: zipped fields differ in length", uneven),
        (["sweep", uneven, "--only", "("], "--only '(': not a regular expression", None),
    ]
    for args, message, named in cases:
        workdir = tmp_path / "w"
        result = cli(*args, f"--workdir={workdir}")
        assert_one_line_error(result, message)
        assert named is None or named.name in result.stderr
        assert not workdir.exists()


@pytest.mark.slow
def test_a_sweep_whose_worker_dies_says_so_and_exits_1(tmp_path):
    """Probe 5: a worker killed (as by the OOM killer) left its run interrupted and
    the sweep exited 0. Now the sweep names what did not finish in one line and
    exits 1; the relaunch finishes the run and exits 0."""
    from test_sweep import _sweep_file

    workdir = tmp_path / "w"
    sweep_file = _sweep_file(tmp_path, steps=200, rates=(0.01,))  # bn and none
    args = ["sweep", str(sweep_file), f"--workdir={workdir}", "--jobs=2"]
    launch = subprocess.Popen([*BNLAB, *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    # Kill the worker holding the launch's first run once the other holds the second:
    # that one has then passed the first run, and with no run after its own it does
    # not come back for it, so the killed run stays unfinished. (Killed earlier, the
    # other worker finds a dead owner's claim and rightly takes the run over.)
    deadline = time.time() + 120
    while not (launches := list((workdir / tracking.LAUNCHES).glob("*.json"))):
        assert launch.poll() is None and time.time() < deadline, launch.communicate()
        time.sleep(0.02)
    sweep_dir = tracking.SweepDir(workdir)
    first, second = (sweep_dir.run(r) for r in sweep_dir.launch_runs(launches[0].stem))
    while not ((owner := first.owner()) and (other := second.owner())):
        assert launch.poll() is None and time.time() < deadline, launch.communicate()
        time.sleep(0.02)
    assert owner["pid"] != other["pid"]
    os.kill(owner["pid"], signal.SIGKILL)
    victim = first.path
    _, err = launch.communicate(timeout=600)
    assert launch.returncode == 1, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        f"error: 1 of 2 runs did not finish (1 interrupted): python -m bnlab ls {workdir}; "
        "a relaunch retries them")
    assert tracking.RunDir(victim).state() == "interrupted"
    again = bnlab(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {tracking.RunDir(run).state() for run in (workdir / tracking.RUNS).iterdir()} == {
        "done"}


@pytest.mark.slow
def test_ctrl_c_on_a_sweep_marks_its_runs_interrupted_in_one_line(tmp_path):
    """Probe 8: Ctrl-C recorded the runs as failed (KeyboardInterrupt), which a
    relaunch of the same launch does not retry. Now they read interrupted, the
    sweep says so in one line and exits 130, and the relaunch finishes each once."""
    from test_sweep import _assert_every_run_finished_once, _sweep_file

    workdir = tmp_path / "w"
    args = ["sweep", str(_sweep_file(tmp_path, steps=1000, rates=(0.01,))),
            f"--workdir={workdir}", "--jobs=2"]
    launch = subprocess.Popen([*BNLAB, *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while len(list(workdir.glob(f"runs/*/{tracking.METRICS}"))) < 2:
        assert launch.poll() is None and time.time() < deadline, launch.communicate()
        time.sleep(0.02)
    os.killpg(launch.pid, signal.SIGINT)  # what Ctrl-C sends: the sweep and its workers
    _, err = launch.communicate(timeout=120)
    assert launch.returncode == 130 and err.strip() == "interrupted", err[-2000:]
    runs = list((workdir / tracking.RUNS).iterdir())
    assert [tracking.RunDir(run).state() for run in runs] == ["interrupted"] * 2
    again = bnlab(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    _assert_every_run_finished_once(workdir, 2)


def test_a_run_that_trains_to_chance_is_told_apart(small_config, tmp_path):
    """Probe 6: no norm at lr 50 ended at chance accuracy `done`, like a trained
    run. Its summary now says `collapsed` (within 3 binomial standard errors of
    1/10 on its 2,000 test images: at most 12.0%), and `ls` lists it so; BN at
    the default rate, trained as long, is not. (At lr 10 here: 40 steps at 50
    end in NaN, which is `diverged`.)"""
    from bnlab import train

    assert train.collapsed(0.120, 10, 2000) and not train.collapsed(0.121, 10, 2000)
    assert not train.collapsed(None, 10, 2000)  # diverged: no accuracy to judge
    small_config.num_steps = 40
    for norm, rate in (("none", 10.0), ("bn", 0.05)):
        small_config.update(norm=norm, learning_rate=rate)
        summary = train.train_and_evaluate(small_config, str(tmp_path / "runs" / norm))
        assert summary["status"] == "done", summary
        assert summary["collapsed"] == (norm == "none"), summary["test_accuracy"]
    listed = bnlab("ls", tmp_path).stdout.splitlines()
    assert [line.split()[:2] for line in listed[1:]] == [["runs/bn", "done"],
                                                         ["runs/none", "collapsed"]]


def test_a_claim_without_a_pid_is_stale_not_everyones(tmp_path):
    """A claim (or status) of this host with no usable pid: os.kill(-1, 0) asks
    about every process and succeeds, which read such an owner as alive for ever."""
    assert not tracking.pid_alive(-1) and not tracking.pid_alive(0)
    run = tracking.RunDir(tmp_path / "run")
    run.path.mkdir()
    tracking.write_json_atomic(run.path / tracking.CLAIM, {"host": socket.gethostname()})
    assert run.claim_is_stale() and run.claim("relaunch")


GRID_FILE = '''
from bnlab.config import load_config_file
from bnlab.sweep import axis, product

def get_config():
    config = load_config_file("{root}/configs/default.py")
    config.dataset = "{dataset}"
    config.norm = "gn"
    config.batch_size = 16
    config.num_steps = 4
    return config

def get_sweep():
    return product(axis("num_groups", {groups}), axis("learning_rate", [0.01, 0.02]))
'''


@pytest.mark.parametrize("executor", ["local", "slurm"])
@pytest.mark.parametrize("dataset, groups, extra, message", [
    ("synthetic", [8, 3], [], "num_groups"),
    ("fashion_mnist", [8], ["--config.data_dir=/nonexistent"],
     "config.data_dir='/nonexistent': Fashion-MNIST IDX files not found"),
])
def test_a_sweep_checks_shapes_and_data_before_writing(cli, tmp_path, monkeypatch, dataset,
                                                       groups, extra, message, executor):
    """Probe 11: a grid point that cannot run (GN with 3 groups of 16 channels, a
    data_dir without the data) wrote every run directory and failed each such run,
    the reason only in its status.json. Now: one line, exit 2, nothing written; on
    the Slurm path too (it wrote the runs and submitted them), nothing submitted."""
    from bnlab import sweep

    def submit(*args, **kwargs):
        raise AssertionError("submitted a sweep that cannot run")

    monkeypatch.setattr(sweep, "run_slurm", submit)
    sweep_file = tmp_path / "grid.py"
    sweep_file.write_text(GRID_FILE.format(root=ROOT, dataset=dataset, groups=groups))
    workdir = tmp_path / "w"
    result = cli("sweep", sweep_file, f"--workdir={workdir}", f"--executor={executor}", *extra)
    assert_one_line_error(result, message)
    assert not workdir.exists()


def test_a_slurm_sweep_checks_what_holds_on_any_node_and_submits(cli, tmp_path, monkeypatch):
    """The Slurm path checks on the node it is launched from what does not depend on
    the devices (`train.check_portable`): shapes at the per-device batch the config
    fixes, not this node's devices, which the workers' nodes may not share. A grid
    that can run is written and submitted, in the environment the sweep had (the
    check's XLA_PYTHON_CLIENT_PREALLOCATE=false does not reach the jobs)."""
    from bnlab import sweep, train
    from bnlab.config import ConfigError, load_config_file

    config = load_config_file(ROOT / "configs" / "default.py")
    config.update(dataset="synthetic", batch_size=32, parallel="pmap", num_devices=16)
    with pytest.raises(ConfigError, match="num_devices"):
        train.prepare(config)  # 8 devices here
    sweep.check([sweep.Run("r", config, {})], devices=False)  # the workers' nodes may have 16
    config.virtual_batch_size = 4  # 2 examples per device: ghost batches of 4 cannot be
    with pytest.raises(ConfigError, match="virtual_batch_size=4: must divide the batch of 2"):
        sweep.check([sweep.Run("r", config, {})], devices=False)

    submitted = []

    def submit(workdir, launch, jobs, slurm, wait=True, progress=True, pack=None):
        submitted.append((tracking.SweepDir(workdir).launch_runs(launch),
                          os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")))
        return {}

    monkeypatch.setattr(sweep, "run_slurm", submit)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "unset")
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE")  # restored (unset) after the test
    sweep_file = tmp_path / "grid.py"
    sweep_file.write_text(GRID_FILE.format(root=ROOT, dataset="synthetic", groups=[8]))
    workdir = tmp_path / "w"
    result = cli("sweep", sweep_file, f"--workdir={workdir}", "--executor=slurm", "--nowait")
    assert result.returncode == 0, result.stderr
    ((runs, preallocate),) = submitted
    assert len(runs) == 2 and preallocate is None
    assert sorted(runs) == sorted(d.name for d in (workdir / tracking.RUNS).iterdir())


def test_an_override_of_a_field_the_grid_sets_is_refused(cli, tmp_path):
    """Probe 12: `--config.batch_size=16` on the batch-size sweep planned every grid
    point at batch 16 (copies, under the grid's names). Now: one line, exit 2."""
    sweep_file = tmp_path / "grid.py"
    sweep_file.write_text(GRID_FILE.format(root=ROOT, dataset="synthetic", groups=[8]))
    workdir = tmp_path / "w"
    result = cli("sweep", sweep_file, f"--workdir={workdir}", "--config.learning_rate=0.1")
    assert_one_line_error(result, "config.learning_rate=0.1: the sweep's grid sets "
                                  "learning_rate (0.01, 0.02); drop the override")
    assert not workdir.exists()


SMALL_RUN = ["train", "--config.dataset=synthetic", "--config.num_steps=4",
             "--config.log_every=2", "--config.batch_size=16"]


def test_an_override_that_sets_a_default_is_the_same_run(cli, tmp_path):
    """Probe 13: `--config.learning_rate=0.05` (the default) made a second directory
    of the same run, which analysis counted as a second seed. Now the second command
    finds the first's run finished."""
    workdir = tmp_path / "w"
    first = cli(*SMALL_RUN, f"--workdir={workdir}")
    assert first.returncode == 0, first.stderr
    again = cli(*SMALL_RUN, "--config.learning_rate=0.05", "--config.norm=bn",
                f"--workdir={workdir}")
    assert again.returncode == 0, again.stderr
    assert "finished before, not run again" in again.stdout
    assert len(list((workdir / tracking.RUNS).iterdir())) == 1
    # A value that differs is another run.
    other = cli(*SMALL_RUN, "--config.learning_rate=0.06", f"--workdir={workdir}")
    assert other.returncode == 0 and "finished before" not in other.stdout
    assert len(list((workdir / tracking.RUNS).iterdir())) == 2


def test_runs_of_an_older_bnlab_are_found_and_not_run_again(cli, tmp_path, monkeypatch):
    """Probe 14: the run id hashed every field, so a field added to bnlab renamed
    every run and a relaunch trained them all again. Now the id hashes what differs
    from the defaults, and a run directory of the old scheme (another name, a config
    without the new field) is found by its config: train and a sweep reuse it."""
    from test_sweep import _sweep_file

    from bnlab import config as config_lib
    from bnlab import train

    workdir = tmp_path / "w"
    sweep_file = _sweep_file(tmp_path, steps=4, rates=(0.01,))
    assert cli("sweep", sweep_file, f"--workdir={workdir}").returncode == 0
    # Made old: renamed as the old scheme named it, without a field added since.
    for run_dir in list((workdir / tracking.RUNS).iterdir()):
        config = json.loads((run_dir / tracking.CONFIG).read_text())
        del config["decay_norm_params"]
        (run_dir / tracking.CONFIG).write_text(json.dumps(config))
        run_dir.rename(run_dir.with_name(run_dir.name[:-8] + "0ld1d000"))
    old = sorted(d.name for d in (workdir / tracking.RUNS).iterdir())
    relaunch = cli("sweep", sweep_file, f"--workdir={workdir}")
    assert relaunch.returncode == 0, relaunch.stderr
    assert "2 runs, 2 finished before" in relaunch.stdout
    assert sorted(d.name for d in (workdir / tracking.RUNS).iterdir()) == old
    # Had the new field's default changed what a run computes, the old runs would
    # stand for the old value, and not be taken for runs of the new default.
    monkeypatch.setattr(config_lib, "ABSENT_MEANS", {"decay_norm_params": True})
    assert train.existing_runs(workdir) and all(
        name not in old for name in
        (run.run_id for run in _planned(sweep_file, workdir)))


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every file under a run directory (checkpoints too) and its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_run_of_a_changed_default_is_not_taken_for_the_old_run(cli, tmp_path):
    """A run's id hashes what differs from configs/default.py, so when a default
    changes, a run of the new default gets the name a run of the old default got.
    `train` then found the old run finished and printed its result as this one's.
    Now the new run is named apart (its full digest added), trains, and keeps that
    name; the old run's files are left as they were."""
    workdir = tmp_path / "w"
    assert cli(*SMALL_RUN, f"--workdir={workdir}").returncode == 0
    (old,) = (workdir / tracking.RUNS).iterdir()
    # Made a run of an older default (momentum 0.8 then), under the name it had.
    config = json.loads((old / tracking.CONFIG).read_text())
    config["momentum"] = 0.8
    (old / tracking.CONFIG).write_text(json.dumps(config))
    before = _files(old)
    again = cli(*SMALL_RUN, f"--workdir={workdir}")
    assert again.returncode == 0, again.stderr
    assert "finished before" not in again.stdout
    (new,) = [d for d in (workdir / tracking.RUNS).iterdir() if d != old]
    assert new.name.startswith(old.name + "-")
    assert tracking.read_json(new / tracking.CONFIG)["momentum"] == 0.9
    assert tracking.read_json(new / tracking.SUMMARY)["status"] == "done"
    assert _files(old) == before
    third = cli(*SMALL_RUN, f"--workdir={workdir}")  # the new run keeps its name
    assert f"{new}: finished before" in third.stdout
    assert len(list((workdir / tracking.RUNS).iterdir())) == 2


def test_a_sweep_after_a_default_changed_leaves_the_old_runs_alone(cli, tmp_path):
    """As above, through a sweep, and with an old run that was interrupted after a
    checkpoint: the relaunch claimed it under the shared name, found its config not
    this run's, cleared its checkpoint and wrote the new run over it. Now the new
    runs get directories of their own and both old ones stay as they were."""
    from test_sweep import _sweep_file

    workdir = tmp_path / "w"
    sweep_file = _sweep_file(tmp_path, steps=4, rates=(0.01,), log_every=2,
                             checkpoint_every=2)
    assert cli("sweep", sweep_file, f"--workdir={workdir}").returncode == 0
    olds = sorted((workdir / tracking.RUNS).iterdir())
    for run_dir in olds:  # runs of an older default, momentum 0.8
        config = json.loads((run_dir / tracking.CONFIG).read_text())
        config["momentum"] = 0.8
        (run_dir / tracking.CONFIG).write_text(json.dumps(config))
    (olds[0] / tracking.SUMMARY).unlink()  # killed after its checkpoint of step 2
    assert tracking.RunDir(olds[0]).checkpoints().latest_step() == 2
    before = {d: _files(d) for d in olds}
    relaunch = cli("sweep", sweep_file, f"--workdir={workdir}")
    assert relaunch.returncode == 0, relaunch.stderr
    assert "2 runs, 0 finished before" in relaunch.stdout
    news = sorted(set((workdir / tracking.RUNS).iterdir()) - set(olds))
    assert len(news) == 2 and all(re.fullmatch(re.escape(d.name) + "-[0-9a-f]{8}", n.name)
                                  for d, n in zip(olds, news, strict=True))
    for run_dir in news:
        assert tracking.read_json(run_dir / tracking.SUMMARY)["status"] == "done"
        assert tracking.read_json(run_dir / tracking.CONFIG)["momentum"] == 0.9
    assert {d: _files(d) for d in olds} == before


def test_old_runs_without_the_unbiased_variance_field_by_what_their_norm_reads(cli, tmp_path):
    """A config.json from before bn_unbiased_running_var stands for False
    (config.ABSENT_MEANS). That made every old run's digest differ from a new one's,
    GN's too, though GN never reads the field: a relaunch trained them all again.
    Now a field the run's norm and model do not read is not in its digest: the old
    GN run is found and not run again; the old BN run (biased variance) is not
    taken for a new BN run, which trains beside it."""
    from test_sweep import _sweep_file

    workdir = tmp_path / "w"
    sweep_file = _sweep_file(tmp_path, steps=4, rates=(0.01,))
    sweep_file.write_text(sweep_file.read_text().replace('["bn", "none"]', '["bn", "gn"]'))
    assert cli("sweep", sweep_file, f"--workdir={workdir}").returncode == 0
    for run_dir in list((workdir / tracking.RUNS).iterdir()):  # made old, as above
        config = json.loads((run_dir / tracking.CONFIG).read_text())
        del config["bn_unbiased_running_var"]
        (run_dir / tracking.CONFIG).write_text(json.dumps(config))
        run_dir.rename(run_dir.with_name(run_dir.name[:-8] + "0ld1d000"))
    old = {d.name: _files(d) for d in (workdir / tracking.RUNS).iterdir()}
    relaunch = cli("sweep", sweep_file, f"--workdir={workdir}")
    assert relaunch.returncode == 0, relaunch.stderr
    assert "2 runs, 1 finished before" in relaunch.stdout
    names = sorted(d.name for d in (workdir / tracking.RUNS).iterdir())
    (new,) = set(names) - set(old)
    assert new.startswith("norm=bn,") and not new.endswith("0ld1d000")
    assert tracking.read_json(workdir / tracking.RUNS / new / tracking.CONFIG)[
        "bn_unbiased_running_var"] is True
    assert {name: _files(workdir / tracking.RUNS / name) for name in old} == old


NUMPY_GRID = '''
import numpy as np
from bnlab.config import load_config_file
from bnlab.sweep import axis

def get_config():
    config = load_config_file("{root}/configs/default.py")
    config.dataset = "synthetic"
    config.num_steps = 4
    config.log_every = 2
    config.batch_size = 16
    return config

def get_sweep():
    return axis("learning_rate", np.array([0.05, 0.1]))  # numpy's floats
'''


def test_a_grid_of_numpy_values_finds_the_runs_they_name(cli, tmp_path):
    """A grid built with numpy (np.linspace, np.array) sets float fields to
    np.float64: one equal to its default was taken for a field that differs (its
    type is not float's), so lr 0.05 was a new run beside `train`'s run of the
    default 0.05. Now values are compared as JSON holds them."""
    workdir = tmp_path / "w"
    assert cli(*SMALL_RUN, f"--workdir={workdir}").returncode == 0
    sweep_file = tmp_path / "grid.py"
    sweep_file.write_text(NUMPY_GRID.format(root=ROOT))
    result = cli("sweep", sweep_file, f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr
    assert "2 runs, 1 finished before" in result.stdout
    assert len(list((workdir / tracking.RUNS).iterdir())) == 2


def _planned(sweep_file, workdir):
    from bnlab import sweep

    module = sweep.load_sweep_file(sweep_file)
    return sweep.plan(module.get_config(), module.get_sweep(), {}, workdir)


# ---------------------------------------------------------------- the disk (item 16)

def _assert_one_line_failure(result, pattern: str) -> str:
    """Exit code 1 and on stderr one line, `error: cannot write PATH: [Errno N] ...`,
    matching `pattern` (a regular expression); returns the line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, (result.stdout, result.stderr[-3000:])
    assert len(lines) == 1, result.stderr[-3000:]
    assert re.fullmatch(pattern, lines[0]), lines[0]
    return lines[0]


def _read_only_folder() -> Path:
    """A folder nobody may create, root included (sysfs: EPERM, EROFS where it is
    mounted read-only): chmod does not stop root, and mounting needs privileges."""
    folder = Path("/sys/bnlab-read-only")
    try:
        folder.mkdir()
    except OSError:
        return folder
    folder.rmdir()
    pytest.skip("/sys is writable here")


def _limited(kib: int, args: list) -> list[str]:
    """`args` run where the kernel refuses to write any file past `kib` KiB
    (RLIMIT_FSIZE, with SIGXFSZ ignored: EFBIG), as a disk that fills up refuses a
    write mid-file: for root too, without a mount. Set by bash, so that this process
    (JAX's threads) does not fork to run a preexec_fn."""
    return ["bash", "-c", f"ulimit -f {kib} && trap '' XFSZ && exec \"$@\"", "bash",
            *map(str, args)]


# JAX's persistent compilation cache would write entries past the limit too.
NO_CACHE_WRITES = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1e9"}


def _assert_nothing_half_written(run: Path) -> None:
    """Every file of the run whole: JSON files parse, metrics.jsonl ends in a whole
    row, no temp file of an atomic write or of Orbax is left."""
    for name in (tracking.CONFIG, tracking.STATUS, tracking.ENV, tracking.SUMMARY):
        if (run / name).exists():
            tracking.read_json(run / name)
    metrics = (run / tracking.METRICS).read_bytes()
    assert metrics.endswith(b"\n"), metrics[-200:]
    assert all(isinstance(json.loads(line)["step"], int) for line in metrics.splitlines())
    assert not list(run.glob(".*.tmp")) and not list(run.glob("**/*orbax-checkpoint-tmp*"))
    assert not (run / tracking.CLAIM).exists()


def test_a_read_only_workdir_fails_in_one_line_in_every_command_that_writes(cli, tmp_path):
    """Probe 16: `train`, `sweep`, `reproduce` on a read-only workdir, `report` and
    `ls --out` to a read-only folder ended in 24-35-line tracebacks. Now each says
    which path it cannot write and why, in one line, exits 1, and writes nothing."""
    from test_sweep import _sweep_file

    read_only = _read_only_folder()
    runs = tmp_path / "runs_here"
    tracking.SweepDir(runs).run("r").write_pending({"norm": "bn", "seed": 0})
    errno = r"\[Errno \d+\] .+"
    cases = [
        (["train", f"--workdir={read_only}", "--config.dataset=synthetic"],
         rf"error: cannot write {read_only}/runs/[^:]+: {errno}"),
        (["sweep", _sweep_file(tmp_path), f"--workdir={read_only}"],
         rf"error: cannot write {read_only}/runs: {errno}"),
        (["reproduce", "--scale=smoke", "--claims=C1", f"--workdir={read_only}"],
         rf"error: cannot write {read_only}/\w+/runs: {errno}"),
        (["report", runs, read_only], rf"error: cannot write {read_only}: {errno}"),
        (["ls", runs, "--format=csv", f"--out={read_only}.csv"],
         rf"error: cannot write {read_only}.csv: {errno}"),
    ]
    for args, pattern in cases:
        _assert_one_line_failure(cli(*args), pattern)
        assert not read_only.exists() and not Path(f"{read_only}.csv").exists()
    assert sorted(p.name for p in (runs / tracking.RUNS / "r").iterdir()) == [
        tracking.CONFIG, tracking.STATUS]


@pytest.mark.slow
def test_a_checkpoint_the_disk_refuses_ends_in_one_line_not_orbax_noise(tmp_path):
    """Probe 16: a full disk during an Orbax checkpoint printed 411 lines (its
    threads' tracebacks, 'Event loop is closed' from callbacks). Now one line names
    the checkpoint folder; the run is failed with that error, Orbax's temporary
    folder is gone, every other file whole; freed, the rerun finishes."""
    workdir = tmp_path / "w"
    args = [*BNLAB, "train", f"--workdir={workdir}", "--config.dataset=synthetic",
            "--config.num_steps=20", "--config.log_every=5", "--config.checkpoint_every=10"]
    full = subprocess.run(_limited(100, args), cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=NO_CACHE_WRITES)
    (run,) = (workdir / tracking.RUNS).iterdir()
    checkpoint = run.resolve() / tracking.CHECKPOINT
    line = _assert_one_line_failure(
        full, re.escape(f"error: cannot write {checkpoint}: [Errno 27] File too large"))
    status = tracking.read_json(run / tracking.STATUS)
    assert status["status"] == "failed" and line.removeprefix("error: ") in status["error"]
    assert not (run / tracking.SUMMARY).exists() and not list(checkpoint.iterdir())
    _assert_nothing_half_written(run)
    freed = bnlab(*args[len(BNLAB):])
    assert freed.returncode == 0, freed.stderr[-2000:]
    assert tracking.RunDir(run).state() == "done"


@pytest.mark.slow
def test_a_sweep_whose_disk_fills_mid_run_ends_in_one_line(tmp_path):
    """Probe 16: a sweep worker whose disk filled up crashed with a traceback (its
    failure handler wrote to the same disk). Now each worker stops at its refused
    write, with its run failed and released, and the sweep says the first refused
    write as its one line and exits 1 (not once per worker); every file is whole,
    and the relaunch, with room again, finishes both runs."""
    from test_sweep import _sweep_file

    workdir = tmp_path / "w"
    args = [*BNLAB, "sweep", str(_sweep_file(tmp_path, steps=600, rates=(0.01,), log_every=5,
                                             batch_size=16)), f"--workdir={workdir}", "--jobs=2"]
    full = subprocess.run(_limited(8, args), cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=NO_CACHE_WRITES)
    _assert_one_line_failure(full, rf"error: cannot write {re.escape(str(workdir))}/runs/[^/]+/"
                             r"(metrics\.jsonl|events\.out\.tfevents\.[^:]+): \[Errno 27\] "
                             r"File too large")
    runs = list((workdir / tracking.RUNS).iterdir())
    assert len(runs) == 2
    for run in runs:
        status = tracking.read_json(run / tracking.STATUS)
        assert status["status"] == "failed" and "cannot write" in status["error"], status
        _assert_nothing_half_written(run)
        assert all(f.stat().st_size <= 8 * 1024 for f in run.iterdir())
    again = bnlab(*args[len(BNLAB):])
    assert again.returncode == 0, again.stderr[-2000:]
    assert {tracking.RunDir(run).state() for run in runs} == {"done"}


def test_a_full_disk_fails_the_run_not_its_failure_handler(cli, tmp_path, monkeypatch):
    """Probe 16: on a full disk, a sweep worker's failure handler (record_failure)
    wrote to it too and raised again. Here every write of the process is refused
    (ENOSPC) from the run's fourth metrics row on, the first one half-done as a
    filling disk does: the run's metrics keep three whole rows, its status stays the
    whole 'running' one (the failure could not be recorded), its claim is released,
    the sweep names metrics.jsonl in one line (not the handlers' refused writes) and
    exits 1, and the second run is left pending. With room again, both finish."""
    import errno

    from test_sweep import _sweep_file

    write_all, full = tracking._write_all, []

    def filling(fd: int, data: bytes) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if not full and path.endswith(tracking.METRICS) and Path(path).read_bytes().count(
                b"\n") == 3:
            full.append(path)
            os.write(fd, data[:len(data) // 2])
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_all(fd, data)

    monkeypatch.setattr(tracking, "_write_all", filling)
    workdir = tmp_path / "w"
    args = ["sweep", _sweep_file(tmp_path, steps=30, rates=(0.01,), log_every=5),
            f"--workdir={workdir}"]
    result = cli(*args)
    assert len(full) == 1
    first, second = (tracking.SweepDir(workdir).run(run_id) for run_id in
                     tracking.SweepDir(workdir).launch_runs(
                         next((workdir / tracking.LAUNCHES).iterdir()).stem))
    metrics = first.path / tracking.METRICS
    _assert_one_line_failure(result, re.escape(
        f"error: cannot write {metrics}: [Errno 28] No space left on device"))
    assert [row["step"] for row in first.metrics()] == [5, 10, 15]
    _assert_nothing_half_written(first.path)
    assert first.status()["status"] == "running" and not first.finished()
    assert first.owner() is None and second.state() == "pending"
    events = [json.loads(line) for line in (workdir / tracking.EVENTS).read_text().splitlines()]
    assert [(e["event"], e["run"]) for e in events] == [("start", first.name)]
    monkeypatch.setattr(tracking, "_write_all", write_all)  # room again
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert first.state() == second.state() == "done"
