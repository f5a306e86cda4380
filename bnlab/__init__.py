"""bnlab: tests what a popular article claims about Batch Normalization, with real runs."""

__version__ = "0.1.0"
