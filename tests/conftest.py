import logging
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

# 8 simulated CPU devices for the cross-device tests; must precede the first JAX
# import. Single-device runs use the first of them, as they would on a real host.
# The tests compile far more than they compute (hundreds of small programs, a few
# steps each), so LLVM optimizes less (level 1 of 3): tests/test_pack.py, test_train.py
# and the twenty-step cross-device test ran in 132 against 187 s, at the same
# tolerances. Level 0 was faster still but moved a 20-step loss curve by 4e-4, past
# the 1e-4 that test holds: not taken. XLA's HLO passes, which decide what is
# computed, run either way.
# Subprocesses (the CLI's process tests, the notebooks' kernels) inherit both.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=1")

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bnlab.config import load_config_file  # noqa: E402

BNLAB = [sys.executable, "-m", "bnlab"]


def bnlab(*args, timeout=300, **options) -> subprocess.CompletedProcess:
    """`python -m bnlab ARGS` as a user runs it: a real process, from the repository
    root. For what only a process shows: a run end to end, a kill, the interpreter's
    own output, what is read at start-up. The rest goes through the `cli` fixture."""
    return subprocess.run([*BNLAB, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **options)


@dataclass
class CliResult:
    """What the tests read of a `subprocess.CompletedProcess`."""
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capfd, caplog, monkeypatch):
    """`cli(*ARGS)`: `python -m bnlab ARGS` inside this process (bnlab.cli.main), for
    what ends before a compile (bad input, help, dry runs, ls, report), without a new
    interpreter's imports and JAX's start each call. As `bnlab()`: from the repository
    root, output read at the file descriptors, and on stderr too what the process
    would print there: warnings (under the interpreter's default filters) and log
    records of level WARNING and up. A train command points JAX's persistent
    compilation cache at ~/.cache/bnlab/xla before its checks: put back after each
    call. What only a fresh process shows stays with `bnlab()`."""
    import jax

    from bnlab.cli import main

    monkeypatch.chdir(ROOT)

    def run(*args) -> CliResult:
        capfd.readouterr()
        caplog.clear()
        cache_dir = jax.config.jax_compilation_cache_dir
        try:
            with warnings.catch_warnings(record=True) as shown:
                warnings.resetwarnings()
                for ignored in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                                ResourceWarning):
                    warnings.simplefilter("ignore", ignored)
                code = main(["bnlab", *map(str, args)])
        except SystemExit as exit_:
            code = 0 if exit_.code is None else exit_.code
        finally:
            jax.config.update("jax_compilation_cache_dir", cache_dir)
        out, err = capfd.readouterr()
        err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
                       for w in shown)
        err += "".join(f"{r.levelname}:{r.name}:{r.getMessage()}\n" for r in caplog.records
                       if r.levelno >= logging.WARNING)
        return CliResult(code, out, err)

    return run


def assert_one_line_error(result, message: str) -> None:
    """Bad input: exit code 2, and on stderr one line, `error: ...` holding
    `message` (no traceback, nothing else)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]


@pytest.fixture
def small_config():
    """The default config, shrunk: 20 steps of batch 32 on 1,024 real Fashion-MNIST
    images, evaluated on the first 2,000 test images."""
    config = load_config_file(ROOT / "configs" / "default.py")
    config.train_size = 1024
    config.test_size = 2000
    config.batch_size = 32
    config.num_steps = 20
    config.log_every = 5
    return config


@pytest.fixture
def synthetic_config(small_config):
    config = small_config
    config.dataset = "synthetic"
    config.train_size = None
    config.test_size = None  # all 256: more is an error
    return config


@pytest.fixture(scope="session")
def analysis_sweep(tmp_path_factory):
    """A real sweep for the analysis tests and the notebooks: bn and gn at batch 4
    and 16 (learning rate zipped with batch) × seeds 0, 1, with gradient norms
    logged, plus no norm at lr 0.05 and at lr 1e6 (which diverges): 10 runs of 10
    steps on synthetic data."""
    from bnlab import sweep

    workdir = tmp_path_factory.mktemp("analysis_sweep")
    base = load_config_file(ROOT / "configs" / "default.py")
    base.update(dataset="synthetic", num_steps=10, log_every=5, log_grad_norms=True)
    grid = sweep.chain(
        sweep.product(sweep.axis("norm", ["bn", "gn"]),
                      sweep.zipped(batch_size=[4, 16], learning_rate=[0.0125, 0.05]),
                      sweep.axis("seed", [0, 1])),
        sweep.product(sweep.axis("norm", ["none"]), sweep.axis("batch_size", [16]),
                      sweep.axis("learning_rate", [0.05, 1e6]), sweep.axis("seed", [0])))
    launch = sweep.write_plan(workdir, sweep.plan(base, grid), {})
    sweep.work(workdir, launch)
    return workdir
