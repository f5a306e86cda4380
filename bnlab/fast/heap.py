"""Keep freed memory in the process, so a CPU step does not page-fault its buffers
in anew on every call.

XLA's CPU backend allocates a step's temporary buffers with malloc on each call
and frees them after. glibc hands an allocation over its mmap threshold (at most
32 MiB) to the kernel as a fresh mapping and unmaps it when freed, and a thread
other than the main one (XLA runs steps on its own) maps anything over 64 MiB
whatever the threshold: every call then page-faults all of its temporaries in
again, zero-filled by the kernel: SimpleCNN/GN's step at batch 128 ran 1.6× faster
with this module's settings on the 2-core CI machine (docs/PERFORMANCE.md, "Freed
memory kept in the process").

The settings: one malloc arena for all threads, no mmap for large blocks, and no
trimming of the heap's top, so freed blocks are reused in place. Their cost is
that the process keeps the memory it peaked at (its resident size does not shrink
between steps).

They must be set before JAX's threads first allocate, so bnlab's commands set
them as they start (`cli.main`); a run started from Python sets them when it
chooses its kernels (`fast.choose`, on a CPU), which keeps most of the gain (no
mmap under 64 MiB) but not the arena. Importing bnlab changes nothing.
`BNLAB_MALLOC=system` leaves glibc's defaults. Other C libraries (macOS, musl)
are left alone.
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
