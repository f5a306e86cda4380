"""The tracking directory (docs/ARCHITECTURE.md): the one module that names its
files, reads and writes them, and says what state a run is in (`RunDir.state`).

A run directory holds config.json, status.json, metrics.jsonl, summary.json,
env.json and TensorBoard events. JSON files are written to a temp file and
renamed, so a reader never sees half a file; metrics.jsonl is appended a line at
a time and a reader skips a torn last line. summary.json is written last: a run
without one did not finish, whatever its status.json says.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def jsonable(value: Any) -> Any:
    """NaN/Inf become None (strict JSON has neither); numpy/JAX scalars become Python."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Unwritable(Exception):
    """A write the disk refused (read-only, full, gone), as one line: `cannot write
    PATH: [Errno N] reason`. Raised by this module's writers (the tracking directory's
    only ones) in place of the OSError; `cli.main` prints it and exits 1."""

    def __init__(self, path: str | Path, error: OSError | str):
        if isinstance(error, OSError) and error.errno:
            error = f"[Errno {error.errno}] {error.strerror}"  # without the file: PATH says it
        super().__init__(f"cannot write {path}: {error}")
        self.path, self.reason = str(path), str(error)

    def first(self) -> Unwritable:
        """The earliest Unwritable this one was raised while handling: on a full disk
        the handlers' own writes fail too, and the first write is the one to name."""
        first, seen = self, self.__context__
        while seen is not None:
            if isinstance(seen, Unwritable):
                first = seen
            seen = seen.__context__
        return first


@contextlib.contextmanager
def _writing(path: str | Path):
    """The block's OSError as `Unwritable(path)`; an inner Unwritable (a more precise
    path) passes through."""
    try:
        yield
    except OSError as error:
        raise Unwritable(path, error) from error


