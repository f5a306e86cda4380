"""`python -m bnlab <command>`.

Exit codes: 0 done (a diverged run is a result, so 0 too), 2 bad input (one line
on stderr, nothing written), 1 a crash, 130 interrupted.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from bnlab.config import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.py"
USAGE = """usage: python -m bnlab <command> [flags]

commands:
  train   one run: --config FILE [--config.FIELD=VALUE ...] --workdir DIR
          writes DIR/runs/RUN_ID/ (config, status, metrics, summary, env, TensorBoard)

`python -m bnlab train --help` lists a command's flags."""


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


def _parse_config_flags(argv: list[str]):
    """absl flags for a command that takes a config: returns (config, overrides, flags)."""
    from absl import flags
    from ml_collections import config_flags

    flag_values = flags.FlagValues()
    try:
        # config_flags loads the file and reads the overrides already while defining.
        config_flags.DEFINE_config_file(
            "config", str(DEFAULT_CONFIG), "config file with get_config()",
            flag_values=flag_values, lock_config=True, sys_argv=argv)
        flags.DEFINE_string("workdir", None, "tracking directory", flag_values=flag_values)
        rest = flag_values(argv)
        config = flag_values.config
        config.to_dict()  # a file that failed to load raises only on first use
    except flags.Error as error:
        raise UsageError(str(error).splitlines()[0]) from None
    except (AttributeError, KeyError) as error:
        # ml_collections says "'nrom'\nDid you mean "norm" instead of "nrom"?", repr-escaped.
        field = re.search(r"[\w.]+", str(error))
        hint = re.search(r'Did you mean "([\w.]+)"', str(error))
        raise UsageError(f"unknown config field {field.group() if field else str(error)!r}"
                         + (f"; did you mean {hint.group(1)!r}?" if hint else "")) from None
    except OSError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise UsageError(f"cannot load the config file: {lines[-1]}") from None
    if len(rest) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(rest[1:])}")
    overrides = list(config_flags.get_override_values(flag_values["config"]))
    return config, overrides, flag_values


def train_command(argv: list[str]) -> int:
    config, overrides, flag_values = _parse_config_flags(argv)
    if not flag_values.workdir:
        raise UsageError("--workdir is required: the tracking directory to write the run to")

    from bnlab import config as config_lib
    from bnlab import tracking, train

    prepared = train.prepare(config)  # every check, before the first write or compile
    varied = [key for key in overrides if key not in config_lib.LAUNCH_FIELDS]
    run_dir = Path(flag_values.workdir) / "runs" / tracking.run_id(
        config_lib.identity(config), varied, prepared.facts["sgd_batch_size"],
        prepared.facts["norm_batch_size"])
    if (run_dir / "summary.json").is_file():
        print(f"{run_dir}: finished before, not run again (remove the folder to rerun)")
        _print_summary(tracking.read_json(run_dir / "summary.json"))
        return 0
    print(f"run {run_dir}", flush=True)
    summary = train.run_prepared(prepared, str(run_dir))
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    keys = ("status", "step", "test_accuracy", "test_loss", "train_loss", "diverged_step",
            "steps_to_target", "norm_batch_size", "wall_time_s", "steps_per_s")
    print(json.dumps({k: summary.get(k) for k in keys if summary.get(k) is not None}))


COMMANDS: dict[str, Callable[[list[str]], int]] = {"train": train_command}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if len(argv) >= 2 else 2
    command = argv[1]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    try:
        return COMMANDS[command]([f"bnlab {command}"] + argv[2:])
    except (UsageError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
