"""bnlab.fast.heap: once set (as bnlab's commands set it), a CPU step stops
page-faulting its temporaries in on every call; with BNLAB_MALLOC=system, or with
bnlab only imported, it faults them all in, every call.

Each case is a fresh interpreter: the setting is process-wide and must precede
JAX's threads. The step's 128 MiB of temporaries exceed the 64 MiB that glibc maps
afresh from any thread but the main one, the case that needs the single arena."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, resource
import os
import bnlab, bnlab.train, bnlab.cli
from bnlab.fast import heap
if os.environ["CASE"] != "import":
    heap.keep_freed_memory()  # what `bnlab COMMAND` does first
import jax, jax.numpy as jnp

x = jnp.ones((2048, 8192), jnp.float32)
# tanh(x) in two layouts: two 64 MiB temporaries XLA cannot fuse away
step = jax.jit(lambda x: (jnp.tanh(x).T * 2).T.sum(0) + jnp.tanh(x).sum(1).sum()).lower(x).compile()
temp_pages = step.memory_analysis().temp_size_in_bytes // resource.getpagesize()
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# The first calls grow the heap; later ones reuse its freed blocks, but for one
# in ten or so that lands where the freed ones do not fit and grows it again.
print(json.dumps({"kept": heap.kept, "temp_pages": int(temp_pages),
                  "faulting_calls": sum(f > temp_pages / 2 for f in faults[5:])}))
"""


def _faults(*cases: str) -> list[dict]:
    """The script's counts in each case (keep, system: BNLAB_MALLOC; import: bnlab
    imported, the setting not asked for), the interpreters side by side."""
    runs = [subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "CASE": case, "PYTHONPATH": str(ROOT),
                                  "BNLAB_MALLOC": "system" if case == "system" else "keep"})
            for case in cases]
    counts = []
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err[-2000:]
        counts.append(json.loads(out.strip().splitlines()[-1]))
    return counts


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_step_reuses_its_freed_temporaries_instead_of_faulting_them_in():
    kept, system, imported = _faults("keep", "system", "import")
    assert system["temp_pages"] >= 32768  # 128 MiB, the case described above
    assert kept["kept"] is True and system["kept"] is False and imported["kept"] is False
    # Of the 15 calls after the first 5: glibc's defaults fault the temporaries in
    # on every one; kept, on 0 to 3 of them in the runs measured.
    assert system["faulting_calls"] == 15
    assert kept["faulting_calls"] <= 5
    # Importing bnlab (its CLI and training code too) leaves glibc's malloc as it was.
    assert imported["faulting_calls"] == 15
