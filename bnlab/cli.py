"""`python -m bnlab <command>`.

Exit codes: 0 done (a diverged run is a result, so 0 too), 2 bad input (one line
on stderr, nothing written), 1 a crash, runs that did not finish, or a disk that
refused a write (one line naming the file), 130 interrupted.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bnlab.config import CPU_FUSIONS, DEFAULT_CONFIG_FILE, ConfigError, flatten
from bnlab.fast import heap
from bnlab.tracking import Unfinished, Unwritable

DEFAULT_CONFIG = DEFAULT_CONFIG_FILE
USAGE = """usage: python -m bnlab <command> [flags]   (installed: bnlab <command> [flags])

commands:
  train   one run: --config FILE [--config.FIELD=VALUE ...] --workdir DIR
          writes DIR/runs/RUN_ID/ (config, status, metrics, summary, env, TensorBoard)
  sweep   a grid of runs: FILE --workdir DIR [--jobs N] [--dry_run] [--only REGEX]
          [--limit N] [--executor local|slurm] [--slurm_partition P --slurm_gpus G ...]
          [--pack [--pack_size N]] [--grid FIELD=V1,V2 ...] [--config.FIELD=VALUE ...];
          FILE has get_config() and get_sweep(); without FILE, --grid axes on the
          default config (or --config FILE); --grid axes multiply FILE's grid;
          a relaunch skips finished runs and restarts interrupted ones
  ls      the status table of a tracking directory: ls DIR [--format table|csv|parquet]
          [--out FILE] [--where FIELD=VALUE ...] (the table: a column per field that
          varies, sorted by them; csv/parquet: every run's config and summary)
  reproduce  the article's claims end to end: --scale smoke|quick|full --workdir DIR
          [--claims C1,C5] [--jobs N] [--config.FIELD=VALUE ...]; runs the experiments
          (resumable) and writes DIR/report.md, DIR/claims.json and a figure per claim
  report  the article's claims judged from a tracking directory: report DIR [OUT_DIR]
          (report.md, claims.json, a figure per claim; trains nothing)
  bench   speed: bench [step|norms|pack|load|all] [--models M,..] [--norms N,..]
          [--batch_sizes B,..] [--dtype float32|bfloat16] [--out FILE.json]

`python -m bnlab COMMAND --help` lists a command's flags (and, for train, sweep
and reproduce, every config field with its value and the config file's comment)."""
HELP_FLAGS = ("-h", "--help", "-help", "--helpfull", "--helpshort")
# JAX's GPU client takes 75% of the GPU's memory when it starts unless this is false.
PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


class HelpRequested(Exception):
    """--help: `str()` is the help text, printed to stdout with exit code 0."""


def _wants_help(argv: list[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in argv[1:])


def _command_usage(command: str) -> str:
    """The command's lines of USAGE."""
    lines = USAGE.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {command} "))
    end = next((i for i in range(start + 1, len(lines))  # up to a line not indented
                if not lines[i].startswith("    ")), len(lines))  # as a continuation
    first = lines[start].strip()[len(command):].strip()
    rest = [f"  {line.strip()}" for line in lines[start + 1:end]]
    return "\n".join([f"usage: python -m bnlab {command}: {first}", *rest])


def _flags_help(flag_values) -> str:
    """absl's help of the command's own flags, without absl's special flags."""
    text = flag_values.get_help(include_special_flags=False)
    # absl heads the flags with their module's name ("bnlab.cli:"), and lists each
    # --config.FIELD given as a flag of its own: left out (the config's list has them).
    lines, keep = [], True
    for line in text.splitlines():
        if line.startswith("  --"):
            keep = not line.startswith("  --config.")
        if keep and line.startswith(" "):
            lines.append(line)
    return "\n".join(lines)


def _config_help(config, path: Path | str) -> str:
    """Every field of `config` as `--config.FIELD=VALUE`, in the order and with the
    comments of the config file's `get_config()` where the file assigns it; fields
    the file sets some other way (a sweep file extending the default) come after."""
    fields = flatten(config)
    lines, seen, inside = [], set(), False
    try:
        source = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        source = []
    for line in source:
        text = line.strip()
        if text.startswith("def "):
            inside = text.startswith("def get_config")
            continue
        if not inside:
            continue
        assignment = re.match(r"config\.([\w.]+)\s*=[^#]*(?:#\s*(.*))?$", text)
        if assignment and assignment.group(1) in fields and assignment.group(1) not in seen:
            name, comment = assignment.groups()
            seen.add(name)
            lines.append(f"  --config.{name}={_shown(fields[name])}"
                         + (f"  # {comment}" if comment else ""))
        elif text.startswith("#"):
            lines.append(f"  {text}")
    lines += [f"  --config.{name}={_shown(value)}" for name, value in fields.items()
              if name not in seen]
    return (f"config fields (--config.FIELD=VALUE; values from {path}, after the "
            "overrides given):\n" + "\n".join(lines))


def _help(command: str, flag_values=None, config=None) -> HelpRequested:
    """The command's usage, then its flags, then its config's fields, as far as given."""
    sections = [_command_usage(command)]
    if flag_values is not None:
        sections.append("flags:\n" + _flags_help(flag_values))
    if config is not None:
        sections.append(_config_help(config, flag_values["config"].config_filename))
    return HelpRequested("\n\n".join(sections))


def _shown(value) -> str:
    if isinstance(value, list):  # flatten's form of a tuple; the flag takes a tuple
        return f'"{tuple(value)}"'
    return str(value)


def _config_path(argv: list[str], default_config: Path) -> str:
    """The config file a command line names (--config FILE or --config=FILE)."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return str(default_config)


def _parse_config_flags(argv: list[str], default_config: Path = DEFAULT_CONFIG,
                        define_extra=None):
    """absl flags for a command that takes a config: returns (config, overrides, flags).
    `define_extra(flags, flag_values)` adds the command's own flags."""
    from absl import flags
    from ml_collections import config_flags

    flag_values = flags.FlagValues()
    if define_extra:
        define_extra(flags, flag_values)
    help_wanted = _wants_help(argv)
    argv = [arg for arg in argv if arg not in HELP_FLAGS]
    try:
        # config_flags loads the file and reads the overrides already while defining.
        config_flags.DEFINE_config_file(
            "config", str(default_config), "config file with get_config()",
            flag_values=flag_values, lock_config=True, sys_argv=argv)
        flags.DEFINE_string("workdir", None, "tracking directory", flag_values=flag_values)
        rest = flag_values(argv)
        config = flag_values.config
        config.to_dict()  # a file that failed to load raises only on first use
    except flags.Error as error:
        raise UsageError(str(error).splitlines()[0]) from None
    except (AttributeError, KeyError) as error:
        if "get_config" in str(error):
            raise UsageError(f"cannot load the config file: {_config_path(argv, default_config)}"
                             " has no get_config()") from None
        # ml_collections says "'nrom'\nDid you mean "norm" instead of "nrom"?", repr-escaped.
        field = re.search(r"[\w.]+", str(error))
        hint = re.search(r'Did you mean "([\w.]+)"', str(error))
        raise UsageError(f"unknown config field {field.group() if field else str(error)!r}"
                         + (f"; did you mean {hint.group(1)!r}?" if hint else "")) from None
    except OSError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise UsageError(f"cannot load the config file: {lines[-1]}") from None
    except Exception as error:  # the file's own code: a syntax error, what it raises
        raise UsageError(f"cannot load the config file {_config_path(argv, default_config)}: "
                         + f"{type(error).__name__}: {error}".splitlines()[0]) from None
    if len(rest) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(rest[1:])}")
    overrides = list(config_flags.get_override_values(flag_values["config"]))
    if help_wanted:
        raise _help(argv[0].split()[-1], flag_values, config)
    return config, overrides, flag_values


def train_command(argv: list[str]) -> int:
    config, overrides, flag_values = _parse_config_flags(argv)
    if not flag_values.workdir:
        raise UsageError("--workdir is required: the tracking directory to write the run to")

    from bnlab import tracking, train

    _enable_compilation_cache()
    prepared = train.prepare(config)  # every check, before the first write or compile
    run_dir = tracking.SweepDir(flag_values.workdir).run(
        train.run_name(config, overrides, train.existing_runs(flag_values.workdir)))
    # The run is claimed as a sweep's worker claims it: a second `train` of the same
    # run (or a sweep's worker) never trains it at the same time.
    # Of a multi-process run, process 0 claims it, as it alone writes it.
    import jax

    claimed = jax.process_index() != 0 or (not run_dir.finished() and run_dir.claim("train"))
    if not claimed and not run_dir.finished():
        owner = run_dir.owner() or {}
        print(f"error: {run_dir.path} is being trained by pid {owner.get('pid', '?')} on "
              f"{owner.get('host', '?')} ({tracking.CLAIM}); not started twice",
              file=sys.stderr)
        return 1
    if run_dir.finished():
        print(f"{run_dir.path}: finished before, not run again (remove the folder to rerun)")
        _print_summary(run_dir.summary())
        return 0
    print(f"run {run_dir.path}", flush=True)
    try:
        with run_dir.heartbeat():
            summary = train.run_prepared(prepared, str(run_dir.path))
    finally:
        run_dir.release()
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    keys = ("status", "step", "test_accuracy", "test_loss", "train_loss", "diverged_step",
            "steps_to_target", "norm_batch_size", "wall_time_s", "steps_per_s")
    print(json.dumps({k: summary.get(k) for k in keys if summary.get(k) is not None}))


def _enable_compilation_cache() -> None:
    """JAX's persistent compilation cache, on by default: a relaunched sweep or a
    rerun loads its compiled steps instead of compiling them again."""
    import jax

    folder = os.environ.get("BNLAB_CACHE_DIR") or Path.home() / ".cache" / "bnlab" / "xla"
    jax.config.update("jax_compilation_cache_dir", str(folder))


def sweep_command(argv: list[str]) -> int:
    # FILE (a sweep file, or a config file with --grid) or only --grid axes on the
    # default config (or --config FILE's).
    sweep_file = Path(argv[1]) if len(argv) >= 2 and not argv[1].startswith("-") else None

    def define(flags, flag_values):
        flags.DEFINE_bool("dry_run", False, "list the runs, write nothing",
                          flag_values=flag_values)
        flags.DEFINE_integer("jobs", 1, "parallel worker processes", lower_bound=1,
                             flag_values=flag_values)
        flags.DEFINE_string("only", None, "regular expression on run ids",
                            flag_values=flag_values)
        flags.DEFINE_integer("limit", None, "at most this many runs", lower_bound=1,
                             flag_values=flag_values)
        flags.DEFINE_enum("executor", "local", ["local", "slurm"],
                          "local worker processes, or a Slurm job array (submitit)",
                          flag_values=flag_values)
        flags.DEFINE_string("slurm_partition", None, "Slurm partition", flag_values=flag_values)
        flags.DEFINE_integer("slurm_time_min", 1440, "time limit of each Slurm worker",
                             flag_values=flag_values)
        flags.DEFINE_integer("slurm_gpus", 0, "GPUs per Slurm worker", flag_values=flag_values)
        flags.DEFINE_integer("slurm_cpus", 2, "CPUs per Slurm worker", flag_values=flag_values)
        flags.DEFINE_float("slurm_mem_gb", None, "memory per Slurm worker",
                           flag_values=flag_values)
        flags.DEFINE_bool("wait", True, "follow the Slurm workers until they end",
                          flag_values=flag_values)
        flags.DEFINE_bool("pack", False, "train runs that differ only in learning_rate, "
                          "weight_decay and seed together (vmap), where packing pays: on "
                          "accelerators, not on a CPU backend", flag_values=flag_values)
        flags.DEFINE_integer("pack_size", 64, "at most this many runs in one pack",
                             lower_bound=1, flag_values=flag_values)
        flags.DEFINE_bool("pack_on_cpu", False, "pack on a CPU backend too (its members then "
                          "train in turn, no faster)", flag_values=flag_values)
        flags.DEFINE_multi_string("grid", [], "FIELD=V1,V2,...: an axis of the grid, its "
                                  "values parsed as --config.FIELD=VALUE parses them (a "
                                  "value holding a comma in quotes or brackets); repeated, "
                                  "the axes multiply (the last varies fastest)",
                                  flag_values=flag_values)

    if sweep_file is None:
        config, overrides, flag_values = _parse_config_flags(argv, DEFAULT_CONFIG, define)
        if not flag_values.grid:
            raise UsageError("usage: python -m bnlab sweep FILE --workdir DIR [flags], or "
                             "sweep --grid FIELD=V1,V2 [--grid ...] --workdir DIR [flags]")
    else:
        config, overrides, flag_values = _parse_config_flags(argv[:1] + argv[2:], sweep_file,
                                                             define)
        if not sweep_file.is_file():
            raise UsageError(f"no sweep file {sweep_file}")
    axes = parse_grid(config, flag_values.grid)
    from bnlab import config as config_lib
    from bnlab import sweep, tracking, train

    # JAX reads this when it first looks for its devices, which planning may do (a
    # sharded run's devices are in its name): set before anything touches JAX. Local
    # workers share this machine's GPU with this process, which checks their runs:
    # each takes memory as it needs it (the workers inherit the setting). A Slurm
    # sweep checks its runs on a login node, which others share: there too, but the
    # setting is taken back before the jobs, which inherit this environment, start.
    preallocate_before = os.environ.get(PREALLOCATE)
    if flag_values.jobs > 1 or flag_values.executor == "slurm":
        os.environ.setdefault(PREALLOCATE, "false")
    if flag_values.only:
        try:
            re.compile(flag_values.only)
        except re.error as error:
            raise UsageError(f"--only {flag_values.only!r}: not a regular expression "
                             f"({error})") from None
    base_file = sweep_file or Path(flag_values["config"].config_filename)
    module = config_lib.load_module(base_file)
    if not hasattr(module, "get_sweep") and not axes:
        sweep.load_sweep_file(base_file)  # its error: a sweep file needs get_sweep()
    override_values = {key: config[key] for key in overrides}
    try:  # the file's own code: what it raises is about that file
        base = module.get_config()
        grid = module.get_sweep() if sweep_file and hasattr(module, "get_sweep") else [{}]
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError("file", str(base_file), config_lib.cannot_load(error)) from None
    grid = _with_axes(grid, axes, base_file)
    runs = sweep.select(sweep.plan(base, grid, override_values, flag_values.workdir),
                        flag_values.only, flag_values.limit)
    if not runs:
        raise UsageError("no runs selected")
    if flag_values.dry_run:
        for run in runs:
            print(run.run_id)
        print(f"{len(runs)} runs")
        return 0
    if not flag_values.workdir:
        raise UsageError("--workdir is required: the tracking directory of the sweep")
    workdir = Path(flag_values.workdir)
    # Local workers share this machine's data and devices, so all of their checks
    # hold here; Slurm's train on other nodes, whose devices this one may not have.
    sweep.check(runs, devices=flag_values.executor == "local")
    finished = sum(tracking.SweepDir(workdir).run(r.run_id).finished() for r in runs)
    launch = sweep.write_plan(workdir, runs, {
        "sweep_file": str(sweep_file.resolve()) if sweep_file else None,
        "base_config": config_lib.flatten(base),
        "grid": grid, "grid_flags": flag_values.grid, "overrides": override_values,
        "launch": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv,
                   "jobs": flag_values.jobs, "host": socket.gethostname()}})
    print(f"sweep {workdir}: {len(runs)} runs, {finished} finished before; launch {launch}",
          flush=True)
    _enable_compilation_cache()
    pack = {"pack": flag_values.pack, "pack_size": flag_values.pack_size,
            "pack_on_cpu": flag_values.pack_on_cpu}
    if (flag_values.pack and not flag_values.pack_on_cpu and flag_values.executor == "local"
            and not train.packing_pays()):
        print("--pack: packing is slower than one run after another on a CPU backend "
              "(`bnlab bench pack`); running the runs one by one (--pack_on_cpu forces it)")
    if flag_values.executor == "slurm":
        if preallocate_before is None:
            os.environ.pop(PREALLOCATE, None)  # the jobs' environment, as it was
        compiles = sweep.run_slurm(workdir, launch, flag_values.jobs, {
            "partition": flag_values.slurm_partition, "time_min": flag_values.slurm_time_min,
            "gpus": flag_values.slurm_gpus, "cpus": flag_values.slurm_cpus,
            "mem_gb": flag_values.slurm_mem_gb}, wait=flag_values.wait, pack=pack)
        if not flag_values.wait:
            return 0
    else:
        compiles = sweep.run_local(workdir, launch, flag_values.jobs, pack=pack)
    counts = sweep.wait_for_runs(workdir, [r.run_id for r in runs])
    print(json.dumps({**counts, "train_step_compilations": compiles.get("train_step", 0)}))
    sweep.check_finished(counts, workdir)  # exit 0 only when every run ended
    return 0


