"""Keep freed memory in the process, so a CPU step does not page-fault its buffers
in anew on every call.

XLA's CPU backend allocates a step's temporary buffers with malloc on each call
and frees them after. glibc hands an allocation over its mmap threshold (at most
32 MiB) to the kernel as a fresh mapping and unmaps it when freed, and a thread
other than the main one (XLA runs steps on its own) maps anything over 64 MiB
whatever the threshold: every call then page-faults all of its temporaries in
again, zero-filled by the kernel. Measured on the 2-core CI machine, one train
step per call at batch 128:

- SimpleCNN/GN (46 MiB of temporaries): 11,690 page faults a call, 37.0 ms;
  0.8 faults and 23.4 ms with this module's settings.
- ResNet-20/BN (280 MiB): 71,610 faults a call; none with the settings, and the
  step took 315-400 ms against 400-440 ms (bench.py, docs/PERFORMANCE.md).

The settings: one malloc arena for all threads, no mmap for large blocks, and no
trimming of the heap's top, so freed blocks are reused in place. Their cost is
that the process keeps the memory it peaked at (its resident size does not shrink
between steps); ResNet-20 at batch 128 peaked at 1.36 against 0.93 GiB.

They must be set before JAX's threads first allocate, so `bnlab/__init__.py` sets
them when bnlab is imported; a process that ran JAX before importing bnlab keeps
most of the gain (no mmap under 64 MiB) but not the arena. `BNLAB_MALLOC=system`
leaves glibc's defaults. Other C libraries (macOS, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt's parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
SETTINGS = {_M_ARENA_MAX: 1, _M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 2**31 - 1}

kept = False  # whether keep_freed_memory() has set glibc's malloc


def keep_freed_memory() -> bool:
    """Sets glibc's malloc to keep and reuse freed memory (see the module's
    docstring); True where it did, False where it is off or not glibc."""
    global kept
    if kept:
        return True
    if os.environ.get("BNLAB_MALLOC", "keep") == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl's mallopt does nothing
            return False
    except OSError:
        return False
    kept = all(libc.mallopt(param, value) == 1 for param, value in SETTINGS.items())
    return kept
