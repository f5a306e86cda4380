"""bnlab.heap: with bnlab imported, a CPU step stops page-faulting its temporaries
in on every call; with BNLAB_MALLOC=system it faults them all in, every call.

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
import bnlab, bnlab.heap
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
print(json.dumps({"kept": bnlab.heap.kept, "temp_pages": int(temp_pages),
                  "faulting_calls": sum(f > temp_pages / 2 for f in faults[5:])}))
"""


def _faults(*mallocs: str) -> list[dict]:
    """The script's counts under each BNLAB_MALLOC, the interpreters side by side."""
    runs = [subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "BNLAB_MALLOC": m, "PYTHONPATH": str(ROOT)})
            for m in mallocs]
    counts = []
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err[-2000:]
        counts.append(json.loads(out.strip().splitlines()[-1]))
    return counts


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_step_reuses_its_freed_temporaries_instead_of_faulting_them_in():
    kept, system = _faults("keep", "system")
    assert system["temp_pages"] >= 32768  # 128 MiB, the case described above
    assert kept["kept"] is True and system["kept"] is False
    # Of the 15 calls after the first 5: glibc's defaults fault the temporaries in
    # on every one; kept, on 0 to 3 of them in the runs measured.
    assert system["faulting_calls"] == 15
    assert kept["faulting_calls"] <= 5