def parse_grid(config, specs: list[str]) -> list[tuple[str, list[Any]]]:
    """`--grid FIELD=V1,V2,...` flags as axes [(field, values)], each value parsed as
    `--config.FIELD=VALUE` parses it (ml_collections' parser for the field's type in
    `config`: an int field takes ints, a float field 1 as 1.0, a tuple field
    "(0.3, 0.6)"). Values are split at commas outside brackets and quotes; a value
    wholly in quotes loses them (`bn_eval="ema,batch",ema`). Raises UsageError on an
    unknown field, a field given twice, an empty value, or one its parser refuses."""
    import difflib

    fields = flatten(config)
    axes, seen = [], set()
    for spec in specs:
        field, equal, text = (part.strip() for part in spec.partition("="))
        if not equal or not field or not text:
            raise UsageError(f"--grid {spec}: use FIELD=V1,V2,... (e.g. --grid norm=bn,gn)")
        if field not in fields:
            close = difflib.get_close_matches(field, list(fields), n=1)
            raise UsageError(f"--grid {spec}: unknown config field {field!r}"
                             + (f"; did you mean {close[0]!r}?" if close else ""))
        if field in seen:
            raise UsageError(f"--grid {field} given twice: one --grid per field, its values "
                             "comma-separated")
        seen.add(field)
        values = _split_values(text)
        if any(not value for value in values):
            raise UsageError(f"--grid {spec}: an empty value")
        axes.append((field, [_parsed(config, field, value, spec) for value in values]))
    return axes


