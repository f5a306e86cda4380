"""C4 gradient flow and C13 depth: does BN keep gradients healthy through depth, and
does it let a deep network train that does not train without it?

A plain CNN (no skip connections) of 20 conv layers, BN against no norm, SGD with
momentum on Fashion-MNIST, with each layer's gradient norm logged
(`log_grad_norms`); notebooks/03_gradient_flow.ipynb plots them against depth. BN
trains at one rate; no norm at that rate and the two below it (×½, ×¼), so that a
plain net that trains only at a smaller rate is not called untrainable (C13 picks
its rate per seed on the other seeds). C4 also reads the gradients at
initialization (one step, logged before the update moves anything that step's
gradient saw) at depths up to 50, where mean-field theory predicts BN's gradients
to grow towards the input (Yang et al. 2019).
  python -m bnlab sweep experiments/gradient_flow.py --workdir runs/gradient_flow
`get_config(scale)` / `get_sweep(scale)` size it for `bnlab reproduce --scale`
(the sweep command uses "quick"); "full" adds depth 50.
"""

import ml_collections

from bnlab.sweep import at_scale, axis, chain, product, scaled_default, seeds

DEPTHS = {"smoke": (3,), "quick": (20,), "full": (20, 50)}
# Depths probed at initialization (one step each; the compilation is most of it).
INIT_DEPTHS = {"smoke": (3,), "quick": (10, 20, 50), "full": (10, 20, 50)}
# Test images of the one-step runs: nothing reads their accuracy, and evaluating
# 1,000 images at depth 50 (its compilation included) was 80% of those runs' time.
PROBE_TEST = {"smoke": (100,), "quick": (100,), "full": (100,)}
# No norm's rates, as multiples of the base rate: the BN paper's no-norm baselines
# train at smaller rates than BN's.
NO_NORM_RATES = {"smoke": (1,), "quick": (0.25, 0.5, 1), "full": (0.25, 0.5, 1)}
# Seeds per set: C4's per-seed spreads varied by ±0.6 decades over 3 seeds (the quick
# reproduction of 2026-12-05); 4 is what the quick scale's budget allows.
SEEDS = {"quick": 4}
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
    rate = get_config(scale).learning_rate
    none_rates = [round(rate * m, 6) for m in at_scale(NO_NORM_RATES, scale)]
    depths = axis("depth", at_scale(DEPTHS, scale))
    return chain(product(depths, axis("norm", ("bn",)), axis("learning_rate", (rate,)),
                         seeds(scale, SEEDS)),
                 product(depths, axis("norm", ("none",)), axis("learning_rate", none_rates),
                         seeds(scale, SEEDS)),
                 product(axis("depth", at_scale(INIT_DEPTHS, scale)),
                         axis("norm", ("bn", "none")), axis("num_steps", (1,)),
                         axis("log_every", (1,)), axis("test_size", at_scale(PROBE_TEST, scale)),
                         seeds(scale, SEEDS)))
