"""C4 gradient flow: does BN keep gradients healthy through depth?

A plain CNN (no skip connections) of 20 conv layers, BN against no norm, SGD with
momentum on Fashion-MNIST, with each layer's gradient norm logged
(`log_grad_norms`); notebooks/03_gradient_flow.ipynb plots them against depth.
  python -m bnlab sweep experiments/gradient_flow.py --workdir runs/gradient_flow
`get_config(scale)` / `get_sweep(scale)` size it for `bnlab reproduce --scale`
(the sweep command uses "quick"); "full" adds depth 50.
"""

import ml_collections

from bnlab.sweep import at_scale, axis, product, scaled_default, seeds

DEPTHS = {"smoke": (3,), "quick": (20,), "full": (20, 50)}
SIZES = {
    "smoke": dict(train_size=512, test_size=500, num_steps=16, log_every=8, width=4),
    # The test accuracy is not what C4 measures: 1,000 test images are enough there.
    "quick": dict(train_size=None, test_size=1000, num_steps=100, log_every=20, width=16),
    "full": dict(train_size=None, test_size=None, num_steps=1000, log_every=50, width=16),
}


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    config = scaled_default(SIZES, scale)
    config.model = "plain_cnn"
    config.batch_size = 64
    config.learning_rate = 0.02
    config.log_grad_norms = True
    config.log_activations = True  # each layer's output mean/std at every log
    return config


def get_sweep(scale: str = "quick") -> list[dict]:
    return product(axis("depth", at_scale(DEPTHS, scale)), axis("norm", ("bn", "none")),
                   seeds(scale))