def _split_values(text: str) -> list[str]:
    """"a,(1, 2),'x,y'" → ["a", "(1, 2)", "x,y"]: commas inside brackets or quotes
    belong to a value; a value wholly in quotes is unquoted."""
    parts, current, depth, quote = [], "", 0, None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    parts.append(current.strip())
    return [p[1:-1] if len(p) >= 2 and p[0] == p[-1] and p[0] in "\"'" else p for p in parts]


def _parsed(config, field: str, text: str, spec: str) -> Any:
    """`text` as `--config.FIELD=text` sets `field` of a copy of `config`."""
    import copy

    from absl import flags
    from ml_collections import config_flags

    scratch = copy.deepcopy(config)  # its fields' types (placeholders keep theirs)
    argv = ["bnlab", f"--config.{field}={text}"]
    flag_values = flags.FlagValues()
    try:
        config_flags.DEFINE_config_dict("config", scratch, flag_values=flag_values,
                                        sys_argv=argv)
        flag_values(argv)
    except flags.Error as error:
        said = re.sub(r"^flag --config\.\S+?: ", "", str(error).splitlines()[0])
        raise UsageError(f"--grid {spec}: {said}") from None
    value = scratch
    for name in field.split("."):
        value = value[name]
    return value


def _with_axes(grid: list[dict[str, Any]], axes: list[tuple[str, list[Any]]],
               source: Path) -> list[dict[str, Any]]:
    """The file's grid times the --grid axes; a field that both set is refused (the
    grid's runs would turn into copies, or the file's values be lost)."""
    from bnlab import sweep

    for field, _ in axes:
        values = sorted({repr(point[field]) for point in grid if field in point})
        if values:
            raise UsageError(f"--grid {field}: the grid of {source} sets {field} already "
                             f"({', '.join(values)}); drop one")
    return sweep.product(grid, *(sweep.axis(field, values) for field, values in axes))


