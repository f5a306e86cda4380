#!/usr/bin/env bash
# The packing benchmark alone (16 members at batch 8, 128 at batch 2), for the
# device tool:  run(command="bash scripts/gpu/pack_bench.sh", carry=[".whl"], timeout_s=150)
set -uo pipefail
source scripts/gpu/setup.sh
python3 - 2>&1 <<'PY' | grep -v "^W1126\|cuda_timer" | tee -a "$OUT/log.txt"
import os
from bnlab import bench
records = [bench.pack_benchmark(16, 8), bench.pack_benchmark(128, 2, steps=200)]
print(bench.table(records))
open(os.path.join(os.environ.get("OUT", "/tmp/out"), "pack.json"), "w").write(bench.to_json(records))
PY
