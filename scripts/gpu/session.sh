#!/usr/bin/env bash
# Every GPU check of issues 3, 4 and 7 in one device-tool call (run
# scripts/gpu/prepare.sh here first). Each step writes under $OUT as it ends, so a
# timeout still brings back what finished; a failing step does not stop the rest.
#   run(command="bash scripts/gpu/session.sh", carry=[".whl", ".data"], timeout_s=540)
set -uo pipefail
source scripts/gpu/setup.sh
python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__,
  'optax', optax.__version__, 'torch', torch.__version__, jax.devices())" 2>&1 | tee -a "$LOG"
step() { echo "=== $* ($(date +%T))" | tee -a "$LOG"; "$@" 2>&1 | grep -v "^\s*$" | tail -40 | tee -a "$LOG"; }

# Issue 3: one epoch of Fashion-MNIST at SGD batch 16, norm batch 2 (ghost batches
# of 2 on one device; shard_map over the one GPU with bn_sync=local), all BN evals.
for mode in none shard_map; do
  step python3 -m bnlab train --config.parallel=$mode --config.bn_sync=local \
    --config.batch_size=16 --config.virtual_batch_size=2 --config.bn_eval=ema,precise,batch \
    --workdir /tmp/runs
done
find /tmp/runs -name summary.json -exec sh -c 'echo {}; cat {}' \; > "$OUT/summaries.txt"
# Issue 4: 16 SimpleCNN members at batch 8, packed against one after another.
step python3 -m bnlab bench pack --members 16 --out "$OUT/pack16.json"
# The H100 baseline: 128 members at batch 2.
step python3 -c "from bnlab import bench; import json
r = bench.pack_benchmark(members=128, batch_size=2, steps=200)
print(bench.table([r])); open('$OUT/pack128.json', 'w').write(bench.to_json([r]))"
# Issue 7: train-step speed against the plain loop and PyTorch; norm layers.
step python3 -m bnlab bench step --models simple_cnn --norms bn,gn --batch_sizes 8,128 \
  --out "$OUT/step_simple_cnn.json"
step python3 -m bnlab bench norms --out "$OUT/norms.json"
step python3 -m bnlab bench step --models resnet20 --norms bn,gn --batch_sizes 128 \
  --out "$OUT/step_resnet20.json"
echo "=== end $(date +%T)" | tee -a "$LOG"
