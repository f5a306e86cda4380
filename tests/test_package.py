"""bnlab as a package: `pip install .` (not editable) into a fresh virtualenv, then the
`bnlab` console command run from another directory, where only the installed copy
(with its configs/ and experiments/ inside: pyproject's [tool.setuptools]) can serve."""

import json
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT

# What a build must never see or ship: tracking directories, build leftovers, caches.
NOT_SOURCE = shutil.ignore_patterns(".git", "runs", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".ruff_cache", ".whl", ".data")


def _run(*args, cwd, timeout=120):
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
def test_pip_install_gives_a_bnlab_command_that_runs_from_anywhere(tmp_path):
    # The repository as a clean checkout has it, copied so the build's in-tree
    # leftovers (build/, bnlab.egg-info) stay out of the checkout, with a decoy
    # tracking directory that package discovery must leave out of the wheel.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    (source / "runs" / "decoy").mkdir(parents=True)
    (source / "runs" / "decoy" / "__init__.py").write_text("")

    # --system-site-packages: JAX and the rest come from this interpreter's
    # installation, not a download. Where this interpreter is itself a virtualenv,
    # its site-packages come along through a .pth file (appended: the venv's own first).
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv,
         cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                        cwd=tmp_path).stdout.strip())
    outer = [*site.getsitepackages(), sysconfig.get_path("purelib")]
    (purelib / "outer_site.pth").write_text("\n".join(dict.fromkeys(outer)) + "\n")
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", source,
         cwd=tmp_path)

    # Only bnlab, its configs and sweep files, its metadata and the command: no
    # runs/, notebooks/, tests/ or experiments/results/.
    (record,) = purelib.glob("bnlab-*.dist-info/RECORD")
    shipped = {line.split(",")[0] for line in record.read_text().splitlines()}
    tops = {path.split("/")[0] for path in shipped if not path.startswith("..")}
    assert tops == {"bnlab", record.parent.name}, tops
    assert "bnlab/configs/default.py" in shipped
    assert "bnlab/experiments/batch_size.py" in shipped
    assert not [p for p in shipped if "/results/" in p or "decoy" in p]

    # From tmp_path the checkout cannot be imported: bnlab is the venv's copy.
    where = _run(python, "-c", "import bnlab, bnlab.config as c, bnlab.reproduce as r; "
                 "print(bnlab.__file__, c.DEFAULT_CONFIG_FILE, r.EXPERIMENTS_DIR, sep='\\n')",
                 cwd=tmp_path).stdout.split()
    assert all(Path(p).is_relative_to(purelib / "bnlab") for p in where), where
    assert Path(where[1]).is_file() and Path(where[2], "batch_size.py").is_file()

    command = venv / "bin" / "bnlab"
    assert "commands:" in _run(command, "--help", cwd=tmp_path).stdout
    workdir = tmp_path / "w"
    _run(command, "train", "--config.dataset=synthetic", "--config.num_steps=3",
         "--config.batch_size=8", "--workdir", workdir, cwd=tmp_path)
    (summary,) = workdir.glob("runs/*/summary.json")
    assert json.loads(summary.read_text())["status"] == "done"
    # A sweep file named by its installed path plans from the installed default config.
    plan = _run(command, "sweep", Path(where[2], "batch_size.py"), "--workdir", tmp_path / "s",
                "--dry_run", cwd=tmp_path)
    assert plan.stdout.strip()
