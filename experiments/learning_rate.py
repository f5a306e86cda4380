"""C1 speed, C2 learning rate, C3 regularization: BN against no norm over a grid
of learning rates.

BN and no norm at ×1, ×3, ×10 and ×30 a base learning rate, SGD with momentum on
the article's SimpleCNN and Fashion-MNIST, the test set evaluated along the way
(steps to a target accuracy, C1). A run whose loss turns NaN/Inf is recorded as
diverged (with its step), and the sweep goes on. All runs share one compiled
train step per norm: the learning rate is a value.
  python -m bnlab sweep experiments/learning_rate.py --workdir runs/learning_rate
`get_config(scale)` / `get_sweep(scale)` size it for `bnlab reproduce --scale`
(the sweep command uses "quick").
"""

import ml_collections

from bnlab.sweep import at_scale, axis, product, scaled_default, seeds

BASE_LEARNING_RATE = 0.01
MULTIPLIERS = {"smoke": (1, 30), "quick": (1, 3, 10, 30), "full": (1, 3, 10, 30, 100)}
SIZES = {  # train examples, test examples, epochs, steps between logs and evaluations
    "smoke": dict(model="mlp", train_size=1024, test_size=500, num_epochs=0.75,
                  log_every=8),
    # Curves on 2,000 test examples, the final accuracy on all 10,000: evaluating the
    # whole test set every 16 steps was 77% of this experiment's time on a CPU.
    "quick": dict(train_size=8192, test_size=None, curve_test_size=2000, num_epochs=1.0,
                  log_every=16),
    "full": dict(train_size=None, test_size=None, num_epochs=5.0, log_every=100),
}


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    config = scaled_default(SIZES, scale)
    config.batch_size = 32 if scale == "smoke" else 64
    config.eval_every = config.log_every  # test-accuracy curves: steps to a target (C1)
    return config


def get_sweep(scale: str = "quick") -> list[dict]:
    return product(
        axis("norm", ("bn", "none")),
        axis("learning_rate", [round(BASE_LEARNING_RATE * m, 6)
                               for m in at_scale(MULTIPLIERS, scale)]),
        seeds(scale))
