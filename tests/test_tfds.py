"""The tensorflow-datasets path (optional extra), on tfds's own mock data."""

import numpy as np
import pytest

from bnlab import data, train
from bnlab.config import ConfigError

tfds = pytest.importorskip("tensorflow_datasets")


def test_cifar10_through_tfds_mock_data():
    with tfds.testing.mock_data(num_examples=40):
        train_set = data.load("cifar10", "train")
        test_set = data.load("cifar10", "test")
    assert train_set.images.shape == (40, 32, 32, 3) and train_set.images.dtype == np.float32
    assert test_set.num_classes == 10 and set(np.unique(train_set.labels)) <= set(range(10))
    # Normalized with CIFAR-10's train statistics: mock pixels are uniform in 0..255.
    mean, std = data.CHANNEL_STATS["cifar10"]
    assert train_set.images.min() >= (0 - max(mean)) / min(std) - 1e-5


def test_a_run_on_a_tfds_dataset(synthetic_config, tmp_path):
    synthetic_config.dataset = "cifar10"
    synthetic_config.batch_size = 8
    synthetic_config.num_steps = 3
    with tfds.testing.mock_data(num_examples=32):
        summary = train.train_and_evaluate(synthetic_config, str(tmp_path))
    assert summary["status"] == "done" and summary["values_per_statistic"] == 8 * 16 * 16


def test_an_unprepared_dataset_offline_is_a_clear_error(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
    with pytest.raises(ConfigError, match="tfds build cifar10 --data_dir DIR"):
        data.load("cifar10", "train", data_dir=str(tmp_path))
