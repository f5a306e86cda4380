"""The input pipeline on the real Fashion-MNIST files and on synthetic data."""

import gzip

import numpy as np
import pytest

from bnlab import data
from bnlab.config import ConfigError


@pytest.fixture(scope="module")
def fmnist_train():
    return data.load("fashion_mnist", "train")


def test_fashion_mnist_from_the_real_idx_files(fmnist_train):
    test = data.load("fashion_mnist", "test")
    assert fmnist_train.images.shape == (60_000, 28, 28, 1)
    assert test.images.shape == (10_000, 28, 28, 1)
    assert fmnist_train.images.dtype == np.float32 and fmnist_train.labels.dtype == np.int32
    # Fashion-MNIST is balanced: 6,000 train and 1,000 test images per class.
    assert np.bincount(fmnist_train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_channel_stats_match_the_train_split(fmnist_train):
    # Recompute from the raw bytes, independently of the normalization constants.
    folder = data.fashion_mnist_dir()
    raw = data.read_idx(data._find_idx(folder, "train-images-idx3-ubyte")) / 255.0
    (mean,), (std,) = data.CHANNEL_STATS["fashion_mnist"]
    assert abs(raw.mean() - mean) < 5e-4 and abs(raw.std() - std) < 5e-4
    # So the normalized train split has mean ≈ 0 and std ≈ 1.
    assert abs(fmnist_train.images.mean()) < 2e-3
    assert abs(fmnist_train.images.std() - 1) < 2e-3


def test_read_idx_rejects_a_bad_file(tmp_path):
    bad = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write((2051).to_bytes(4, "big") + (5).to_bytes(4, "big") + b"\x00" * 8 + b"\x01" * 7)
    with pytest.raises(ConfigError, match="truncated"):
        data.read_idx(bad)
    (tmp_path / "junk").write_bytes(b"\x12\x34\x56\x78" + b"\x00" * 20)
    with pytest.raises(ConfigError, match="not an IDX"):
        data.read_idx(tmp_path / "junk")


def test_a_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        data.load("fashion_mnist", "train", data_dir=str(tmp_path))
    monkeypatch.setenv("BNLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=str(tmp_path)):
        data.fashion_mnist_dir()


def test_data_dir_with_plain_idx_files(tmp_path):
    folder = data.fashion_mnist_dir()
    for split_files in data._IDX_FILES.values():
        for stem in split_files:
            with gzip.open(data._find_idx(folder, stem), "rb") as f:
                (tmp_path / stem).write_bytes(f.read())
    copy = data.load("fashion_mnist", "test", data_dir=str(tmp_path))
    np.testing.assert_array_equal(copy.labels, data.load("fashion_mnist", "test").labels)


def test_train_subset_is_fixed_across_seeds(fmnist_train):
    a = data.load("fashion_mnist", "train", train_size=1000)
    b = data.load("fashion_mnist", "train", train_size=1000)
    assert len(a) == 1000
    np.testing.assert_array_equal(a.labels, b.labels)
    with pytest.raises(ConfigError, match="train_size"):
        data.load("fashion_mnist", "train", train_size=60_001)


def test_train_batches_cover_each_epoch_once_and_depend_on_seed():
    dataset = data.load("synthetic", "train", num_examples=100)
    # Tag each example by its index so batches can be traced back.
    tagged = data.Dataset("t", "train", np.arange(100, dtype=np.float32).reshape(100, 1, 1, 1),
                          np.arange(100, dtype=np.int32), 100)
    it = data.train_batches(tagged, 32, seed=0)
    epoch = np.concatenate([next(it)[1] for _ in range(3)])  # 3 full batches, 4 dropped
    assert len(np.unique(epoch)) == 96
    next_epoch = np.concatenate([next(it)[1] for _ in range(3)])
    assert not np.array_equal(epoch, next_epoch)  # a new order each epoch
    again = data.train_batches(tagged, 32, seed=0)
    np.testing.assert_array_equal(np.concatenate([next(again)[1] for _ in range(3)]), epoch)
    other = data.train_batches(tagged, 32, seed=1)
    assert not np.array_equal(np.concatenate([next(other)[1] for _ in range(3)]), epoch)
    # Restarting at step 4 yields what the uninterrupted iterator yielded at step 4.
    resumed = data.train_batches(tagged, 32, seed=0, start_step=4)
    np.testing.assert_array_equal(next(resumed)[1], next_epoch[32:64])
    images, labels = next(data.train_batches(dataset, 10, seed=0))
    assert images.shape == (10, 28, 28, 1) and labels.shape == (10,)


def test_augment_crops_and_flips():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(64, 8, 8, 2)).astype(np.float32)
    out = data.augment_batch(images, np.random.default_rng(1), pad=2)
    assert out.shape == images.shape
    # Every output is a shifted (zero-filled) and maybe mirrored copy of its input.
    for x, y in zip(images, out, strict=True):
        padded = np.pad(x, ((2, 2), (2, 2), (0, 0)))
        windows = [padded[i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
        assert any(np.array_equal(y, w) or np.array_equal(y, w[:, ::-1]) for w in windows)
    assert not np.array_equal(out, images)


def test_eval_batches_pad_and_mask():
    dataset = data.load("synthetic", "test", num_examples=25)
    batches = list(data.eval_batches(dataset, 10))
    assert [b[0].shape[0] for b in batches] == [10, 10, 10]
    assert [int(b[2].sum()) for b in batches] == [10, 10, 5]
    np.testing.assert_array_equal(np.concatenate([b[1][b[2]] for b in batches]), dataset.labels)


def test_synthetic_is_deterministic_and_shares_templates():
    a = data.load("synthetic", "train", num_examples=50, image_shape=(4, 4, 3), num_classes=3)
    b = data.load("synthetic", "train", num_examples=50, image_shape=(4, 4, 3), num_classes=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.image_shape == (4, 4, 3) and a.num_classes == 3
    test = data.load("synthetic", "test", num_examples=50, image_shape=(4, 4, 3), num_classes=3)
    assert not np.array_equal(a.images[:10], test.images[:10])


def test_train_examples_without_loading_are_what_loading_gives(fmnist_train):
    """`data.train_examples` (what ls and the curves' epochs count on) against the
    datasets loaded."""
    import ml_collections

    assert data.train_examples({"dataset": "fashion_mnist"}) == len(fmnist_train)
    rows = data.load("fashion_mnist_rows", "train")
    assert data.train_examples({"dataset": "fashion_mnist_rows"}) == len(rows)
    assert data.train_examples({"dataset": "synthetic"}) == len(data.load("synthetic", "train"))
    nested = ml_collections.ConfigDict({"dataset": "synthetic", "train_size": None,
                                        "synthetic": {"num_examples": 96}})
    assert data.train_examples(nested) == 96 == len(data.load("synthetic", "train",
                                                              num_examples=96))
    assert data.train_examples({"dataset": "synthetic", "synthetic.num_examples": 96}) == 96
    assert data.train_examples({"dataset": "fashion_mnist", "train_size": 4096}) == 4096
    assert data.train_examples({"dataset": "cifar10"}) is None  # in tfds' files
