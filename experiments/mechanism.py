"""C10 mechanism: does BN work by reducing internal covariate shift?

BN against no norm on the article's SimpleCNN and Fashion-MNIST, with the
diagnostics of Santurkar et al. 2018 logged at every log step (`log_landscape`):
each layer's internal covariate shift (its gradient before and after the layers
before it take their step) and the loss landscape along the gradient (loss range,
gradient change, effective β-smoothness), plus each layer's activation mean/std.
  python -m bnlab sweep experiments/mechanism.py --workdir runs/mechanism
`get_config(scale)` / `get_sweep(scale)` size it for `bnlab reproduce --scale`
(the sweep command uses "quick").
"""

from pathlib import Path

import ml_collections

from bnlab.config import load_config_file
from bnlab.sweep import at_scale, axis, product

SEEDS = {"smoke": (0, 1), "quick": (0, 1, 2), "full": (0, 1, 2, 3, 4)}
SIZES = {
    "smoke": dict(model="mlp", train_size=512, test_size=500, num_epochs=1.0, log_every=4),
    "quick": dict(train_size=8192, test_size=None, num_epochs=1.0, log_every=16),
    "full": dict(train_size=None, test_size=None, num_epochs=3.0, log_every=100),
}


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    config = load_config_file(Path(__file__).resolve().parent.parent / "configs" / "default.py")
    config.update(at_scale(SIZES, scale))
    config.log_activations = True
    config.log_landscape = True
    return config


def get_sweep(scale: str = "quick") -> list[dict]:
    return product(axis("norm", ("bn", "none")), axis("seed", at_scale(SEEDS, scale)))
