"""C1 speed, C2 learning rate, C3 regularization, C12 robustness, C14 wall clock:
BN against no norm over a grid of learning rates.

BN and no norm at ×2 steps of a base learning rate, up to rates where both fail
(no norm sat at chance from 0.3, BN from 0.3 to 1 on the quick scale's ×3 grid),
SGD with momentum on the article's SimpleCNN and Fashion-MNIST, the test set
evaluated along the way (steps to a target accuracy, C1). The article's net
normalizes its convolutions only; fc1, which holds 97% of its parameters, is not:
BN on fc1 too (`norm_fc1`) is the arm C2 is decided on, the article's net beside
it. A run whose loss turns NaN/Inf is recorded as diverged (with its step), and the
sweep goes on. All runs share one compiled train step per arm: the learning rate
is a value.
  python -m bnlab sweep experiments/learning_rate.py --workdir runs/learning_rate
`get_config(scale)` / `get_sweep(scale)` size it for `bnlab reproduce --scale`
(the sweep command uses "quick").
"""

import ml_collections

from bnlab.sweep import at_scale, axis, chain, product, scaled_default, seeds

BASE_LEARNING_RATE = 0.01
# ×2 steps: a ×3 grid could not tell a ×2 effect (C2's margin) from none.
MULTIPLIERS = {"smoke": (1, 30), "quick": tuple(2**k for k in range(8)),
               "full": tuple(2**k for k in range(9))}
# BN on every hidden layer trained at the quick grid's top rate (1.28) in all 6 seeds
# of the first run: its limit lies further up, so its arm goes on until it fails.
FC1_ABOVE = {"quick": (256, 512), "full": (512, 1024)}
# Seeds per set: the quick reproduction of 2026-12-05 with 3 a set left C2 undecided
# in one set (×/÷ 5.4 wide around 10×, t(2) = 4.3) and C1 in both; 5 (t(4) = 2.8)
# is what the 30-minute budget of the quick scale allows.
SEEDS = {"quick": 5}
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
    # C12, at the end on the curves' test examples: a pilot (4 seeds, each norm at its
    # tuned rate) lost under 2 points to noise of std 0.1 and 2-8 to 0.2; one FGSM step
    # of 0.02 (about 5/255, CIFAR's usual 8/255 is 0.031) cost 9-13.
    config.robust_noise = 0.2
    config.robust_fgsm = 0.02
    return config


def get_sweep(scale: str = "quick") -> list[dict]:
    rates = axis("learning_rate", [round(BASE_LEARNING_RATE * m, 6)
                                   for m in at_scale(MULTIPLIERS, scale)])
    article = product(axis("norm", ("bn", "none")), rates, seeds(scale, SEEDS))
    if scale == "smoke":  # the MLP normalizes every hidden layer already
        return article
    higher = axis("learning_rate", [round(BASE_LEARNING_RATE * m, 6)
                                    for m in at_scale(FC1_ABOVE, scale)])
    return chain(article, product(axis("norm", ("bn",)), axis("norm_fc1", (True,)),
                                  rates + higher, seeds(scale, SEEDS)))