def worker_command(argv: list[str]) -> int:
    """Internal: one local worker of a sweep launch (started by `sweep --jobs N`)."""
    from bnlab import sweep

    if len(argv) not in (3, 4):
        raise UsageError("usage: python -m bnlab _worker WORKDIR LAUNCH_ID [PACK_JSON]")
    sweep.die_with_parent()
    _enable_compilation_cache()
    pack = json.loads(argv[3]) if len(argv) == 4 else {}
    with sweep.stop_at_safe_points():
        try:
            print(json.dumps(sweep.work(argv[1], argv[2], **pack)), flush=True)
        except Unwritable as error:
            # To the sweep process (which reads this output), to say as its one line:
            # every worker on a full disk printing its own would say it N + 1 times.
            first = error.first()
            print(json.dumps({"unwritable": [first.path, first.reason]}), flush=True)
            return 1
    return 0


def _varied_fields(configs: list[dict]) -> list[str]:
    """The config fields whose values differ across the runs, but those that never
    tell results apart (`config.BOOKKEEPING_FIELDS`): model and norm first, the seed
    last."""
    from bnlab.config import BOOKKEEPING_FIELDS

    fields = list(dict.fromkeys(field for config in configs for field in config))
    varied = [f for f in fields if f not in BOOKKEEPING_FIELDS
              and len({repr(config.get(f)) for config in configs}) > 1]
    # The table sorts by these columns in turn: what a comparison is about first (the
    # model, the norm), the seed last, so that a run's seeds sit next to each other
    # (config.json's alphabetical order had put every run of seed 0 before any of
    # seed 1); a stable sort keeps the rest in that order.
    rank = {"model": 0, "norm": 1, "seed": 3}
    return sorted(varied, key=lambda field: rank.get(field, 2))


