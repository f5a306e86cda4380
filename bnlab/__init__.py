"""bnlab: tests what a popular article claims about Batch Normalization, with real runs."""

from pathlib import Path

__version__ = "0.1.0"


def resource_dir(name: str) -> Path:
    """bnlab's `configs` or `experiments` folder. In a checkout (run from it, or
    installed with `pip install -e .`) they are the repository root's, where the
    README's commands name them; `pip install .` copies them into the package as
    bnlab/configs and bnlab/experiments (pyproject's [tool.setuptools]), the copy
    an installed bnlab reads wherever it runs."""
    package = Path(__file__).resolve().parent
    installed = package / name
    return installed if installed.is_dir() else package.parent / name
