"""C6 placement: does BN belong after the convolution and before the activation?

BN before the ReLU (conv → BN → ReLU, the article's) against after it
(conv → ReLU → BN), on the article's SimpleCNN and Fashion-MNIST.
  python -m bnlab sweep experiments/placement.py --workdir runs/placement
`get_config(scale)` / `get_sweep(scale)` size it for `bnlab reproduce --scale`
(the sweep command uses "quick").
"""

from pathlib import Path

import ml_collections

from bnlab.config import load_config_file
from bnlab.sweep import at_scale, axis, product

SEEDS = {"smoke": (0, 1), "quick": (0, 1, 2), "full": (0, 1, 2, 3, 4)}
SIZES = {
    "smoke": dict(model="mlp", train_size=512, test_size=500, num_epochs=1.0, log_every=8),
    "quick": dict(train_size=8192, test_size=None, num_epochs=1.0, log_every=32),
    "full": dict(train_size=None, test_size=None, num_epochs=5.0, log_every=100),
}


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    config = load_config_file(Path(__file__).resolve().parent.parent / "configs" / "default.py")
    config.update(at_scale(SIZES, scale))
    return config


def get_sweep(scale: str = "quick") -> list[dict]:
    return product(axis("norm", ("bn",)),
                   axis("norm_placement", ("before_activation", "after_activation")),
                   axis("seed", at_scale(SEEDS, scale)))
