#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian
# machine (the Fashion-MNIST files, the Python packages), lints, runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  $sudo apt-get update -q
  $sudo apt-get install -y -q dataset-fashion-mnist
fi
# The tfds extra too, so the optional dataset path is tested, not skipped.
python3 -m pip install -q -r requirements-dev.txt -r requirements-tfds.txt
# A real one-node Slurm for the Slurm executor's test (needs root: CI is root).
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/start_local_slurm.sh
  export BNLAB_REQUIRE_SLURM=1
fi
python3 -m ruff check .
# Two workers, each file's tests on one of them (module fixtures stay shared):
# the suite compiles far more than it computes, and a compile runs on one core
# for much of its time; 369 against 555 s on the 2-core CI machine.
python3 -m pytest -q -n 2 --dist loadfile "$@"
