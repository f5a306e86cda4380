"""`python -m bnlab reproduce`: the experiments behind the article's claims, at one
of three sizes, then the report (`report.write_report`).

Each claim names its experiments (`claims.Claim.experiments`): sweep files under
`experiments/` whose `get_config(scale)` and `get_sweep(scale)` size them. Every
experiment is one sweep in `WORKDIR/<experiment>/`, its grid run once per disjoint
set of seeds (`seed_sets`; `--seed_offset` picks other sets), so that the report can
judge each claim on each set alone. It is run by the sweep machinery, so
a relaunch skips finished runs and restarts interrupted ones; runs that differ only
in learning rate, weight decay and seed train packed where packing pays (on an
accelerator). The report goes to WORKDIR.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from bnlab import claims as claims_lib
from bnlab import report, resource_dir, sweep, tracking

# experiments/ (in an installed bnlab, its copy inside the package: `bnlab.resource_dir`).
EXPERIMENTS_DIR = resource_dir("experiments")


def experiments_for(claims: tuple[claims_lib.Claim, ...]) -> list[str]:
    """The experiments these claims need, in registry order, those that exist as
    sweep files (a claim whose experiment is not built yet is reported not measured)."""
    names = dict.fromkeys(e for claim in claims for e in claim.experiments)
    return [name for name in names if (EXPERIMENTS_DIR / f"{name}.py").is_file()]


# Every verdict is decided on this many disjoint sets of seeds, each alone, and
# stands only where they agree (`claims.replicated`).
REPLICATES = 2


def seed_sets(count: int, seed_offset: int = 0,
              replicates: int = REPLICATES) -> list[list[int]]:
    """The disjoint seed sets of an experiment with `count` seeds (0 … count-1 in its
    grid): those shifted by `seed_offset`, then by `count` for each further set. A
    seed also sets the data order, so each set trains on its own orders."""
    return [[seed_offset + r * count + s for s in range(count)] for r in range(replicates)]


def _seed_count(name: str, grid: list[dict[str, Any]]) -> int:
    """How many seeds an experiment's grid has: they must be 0 … n-1 (`sweep.seeds`)."""
    seeds = sorted({point["seed"] for point in grid if "seed" in point})
    if seeds != list(range(len(seeds))):
        raise ValueError(f"experiments/{name}.py: its seeds must be 0 ... n-1 "
                         f"(sweep.seeds), not {seeds}")
    return len(seeds)


def _with_seed_sets(grid: list[dict[str, Any]], sets: list[list[int]]) -> list[dict[str, Any]]:
    """The experiment's grid once per seed set: its seed i becomes set r's i-th."""
    out = []
    for seeds in sets:
        out += [{**point, "seed": seeds[point["seed"]]} if "seed" in point else point
                for point in grid]
    return list({repr(sorted(p.items())): p for p in out}.values())  # unseeded: once


def planned_seed_sets(scale: str, claims: tuple[claims_lib.Claim, ...],
                      seed_offset: int = 0) -> dict[str, list[list[int]]]:
    """{experiment: its seed sets} of a reproduction: each experiment has its own
    number of seeds (sized by a pilot, `sweep.seeds`), so its own sets."""
    out = {}
    for name in experiments_for(claims):
        module = sweep.load_sweep_file(EXPERIMENTS_DIR / f"{name}.py")
        out[name] = seed_sets(_seed_count(name, module.get_sweep(scale)), seed_offset)
    return out


def plan(scale: str, claims: tuple[claims_lib.Claim, ...],
         overrides: dict[str, Any] | None = None,
         workdir: str | Path | None = None, seed_offset: int = 0) -> dict[str, list[sweep.Run]]:
    """Every run of every experiment the claims need, validated, before anything is
    written: {experiment: runs}, each experiment's grid once per seed set
    (`planned_seed_sets`). `overrides` apply to every run (e.g. the dataset); with
    `workdir`, runs already there keep their names (`sweep.plan`)."""
    planned = {}
    for name in experiments_for(claims):
        module = sweep.load_sweep_file(EXPERIMENTS_DIR / f"{name}.py")
        # An experiment's FIXED fields are what it tests with (the sequence
        # experiment's dataset and model): overrides such as the dataset pass them by.
        fixed = set(getattr(module, "FIXED", ()))
        mine = {k: v for k, v in (overrides or {}).items() if k not in fixed}
        if len(mine) < len(overrides or {}):
            print(f"{name}: keeps its own {', '.join(sorted(fixed & set(overrides or {})))}",
                  flush=True)
        grid = module.get_sweep(scale)
        sets = seed_sets(_seed_count(name, grid), seed_offset)
        planned[name] = sweep.plan(module.get_config(scale), _with_seed_sets(grid, sets), mine,
                                   Path(workdir) / name if workdir else None)
    return planned


def reproduce(workdir: str | Path, scale: str, claims: tuple[claims_lib.Claim, ...],
              jobs: int = 1, overrides: dict[str, Any] | None = None,
              progress: bool = True, seed_offset: int = 0) -> list[claims_lib.Verdict]:
    """Runs the experiments of `claims` on each seed set (skipping finished runs) and
    writes the report of every claim the runs in `workdir` can judge; returns the
    verdicts."""
    workdir = Path(workdir)
    if jobs > 1:  # as `sweep`: before planning, which may start JAX
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    planned = plan(scale, claims, overrides, workdir, seed_offset)
    sweep.check([run for runs in planned.values() for run in runs])
    start = time.perf_counter()
    tracking_dir = tracking.SweepDir(workdir)
    about = tracking_dir.read_reproduce() or {"launches": []}
    # The report judges these sets, and only these (runs of another offset in the same
    # directory are left out of it).
    about.update(scale=scale, overrides=overrides or {}, seed_offset=seed_offset)
    if not isinstance(about.get("seed_sets"), dict):
        about["seed_sets"] = {}
    about["seed_sets"].update(planned_seed_sets(scale, claims, seed_offset))
    # What ran it: commit, versions, devices and host (each run has its own env.json).
    about["environment"] = {k: v for k, v in tracking.environment().items() if k != "argv"}
    unfinished: list[str] = []
    for number, (name, runs) in enumerate(planned.items(), start=1):
        folder = workdir / name
        finished = sum(tracking.SweepDir(folder).run(r.run_id).finished() for r in runs)
        print(f"[{number}/{len(planned)}] {name}: {len(runs)} runs, {finished} finished before",
              flush=True)
        module_file = EXPERIMENTS_DIR / f"{name}.py"
        launch = sweep.write_plan(folder, runs, {
            "sweep_file": str(module_file), "scale": scale, "overrides": overrides or {},
            "launch": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv,
                       "jobs": jobs, "host": socket.gethostname()}})
        sweep.run_local(folder, launch, jobs, progress=progress, pack={"pack": True})
        try:
            sweep.check_finished(sweep.wait_for_runs(folder, [r.run_id for r in runs]), folder)
        except tracking.Unfinished as error:
            unfinished.append(f"{name}: {error}")
            print(f"  {error}", flush=True)
    wall = time.perf_counter() - start
    about["launches"].append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": wall,
                              "claims": [c.id for c in claims], "host": socket.gethostname()})
    about["wall_s"] = wall
    tracking_dir.write_reproduce(about)
    if unfinished:  # no report from part of the data; `bnlab report` makes one on demand
        raise tracking.Unfinished(f"{len(unfinished)} experiment(s) have runs that did "
                                  f"not finish, so no report was written: {unfinished[0]}")
    return report.write_report(workdir, workdir)

