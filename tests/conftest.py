import os
import sys
from pathlib import Path

# 8 simulated CPU devices for the cross-device tests; must precede the first JAX
# import. Single-device runs use the first of them, as they would on a real host.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bnlab.config import load_config_file  # noqa: E402


@pytest.fixture
def small_config():
    """The default config, shrunk: 20 steps of batch 32 on 1,024 real Fashion-MNIST
    images, evaluated on the first 2,000 test images."""
    config = load_config_file(ROOT / "configs" / "default.py")
    config.train_size = 1024
    config.test_size = 2000
    config.batch_size = 32
    config.num_steps = 20
    config.log_every = 5
    return config


@pytest.fixture
def synthetic_config(small_config):
    config = small_config
    config.dataset = "synthetic"
    config.train_size = None
    return config
