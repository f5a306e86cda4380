"""C10 mechanism: does BN work by reducing internal covariate shift?

BN against no norm on the article's SimpleCNN and Fashion-MNIST, with the
diagnostics of Santurkar et al. 2018 logged at every log step (`log_landscape`):
each layer's internal covariate shift (its gradient before and after the layers
before it take the optimizer's step) and the loss landscape along the gradient
(loss range, gradient change, effective β-smoothness), plus each layer's activation
mean/std. And their noisy BN: BN with random noise after it, redrawn every step
(`bn_noise`), which brings the shift back: does BN still train as well? Beside it
the same noise drawn once and held (`bn_noise_static`): as much noise, no shift.
  python -m bnlab sweep experiments/mechanism.py --workdir runs/mechanism
`get_config(scale)` / `get_sweep(scale)` size it for `bnlab reproduce --scale`
(the sweep command uses "quick").
"""

import ml_collections

from bnlab.sweep import axis, chain, product, scaled_default, seeds

SIZES = {
    "smoke": dict(model="mlp", train_size=512, test_size=500, num_epochs=1.0, log_every=4),
    "quick": dict(train_size=8192, test_size=None, num_epochs=1.0, log_every=16),
    "full": dict(train_size=None, test_size=None, num_epochs=3.0, log_every=100),
}


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    config = scaled_default(SIZES, scale)
    config.log_activations = True
    config.log_landscape = True
    return config


# Seeds per set, sized by a pilot (the quick reproduction of 2026-12-05, 3 seeds a
# set): the per-seed log ratio of ICS spread by ~0.2, 0.18 from the margin, which
# 3 seeds cannot resolve (t(2) = 4.3) and about 8 can.
SEEDS = {"quick": 8, "full": 8}
# Noisy BN's noise: each BN output y becomes s·y + m, s ~ U(1, 1.5), m ~ U(−0.5, 0.5),
# per value and step. Santurkar et al.'s noise also has a non-zero mean and a
# non-unit variance that change every step; half of BN's unit scale is enough to
# move every layer's input distribution at every step, and not so much that noise
# alone (rather than the shift) would stop a network from learning.
NOISE = 0.5


def get_sweep(scale: str = "quick") -> list[dict]:
    # The control: the same noise drawn once (`bn_noise_static`), as much noise and
    # no shift, so that what the shift costs is told from what the noise costs.
    return chain(product(axis("norm", ("bn", "none")), seeds(scale, SEEDS)),
                 product(axis("norm", ("bn",)), axis("bn_noise", (NOISE,)),
                         axis("bn_noise_static", (False, True)), seeds(scale, SEEDS)))
