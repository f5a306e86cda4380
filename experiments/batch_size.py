"""C5 small batch: does BN degrade at small batch where GN, LN and IN do not?
(the Group Norm paper's Figure 1, on the article's SimpleCNN and Fashion-MNIST)

Norms × batch 2..32 × 3 seeds. Every batch size trains the same number of epochs,
with the learning rate scaled linearly with the batch (Goyal et al. 2017), as the
GN paper does. One device: the normalization batch is the SGD batch. Shrink it
for a laptop, e.g.
  python -m bnlab sweep experiments/batch_size.py --workdir runs/batch_size \
      --config.train_size=4096 --jobs 2
"""

from pathlib import Path

import ml_collections

from bnlab.config import load_config_file
from bnlab.sweep import axis, product, zipped

NORMS = ("bn", "gn", "ln", "in", "none")
BATCH_SIZES = (2, 4, 8, 16, 32)
LEARNING_RATE_AT_32 = 0.05
SEEDS = (0, 1, 2)


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(Path(__file__).resolve().parent.parent / "configs" / "default.py")
    config.num_epochs = 1.0
    config.num_groups = 8  # SimpleCNN's 16 and 32 channels: groups of 2 and 4
    config.log_every = 100
    return config


def get_sweep() -> list[dict]:
    return product(
        axis("norm", NORMS),
        zipped(batch_size=list(BATCH_SIZES),
               learning_rate=[round(LEARNING_RATE_AT_32 * b / 32, 6) for b in BATCH_SIZES]),
        axis("seed", SEEDS))
