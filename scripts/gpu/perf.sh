#!/usr/bin/env bash
# Issue 7's GPU checks in one device-tool call (run scripts/gpu/prepare.sh here
# first): the norm layers (fused against the two-pass reference, with XLA's count
# of memory passes) in float32 and bfloat16; the train step of SimpleCNN at batch 8
# and 128 and ResNet-20 at batch 128, BN and GN, in float32 and bfloat16, against
# the plain loop and PyTorch; `bnlab train` with the automatic fused default. Each
# step writes under $OUT as it ends, so a timeout still brings back what finished.
#   run(command="bash scripts/gpu/perf.sh", carry=[".whl", ".data"], timeout_s=480)
set -uo pipefail
source scripts/gpu/setup.sh
step() { echo "=== $* ($(date +%T))" | tee -a "$LOG"; "$@" 2>&1 | grep -v "^\s*$" | tail -40 | tee -a "$LOG"; }
step python3 -m bnlab bench norms --out "$OUT/norms.json"
step python3 -m bnlab bench norms --dtype bfloat16 --out "$OUT/norms_bf16.json"
step python3 -m bnlab bench step --models simple_cnn --norms bn,gn --batch_sizes 8,128 \
  --out "$OUT/step_simple_cnn.json"
step python3 -m bnlab bench step --models resnet20 --norms bn,gn --batch_sizes 128 \
  --out "$OUT/step_resnet20.json"
step python3 -m bnlab bench step --models simple_cnn,resnet20 --norms bn,gn --batch_sizes 128 \
  --dtype bfloat16 --notorch --out "$OUT/step_bf16.json"
step python3 -m bnlab train --workdir /tmp/train
echo "=== end $(date +%T)" | tee -a "$LOG"
