"""`python -m bnlab` as a user runs it: a real process where the process is the
point (a run end to end, the interpreter's own output, the environment read at
start-up), and `bnlab.cli.main` in this process for the input that fails before
any compile or write, with the same exit codes and output."""

import json
import os

import pytest
from conftest import ROOT, assert_one_line_error, bnlab

from bnlab import cli as cli_lib

SMALL = ["--config.train_size=256", "--config.num_steps=6", "--config.log_every=3",
         "--config.batch_size=16"]


@pytest.mark.slow
def test_train_writes_a_run_and_skips_it_when_finished(tmp_path):
    workdir = tmp_path / "w"
    args = ["train", "--config", "configs/default.py", "--config.norm=gn", *SMALL,
            f"--workdir={workdir}"]
    first = bnlab(*args)
    assert first.returncode == 0, first.stderr
    (run_dir,) = (workdir / "runs").iterdir()
    assert run_dir.name.startswith(
        "norm=gn,train_size=256,num_steps=6,log_every=3,batch_size=16-sgd16-nb1-")
    lines = first.stdout.strip().splitlines()
    assert lines[0] == f"run {run_dir}"
    summary = json.loads(lines[-1])
    assert summary["status"] == "done" and summary["step"] == 6
    second = bnlab(*args)
    assert second.returncode == 0 and "finished before" in second.stdout
    assert len(list((workdir / "runs").iterdir())) == 1


BAD_INPUT = [
    (["--config.norm=batchnorm"], "config.norm='batchnorm': allowed: bn, ln, in, gn, none"),
    (["--config.norm=gn", "--config.num_groups=3"], "config.num_groups=3: must divide the 16"),
    (["--config.norm=gn", "--config.group_size=5"], "config.group_size=5: must divide"),
    (["--config.virtual_batch_size=5"], "config.virtual_batch_size=5: must divide "
                                        "config.batch_size=64"),
    (["--config.data_dir=/nonexistent"], "apt-get install dataset-fashion-mnist"),
    (["--config.model=vgg"], "config.model='vgg': allowed"),
    (["--config.model=mlp", "--config.norm=in"], "config.norm='in': instance norm needs"),
    (["--config.learning_rate=-1"], "config.learning_rate=-1.0: must be a finite number > 0"),
    (["--config.optimizer=lamb"], "config.optimizer='lamb'"),
    (["--config.batch_size=100000"], "config.batch_size=100000: larger than"),
    (["--config.test_size=0"], "config.test_size=0: must be a positive integer"),
    (["--config.steps_per_call=-1"], "config.steps_per_call=-1: 0 (automatic) or a positive"),
    (["--config.steps_per_call=10", "--config.augment=True"],
     "config.steps_per_call=10: fused steps need augment=False"),
    (["--config.steps_per_call=10", "--config.parallel=pmap"],
     "config.steps_per_call=10: fused steps run on one device"),
    (["--config.cpu_fusion=fast"], "config.cpu_fusion='fast': allowed: auto, xla, ynnpack"),
    (["--config.checkpoint_every=70"],
     "config.checkpoint_every=70: must be a multiple of config.log_every=50"),
    (["--config.nrom=gn"], "unknown config field 'nrom'; did you mean 'norm'?"),
    (["--config.batch_size=abc"], "config.batch_size"),
    # Issue 18's probes 9 and 10: accepted, or a traceback (several after writing).
    (["--config.momentum=nan"], "config.momentum=nan: must be a finite number in [0, 1)"),
    (["--config.momentum=-3"], "config.momentum=-3.0: must be a finite number in [0, 1)"),
    (["--config.norm_epsilon=inf"], "config.norm_epsilon=inf: must be a finite number > 0"),
    (["--config.bn_sync=junk"], "config.bn_sync='junk': allowed: global, local"),
    (["--config.num_devices=-4"], "config.num_devices=-4: must be an integer >= 1"),
    (["--config.parallel=pmap", "--config.num_devices=0"],
     "config.num_devices=0: must be an integer >= 1"),
    (["--config.test_size=100000"], "config.test_size=100000: larger than the 10000 test"),
    (["--config.seed=-1"], "config.seed=-1: must be an integer in [0, 2^32)"),
    (["--config.seed=99999999999999999999"], "must be an integer in [0, 2^32)"),
    (["--config.step_decay=nan"], "config.step_decay=nan: must be a finite number > 0"),
    (["--config.step_decay=-1"], "config.step_decay=-1.0: must be a finite number > 0"),
    (["--config.num_epochs=inf"], "config.num_epochs=inf: must be a finite number > 0"),
    (["--config.model=plain_cnn", "--config.width=0"], "config.width=0: must be a positive"),
    # A field of a model other than the chosen one: still checked.
    (["--config.width=0"], "config.width=0: must be a positive integer (plain_cnn's"),
    (["--config.depth=-2"], "config.depth=-2: must be an integer >= 3"),
    (["--config.step_boundaries=(0.5, 2.0)"], "config.step_boundaries=(0.5, 2.0): must be"),
    (["--config.stat_error_batches=(1, 8)"],
     "config.stat_error_batches=(1, 8): batch sizes from 2 to 4096"),
    (["--config.parallel=pmap", "--config.stat_error_batches=(2, 8)"],
     "config.stat_error_batches=(2, 8): batch statistics are measured on one device"),
    (["--config.norm=gn", "--config.stat_error_batches=(2, 8)"],
     "config.stat_error_batches=(2, 8): measures BN's statistics: needs norm='bn'"),
    (["--config.train_size=1000", "--config.stat_error_batches=(2, 2048)"],
     "config.stat_error_batches=(2, 2048): a batch larger than the 1000 training"),
    (["--config.robust_noise=-0.1"], "config.robust_noise=-0.1: must be a finite number in"),
    (["--config.robust_fgsm=2"], "config.robust_fgsm=2.0: must be a finite number in [0, 1]"),
    (["--config.dataset=synthetic", "--config.robust_noise=0.2"],
     "config.robust_noise=0.2: perturbs pixels on the 0-1 scale: needs a dataset of known"),
    (["--config.parallel=pmap", "--config.robust_fgsm=0.02"],
     "config.robust_fgsm=0.02: robustness is evaluated on one device"),
]


