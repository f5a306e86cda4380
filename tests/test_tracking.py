"""The tracking directory: atomic files, TensorBoard readability, crash behaviour."""

import ast
import json
import os
import signal
import subprocess
import time

import ml_collections
import pytest
from conftest import BNLAB, ROOT
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from bnlab import tracking, train


def test_tensorboard_reads_the_scalars_and_hparams(synthetic_config, tmp_path):
    synthetic_config.norm = "gn"
    train.train_and_evaluate(synthetic_config, str(tmp_path))
    accumulator = event_accumulator.EventAccumulator(str(tmp_path))
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    assert {"train/loss", "train/accuracy", "test/loss", "test/accuracy",
            "learning_rate"} <= set(scalars)
    losses = accumulator.Scalars("train/loss")
    rows = tracking.read_metrics(tmp_path / "metrics.jsonl")
    assert [e.step for e in losses] == [r["step"] for r in rows]
    assert [e.value for e in losses] == pytest.approx([r["train_loss"] for r in rows], rel=1e-6)

    content = accumulator.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["norm"].string_value == "gn"
    assert start.hparams["learning_rate"].number_value == pytest.approx(0.05)
    assert start.hparams["norm_batch_size"].number_value == 1
    assert start.hparams["sgd_batch_size"].number_value == 32
    end = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_end_info"]).session_end_info
    assert end.status == api_pb2.STATUS_SUCCESS


def _session(run_dir):
    accumulator = event_accumulator.EventAccumulator(str(run_dir))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")
    data = {tag: plugin_data_pb2.HParamsPluginData.FromString(value)
            for tag, value in content.items()}
    return (data["_hparams_/session_start_info"].session_start_info,
            data["_hparams_/session_end_info"].session_end_info)


def test_tensorboard_groups_a_configs_seeds_and_knows_how_each_run_ended(synthetic_config,
                                                                          tmp_path):
    """HParams' group_name was the run id (each run its own group) and no session
    ended (every run STATUS_UNKNOWN): seeds now share a group, another learning rate
    does not, and a diverged run is a failure."""
    for name, update in (("a", {"seed": 0}), ("b", {"seed": 1}),
                         ("c", {"seed": 0, "learning_rate": 0.01}),
                         ("d", {"seed": 0, "learning_rate": 1e6, "momentum": 0.0})):
        config = synthetic_config.copy_and_resolve_references()
        config.update(update)
        train.train_and_evaluate(config, str(tmp_path / name))
    (a, a_end), (b, _), (c, _), (_, d_end) = (_session(tmp_path / n) for n in "abcd")
    assert a.group_name == b.group_name != c.group_name
    assert a_end.status == api_pb2.STATUS_SUCCESS
    assert tracking.read_json(tmp_path / "d" / "summary.json")["status"] == "diverged"
    assert d_end.status == api_pb2.STATUS_FAILURE


def test_run_directory_files(synthetic_config, tmp_path):
    train.train_and_evaluate(synthetic_config, str(tmp_path))
    config = tracking.read_json(tmp_path / "config.json")
    assert config["norm"] == "bn" and config["batch_size"] == 32
    env = tracking.read_json(tmp_path / "env.json")
    assert env["platform"] == "cpu" and env["jax"] and env["device_count"] >= 1
    summary = tracking.read_json(tmp_path / "summary.json")
    assert summary["status"] == "done" and summary["num_params"] > 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "summary.json"
    with pytest.raises(TypeError):
        tracking.write_json_atomic(path, {"bad": object()})
    assert list(tmp_path.iterdir()) == []
    tracking.write_json_atomic(path, {"a": float("nan"), "b": [1.5]})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5]}  # strict JSON, no NaN


