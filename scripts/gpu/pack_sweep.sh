#!/usr/bin/env bash
# Issue 4 on the GPU: the learning-rate sweep (24 runs of one epoch of
# Fashion-MNIST) packed and unpacked, with `ls` of both and how far each run's
# packed result is from its unpacked twin.
#   run(command="bash scripts/gpu/pack_sweep.sh", carry=[".whl", ".data"], timeout_s=300)
set -uo pipefail
source scripts/gpu/setup.sh
for variant in packed unpacked; do
  flags=$([ $variant = packed ] && echo --pack)
  start=$(date +%s)
  # shellcheck disable=SC2086  # EXTRA: flags for a quick try on a CPU
  python3 -m bnlab sweep experiments/learning_rate.py --workdir /tmp/$variant $flags ${EXTRA:-} 2>&1 \
    | grep -v "^\s*$" | tail -3 | tee -a "$LOG"
  echo "$variant sweep wall: $(( $(date +%s) - start )) s" | tee -a "$LOG"
  python3 -m bnlab ls /tmp/$variant > "$OUT/ls_$variant.txt" 2>&1
done
python3 - <<'PY' 2>&1 | tee -a "$LOG"
import json, pathlib
def load(d):
    return {p.parent.name: json.loads(p.read_text()) for p in pathlib.Path(d).glob("runs/*/summary.json")}
a, b = load("/tmp/packed"), load("/tmp/unpacked")
diffs = [abs(a[k]["test_accuracy"] - b[k]["test_accuracy"]) for k in a
         if a[k]["test_accuracy"] is not None and b[k]["test_accuracy"] is not None]
same_status = sum(a[k]["status"] == b[k]["status"] for k in a)
print(f"runs {len(a)}/{len(b)}; same status {same_status}; test accuracy |packed-unpacked| "
      f"max {max(diffs):.4f} mean {sum(diffs)/len(diffs):.4f}")
def rates(runs):
    return sorted(round(v["steps_per_s"]) for v in runs.values() if v["steps_per_s"])
print("steps/s of a member (lowest 3): packed", rates(a)[:3], "unpacked", rates(b)[:3])
PY