def _step_reached(run_dir, config: dict) -> str:
    """A running run's last logged step, out of its total where its config gives
    the total ("7/128"), else "7…"; blank before its first log."""
    from bnlab import data
    from bnlab.config import total_steps

    rows = run_dir.metrics()
    if not rows:
        return ""
    total = total_steps(config, data.train_examples(config))
    return f"{rows[-1]['step']}/{total}" if total else f"{rows[-1]['step']}…"


def _cell(value) -> str:
    """A config value for the table; None (the field left unset: no ghost batch, the
    whole test set) as "-", so that a blank never reads as a column shifted."""
    return "-" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))


def _sort_key(text: str) -> tuple:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def ls_command(argv: list[str]) -> int:
    """The status table of a tracking directory, or every run's config and summary
    as CSV (to stdout or --out) or Parquet (--out)."""
    from bnlab import tracking

    if _wants_help(argv):
        raise _help("ls")
    args, options, where = [], {"--format": "table", "--out": None}, []
    rest = list(argv[1:])
    while rest:
        arg = rest.pop(0)
        name, _, value = arg.partition("=")
        if name in (*options, "--where"):
            if not value:
                if not rest:
                    raise UsageError(f"{name} needs a value")
                value = rest.pop(0)
            if name == "--where":
                field, equal, wanted = value.partition("=")
                if not equal or not field:
                    raise UsageError(f"--where {value}: use FIELD=VALUE, e.g. norm=bn")
                where.append((field, wanted))
            else:
                options[name] = value
        elif arg.startswith("-"):
            raise UsageError(f"unknown flag {arg}; ls takes --format table|csv|parquet, --out, "
                             "--where FIELD=VALUE")
        else:
            args.append(arg)
    if len(args) != 1:
        raise UsageError("usage: python -m bnlab ls DIR [--format table|csv|parquet] "
                         "[--out FILE] [--where FIELD=VALUE ...]")
    folder, fmt, out = Path(args[0]), options["--format"], options["--out"]
    if fmt not in ("table", "csv", "parquet"):
        raise UsageError(f"unknown --format {fmt!r}; allowed: table, csv, parquet")
    if fmt == "parquet" and not out:
        raise UsageError("--format parquet needs --out FILE")
    if out and not Path(out).resolve().parent.is_dir():
        raise UsageError(f"no folder for --out {out}")
    if fmt != "table":
        from bnlab import analysis

        try:
            runs = analysis.load_runs(folder)
        except FileNotFoundError:
            raise UsageError(f"no runs under {folder}") from None
        if fmt == "csv" and not out:
            runs.to_csv(sys.stdout, index=False)
            return 0
        temporary = Path(f"{out}.tmp.{os.getpid()}")  # nothing half-written at OUT
        try:
            if fmt == "csv":
                runs.to_csv(temporary, index=False)
            else:
                _to_parquet(runs, temporary)
            os.replace(temporary, out)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise Unwritable(out, error) from error
        print(f"wrote {len(runs)} runs to {out}")
        return 0
    run_dirs = tracking.find_runs(folder)
    if not run_dirs:
        raise UsageError(f"no runs under {folder}")
    configs = [run_dir.config() for run_dir in run_dirs]
    for field, wanted in where:
        if not any(field in c for c in configs):
            raise UsageError(f"--where {field}={wanted}: no run has a field {field!r}")
        kept = [i for i, c in enumerate(configs) if str(c.get(field)) == wanted]
        run_dirs, configs = [run_dirs[i] for i in kept], [configs[i] for i in kept]
    if not run_dirs:
        print("no runs match " + " ".join(f"{f}={v}" for f, v in where), file=sys.stderr)
        return 0
    varied = _varied_fields(configs)
    failed = any(run_dir.state() == "failed" for run_dir in run_dirs)
    columns = ("run", "status", "step", "test_acc", "sgd", "nb", "wall_s", *varied,
               *(("error",) if failed else ()))
    rows = []
    for run_dir, config in zip(run_dirs, configs, strict=True):
        summary = run_dir.summary()
        state = run_dir.state()
        if state == "done" and summary.get("collapsed"):
            state = "collapsed"  # done, and tests at chance (summary.json's `collapsed`)
        step = summary.get("step", "")
        if state == "running":  # how far it is: its last metrics row, of its total
            step = _step_reached(run_dir, config)
        error = run_dir.status().get("error", "") if state == "failed" else ""
        rows.append((str(run_dir.path.relative_to(folder)), state, step,
                     _number(summary.get("test_accuracy"), ".4f"),
                     summary.get("sgd_batch_size", ""), summary.get("norm_batch_size", ""),
                     _number(summary.get("wall_time_s"), ".1f"),
                     *(_cell(config.get(field)) for field in varied),
                     *((error.strip().splitlines()[-1][:80] if error.strip() else "",)
                       if failed else ())))
    # By the values of the fields that vary (numbers as numbers: batch 4 before 32).
    order = [columns.index(field) for field in varied]
    rows.sort(key=lambda row: [_sort_key(row[i]) for i in order] + [row[0]])
    widths = [max(len(str(x)) for x in column) for column in zip(columns, *rows, strict=True)]
    for row in (columns, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _number(value: Any, spec: str) -> str:
    """A summary's number for the table; anything else (missing, damaged) as blank."""
    return format(value, spec) if isinstance(value, int | float) else ""


def _to_parquet(runs, path: Path) -> None:
    """Parquet wants one type per column: tuples (list-valued config fields) and
    mixed columns are written as their JSON text."""
    frame = runs.copy()
    for column in frame.columns:
        types = {type(v) for v in frame[column] if v is not None and v == v}
        if types == {int, float}:
            frame[column] = frame[column].astype(float)
        elif len(types) > 1 or tuple in types or list in types:
            frame[column] = [json.dumps(v) if v is not None else None for v in frame[column]]
    frame.to_parquet(path, index=False)


def bench_command(argv: list[str]) -> int:
    """Speed benchmarks (bnlab.bench): a table on screen, JSON to --out."""
    from absl import flags

    flag_values = flags.FlagValues()
    flags.DEFINE_list("models", ["simple_cnn", "resnet20"], "models of the step benchmark",
                      flag_values=flag_values)
    flags.DEFINE_list("norms", ["bn", "gn"], "norms of the step benchmark",
                      flag_values=flag_values)
    flags.DEFINE_list("batch_sizes", ["8", "128"], "batch sizes of the step benchmark",
                      flag_values=flag_values)
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype",
                      flag_values=flag_values)
    flags.DEFINE_integer("steps", None, "timed steps per loop (default: 100 on CPU, 300 "
                         "on accelerators)", lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("steps_per_call", None, "steps per call of the fused loop "
                         "(default: 10 on CPU, 100 on accelerators)", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_integer("members", 16, "runs packed together by the pack benchmark",
                         lower_bound=1, flag_values=flag_values)
    flags.DEFINE_enum("cpu_fusion", "auto", list(CPU_FUSIONS), "on a CPU, bnlab's "
                      "steps with XLA's fusions or YNNPACK's (config.cpu_fusion)",
                      flag_values=flag_values)
    flags.DEFINE_bool("torch", True, "also time the article's PyTorch code, when torch is "
                      "installed", flag_values=flag_values)
    flags.DEFINE_string("out", None, "write the records here as JSON", flag_values=flag_values)
    if _wants_help(argv):
        raise _help("bench", flag_values)
    try:
        rest = flag_values(argv)
        batch_sizes = [int(b) for b in flag_values.batch_sizes]
    except (flags.Error, ValueError) as error:
        raise UsageError(str(error).splitlines()[0]) from None
    if len(rest) > 2:
        raise UsageError(f"unexpected arguments: {' '.join(rest[2:])}")
    which = rest[1] if len(rest) == 2 else "all"
    if which not in ("step", "norms", "pack", "load", "all"):
        raise UsageError(f"unknown benchmark {which!r}; allowed: step, norms, pack, load, all")
    from bnlab import bench, config, models, norms, tracking

    for model in flag_values.models:
        if model not in models.MODELS:
            raise config.ConfigError("models", model, f"allowed: {', '.join(models.MODELS)}")
    for norm in flag_values.norms:
        norms.make(norm, **({"num_groups": 8} if norm == "gn" else {}))
    if flag_values.out and not Path(flag_values.out).parent.is_dir():
        raise UsageError(f"no folder for --out {flag_values.out}")
    def save(records):  # after every record: an interrupted benchmark keeps what it measured
        tracking.write_text_atomic(Path(flag_values.out), bench.to_json(records))

    bench.run(which, flag_values.models, flag_values.norms, batch_sizes, flag_values.dtype,
              flag_values.steps, flag_values.steps_per_call, flag_values.members,
              flag_values.torch, save if flag_values.out else None, flag_values.cpu_fusion)
    if flag_values.out:
        print(f"wrote {flag_values.out}")
    return 0


def report_command(argv: list[str]) -> int:
    """The claims' verdicts from a tracking directory (bnlab.report), without training."""
    if _wants_help(argv):
        raise _help("report")
    if len(argv) not in (2, 3):
        raise UsageError("usage: python -m bnlab report DIR [OUT_DIR]")
    folder = Path(argv[1])
    from bnlab import report, tracking

    if not folder.is_dir() or not tracking.find_runs(folder):
        raise UsageError(f"no runs under {folder}")
    out = Path(argv[2]) if len(argv) == 3 else folder
    for verdict in report.write_report(folder, out):
        print(f"{verdict.claim:4} {verdict.verdict:14} {verdict.effect}")
    print("wrote {} and {}".format(*tracking.SweepDir(out).report_paths()))
    return 0


def reproduce_command(argv: list[str]) -> int:
    """The article's claims end to end: the experiments at a scale, then the report."""
    from bnlab.sweep import SCALES

    def define(flags, flag_values):
        flags.DEFINE_enum("scale", "quick", list(SCALES),
                          "smoke: seconds (a check of the machinery); quick: about 40 min on "
                          "2 CPU cores; full: one GPU", flag_values=flag_values)
        flags.DEFINE_list("claims", None, "only these claims, e.g. C1,C5 (default: all)",
                          flag_values=flag_values)
        flags.DEFINE_integer("jobs", None, "parallel worker processes (default: 2 on a "
                             "CPU with 2 cores or more, 1 on an accelerator)", lower_bound=1,
                             flag_values=flag_values)
        flags.DEFINE_integer("seed_offset", 0, "the first seed: each claim is judged on "
                             "two disjoint seed sets from it (an experiment with 3 seeds a "
                             "set: 0-2 and 3-5 by default); another offset gives an "
                             "independent replication", lower_bound=0, flag_values=flag_values)

    config, overrides, flag_values = _parse_config_flags(argv, DEFAULT_CONFIG, define)
    if not flag_values.workdir:
        raise UsageError("--workdir is required: where the runs and the report go")
    from bnlab import claims, reproduce, tracking

    try:
        selected = claims.claims_by_id(flag_values.claims)
    except ValueError as error:
        raise UsageError(str(error)) from None
    override_values = {key: config[key] for key in overrides}
    jobs = flag_values.jobs
    if jobs is None:
        # Asked of the device files, not of JAX: a process that started JAX's threads
        # should not fork the workers.
        accelerator = Path("/dev/nvidia0").exists() or any(Path("/dev").glob("accel*"))
        jobs = 1 if accelerator else min(2, os.cpu_count() or 1)
    if jobs > 1:  # as `sweep`: before planning, which may start JAX
        os.environ.setdefault(PREALLOCATE, "false")
    # Bad input: before writing.
    reproduce.plan(flag_values.scale, selected, override_values, None, flag_values.seed_offset)
    _enable_compilation_cache()
    start = time.perf_counter()
    verdicts = reproduce.reproduce(flag_values.workdir, flag_values.scale, selected, jobs,
                                   override_values, seed_offset=flag_values.seed_offset)
    for verdict in verdicts:
        print(f"{verdict.claim:4} {verdict.verdict:14} {verdict.effect}")
    report, claims_json = tracking.SweepDir(flag_values.workdir).report_paths()
    print(f"wrote {report} and {claims_json} ({(time.perf_counter() - start) / 60:.1f} min)")
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": train_command, "sweep": sweep_command, "ls": ls_command,
    "bench": bench_command, "report": report_command, "reproduce": reproduce_command,
    "_worker": worker_command}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        try:
            print(USAGE, flush=True)
        except BrokenPipeError:  # `bnlab --help | head`
            _reader_gone()
        return 0 if len(argv) >= 2 else 2
    command = argv[1]
    if command not in COMMANDS:
        public = [c for c in COMMANDS if not c.startswith("_")]
        print(f"error: unknown command {command!r}; commands: {', '.join(public)}",
              file=sys.stderr)
        return 2
    # Every command may run steps: glibc's malloc must keep freed memory before
    # JAX's threads first allocate (bnlab/fast/heap.py); importing bnlab leaves it.
    heap.keep_freed_memory()
    try:
        code = COMMANDS[command]([f"bnlab {command}"] + argv[2:])
        sys.stdout.flush()  # a reader that has gone shows here, where it is handled
        return code
    except HelpRequested as text:
        print(text)
        return 0
    except (UsageError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if command != "_worker":  # Ctrl-C reaches a sweep's workers too: one line is enough
            print("interrupted", file=sys.stderr)
        return 130
    except Unfinished as error:  # runs that did not end: not a success
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Unwritable as error:  # a read-only or full disk: the first write it refused
        print(f"error: {error.first()}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `bnlab ls DIR | head`: the reader has what it wanted
        _reader_gone()
        return 0


def _reader_gone() -> None:
    """stdout's reader has left: Python's own flush at exit writes to /dev/null."""
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), sys.stdout.fileno())
