#!/usr/bin/env bash
# Run here (no GPU) once before a device-tool session: copies the Fashion-MNIST
# files into .data/ and the wheels the GPU image lacks into .whl/, both ignored
# by git and named in the device run's `carry`.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
grep -qx "/.data/" .git/info/exclude 2>/dev/null || echo "/.data/" >> .git/info/exclude
mkdir -p .data .whl
cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .data/
# The GPU image has JAX, Flax, Optax, absl, tqdm, tensorboard; not ml_collections.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp -d .whl ml_collections==1.1.0
ls -la .data .whl
