"""Sweeps: a base config and a grid of overrides, run by workers that claim runs
from the tracking directory (docs/ARCHITECTURE.md).

A sweep file defines `get_config()` (the base) and `get_sweep()` (a list of
override dicts, built with `axis`, `product`, `zipped` and `chain`). Launching
writes every run's directory with status `pending`; workers (local processes now,
Slurm array tasks alike) walk the runs in order and claim each
(`tracking.RunDir.claim`: claim.json, written under the run's lock), so two
workers, or a worker and a `bnlab train`, never run the same run. A finished run
(one with summary.json) is never run again; a claim whose owner died (same host,
pid gone) or stopped beating is taken over, and the run restarts.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ml_collections

from bnlab import config as config_lib
from bnlab import progress as progress_lib
from bnlab import tracking

# ---------------------------------------------------------------- grids

def axis(field: str, values: Iterable[Any]) -> list[dict[str, Any]]:
    """One field over values: `axis("norm", ["bn", "gn"])`."""
    return [{field: value} for value in values]


def product(*axes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every combination of the axes, the last one varying fastest."""
    return [dict(itertools.chain.from_iterable(d.items() for d in combo))
            for combo in itertools.product(*axes)]


def zipped(**fields: Iterable[Any]) -> list[dict[str, Any]]:
    """Fields that vary together: `zipped(batch_size=[8, 16], learning_rate=[0.1, 0.2])`."""
    columns = {k: list(v) for k, v in fields.items()}
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        sizes = {k: len(v) for k, v in columns.items()}
        raise ValueError(f"zipped fields differ in length: {sizes}")
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def chain(*grids: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One grid after another."""
    return [d for grid in grids for d in grid]


# The sizes an experiment file offers (`bnlab reproduce --scale`): smoke, a check of
# the machinery in seconds (small nets: the BN paper's MLP); quick, minutes on a
# laptop's CPU; full, one GPU.
SCALES = ("smoke", "quick", "full")


# Seeds per scale: every claim's verdict rests on at least 3 seeds from "quick" up.
SEEDS = {"smoke": (0, 1), "quick": (0, 1, 2), "full": (0, 1, 2, 3, 4)}


def at_scale(table: dict[str, Any], scale: str) -> Any:
    """An experiment file's setting for `scale`: `table[scale]`, checked."""
    if scale not in SCALES or scale not in table:
        raise config_lib.ConfigError("scale", scale, f"allowed: {', '.join(table)}")
    return table[scale]


def scaled_default(sizes: dict[str, dict[str, Any]], scale: str) -> ml_collections.ConfigDict:
    """configs/default.py with an experiment's settings for `scale` (`sizes[scale]`)."""
    config = config_lib.load_config_file(config_lib.DEFAULT_CONFIG_FILE)
    config.update(at_scale(sizes, scale))
    return config


def seeds(scale: str, counts: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """The seed axis of an experiment at `scale`: `SEEDS`, or 0 … n-1 for the n that
    `counts` gives the scale (an experiment sized by a pilot, where its effect's
    spread over seeds needs more of them to decide)."""
    if counts and scale in counts:
        return axis("seed", range(counts[scale]))
    return axis("seed", at_scale(SEEDS, scale))


# ---------------------------------------------------------------- planning

@dataclasses.dataclass
class Run:
    run_id: str
    config: ml_collections.ConfigDict
    overrides: dict[str, Any]


def load_sweep_file(path: str | Path):
    """The module of a sweep file; it must define get_config() and get_sweep()."""
    module = config_lib.load_module(path)
    for name in ("get_config", "get_sweep"):
        if not hasattr(module, name):
            raise config_lib.ConfigError("file", str(path), f"a sweep file needs {name}()")
    return module


def plan(base: ml_collections.ConfigDict, grid: list[dict[str, Any]],
         overrides: dict[str, Any] | None = None,
         workdir: str | Path | None = None) -> list[Run]:
    """The runs of a grid on a base config. `overrides` (from the command line)
    apply to every run; one that sets a field the grid sets is refused, as it would
    turn the grid's runs into copies. The run id names the grid's fields; with
    `workdir`, a run already there under another name keeps that name
    (`train.existing_runs`). Every run is validated here, before anything is written."""
    from bnlab import train

    overrides = overrides or {}
    varied = list(dict.fromkeys(key for point in grid for key in point))
    clash = [key for key in overrides if key in varied]
    if clash:
        values = sorted({repr(point[clash[0]]) for point in grid if clash[0] in point})
        raise config_lib.ConfigError(
            clash[0], overrides[clash[0]],
            f"the sweep's grid sets {clash[0]} ({', '.join(values)}); drop the override, "
            "or pick runs with --only")
    existing = train.existing_runs(workdir) if workdir else None
    runs, seen = [], set()
    for point in grid:
        config = ml_collections.ConfigDict(base.to_dict())
        for key, value in {**point, **overrides}.items():
            if key not in config:
                raise config_lib.ConfigError(key, value, "no such config field")
            config[key] = value
        config_lib.validate(config)
        digest = train.run_digest(config)
        if digest in seen:
            continue  # the same computation twice: one run
        seen.add(digest)
        # Named by the fields its own point sets: in a chain of grids with other axes
        # (C5's ghost batches), a plain run's name does not list the others' defaults.
        named = [key for key in varied if key in point]
        runs.append(Run(train.run_name(config, named, existing), config, point))
    return runs


def check(runs: list[Run], devices: bool = True) -> None:
    """What `train.prepare` checks (the data, every layer's shapes, the devices),
    once per distinct shape (`train.check_key`), before a sweep writes anything: a
    grid point that cannot run is one error line, not a failed run per point.
    `devices=False` where the runs train on other machines (Slurm): all but what
    depends on the devices there (`train.check_portable`)."""
    from bnlab import train

    checked = set()
    for run in runs:
        key = train.check_key(run.config)
        if key not in checked:
            if devices:
                train.prepare(run.config)
            else:
                train.check_portable(run.config)
            checked.add(key)


def select(runs: list[Run], only: str | None = None, limit: int | None = None) -> list[Run]:
    """`only`: a regular expression on run ids; `limit`: the first n of those."""
    if only:
        pattern = re.compile(only)
        runs = [r for r in runs if pattern.search(r.run_id)]
    return runs[:limit] if limit else runs


def write_plan(workdir: Path, runs: list[Run], meta: dict[str, Any]) -> str:
    """Records a launch of `runs` in the sweep directory (`tracking.SweepDir`): a
    pending directory for each new run; returns the launch id."""
    return tracking.SweepDir(workdir).record_launch(
        {run.run_id: config_lib.flatten(run.config) for run in runs}, meta)


# ---------------------------------------------------------------- workers

def config_from_dir(run_dir: tracking.RunDir) -> ml_collections.ConfigDict:
    """A run's config.json as the ConfigDict it was planned from."""
    flat = run_dir.config()
    if not flat:
        raise ValueError(f"{run_dir.path}: no readable config.json")
    return ml_collections.ConfigDict({k: tuple(v) if isinstance(v, list) else v
                                      for k, v in flat.items()})


def work(workdir: str | Path, launch_id: str, progress: bool = False, pack: bool = False,
         pack_size: int = 64, pack_on_cpu: bool = False) -> dict[str, int]:
    """Runs every run of a launch that nobody else has claimed or finished; returns
    how often this worker traced its train step (its compilations).

    With `pack`, runs that differ only in learning rate, weight decay and seed train
    together, up to `pack_size` at once (`train.train_packed`), where packing pays
    (`train.packing_pays`: not on a CPU backend, unless `pack_on_cpu`). A packed member
    computes what it would compute alone: packing changes the speed, not a number."""
    from bnlab import steps, train

    workdir = Path(workdir)
    run_ids = tracking.SweepDir(workdir).launch_runs(launch_id)
    before = dict(steps.TRACE_COUNTS)
    pack = pack and (pack_on_cpu or train.packing_pays())
    bar = progress_lib.bar(len(run_ids), workdir.name, "run", enabled=progress)
    for group in _groups(workdir, run_ids, pack_size if pack else 1):
        if train.STOP.is_set():  # Ctrl-C between runs
            raise KeyboardInterrupt
        claimed = [run_id for run_id in group if _claimable(workdir, run_id, launch_id)]
        if len(claimed) > 1:
            _run_packed(workdir, claimed, launch_id)
        elif claimed:
            _run_one(workdir, claimed[0], launch_id)
        bar.update(len(group))  # seen: run here, or left to whoever holds them
    bar.close()
    return {k: steps.TRACE_COUNTS[k] - before[k] for k in before}


def _groups(workdir: Path, run_ids: list[str], size: int) -> list[list[str]]:
    """The runs in packs of at most `size` that can train together (`train.pack_key`),
    in the order of each pack's first run; a run with a checkpoint to resume from, or
    one that cannot be packed, is a pack of one."""
    from bnlab import train

    if size <= 1:
        return [[run_id] for run_id in run_ids]
    groups: dict[Any, list[str]] = {}
    sweep_dir = tracking.SweepDir(workdir)
    for run_id in run_ids:
        run_dir = sweep_dir.run(run_id)
        try:
            config = config_from_dir(run_dir)
            key = train.pack_key(config)
            if key is not None and config.get("checkpoint_every") and train.resumable_step(
                    run_dir, config, run_dir.checkpoints()):
                key = None
        except (OSError, ValueError):
            key = None
        groups.setdefault(key if key is not None else ("single", run_id), []).append(run_id)
    return [ids[i:i + size] for ids in groups.values() for i in range(0, len(ids), size)]


def _claimable(workdir: Path, run_id: str, launch_id: str) -> bool:
    """Claims the run unless it failed in this launch already (a relaunch retries it)."""
    run_dir = tracking.SweepDir(workdir).run(run_id)
    status = run_dir.status()
    if status.get("status") == "failed" and status.get("launch") == launch_id:
        return False
    return run_dir.claim(launch_id)


def _run_one(workdir: Path, run_id: str, launch_id: str) -> None:
    from bnlab import train

    sweep_dir = tracking.SweepDir(workdir)
    run_dir = sweep_dir.run(run_id)
    outcome = "failed"
    try:  # the start event too: a claimed run is released whatever fails
        sweep_dir.log_event(event="start", run=run_id, launch=launch_id)
        with run_dir.heartbeat():
            summary = train.train_and_evaluate(config_from_dir(run_dir), str(run_dir.path))
        outcome = summary["status"]
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    except Exception as error:
        run_dir.record_failure(launch_id, error)  # the sweep goes on,
        if isinstance(error, tracking.Unwritable):
            raise  # unless the disk refused a write: every run after would fail on it
    finally:
        try:
            sweep_dir.log_event(event="end", run=run_id, launch=launch_id, outcome=outcome)
        finally:
            run_dir.release()


def _run_packed(workdir: Path, run_ids: list[str], launch_id: str) -> None:
    from bnlab import train

    sweep_dir = tracking.SweepDir(workdir)
    run_dirs = [sweep_dir.run(run_id) for run_id in run_ids]
    outcomes = ["failed"] * len(run_ids)
    try:
        for run_id in run_ids:
            sweep_dir.log_event(event="start", run=run_id, launch=launch_id,
                                packed=len(run_ids))
        with tracking.Heartbeat(*run_dirs):
            summaries = train.train_packed([config_from_dir(d) for d in run_dirs],
                                           [str(d.path) for d in run_dirs])
        outcomes = [s["status"] for s in summaries]
    except KeyboardInterrupt:
        outcomes = [run_dir.state() for run_dir in run_dirs]
        raise
    except Exception as error:
        for i, run_dir in enumerate(run_dirs):  # a member that ended before keeps its result
            state = run_dir.state()
            if state in ("done", "diverged"):
                outcomes[i] = state
            else:
                run_dir.record_failure(launch_id, error)
        if isinstance(error, tracking.Unwritable):
            raise  # as in _run_one
    finally:
        try:
            for run_id, outcome in zip(run_ids, outcomes, strict=True):
                sweep_dir.log_event(event="end", run=run_id, launch=launch_id,
                                    outcome=outcome)
        finally:  # released however the events went
            for run_dir in run_dirs:
                run_dir.release()


def wait_for_runs(workdir: Path, run_ids: list[str], poll_s: float = 2.0) -> dict[str, int]:
    """The runs' states once none is training elsewhere (another sweep's worker, a
    `bnlab train`): a sweep ends when its runs have. A dead owner's run reads
    interrupted and ends the wait."""
    counts = statuses(workdir, run_ids)
    if counts["running"]:
        print(f"waiting for {counts['running']} runs that other processes are training",
              flush=True)
    while counts["running"]:
        time.sleep(poll_s)
        counts = statuses(workdir, run_ids)
    return counts


def check_finished(counts: dict[str, int], where: Path) -> None:
    """Raises `tracking.Unfinished` unless every run ended done or diverged."""
    left = {state: n for state, n in counts.items() if state not in ("done", "diverged") and n}
    if left:
        said = ", ".join(f"{n} {state}" for state, n in left.items())
        raise tracking.Unfinished(f"{sum(left.values())} of {sum(counts.values())} runs did "
                                  f"not finish ({said}): python -m bnlab ls {where}; a "
                                  "relaunch retries them")


def statuses(workdir: Path, run_ids: list[str]) -> dict[str, int]:
    """Counts of each run state (`tracking.RunDir.state`) among the runs."""
    counts = dict.fromkeys(("done", "running", "diverged", "failed", "pending",
                            "interrupted"), 0)
    sweep_dir = tracking.SweepDir(workdir)
    for run_id in run_ids:
        state = sweep_dir.run(run_id).state()
        counts[state] = counts.get(state, 0) + 1
    return counts


PARENT_ENV = progress_lib.SWEEP_PARENT_ENV


def die_with_parent() -> None:
    """Linux: this worker ends when the sweep process that started it (pid in
    $BNLAB_SWEEP_PID) ends. Set by the worker itself, not in a `preexec_fn`: that
    runs Python in the forked child of a process whose JAX threads may hold locks
    (JAX warns of the deadlock), where a plain fork-exec runs no Python."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # it ended before the line above
        os._exit(1)


def _follow(workdir: Path, run_ids: list[str], working, period_s: float,
            progress: bool) -> None:
    """A progress bar of the launch's runs (done / running / diverged / failed /
    pending counts) while `working()` says the workers are at it."""
    bar = progress_lib.bar(len(run_ids), workdir.name, "run", enabled=progress)

    def show() -> None:
        # Counted: the runs that ended in a result; a failed one is in the postfix and
        # keeps the count short, so a sweep with failures ends in its error line.
        counts = statuses(workdir, run_ids)
        bar.update(counts["done"] + counts["diverged"] - bar.n)
        bar.set_postfix({k: v for k, v in counts.items() if v}, refresh=True)

    try:
        while working():
            show()
            time.sleep(period_s)
        show()  # as the workers left it
    finally:
        bar.close()


@contextlib.contextmanager
def stop_at_safe_points():
    """Ctrl-C (SIGINT) sets `train.STOP` for the block instead of raising where the
    main thread is: the loop raises KeyboardInterrupt at its next step, `work` at its
    next run, so runs are marked interrupted and nothing else is printed."""
    from bnlab import train

    train.STOP.clear()
    if threading.current_thread() is not threading.main_thread():
        yield train.STOP  # signal handlers belong to the main thread
        return
    previous = signal.signal(signal.SIGINT, lambda *_: train.STOP.set())
    try:
        yield train.STOP
    finally:
        signal.signal(signal.SIGINT, previous)


def run_local(workdir: Path, launch_id: str, jobs: int, env: dict[str, str] | None = None,
              progress: bool = True, pack: dict[str, Any] | None = None) -> dict[str, int]:
    """Runs a launch with `jobs` worker processes on this machine; returns the summed
    compile counts. jobs=1 works in this process (compiled steps are shared).
    `pack`: the packing options of `work` (pack, pack_size, pack_on_cpu)."""

    run_ids = tracking.SweepDir(workdir).launch_runs(launch_id)
    pack = pack or {}
    with stop_at_safe_points() as stop:
        if jobs == 1:
            return work(workdir, launch_id, progress, **pack)
        command = [sys.executable, "-m", "bnlab", "_worker", str(workdir), launch_id,
                   json.dumps(pack)]
        worker_env = {**os.environ, **(env or {}), PARENT_ENV: str(os.getpid())}
        workers = [subprocess.Popen(command, env=worker_env, stdout=subprocess.PIPE, text=True)
                   for _ in range(jobs)]
        # Ctrl-C reaches the workers too (one process group): they stop at their next
        # step and mark their runs interrupted; this process waits for them, then stops.
        _follow(workdir, run_ids, lambda: any(w.poll() is None for w in workers), 1.0, progress)
        if stop.is_set():
            raise KeyboardInterrupt
    totals: dict[str, int] = {}
    refused = None
    for worker in workers:
        out = worker.stdout.read() if worker.stdout else ""
        for line in out.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                said = record.pop("unwritable", None)
                refused = refused or said
                for key, value in record.items():
                    totals[key] = totals.get(key, 0) + value
    if refused:  # a worker stopped on a read-only or full disk (`cli.worker_command`)
        raise tracking.Unwritable(*refused)
    return totals


def run_slurm(workdir: Path, launch_id: str, jobs: int, slurm: dict[str, Any],
              wait: bool = True, progress: bool = True,
              pack: dict[str, Any] | None = None) -> dict[str, int]:
    """Submits `jobs` workers as one Slurm job array (submitit); each claims runs
    from the shared tracking directory like a local worker. Logs go to
    WORKDIR/slurm/. With `wait`, follows the runs and returns the compile counts."""
    import submitit

    # Without Slurm's accounting daemon sacct fails and submitit warns on every
    # poll; the job states still come back (from squeue), so that warning is noise.
    logging.getLogger("submitit").addFilter(
        lambda record: "Bypassing sacct error" not in record.getMessage())
    root = Path(__file__).resolve().parent.parent
    executor = submitit.AutoExecutor(folder=str(workdir / "slurm" / "%j"), cluster="slurm")
    parameters = {"name": f"bnlab-{launch_id}", "timeout_min": slurm.get("time_min", 1440),
                  "cpus_per_task": slurm.get("cpus", 2), "slurm_array_parallelism": jobs,
                  # Jobs import bnlab from where this one came from (a checkout or an
                  # install's site-packages), wherever they start.
                  "slurm_setup": [f"export PYTHONPATH={root}:${{PYTHONPATH:-}}"]}
    if slurm.get("gpus"):
        parameters["gpus_per_node"] = slurm["gpus"]
    if slurm.get("mem_gb"):
        parameters["mem_gb"] = slurm["mem_gb"]
    if slurm.get("partition"):
        parameters["slurm_partition"] = slurm["partition"]
    executor.update_parameters(**parameters)
    array = executor.map_array(functools.partial(work, **(pack or {})), [str(workdir)] * jobs,
                               [launch_id] * jobs)
    print(f"submitted Slurm array {array[0].job_id.split('_')[0]} ({jobs} workers); "
          f"logs in {workdir / 'slurm'}", flush=True)
    if not wait:
        return {}
    run_ids = tracking.SweepDir(workdir).launch_runs(launch_id)
    _follow(workdir, run_ids, lambda: not all(job.done() for job in array), 2.0, progress)
    totals: dict[str, int] = {}
    for job in array:
        try:
            for key, value in job.result().items():
                totals[key] = totals.get(key, 0) + value
        except Exception as error:  # a lost worker: its runs are left for a relaunch
            print(f"Slurm worker {job.job_id} failed: {str(error).splitlines()[0][:300]}")
    return totals