def test_read_metrics_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "x": 1.0}\n{"step": 2, "x": 2.0}\n{"step": 3, "x"')
    assert tracking.read_metrics(path) == [{"step": 1, "x": 1.0}, {"step": 2, "x": 2.0}]


def test_run_id_is_readable_and_deterministic():
    from bnlab import config as config_lib
    from bnlab import train

    flat = {**config_lib.defaults(), "norm": "gn", "batch_size": 8}
    varied = ["norm", "batch_size"]
    a = tracking.run_id(flat, varied, 8, 1, train.run_digest(flat))
    assert a == f"norm=gn,batch_size=8-sgd8-nb1-{train.run_digest(flat)}"
    assert train.run_digest(flat) == train.run_digest(dict(flat))
    assert train.run_digest(flat) != train.run_digest({**flat, "seed": 1})


def test_the_digest_hashes_what_differs_from_the_defaults(monkeypatch):
    """Issue 18, probes 13-14: an override that sets a default, a field added to
    bnlab with its default, an int for a float field: the same run."""
    from bnlab import config as config_lib
    from bnlab import train

    defaults = config_lib.defaults()
    flat = {**defaults, "norm": "gn"}
    digest = train.run_digest(flat)
    # Fields at their default (but those of ABSENT_MEANS, whose absence means the old
    # value) may as well be missing:
    assert digest == train.run_digest({"norm": "gn", **{
        field: defaults[field] for field in config_lib.ABSENT_MEANS}})
    assert digest == train.run_digest({**flat, "steps_per_call": 5})  # launch fields
    assert digest != train.run_digest({**flat, "learning_rate": 0.5})
    assert train.run_digest({**flat, "learning_rate": 1}) == train.run_digest(
        {**flat, "learning_rate": 1.0})
    # A field bnlab adds later, with a default that computes as before:
    monkeypatch.setattr(config_lib, "defaults", lambda: {**defaults, "new_field": 3})
    assert train.run_digest({**flat, "new_field": 3}) == digest
    assert train.run_digest({**flat, "new_field": 4}) != digest
    # ... or one whose default computes differently: an old config means the old value.
    monkeypatch.setattr(config_lib, "ABSENT_MEANS", {"new_field": 4})
    assert train.run_digest(flat) == train.run_digest({**flat, "new_field": 4})
    assert train.run_digest(flat) != train.run_digest({**flat, "new_field": 3})


def test_a_killed_run_leaves_no_summary(tmp_path):
    workdir = tmp_path / "w"
    command = [*BNLAB, "train", "--config", "configs/default.py",
               "--config.dataset=synthetic", "--config.num_steps=100000",
               "--config.log_every=2", "--config.batch_size=8", f"--workdir={workdir}"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            metrics = list(workdir.glob("runs/*/metrics.jsonl"))
            if metrics and len(tracking.read_metrics(metrics[0])) >= 3:
                break
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no metrics within 120 s")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    (run_dir,) = workdir.glob("runs/*")
    status = tracking.read_json(run_dir / "status.json")
    assert status["status"] == "running" and status["pid"] == process.pid  # never said done
    assert not (run_dir / "summary.json").exists()
    assert len(tracking.read_metrics(run_dir / "metrics.jsonl")) >= 3
    assert not list(run_dir.glob(".*.tmp"))


def test_a_new_attempt_removes_temp_files_a_killed_one_left(tmp_path):
    # A SIGKILL between mkstemp and rename leaves .NAME.XXXX.tmp behind.
    (tmp_path / ".config.json.k1ll3d.tmp").write_text('{"half": ')
    (tmp_path / ".status.json.k1ll3d.tmp").write_text("")
    writer = tracking.RunWriter(tmp_path)
    writer.start({"seed": 0}, {"seed": 0})
    writer.finish("done", {"step": 0})
    assert not list(tmp_path.glob(".*.tmp"))
    assert tracking.read_json(tmp_path / "config.json") == {"seed": 0}


def test_only_tracking_names_or_writes_the_files_of_a_tracking_directory():
    """Every module reads and writes the tracking directory through bnlab.tracking:
    no other module holds one of its file names as a string (docstrings and prose
    aside) or opens files with os.open (claims and the event log are tracking's)."""
    names = {tracking.CONFIG, tracking.STATUS, tracking.METRICS, tracking.SUMMARY,
             tracking.ENV, tracking.CLAIM, tracking.SWEEP, tracking.EVENTS,
             tracking.REPRODUCE, tracking.REPORT, tracking.CLAIMS}
    assert len(names) == 11
    offenders = []
    for path in sorted((ROOT / "bnlab").rglob("*.py")):  # the subpackages too
        if path.relative_to(ROOT / "bnlab").as_posix() == "tracking.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docstrings and " " not in node.value
                    and any(node.value == n or node.value.endswith("/" + n) for n in names)):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
            if (isinstance(node, ast.Attribute) and node.attr == "open"
                    and getattr(node.value, "id", None) == "os"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.attr}")
    assert not offenders, offenders


def test_runs_from_before_the_unbiased_running_variance_are_not_taken_for_new_ones():
    """A config.json written before bn_unbiased_running_var existed computed the biased
    variance (config.ABSENT_MEANS): its digest is that of the option set to False."""
    from bnlab import config as config_lib
    from bnlab import train

    new = dict(config_lib.defaults())
    old = {k: v for k, v in new.items() if k != "bn_unbiased_running_var"}
    assert new["bn_unbiased_running_var"] is True
    assert train.run_digest(old) != train.run_digest(new)
    assert train.run_digest(old) == train.run_digest({**new, "bn_unbiased_running_var": False})


# Values for the fields `config.canonical` leaves out where the run's norm or model
# does not read them (`config.unread_fields`), each other than its default and
# valid there; and the fields `config.validate` refuses where they are unread.
OTHER_VALUES = {"bn_momentum": 0.5, "norm_epsilon": 0.1, "bn_unbiased_running_var": False,
                 "num_groups": 4, "group_size": 4, "depth": 5, "width": 8,
                 "bn_noise": 0.5, "bn_noise_static": True}
REFUSED_UNREAD = {"virtual_batch_size": 4, "mask_padding": True, "bn_noise": 0.5,
                  "bn_noise_static": True}


@pytest.mark.parametrize("norm", ["bn", "ln", "in", "gn", "none"])
def test_fields_the_norm_and_model_do_not_read_change_no_number_and_no_id(
        synthetic_config, tmp_path, norm):
    """A field the run's norm and model do not read is left out of its digest. It
    must then change nothing the run computes: a run with every such field set
    otherwise logs the same numbers, bit for bit, and has the same id; a field the
    norm does read changes the id."""
    from bnlab import config as config_lib
    from bnlab import norms
    from bnlab.config import ConfigError

    assert set(norms.LAYERS) == {"bn", "ln", "in", "gn", "none"}  # every norm is tested
    synthetic_config.update(norm=norm, num_steps=4, log_every=2, batch_size=8)
    unread = config_lib.unread_fields(norm, synthetic_config.model)
    assert unread <= set(OTHER_VALUES) | set(REFUSED_UNREAD), "a field new to a CONFIG"
    other = ml_collections.ConfigDict(synthetic_config.to_dict())
    for field in sorted(unread):
        if field in REFUSED_UNREAD:  # no run can set it: nothing to compute differently
            refused = ml_collections.ConfigDict(synthetic_config.to_dict())
            refused[field] = REFUSED_UNREAD[field]
            with pytest.raises(ConfigError, match=field):
                config_lib.validate(refused)
        else:
            other[field] = OTHER_VALUES[field]
    assert train.run_digest(other) == train.run_digest(synthetic_config)
    assert train.run_name(other, ["norm"]) == train.run_name(synthetic_config, ["norm"])
    rows = []
    for name, config in (("default", synthetic_config), ("other", other)):
        train.train_and_evaluate(config, str(tmp_path / name))
        rows.append([{k: v for k, v in row.items() if k != "time"}
                     for row in tracking.read_metrics(tmp_path / name / "metrics.jsonl")])
    assert rows[0] == rows[1] and len(rows[0]) == 2
    for field in sorted(norms.fields(norm) - {"virtual_batch_size"}):
        read = ml_collections.ConfigDict(synthetic_config.to_dict())
        read[field] = OTHER_VALUES[field]
        assert train.run_digest(read) != train.run_digest(synthetic_config), field


def test_a_config_with_numpy_values_is_the_run_its_config_json_holds(synthetic_config,
                                                                     tmp_path):
    """A float field set to numpy's float64 (a grid from np.linspace) at its default
    was taken for a field that differs, as its type is not float: another digest,
    and a killed run of it did not resume from its checkpoint. Values are now
    compared as config.json holds them."""
    import numpy as np

    from bnlab import config as config_lib

    synthetic_config.update(num_steps=4, log_every=2, batch_size=8, checkpoint_every=2)
    train.train_and_evaluate(synthetic_config, str(tmp_path))
    (tmp_path / tracking.SUMMARY).unlink()  # killed after its checkpoint of step 2
    numpy_config = ml_collections.ConfigDict(synthetic_config.to_dict())
    numpy_config.learning_rate = np.float64(synthetic_config.learning_rate)  # the default
    numpy_config.momentum = np.float64(synthetic_config.momentum)
    numpy_config.step_boundaries = tuple(np.float64(b) for b in config_lib.defaults()[
        "step_boundaries"])
    assert type(numpy_config.learning_rate) is np.float64
    assert train.run_digest(numpy_config) == train.run_digest(synthetic_config)
    run_dir = tracking.RunDir(tmp_path)
    assert train.resumable_step(run_dir, numpy_config, run_dir.checkpoints()) == 2
    flat = {**config_lib.flatten(synthetic_config), "batch_size": np.int64(8),
            "augment": np.bool_(False)}
    assert train.run_digest(flat) == train.run_digest(synthetic_config)


def test_the_commit_is_dirty_when_an_experiment_file_changed_not_a_result(tmp_path):
    """A reproduction's runs are configured by experiments/*.py: an edit there must
    mark the recorded commit "+dirty" as an edit of bnlab/ does; its results
    (experiments/results/) are written by the reproduction and must not."""
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    for name in ("bnlab/a.py", "configs/b.py", "experiments/c.py", "experiments/results/r.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = tracking.git_commit(tmp_path)
    assert clean is not None and len(clean) == 40
    (tmp_path / "experiments/results/r.md").write_text("new results\n")
    (tmp_path / "experiments/results/C1.png").write_text("a figure\n")
    assert tracking.git_commit(tmp_path) == clean
    (tmp_path / "experiments/c.py").write_text("x = 2\n")
    assert tracking.git_commit(tmp_path) == clean + "+dirty"
    git("checkout", "--", "experiments/c.py")
    (tmp_path / "bnlab/new.py").write_text("y = 1\n")  # an untracked module counts too
    assert tracking.git_commit(tmp_path) == clean + "+dirty"
