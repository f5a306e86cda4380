"""`bnlab reproduce --scale smoke`: the claims' experiments run for real (small),
and the report they give is the one `bnlab report` rebuilds from the runs alone."""

import json

import pytest
from conftest import assert_one_line_error, bnlab

from bnlab import analysis, claims, reproduce, tracking
from bnlab import report as report_lib

MEASURED = tuple(c.id for c in claims.CLAIMS)  # every claim has a rule and runs for it


@pytest.mark.slow
def test_smoke_reproduction_runs_every_experiment_and_reports_every_claim(tmp_path, capsys):
    workdir = tmp_path / "smoke"
    result = bnlab("reproduce", "--scale", "smoke", "--workdir", str(workdir), "--jobs", "1",
                   timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = analysis.load_runs(workdir)
    assert set(runs["sweep"]) == set(claims.EXPERIMENTS)
    # Each experiment's grid once per seed set: smoke's seeds 0-1, then 2-3 (54 runs
    # a set, 4 of them gradient_flow's one-step probes at initialization, 4 noisy BN,
    # 4 C11's normalization batches).
    assert set(runs["status"]) <= {"done", "diverged"} and len(runs) == 108
    assert set(runs["seed"]) == {0, 1, 2, 3}
    written = json.loads((workdir / "claims.json").read_text())
    assert [c["id"] for c in written["claims"]] == [c.id for c in claims.CLAIMS]
    report = (workdir / "report.md").read_text()
    # Provenance: the commit the runs recorded, the scale; smoke is marked as no evidence.
    commit = tracking.environment()["git_commit"] or "unknown"
    assert written["provenance"]["git_commit"] == {commit: 108}
    assert written["provenance"]["scale"] == "smoke"
    assert f"- bnlab commit of the runs: {commit}; of this report's rules: {commit}" in report
    assert written["provenance"]["report_commit"] == commit
    assert report_lib.SMOKE_WARNING in report and "## Limitations" in report
    # Where the time went: each experiment's run seconds, split, and all of them.
    assert "## Time" in report and "| all | 108 | " in report
    assert "| generalization | 8 | " in report
    for claim in written["claims"]:
        measured = claim["id"] in MEASURED
        assert (claim["verdict"] != claims.NOT_MEASURED) == measured, claim
        assert claim["verdict"] in (claims.SUPPORTED, claims.NOT_SUPPORTED, claims.INCONCLUSIVE,
                                    claims.NOT_MEASURED)
        short = next(c.short for c in claims.CLAIMS if c.id == claim["id"])
        assert f"| [{claim['id']} {short}](#{claim['id'].lower()}) | {claim['verdict']} |" in report
        assert (workdir / f"{claim['id']}.png").stat().st_size > 5000  # a figure each
        assert f"![{claim['id']}]({claim['id']}.png)" in report
        if claim["id"] != "C7":  # judged on each seed set alone (C7 trains nothing)
            # (named per experiment where a claim's runs span two: C3, C9)
            first, second = (r["seeds"] for r in claim["details"]["replicates"])
            assert first.startswith("seeds 0, 1") and second.startswith("seeds 2, 3"), claim
            assert ("(" in first) == (len(next(c for c in claims.CLAIMS
                                               if c.id == claim["id"]).experiments) > 1)
    # Every verdict comes from the runs: rebuilding from the directory gives the same.
    report_lib.write_report(workdir, tmp_path / "rebuilt")
    assert json.loads((tmp_path / "rebuilt" / "claims.json").read_text()) == written
    # A relaunch of one claim trains nothing: its runs are finished.
    reproduce.reproduce(workdir, "smoke", claims.claims_by_id(["c6"]), progress=False)
    assert "placement: 8 runs, 8 finished before" in capsys.readouterr().out
    assert json.loads((workdir / "claims.json").read_text()) == written


def test_bad_reproduce_input_is_one_line_and_writes_nothing(cli, tmp_path):
    for args, message in ((["--scale", "huge"], "flag --scale=huge: value should be one of"),
                          (["--claims", "C1,C42"], "unknown claim(s) C42"),
                          (["--config.nrom=bn"], "unknown config field 'nrom'"),
                          (["--seed_offset", "-1"], "flag --seed_offset=-1: -1 is not a "
                                                    "non-negative integer")):
        assert_one_line_error(cli("reproduce", *args, "--workdir", str(tmp_path / "w")),
                              message)
    assert not (tmp_path / "w").exists()


def test_a_seed_offset_plans_disjoint_seed_sets_of_the_same_grid():
    first = reproduce.plan("quick", claims.claims_by_id(["C6"]))["placement"]
    other = reproduce.plan("quick", claims.claims_by_id(["C6"]), seed_offset=100)["placement"]
    assert reproduce.seed_sets(3, 100) == [[100, 101, 102], [103, 104, 105]]
    count = len(first) // 4  # two placements, two sets
    assert reproduce.planned_seed_sets("quick", claims.claims_by_id(["C6"]), 100) == {
        "placement": reproduce.seed_sets(count, 100)}
    assert {r.config.seed for r in first} == set(range(2 * count))
    assert {r.config.seed for r in other} == set(range(100, 100 + 2 * count))

    def without_seed(runs):
        return sorted(repr({k: v for k, v in r.overrides.items() if k != "seed"}) for r in runs)

    assert without_seed(first) == without_seed(other)


def test_full_scale_plans_resnet20_five_seeds_and_takes_a_dataset_override(capsys):
    planned = reproduce.plan("full", claims.CLAIMS, {"dataset": "cifar10"})
    assert set(planned) == set(claims.EXPERIMENTS)
    batch = planned["batch_size"]
    assert {r.config.model for r in batch} == {"resnet20", "mlp"}
    assert {r.config.seed for r in batch} == set(range(10))  # two sets of five
    assert {r.config.batch_size for r in batch} == {2, 4, 8, 16, 32}
    # The sequence experiment keeps its data: the claim is about sequences.
    assert {r.config.dataset for r in planned["sequences"]} == {"fashion_mnist_rows"}
    assert {r.config.dataset for name, runs in planned.items() if name != "sequences"
            for r in runs} == {"cifar10"}
    assert "sequences: keeps its own dataset" in capsys.readouterr().out
