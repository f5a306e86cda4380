"""C11 batch size: "the larger the batch, the closer its statistics to the data
set's, and the better".

The article's SimpleCNN with BN at one SGD batch (256), one learning rate and one
length, normalizing over ghost batches of 8, 32 or all 256 examples (Hoffer et al.
2017): only the normalization batch changes, so its statistics' noise is told apart
from the gradient's (a larger SGD batch would change both). At the end each run
measures how far its batches' BN statistics lie from the data set's for batches of
2 to 256 (`stat_error_batches`): the "closer" part; the test accuracy over the
normalization batches is the "better" part (C5 covers the small end, 2 to 32, on
the MLP).
  python -m bnlab sweep experiments/batch_statistics.py --workdir runs/batch_statistics
`get_config(scale)` / `get_sweep(scale)` size it for `bnlab reproduce --scale`
(the sweep command uses "quick").
"""

import ml_collections

from bnlab.sweep import at_scale, axis, product, scaled_default, seeds

SIZES = {
    "smoke": dict(model="mlp", batch_size=32, train_size=1024, test_size=500, num_steps=16,
                  log_every=8, stat_error_batches=(2, 8, 32)),
    # 128 steps of 256: two passes over 16,384 images. Linear scaling of the tuned
    # rate at batch 64 (0.02) would give 0.08.
    "quick": dict(batch_size=256, learning_rate=0.08, train_size=16384, test_size=None,
                  num_epochs=2.0, log_every=32,
                  stat_error_batches=(2, 4, 8, 16, 32, 64, 128, 256)),
    "full": dict(batch_size=256, learning_rate=0.08, train_size=None, test_size=None,
                 num_epochs=5.0, log_every=100,
                 stat_error_batches=(2, 4, 8, 16, 32, 64, 128, 256)),
}
# None: the whole SGD batch is the normalization batch.
GHOST = {"smoke": (8, None), "quick": (8, 32, None), "full": (8, 32, None)}
# Seeds per set: a pilot of 2 seeds (2026-12-06) put the full batch 0.3-0.8 points
# below ghost batches of 32; 5 a set (t(4) = 2.8) gives about ±0.9 with a per-seed
# spread under a point. A run is ~13 s on 2 CPU cores: 30 runs, ~3.5 min.
SEEDS = {"quick": 5, "full": 5}


def get_config(scale: str = "quick") -> ml_collections.ConfigDict:
    config = scaled_default(SIZES, scale)
    config.norm = "bn"
    return config


def get_sweep(scale: str = "quick") -> list[dict]:
    return product(axis("virtual_batch_size", at_scale(GHOST, scale)), seeds(scale, SEEDS))
