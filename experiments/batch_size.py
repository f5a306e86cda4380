"""C5 small batch: does BN degrade at small batch where GN, LN and IN do not?
(and C9's small-batch regime: GN from LN to IN at the smallest batch)
(the Group Norm paper's Figure 1, on the article's SimpleCNN and Fashion-MNIST,
and on the BN paper's MLP, where a BN statistic at batch 2 averages 2 values)

Norms × batch 2..32 × seeds. Every batch size trains the same number of epochs,
with the learning rate scaled linearly with the batch (Goyal et al. 2017), as the
GN paper does. One device: the normalization batch is the SGD batch, so a smaller
batch changes BN's statistics and the gradient noise at once. The MLP also trains
with ghost batches (`virtual_batch_size` 2 … 16) at a fixed SGD batch of 32 and
rate: only the normalization batch changes, the setting C5 is decided on (a BN
statistic there averages 2 … 32 values; GN's do not depend on the batch).
  python -m bnlab sweep experiments/batch_size.py --workdir runs/batch_size --jobs 2
`get_config(scale)` / `get_sweep(scale)` size it for `bnlab reproduce --scale`
(the sweep command uses "quick"); "full" trains ResNet-20.
"""

import ml_collections

from bnlab.sweep import at_scale, axis, chain, product, scaled_default, seeds, zipped

NORMS = ("bn", "gn", "ln", "in")
LEARNING_RATE_AT_32 = 0.05
# (model, norms, batch sizes) per scale; the MLP has no IN (one value per channel).
GRIDS = {
    "smoke": [("mlp", ("bn", "gn"), (4, 16))],
    # C5 reads the largest and smallest batch of the article's net, C9 the smallest;
    # the quick scale's budget went to C9's GN arm below (batch 4 and 16: 48 runs).
    "quick": [("simple_cnn", NORMS, (2, 8, 32)),
              ("mlp", ("bn", "gn", "ln"), (2, 4, 8, 16, 32))],
    "full": [("resnet20", NORMS, (2, 4, 8, 16, 32)),
             ("mlp", ("bn", "gn", "ln"), (2, 4, 8, 16, 32))],
}
# C9: GN between LN (G = 1) and IN (one channel a group) at the smallest batch, where
# the claim is that GN works: GN at the config's 4 groups is in the grid; this adds
# GN with 2 channels a group (SimpleCNN: 8 and 16 groups), beside LN and IN there.
GROUP_SIZES = {"smoke": [], "quick": [("simple_cnn", 2, (2,))],
               "full": [("resnet20", 2, (2,))]}
# Ghost batches per scale: (model, normalization batches) at the SGD batch of 32.
GHOSTS = {"smoke": [], "quick": [("mlp", (2, 4, 8, 16))], "full": [("mlp", (2, 4, 8, 16))]}
SIZES = {
    "smoke": dict(train_size=128, test_size=500, num_epochs=1.0, log_every=8),
    # 5,000 test images: evaluating (EMA, PreciseBN, batch statistics) was 59% of this
    # experiment's time on all 10,000 (measured); the arms share them (paired).
    "quick": dict(train_size=4096, test_size=5000, num_epochs=1.0, log_every=100),
    "full": dict(train_size=None, test_size=None, num_epochs=5.0, log_every=200),
}


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    config = scaled_default(SIZES, scale)
    config.num_groups = 4  # SimpleCNN's 16 and 32 channels and the MLP's 100: 4 groups
    # BN's train/test discrepancy at small normalization batch (Wu & Johnson 2021):
    # the test set also with PreciseBN population statistics and with batch statistics.
    config.bn_eval = "ema,precise,batch"
    return config


def get_sweep(scale: str = "quick") -> list[dict]:
    plain = [product(axis("model", [model]), axis("norm", norms),
                     zipped(batch_size=list(sizes),
                            learning_rate=[round(LEARNING_RATE_AT_32 * b / 32, 6)
                                           for b in sizes]),
                     seeds(scale)) for model, norms, sizes in at_scale(GRIDS, scale)]
    # BN at normalization batch 32 and GN at SGD batch 32 are the plain grid's runs.
    ghost = [product(axis("model", [model]), axis("norm", ("bn",)), axis("batch_size", (32,)),
                     axis("learning_rate", (LEARNING_RATE_AT_32,)),
                     axis("virtual_batch_size", sizes), seeds(scale))
             for model, sizes in at_scale(GHOSTS, scale)]
    groups = [product(axis("model", [model]), axis("norm", ("gn",)),
                      axis("batch_size", (batch,)),
                      axis("learning_rate", (round(LEARNING_RATE_AT_32 * batch / 32, 6),)),
                      axis("group_size", sizes), seeds(scale))
              for model, batch, sizes in at_scale(GROUP_SIZES, scale)]
    return chain(*plain, *ghost, *groups)
