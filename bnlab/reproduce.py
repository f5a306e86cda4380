"""`python -m bnlab reproduce`: the experiments behind the article's claims, at one
of three sizes, then the report (`report.write_report`).

Each claim names its experiments (`claims.Claim.experiments`): sweep files under
`experiments/` whose `get_config(scale)` and `get_sweep(scale)` size them. Every
experiment is one sweep in `WORKDIR/<experiment>/`, run by the sweep machinery, so
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
from bnlab import report, sweep, tracking

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"


def experiments_for(claims: tuple[claims_lib.Claim, ...]) -> list[str]:
    """The experiments these claims need, in registry order, those that exist as
    sweep files (a claim whose experiment is not built yet is reported not measured)."""
    names = dict.fromkeys(e for claim in claims for e in claim.experiments)
    return [name for name in names if (EXPERIMENTS_DIR / f"{name}.py").is_file()]


def plan(scale: str, claims: tuple[claims_lib.Claim, ...],
         overrides: dict[str, Any] | None = None,
         workdir: str | Path | None = None) -> dict[str, list[sweep.Run]]:
    """Every run of every experiment the claims need, validated, before anything is
    written: {experiment: runs}. `overrides` apply to every run (e.g. the dataset);
    with `workdir`, runs already there keep their names (`sweep.plan`)."""
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
        planned[name] = sweep.plan(module.get_config(scale), module.get_sweep(scale), mine,
                                   Path(workdir) / name if workdir else None)
    return planned


def reproduce(workdir: str | Path, scale: str, claims: tuple[claims_lib.Claim, ...],
              jobs: int = 1, overrides: dict[str, Any] | None = None,
              progress: bool = True) -> list[claims_lib.Verdict]:
    """Runs the experiments of `claims` (skipping finished runs) and writes the report
    of every claim the runs in `workdir` can judge; returns the verdicts."""
    workdir = Path(workdir)
    if jobs > 1:  # as `sweep`: before planning, which may start JAX
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    planned = plan(scale, claims, overrides, workdir)
    sweep.check([run for runs in planned.values() for run in runs])
    start = time.perf_counter()
    tracking_dir = tracking.SweepDir(workdir)
    about = tracking_dir.read_reproduce() or {"launches": []}
    about.update(scale=scale, overrides=overrides or {})
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

