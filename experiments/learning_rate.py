"""C2 learning rate: does BN tolerate much larger learning rates?

BN and no norm at ×1, ×3, ×10 and ×30 a base learning rate, 3 seeds, SGD with
momentum on the article's SimpleCNN and Fashion-MNIST. A run whose loss turns
NaN/Inf is recorded as diverged (with its step), and the sweep goes on. All
runs share one compiled train step per norm: the learning rate is a value.
  python -m bnlab sweep experiments/learning_rate.py --workdir runs/learning_rate
"""

from pathlib import Path

import ml_collections

from bnlab.config import load_config_file
from bnlab.sweep import axis, product

BASE_LEARNING_RATE = 0.01
MULTIPLIERS = (1, 3, 10, 30)
SEEDS = (0, 1, 2)


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(Path(__file__).resolve().parent.parent / "configs" / "default.py")
    config.num_epochs = 1.0
    config.batch_size = 64
    config.log_every = 50
    return config


def get_sweep() -> list[dict]:
    return product(
        axis("norm", ("bn", "none")),
        axis("learning_rate", [round(BASE_LEARNING_RATE * m, 6) for m in MULTIPLIERS]),
        axis("seed", SEEDS))
