#!/usr/bin/env bash
# Issue 6 on the GPU: `bnlab reproduce --scale full --claims C5` (ResNet-20 and the
# BN paper's MLP, bn/gn/ln/in × batch 2..32 × 5 seeds, packed) for as long as the
# device time allows, then the report of whatever finished, into $OUT/full. Also
# issue 7's first check: `bnlab train` with the automatic fused default.
#   run(command="bash scripts/gpu/reproduce_full.sh", carry=[".whl", ".data"], timeout_s=540)
# EXTRA: config overrides; the default sizes C5 for ~7 minutes of an H100 (one epoch
# of 12,800 images); BUDGET_S: seconds for the reproduction.
set -uo pipefail
source scripts/gpu/setup.sh
python3 -m bnlab train --workdir /tmp/train 2>&1 | tail -1 | tee -a "$LOG"
start=$(date +%s)
# shellcheck disable=SC2086  # EXTRA holds several flags
timeout "${BUDGET_S:-420}" python3 -m bnlab reproduce --scale full --claims C5 \
  --workdir /tmp/full ${EXTRA:---config.train_size=12800 --config.num_epochs=1} 2>&1 \
  | grep -v "^\s*$" | tail -15 | tee -a "$LOG"
echo "reproduce wall: $(( $(date +%s) - start )) s" | tee -a "$LOG"
mkdir -p "$OUT/full"
python3 -m bnlab report /tmp/full "$OUT/full" 2>&1 | tail -12 | tee -a "$LOG"
python3 -m bnlab ls /tmp/full > "$OUT/full/ls.txt" 2>&1
