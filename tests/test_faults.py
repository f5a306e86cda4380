"""Fault injection: concurrent workers and commands, dead owners, damaged claims.
Each test reproduces a failure a probe found and checks what is on disk after:
every run trained once, no launch or metrics row lost."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bnlab import tracking

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


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
print("\\n".join(won))
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
    wins = Counter(name for out in _in_processes(CLAIMER, 4, str(tmp_path))
                   for name in out.split())
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
    listed = subprocess.run([sys.executable, "-m", "bnlab", "ls", str(tmp_path)], env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[:2] == ["runs/r", "interrupted"]


def _train(workdir, *flags, wait=True):
    command = [sys.executable, "-m", "bnlab", "train", "--workdir", str(workdir),
               "--config.dataset=synthetic", "--config.num_steps=400", "--config.log_every=20",
               "--config.batch_size=16", "--config.checkpoint_every=100", *flags]
    if wait:
        return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True,
                              timeout=600)
    return subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _metrics(workdir):
    (run,) = (workdir / tracking.RUNS).iterdir()
    return [{k: v for k, v in row.items() if k != "time"}
            for row in tracking.RunDir(run).metrics()]


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
