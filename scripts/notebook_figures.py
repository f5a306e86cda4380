"""Regenerates notebooks/figures/: runs every notebook headless (nbclient), its
kernel started in notebooks/ as `jupyter lab notebooks/NAME.ipynb` starts it, on
the tracking directories its first cell names, and keeps what it draws. The
notebooks' default paths are what the README's reproduction writes:

    python -m bnlab reproduce --scale quick --claims C2,C4,C5 --workdir runs/reproduce
    python scripts/notebook_figures.py                  # -> notebooks/figures/*.png
    python scripts/notebook_figures.py --runs runs/full --out /tmp/figures

`--runs DIR`: a reproduction directory other than runs/reproduce (each notebook
reads DIR/<its experiment>, 04_explore all of DIR). The figure folder is emptied of
PNGs first (not with `--only`, which redraws some), so it holds exactly what this
run drew. The notebooks stay as stored
(without outputs). Exit 2 (one line) when a tracking directory is missing, 1 when
a notebook fails (its error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
# The notebooks' default RUNS paths start with this (relative to notebooks/).
DEFAULT_RUNS = "../runs/reproduce"


def runs_path(source: str) -> str:
    """The RUNS path a notebook's first cell names."""
    line = source.splitlines()[0]
    if not line.startswith("RUNS = "):
        raise ValueError(f"the first cell does not start with RUNS = ...: {line!r}")
    return line.split("=", 1)[1].split("#")[0].strip().strip("\"'")


def run(path: Path, runs: Path | None, figures: Path, timeout: int = 1200) -> None:
    """Executes one notebook with its kernel started in the notebook's folder (as
    Jupyter starts it), its FIGURES set to `figures` and, with `runs`, its RUNS moved
    from runs/reproduce to `runs`; raises on a failing cell."""
    import nbformat
    from nbclient import NotebookClient

    book = nbformat.read(path, as_version=4)
    first = book.cells[0]
    lines = first.source.splitlines()
    if runs is not None:
        moved = runs_path(first.source).replace(DEFAULT_RUNS, str(runs.resolve()), 1)
        lines[0] = f"RUNS = {moved!r}"
    lines = [f"FIGURES = {str(figures.resolve())!r}" if line.startswith("FIGURES = ")
             else line for line in lines]
    first.source = "\n".join(lines)
    NotebookClient(book, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, help="a reproduction directory (default: the "
                        "notebooks' own paths, ../runs/reproduce from notebooks/)")
    parser.add_argument("--out", type=Path, default=NOTEBOOKS / "figures",
                        help="the figure folder (default: notebooks/figures)")
    parser.add_argument("--only", help="the notebooks whose name holds this, e.g. 01")
    args = parser.parse_args(argv)
    books = [p for p in sorted(NOTEBOOKS.glob("*.ipynb")) if not args.only or args.only in p.name]
    import nbformat

    # Every tracking directory first: a missing one is one line, before anything is drawn.
    for path in books:
        named = runs_path(nbformat.read(path, as_version=4).cells[0].source)
        where = (Path(named.replace(DEFAULT_RUNS, str(args.runs), 1)) if args.runs
                 else NOTEBOOKS / named)
        if not where.is_dir():
            print(f"error: {path.name} reads {where}, which is not there: run `python -m bnlab "
                  "reproduce --scale quick --claims C2,C4,C5 --workdir runs/reproduce` first, "
                  "or pass --runs DIR", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.only:  # all of them: the folder holds what this run drew, nothing older
        for old in args.out.glob("*.png"):
            old.unlink()
    for path in books:
        print(f"{path.name} ...", flush=True)
        try:
            run(path, args.runs, args.out)
        except Exception as error:  # nbclient's CellExecutionError holds the traceback
            print(f"error: {path.name}: {error}", file=sys.stderr)
            return 1
    drawn = sorted(p.name for p in args.out.glob("*.png"))
    print(f"wrote {len(drawn)} figures to {args.out}: {', '.join(drawn)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
