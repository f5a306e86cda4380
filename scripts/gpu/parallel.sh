#!/usr/bin/env bash
# Issue 3's GPU check, for the device tool (carry: .whl .data; run
# scripts/gpu/prepare.sh here first). Writes runs and a log under $OUT.
#   run(command="bash scripts/gpu/parallel.sh", carry=[".whl", ".data"], timeout_s=420)
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site BNLAB_DATA_DIR=$PWD/.data PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
nvidia-smi -L | tee "$OUT/log.txt"
python3 -c "import jax, flax; print(jax.__version__, flax.__version__, jax.devices())" | tee -a "$OUT/log.txt"
# One epoch of Fashion-MNIST at SGD batch 16 with a normalization batch of 2: the
# 8-CPU-device run (shard_map, bn_sync=local) is ghost batch 2 on one device.
for mode in none shard_map; do
  python3 -m bnlab train --config.parallel=$mode --config.bn_sync=local \
    --config.batch_size=16 --config.virtual_batch_size=2 --config.bn_eval=ema,precise,batch \
    --workdir "$OUT/runs" 2>&1 | tail -2 | tee -a "$OUT/log.txt"
done
