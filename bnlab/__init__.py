"""bnlab: tests what a popular article claims about Batch Normalization, with real runs."""

from bnlab import heap

__version__ = "0.1.0"

# Before JAX starts its threads: without it a CPU step page-faults its temporaries
# in on every call (bnlab/heap.py; BNLAB_MALLOC=system turns it off).
heap.keep_freed_memory()
