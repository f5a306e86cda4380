"""C4 gradient flow: does BN keep gradients healthy through depth?

A plain CNN (no skip connections) of 20 conv layers, BN against no norm, 3 seeds,
SGD with momentum on Fashion-MNIST, with each layer's gradient norm logged
(`log_grad_norms`); notebooks/03_gradient_flow.ipynb plots them against depth.
  python -m bnlab sweep experiments/gradient_flow.py --workdir runs/gradient_flow
"""

from pathlib import Path

import ml_collections

from bnlab.config import load_config_file
from bnlab.sweep import axis, product

DEPTH = 20
SEEDS = (0, 1, 2)


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(Path(__file__).resolve().parent.parent / "configs" / "default.py")
    config.model = "plain_cnn"
    config.depth = DEPTH
    config.width = 16
    config.batch_size = 64
    config.learning_rate = 0.02
    config.num_steps = 300
    config.log_every = 25
    config.log_grad_norms = True
    return config


def get_sweep() -> list[dict]:
    return product(axis("norm", ("bn", "none")), axis("seed", SEEDS))