def _write_all(fd: int, data: bytes) -> None:
    """Every byte of `data` to `fd`: the one primitive this module writes bytes with
    (os.write may write part of them where the disk fills up)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _append(fd: int, data: bytes, path: Path) -> None:
    """`data` at the end of an O_APPEND file, whole or not at all: a write the disk
    refuses is cut off again, so the file never ends in part of a line or record."""
    size = os.fstat(fd).st_size
    try:
        _write_all(fd, data)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise Unwritable(path, error) from error


def _mkdir(path: Path) -> None:
    with _writing(path):
        path.mkdir(parents=True, exist_ok=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    """JSON to a temp file, fsync, rename: a reader sees the old file or the new one."""
    write_text_atomic(Path(path), json.dumps(jsonable(obj), indent=1, sort_keys=True,
                                              allow_nan=False))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename; a refused write leaves no temp file and raises
    `Unwritable`."""
    path = Path(path)
    with _writing(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            try:
                os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from others
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


_warned: set[str] = set()


def _damaged(path: Path, why: str) -> None:
    """One warning per damaged file and process, naming it; the reader goes on."""
    if str(path) not in _warned:
        _warned.add(str(path))
        print(f"warning: {path}: damaged ({why}); skipped", file=sys.stderr)


def read_dict(path: Path) -> dict[str, Any] | None:
    """A JSON object file of the tracking directory: None when missing; {} with a
    warning when damaged (not JSON, not UTF-8, or not an object)."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:  # JSONDecodeError, UnicodeDecodeError
        _damaged(Path(path), type(error).__name__)
        return {}
    if not isinstance(value, dict):
        _damaged(Path(path), f"a JSON {type(value).__name__}, not an object")
        return {}
    return value


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as a list of rows, each an object with an integer `step`. A
    torn last line (a killed writer) is skipped quietly; any other line that is not
    such a row is skipped with a warning. No file (nothing logged yet): no rows."""
    rows, bad = [], 0
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        return rows
    except OSError as error:
        _damaged(Path(path), type(error).__name__)
        return rows
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError:
            bad += i != last
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        else:
            bad += 1
    if bad:
        _damaged(Path(path), f"{bad} line(s) that are not metrics rows")
    return rows


def config_hash(flat_config: dict[str, Any]) -> str:
    text = json.dumps(jsonable(flat_config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_id(flat_config: dict[str, Any], varied: list[str], sgd_batch_size: int,
           norm_batch_size: int, digest: str) -> str:
    """Readable and deterministic: the varied fields, the two batch sizes (SGD and
    normalization), then `digest`, the hash of what the run computes, e.g.
    `norm=gn,batch_size=8-sgd8-nb1-1a2b3c4d`."""
    parts = [f"{key.split('.')[-1]}={flat_config[key]}" for key in varied if key in flat_config]
    readable = re.sub(r"[^A-Za-z0-9=,._+-]", "_", ",".join(parts))[:120]
    batches = f"sgd{sgd_batch_size}-nb{norm_batch_size}"
    return "-".join(p for p in (readable, batches, digest) if p)


def layer_names(names) -> list[str]:
    """Layer names (or a model's top-level parameters) in natural order (conv2
    before conv10): the order of a metrics row's `grad_norm/LAYER` values."""
    return sorted(names, key=lambda name: [int(t) if t.isdigit() else t
                                            for t in re.split(r"(\d+)", name)])


def environment() -> dict[str, Any]:
    import flax
    import jax
    import optax

    return {
        "python": sys.version.split()[0], "jax": jax.__version__, "flax": flax.__version__,
        "optax": optax.__version__, "platform": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()], "device_count": jax.device_count(),
        "process_index": jax.process_index(), "process_count": jax.process_count(),
        "host": socket.gethostname(), "machine": platform.machine(), "argv": sys.argv,
        "git_commit": git_commit(),
    }


def git_commit(root: Path | None = None) -> str | None:
    """The commit of this bnlab checkout ("+dirty" where bnlab/, configs/ or the
    experiment files have changes: a reproduction's runs are configured by
    experiments/*.py), or None outside a git checkout."""
    from bnlab import resource_dir  # bnlab's __init__: stdlib only

    if root is None:
        root = Path(__file__).resolve().parent.parent
        if resource_dir("configs") != root / "configs":  # installed (`pip install .`)
            return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "bnlab", "configs", "experiments",
                                ":(exclude)experiments/results"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


# ---------------------------------------------------------------- the layout

# The files of a tracking directory: named here, and nowhere else in bnlab.
CONFIG, STATUS, METRICS, SUMMARY, ENV, CLAIM = (
    "config.json", "status.json", "metrics.jsonl", "summary.json", "env.json", "claim.json")
CHECKPOINT = "checkpoint"
RUNS, SWEEP, LAUNCHES, EVENTS = "runs", "sweep.json", "launches", "events.jsonl"
REPRODUCE, REPORT, CLAIMS = "reproduce.json", "report.md", "claims.json"

# Lock files: a run's claim is taken and released under its lock, a sweep's launches
# recorded under the sweep's (flock: held by a process, let go when it dies).
CLAIM_LOCK, SWEEP_LOCK = ".claim.lock", ".sweep.lock"

# A claim whose file has not been touched for this long belongs to a dead worker
# (on another host, where its pid cannot be checked). Owners touch theirs every
# HEARTBEAT_S (`Heartbeat`).
STALE_AFTER_S = 600.0
HEARTBEAT_S = 20.0


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive flock on `path` (created if missing) for the block. Where the
    filesystem has no locks (ENOLCK), the block runs unlocked, as before locks."""
    with _writing(path):
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing lets the lock go


class Unfinished(Exception):
    """Runs that did not end (failed, interrupted, pending) where a command needed
    them to: it says which in one line and exits 1."""


def pid_alive(pid: int) -> bool:
    if pid <= 0:  # no pid recorded (or a damaged one): kill(-1 or 0, ...) would ask about others
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDir:
    """One run's directory: its config, status, metrics, summary, env, claim and
    checkpoint, read and written through these methods (and `RunWriter`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def _claim_file(self) -> Path:
        return self.path / CLAIM

    def is_run(self) -> bool:
        """Whether the folder holds a run (a config and a status)."""
        return (self.path / CONFIG).is_file() and (self.path / STATUS).is_file()

    def finished(self) -> bool:
        """A run without a readable summary.json did not finish, whatever its status
        says (a damaged summary is warned about, and the run runs again)."""
        return self._ended() is not None

    def _ended(self) -> str | None:
        """The summary's status, done or diverged; None when there is no readable one."""
        state = self.summary().get("status")
        return state if state in ("done", "diverged") else None

    def sweep_root(self) -> Path:
        """The folder that holds this run: the sweep directory above `runs/`."""
        parent = self.path.parent
        return parent.parent if parent.name == RUNS else parent

    def config(self) -> dict[str, Any]:
        """config.json; {} when missing or damaged (with a warning)."""
        return read_dict(self.path / CONFIG) or {}

    def summary(self) -> dict[str, Any]:
        """summary.json, or {} when the run has none (or, with a warning, a damaged one)."""
        return read_dict(self.path / SUMMARY) or {}

    def env(self) -> dict[str, Any]:
        """env.json (`environment()`: versions, devices, host, commit), or {}."""
        return read_dict(self.path / ENV) or {}

    def status(self) -> dict[str, Any]:
        """status.json, or {} when it is not there (yet) or damaged: never a crash."""
        return read_dict(self.path / STATUS) or {}

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path / METRICS)

    def state(self) -> str:
        """What the run is now: done or diverged (it has a summary), failed, pending,
        running (a live owner holds it, training or preparing to), or interrupted
        (its owner is gone, or it was killed before its summary)."""
        ended = self._ended()  # summary.json read once
        if ended:
            return ended
        status = self.status()
        state = status.get("status", "pending")
        if state in ("done", "diverged"):
            return "interrupted"  # killed between its status and its summary
        if state not in ("running", "pending"):
            return state
        if self._claim_file.exists():  # claimed: training, or preparing to
            return "interrupted" if self.claim_is_stale() else "running"
        if state == "pending":
            return state
        if status.get("host") == socket.gethostname() and pid_alive(_int(status.get("pid"))):
            return "running"  # a `bnlab train` run, not a sweep's
        return "interrupted"

    def write_pending(self, config: dict[str, Any]) -> None:
        """A planned run: its config and status 'pending', unless it exists already
        (with a config that can be read: a damaged one is planned anew)."""
        if not self.config():
            _mkdir(self.path)
            write_json_atomic(self.path / CONFIG, config)
            write_json_atomic(self.path / STATUS, {"status": "pending"})

    def record_failure(self, launch_id: str, error: BaseException) -> None:
        """Status 'failed', with the launch that failed it (a relaunch retries it).
        A handler of `error`: where the disk refuses this write too, it gives up
        quietly, and `error` is what the caller reports (the run then reads
        interrupted once its worker has gone)."""
        status = self.status()
        status.update(status="failed", launch=launch_id,
                      error=status.get("error") or repr(error))
        with contextlib.suppress(Unwritable):
            write_json_atomic(self.path / STATUS, status)

    def owner(self) -> dict[str, Any] | None:
        """Who holds the run (claim.json: host, pid, launch), or None when nobody
        does; {} for a claim that cannot be read (no warning: judged by its age)."""
        try:
            owner = read_json(self._claim_file)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def claim_is_stale(self) -> bool:
        """Whether the claim's owner is gone: a dead pid on this host; on another, a
        claim untouched for `STALE_AFTER_S`. A claim that cannot be read is judged by
        its age too (claims are written whole under the lock: an unreadable one was
        left by a writer that died, or by a full disk)."""
        owner = self.owner()
        try:
            age = time.time() - self._claim_file.stat().st_mtime
        except OSError:
            return False  # just released: nothing to take over
        if owner and owner.get("host") == socket.gethostname():
            return not pid_alive(_int(owner.get("pid")))
        return age > STALE_AFTER_S

    def _mine(self, owner: dict[str, Any] | None) -> bool:
        return bool(owner) and owner.get("host") == socket.gethostname() and _int(
            owner.get("pid")) == os.getpid()

    def claim(self, launch_id: str) -> bool:
        """Claims the run for this process; True if it is ours to run now. Under the
        run's lock: a finished run is never claimed, a live owner's claim is left,
        a stale one is taken over; so two workers never both win a run."""
        if self.finished():
            return False
        _mkdir(self.path)
        with _locked(self.path / CLAIM_LOCK):
            if self.finished():
                return False
            owner = self.owner()
            # Held by a live owner (this process included): not ours to take. Under
            # the lock a claim is never half-written by a live worker, so an
            # unreadable one was left by a dead one.
            if owner and not self.claim_is_stale():
                return False
            write_json_atomic(self._claim_file, {
                "host": socket.gethostname(), "pid": os.getpid(), "launch": launch_id,
                "time": time.time()})
        return True

    def release(self) -> None:
        """Gives the run up, if this process holds it (never another's claim)."""
        if not self._claim_file.exists():
            return
        with _locked(self.path / CLAIM_LOCK):
            if self._mine(self.owner()):
                with _writing(self._claim_file):
                    self._claim_file.unlink(missing_ok=True)

    def touch_claim(self) -> None:
        """The owner's heartbeat: a claim untouched for `STALE_AFTER_S` is stale."""
        with contextlib.suppress(OSError):
            os.utime(self._claim_file)

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(self)

    def writer(self, active: bool = True) -> RunWriter:
        return RunWriter(self.path, active=active)

    def checkpoints(self, active: bool = True) -> Checkpoints:
        return Checkpoints(self.path, active=active)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


class Heartbeat:
    """Touches the runs' claims every `HEARTBEAT_S` while they train (a context
    manager), so that other hosts see their owner alive."""

    def __init__(self, *run_dirs: RunDir):
        self.run_dirs, self.stop = run_dirs, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            for run_dir in self.run_dirs:
                run_dir.touch_claim()

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()


class SweepDir:
    """A sweep's directory (`train --workdir` makes one too): sweep.json, the
    launches, the event log, and `runs/RUN_ID/`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.path / RUNS / run_id)

    def runs(self) -> list[RunDir]:
        """Its run directories (`runs/*`), sorted by name."""
        root = self.path / RUNS
        found = sorted(root.iterdir()) if root.is_dir() else []
        return [RunDir(path) for path in found if RunDir(path).is_run()]

    def record_launch(self, runs: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
        """Writes sweep.json (appending this launch to its history), a pending run
        directory for each new run (`runs`: run id → flat config) and the launch's
        run list; returns the launch id."""
        _mkdir(self.path / RUNS)
        _mkdir(self.path / LAUNCHES)
        sweep_path = self.path / SWEEP
        launch_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        # Read, add, write under the sweep's lock: concurrent launches keep every entry.
        with _locked(self.path / SWEEP_LOCK):
            sweep = read_dict(sweep_path)
            if sweep is not None and not isinstance(sweep.get("launches"), list):
                # Damaged (warned): kept aside, not overwritten; the history restarts.
                kept = sweep_path.with_name(f"{SWEEP}.damaged.{launch_id}")
                with _writing(kept):
                    os.replace(sweep_path, kept)
                print(f"warning: kept the damaged {SWEEP} as {kept}", file=sys.stderr)
                sweep = None
            sweep = sweep or {"launches": []}
            sweep.update({k: v for k, v in meta.items() if k != "launch"})
            sweep["launches"].append({"id": launch_id, **meta.get("launch", {}),
                                      "runs": len(runs)})
            write_json_atomic(sweep_path, sweep)
        for run_id, config in runs.items():
            self.run(run_id).write_pending(config)
        write_json_atomic(self.path / LAUNCHES / f"{launch_id}.json", {"runs": list(runs)})
        return launch_id

    def launch_runs(self, launch_id: str) -> list[str]:
        return read_json(self.path / LAUNCHES / f"{launch_id}.json")["runs"]

    def log_event(self, **event: Any) -> None:
        """One line per start and end of a run in events.jsonl: who ran what, when.
        Short O_APPEND writes land whole, so concurrent workers do not interleave."""
        line = json.dumps({"time": time.time(), "host": socket.gethostname(),
                           "pid": os.getpid(), **event}) + "\n"
        path = self.path / EVENTS
        with _writing(path):
            fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o644)
        try:
            _append(fd, line.encode(), path)
        finally:
            os.close(fd)

    def read_reproduce(self) -> dict[str, Any]:
        """reproduce.json (what `bnlab reproduce` ran here), or {} before any."""
        return read_dict(self.path / REPRODUCE) or {}

    def write_reproduce(self, about: dict[str, Any]) -> None:
        _mkdir(self.path)
        write_json_atomic(self.path / REPRODUCE, about)

    def report_paths(self) -> tuple[Path, Path]:
        """Where the claims report goes: report.md and claims.json."""
        return self.path / REPORT, self.path / CLAIMS

    def write_report(self, markdown: str, provenance: dict[str, Any],
                     claims: list[dict[str, Any]],
                     figures: dict[str, bytes] | None = None) -> None:
        """report.md, claims.json ({"provenance", "claims"}) and the figures (file
        name → PNG bytes), each written whole; report.md last, so the figures it
        shows are there."""
        _mkdir(self.path)
        for name, png in (figures or {}).items():
            write_bytes_atomic(self.path / name, png)
        write_json_atomic(self.path / CLAIMS, {"provenance": provenance, "claims": claims})
        write_text_atomic(self.path / REPORT, markdown)


def find_runs(root: str | Path) -> list[RunDir]:
    """Every run directory at or below `root`, sorted; checkpoint and Slurm log
    folders are not searched."""
    root = Path(root)
    if RunDir(root).is_run():
        return [RunDir(root)]
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in (CHECKPOINT, "slurm"))
        if CONFIG in files and STATUS in files:
            found.append(RunDir(folder))
            subfolders[:] = []  # a run holds no runs
    return sorted(found, key=lambda run: run.path)


class RunWriter:
    """Writes one run's directory. Only process 0 of a multi-process run writes;
    the others get a writer whose methods do nothing."""

    def __init__(self, run_dir: str | Path, active: bool = True):
        self.run_dir = Path(run_dir)
        self.active = active
        self._status: dict[str, Any] = {}
        self._metrics = None
        self._events = None

    def start(self, config: dict[str, Any], hparams: dict[str, Any]) -> None:
        """Clears what an earlier unfinished attempt left, then writes config, env,
        status 'running' and the HParams. config/env/status are replaced atomically,
        never deleted: other workers read status.json at any moment."""
        if not self.active:
            return
        _mkdir(self.run_dir)
        with _writing(self.run_dir / METRICS):
            (self.run_dir / METRICS).unlink(missing_ok=True)
        self._open(config, hparams)

    def resume(self, config: dict[str, Any], hparams: dict[str, Any],
               step: int) -> list[dict[str, Any]]:
        """Reopens an interrupted run at its checkpoint `step`: keeps the metrics up
        to it (returned), drops the rest, and rebuilds the TensorBoard file from them."""
        if not self.active:
            return []
        kept = [r for r in read_metrics(self.run_dir / METRICS) if r["step"] <= step]
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
        write_text_atomic(self.run_dir / METRICS, text)
        self._open(config, hparams, resumed_from_step=step)
        for row in kept:
            self._events.scalars(row["step"], _scalars(row))
        return kept

    def _open(self, config: dict[str, Any], hparams: dict[str, Any], **status: Any) -> None:
        """Writes config, env and status 'running'; opens metrics.jsonl for appending and
        a fresh TensorBoard file (older ones removed) with the HParams."""
        with _writing(self.run_dir):
            (self.run_dir / SUMMARY).unlink(missing_ok=True)
            for old in self.run_dir.glob("events.out.tfevents.*"):
                old.unlink()
            # Temp files of atomic writes that a killed attempt left half-done: this run
            # is ours now (claimed, or a plain `train`), so nobody else is writing them.
            for old in self.run_dir.glob(".*.tmp"):
                old.unlink(missing_ok=True)
        write_json_atomic(self.run_dir / CONFIG, config)
        write_json_atomic(self.run_dir / ENV, environment())
        self._status = {"status": "running", "started": _now(), "host": socket.gethostname(),
                        "pid": os.getpid(), **status}
        write_json_atomic(self.run_dir / STATUS, self._status)
        # Open for the run's life, a line per log; closed by finish() or fail().
        self._metrics = _AppendFile(self.run_dir / METRICS)
        self._events = _EventWriter(self.run_dir)
        self._events.hparams(hparams)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.active:
            return
        row = jsonable({"step": step, **metrics})
        self._metrics.write((json.dumps(row, sort_keys=True) + "\n").encode())
        self._events.scalars(step, _scalars(row))

    def finish(self, status: str, summary: dict[str, Any], **details: Any) -> None:
        """Status first, summary.json last: its presence marks a finished run."""
        if not self.active:
            return
        assert status in ("done", "diverged"), status
        self._events.session_end(status)
        self._close()
        self._status.update(status=status, finished=_now(), **details)
        write_json_atomic(self.run_dir / STATUS, self._status)
        write_json_atomic(self.run_dir / SUMMARY, {"status": status, **summary})

    def fail(self, error: BaseException) -> None:
        """Status 'failed' with the error; 'interrupted' for Ctrl-C (a relaunch
        resumes it, from its checkpoint when it has one). A handler of `error`: where
        the disk refuses this write too, it gives up quietly and `error` goes on."""
        if not self.active:
            return
        if self._events is not None:
            with contextlib.suppress(Unwritable):
                self._events.session_end("interrupted" if isinstance(error, KeyboardInterrupt)
                                         else "failed")
        self._close()
        if isinstance(error, KeyboardInterrupt):
            self._status.update(status="interrupted", finished=_now())
        else:
            message = f"{type(error).__name__}: {error}".strip()
            self._status.update(status="failed", finished=_now(), error=message[:2000])
        with contextlib.suppress(Unwritable):
            write_json_atomic(self.run_dir / STATUS, self._status)

    def _close(self) -> None:
        for handle in (self._metrics, self._events):
            if handle is not None:
                handle.close()
        self._metrics = self._events = None


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics row that TensorBoard plots (not its step)."""
    return {k: v for k, v in row.items() if k != "step" and isinstance(v, int | float)}


class _AppendFile:
    """A file appended to a whole line or record at a time (`_append`): what a
    refused write leaves is the file as it was before it."""

    def __init__(self, path: Path):
        self.path = path
        with _writing(path):
            self._fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o644)

    def write(self, data: bytes) -> None:
        _append(self._fd, bytes(data), self.path)

    def flush(self) -> None:  # every write went to the file already
        pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _EventWriter:
    """TensorBoard scalars and HParams in an event file, written with tensorboard's
    record format on a plain file. (Its EventFileWriter imports TensorFlow for file
    I/O whenever TF is installed: seconds per run and log lines on stderr.)"""

    def __init__(self, run_dir: Path):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self._writer = RecordWriter(_AppendFile(run_dir / name))
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        # RecordWriter hands each record (header, data, checksums) to one write of
        # the _AppendFile: a refused write leaves no part of a record.
        self._writer.write(event.SerializeToString())

    def hparams(self, hparams: dict[str, Any]) -> None:
        """The run's HParams session, its group named by every value but the seed (so
        TensorBoard's HParams view groups a config's seeds; the run id it had named
        each run alone)."""
        from tensorboard.plugins.hparams import plugin_data_pb2

        values = {k: (v if isinstance(v, bool | int | float | str) else json.dumps(v))
                  for k, v in hparams.items() if v is not None}
        group = hashlib.sha256(json.dumps({k: v for k, v in values.items() if k != "seed"},
                                          sort_keys=True).encode()).hexdigest()[:16]
        start = plugin_data_pb2.SessionStartInfo(group_name=group,
                                                 start_time_secs=time.time())
        for name, value in sorted(values.items()):
            if isinstance(value, bool):
                start.hparams[name].bool_value = value
            elif isinstance(value, int | float):
                start.hparams[name].number_value = value
            else:
                start.hparams[name].string_value = value
        # TensorBoard names each session by its folder: the run's directory.
        self._session(plugin_data_pb2.HParamsPluginData(session_start_info=start),
                      "_hparams_/session_start_info")

    def session_end(self, status: str) -> None:
        """How the run ended, for the HParams view's status filter: done is a success,
        diverged and failed a failure, interrupted unknown (a relaunch resumes it)."""
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        code = {"done": api_pb2.STATUS_SUCCESS, "diverged": api_pb2.STATUS_FAILURE,
                "failed": api_pb2.STATUS_FAILURE}.get(status, api_pb2.STATUS_UNKNOWN)
        end = plugin_data_pb2.SessionEndInfo(status=code, end_time_secs=time.time())
        self._session(plugin_data_pb2.HParamsPluginData(session_end_info=end),
                      "_hparams_/session_end_info")

    def _session(self, data, tag: str) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import metadata

        summary = summary_pb2.Summary()
        summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(data),
                          tensor=metadata.NULL_TENSOR)
        self._write(event_pb2.Event(wall_time=time.time(), step=0, summary=summary))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        # train_loss → train/loss, so TensorBoard groups train and test curves.
        summary = summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(
                tag=tag.replace("_", "/", 1) if tag.startswith(("train_", "test_")) else tag,
                simple_value=value)
            for tag, value in values.items() if tag != "time"])
        self._write(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        self._writer.close()


class Checkpoints:
    """Orbax checkpoints of a run's train state in RUN_DIR/checkpoint (the latest
    only); Orbax writes each into a temporary folder and renames it when complete,
    so a killed save leaves no checkpoint a restore would take."""

    def __init__(self, run_dir: str | Path, active: bool = True):
        self.directory = Path(run_dir).resolve() / CHECKPOINT
        self.active = active
        self._manager = None

    def _open(self):
        if self._manager is None:
            import orbax.checkpoint as ocp

            self._manager = ocp.CheckpointManager(
                self.directory, options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, enable_async_checkpointing=False))
        return self._manager

    def latest_step(self) -> int | None:
        if not self.directory.is_dir():
            return None
        return self._open().latest_step()

    def save(self, step: int, host_state: Any) -> None:
        """A refused write (full disk) raises `Unwritable` for the checkpoint folder,
        without Orbax's account of it and with its temporary folder removed; the
        previous checkpoint stays (Orbax deletes it only after the new one is whole)."""
        if not self.active:
            return
        with _quiet_when(Unwritable):
            try:
                self._open().save(step, args=_orbax_args().StandardSave(host_state))
                self._open().wait_until_finished()
            except Exception as error:
                refused = _os_error(error)
                if refused is None:
                    raise
                self._remove_temporary()
                self._manager = None  # reopened by the next call, in a known state
                _drop_closed_loop_callbacks()
                raise Unwritable(self.directory, refused) from error

    def _remove_temporary(self, settle_s: float = 0.5, limit_s: float = 10.0) -> None:
        """Removes the temporary folder of a failed save until it stays gone for
        `settle_s`: TensorStore's writes still in flight when the save raised finish
        later, and create their files (and folders) again."""
        import shutil

        start = quiet_since = time.monotonic()
        while time.monotonic() - start < limit_s:
            left = list(self.directory.glob("*.orbax-checkpoint-tmp*"))
            for tmp in left:
                shutil.rmtree(tmp, ignore_errors=True)
            if left:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settle_s:
                return
            time.sleep(0.05)

    def restore(self, step: int, host_target: Any) -> Any:
        return self._open().restore(step, args=_orbax_args().StandardRestore(host_target))

    def clear(self) -> None:
        if self.active and self.directory.is_dir():
            import shutil

            with _writing(self.directory):
                shutil.rmtree(self.directory)
        self._manager = None


