#!/usr/bin/env bash
# What a session that is lent a GPU runs once, whatever issue it is on (run
# scripts/gpu/prepare.sh here first): the performance checks (perf.sh), then the
# packed-against-unpacked learning-rate sweep (pack_sweep.sh), each under its own
# time limit so that one call of the device tool fits both:
#   run(command="bash scripts/gpu/lent.sh", carry=[".whl", ".data"], timeout_s=590)
set -uo pipefail
timeout "${PERF_S:-380}" bash scripts/gpu/perf.sh
echo "perf.sh exit $?"
timeout "${SWEEP_S:-170}" bash scripts/gpu/pack_sweep.sh
echo "pack_sweep.sh exit $?"
