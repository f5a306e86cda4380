"""The Slurm executor against a real Slurm: scripts/start_local_slurm.sh runs a
one-node cluster on this machine (scripts/test.sh starts it when run as root and
then sets BNLAB_REQUIRE_SLURM=1, so a missing cluster fails instead of skipping)."""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest
from conftest import ROOT

from bnlab import tracking


def _slurm_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                            timeout=30)
    return result.returncode == 0 and any(s in result.stdout for s in ("idle", "mix", "alloc"))


pytestmark = pytest.mark.skipif(
    not _slurm_up() and os.environ.get("BNLAB_REQUIRE_SLURM") != "1",
    reason="no Slurm here (scripts/start_local_slurm.sh starts one, as root)")

SWEEP_FILE = '''
from bnlab.config import load_config_file
from bnlab.sweep import axis, product

def get_config():
    config = load_config_file("{root}/configs/default.py")
    config.dataset = "synthetic"
    config.batch_size = 16
    config.num_steps = 10
    config.log_every = 5
    return config

def get_sweep():
    return product(axis("norm", ["bn", "gn"]), axis("learning_rate", [0.01, 0.02, 0.05]))
'''


def test_a_sweep_through_slurm_runs_every_run_once(tmp_path):
    assert _slurm_up(), "BNLAB_REQUIRE_SLURM=1 but sinfo shows no idle node"
    sweep_file = tmp_path / "sweep.py"
    sweep_file.write_text(SWEEP_FILE.format(root=ROOT))
    workdir = tmp_path / "w"
    result = subprocess.run(
        [sys.executable, "-m", "bnlab", "sweep", str(sweep_file), f"--workdir={workdir}",
         "--executor=slurm", "--jobs=2"], cwd=ROOT, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "submitted Slurm array" in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1])["done"] == 6
    events = [json.loads(line) for line in (workdir / "events.jsonl").read_text().splitlines()]
    ends = Counter(e["run"] for e in events if e["event"] == "end" and e["outcome"] == "done")
    assert len(ends) == 6 and set(ends.values()) == {1}
    # The work ran inside the array's tasks: their logs are there, one folder each.
    array_logs = sorted(p.name for p in (workdir / "slurm").iterdir()
                        if p.is_dir() and "_" in p.name)  # ARRAY_TASK folders
    assert len(array_logs) == 2 and array_logs[0].endswith("_0")
    for run_dir in (workdir / "runs").iterdir():
        assert tracking.read_json(run_dir / "summary.json")["status"] == "done"