def _os_error(error: BaseException) -> OSError | None:
    """The OS error behind a failed Orbax save: an OSError, or TensorStore's error
    (a ValueError ending in `[os_error_code='28']`); None for any other failure."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        code = re.search(r"os_error_code='?(\d+)", str(seen))
        if code:
            number = int(code.group(1))
            return OSError(number, os.strerror(number))
        seen = seen.__cause__ or seen.__context__
    return None


def _drop_closed_loop_callbacks() -> None:
    """For the rest of the process, drops TensorStore's late callbacks into the event
    loop of a failed Orbax save: writes still in flight when the save raised (and
    Orbax closed its loop) call back into it, each an unraisable RuntimeError 'Event
    loop is closed' printed as a traceback, as late as they finish. Any other
    unraisable exception goes to the hook as before."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_callbacks", False):
        return

    def hook(unraisable) -> None:
        if not (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_callbacks = True
    sys.unraisablehook = hook


class _Kept(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]):
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _quiet_when(kind: type[BaseException]):
    """Holds back what the block prints on stderr and logs to absl's and asyncio's
    loggers, and drops it when the block raises `kind`: Orbax reports a refused write
    in hundreds of lines (its threads' tracebacks, TensorStore's callbacks into a
    closed event loop, futures never retrieved) before it raises the error that says
    it all. Otherwise it is let through as it would have been."""
    import gc

    text, records = io.StringIO(), []
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [_Kept(records)], False
    dropped = False
    try:
        with contextlib.redirect_stderr(text):
            try:
                yield
            except kind:
                gc.collect()  # the failed save's futures: logged now, while held back
                dropped = True
                raise
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
            logger.handlers, logger.propagate = handlers, propagate
        if not dropped:
            sys.stderr.write(text.getvalue())
            for record in records:
                logging.getLogger(record.name).handle(record)


def _orbax_args():
    import orbax.checkpoint as ocp

    return ocp.args