@pytest.mark.parametrize("overrides,message", BAD_INPUT)
def test_bad_values_fail_in_one_line_before_writing(cli, tmp_path, overrides, message):
    workdir = tmp_path / "w"
    result = cli("train", "--config", "configs/default.py", *overrides, f"--workdir={workdir}")
    assert_one_line_error(result, message)
    assert not workdir.exists()


def test_a_bad_value_fails_in_one_line_in_a_real_process(tmp_path):
    """As above, with all a user sees: nothing else on stderr from the interpreter's
    start (imports, JAX's backend) or its end."""
    overrides, message = BAD_INPUT[0]
    workdir = tmp_path / "w"
    result = bnlab("train", "--config", "configs/default.py", *overrides, f"--workdir={workdir}")
    assert_one_line_error(result, message)
    assert not result.stdout
    assert not workdir.exists()


def test_missing_dataset_from_the_environment(tmp_path):
    # A real process: a process loads Fashion-MNIST once (data.py caches it), so only
    # a fresh one reads $BNLAB_DATA_DIR for sure.
    result = bnlab("train", f"--workdir={tmp_path / 'w'}",
                   env={**os.environ, "BNLAB_DATA_DIR": str(tmp_path)})
    assert_one_line_error(result, "Fashion-MNIST IDX files not found")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args,message", [
    (["train", "--config", "configs/nope.py", "--workdir=x"],
     "cannot load the config file: [Errno 2] No such file or directory: 'configs/nope.py'"),
    (["train", "--config", "configs/default.py"], "--workdir is required"),
    (["fly"], "unknown command 'fly'"),
])
def test_bad_command_lines(cli, args, message):
    assert_one_line_error(cli(*args), message)


def test_python_m_bnlab_help_lists_the_commands():
    result = bnlab("--help")
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert result.stdout == cli_lib.USAGE + "\n"
    for command in cli_lib.COMMANDS:
        assert (f"\n  {command} " in result.stdout) == (not command.startswith("_")), command


@pytest.mark.parametrize("command,shown", [
    ("train", "\n  --workdir: tracking directory\n"), ("sweep", "\n  --[no]dry_run: "),
    ("reproduce", "\n  --scale: <smoke|quick|full>: "), ("bench", "\n  --batch_sizes: "),
    ("ls", "[--format table|csv|parquet]"), ("report", "report DIR [OUT_DIR]")])
def test_every_command_answers_help(cli, command, shown):
    result = cli(command, "--help")
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert result.stdout.startswith(f"usage: python -m bnlab {command}: ")
    assert shown in result.stdout and "bnlab.cli:" not in result.stdout


def test_train_help_lists_every_config_field_with_its_value_and_comment(cli, tmp_path):
    from bnlab.config import flatten, load_config_file

    result = cli("train", "--config.norm=gn", "--workdir", str(tmp_path / "w"), "-h")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    listed = [line.split("=")[0].strip()[len("--config."):] for line in lines
              if line.startswith("  --config.")]
    fields = flatten(load_config_file(ROOT / "configs" / "default.py"))
    assert sorted(listed) == sorted(fields)  # each field once
    assert "  --config.norm=gn" in lines  # the value after the override
    assert "  # Normalization: bn, ln, in, gn, none." in lines
    assert '  --config.step_boundaries="(0.5, 0.75)"  # step schedule: fractions of the run' \
        in lines
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args,message", [
    (["step", "--cpu_fusion", "fast"], "flag --cpu_fusion=fast: value should be one of"),
    (["step", "--models", "vgg"], "config.models='vgg': allowed"),
    (["steps"], "unknown benchmark 'steps'"),
])
def test_bench_rejects_bad_input_in_one_line(cli, tmp_path, args, message):
    out = tmp_path / "bench.json"
    assert_one_line_error(cli("bench", *args, "--out", str(out)), message)
    assert not out.exists()


@pytest.mark.parametrize("command", ["sweep", "reproduce"])
def test_gpu_memory_is_left_unallocated_before_planning_starts_jax(cli, tmp_path,
                                                                   monkeypatch, command):
    """With several local workers, the parent's JAX must not take 75% of the GPU at
    start (its workers need it): XLA_PYTHON_CLIENT_PREALLOCATE=false, which JAX reads
    when it first looks for devices. It was set after planning, which does that for
    sharded runs (their devices are in their names). Now before."""
    from bnlab import reproduce, sweep

    seen = []

    def planned(*args, **kwargs):
        seen.append(os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"))
        raise cli_lib.UsageError("planned")  # nothing further: what was set is the point

    monkeypatch.setattr(sweep, "plan", planned)
    monkeypatch.setattr(reproduce, "plan", planned)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "unset")
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE")  # restored (unset) after the test
    target = [ROOT / "experiments" / "batch_size.py"] if command == "sweep" else []
    result = cli(command, *target, "--jobs=2", f"--workdir={tmp_path / 'w'}")
    assert_one_line_error(result, "planned")
    assert seen == ["false"]
