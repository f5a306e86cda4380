"""Datasets and the input pipeline.

`load(name, split)` gives a `Dataset` of normalized float32 NHWC images held in
host memory; `train_batches` and `eval_batches` cut it into batches. Datasets:
  fashion_mnist  the real IDX files: config.data_dir, $BNLAB_DATA_DIR, or Debian's
                 dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)
  fashion_mnist_rows  Fashion-MNIST as variable-length sequences of rows, padded
                 (`rows_as_sequences`): T×29 per example, the last feature the mask
  synthetic      class templates plus noise, learnable, for tests
  anything else  through tensorflow-datasets (optional extra, requirements-tfds.txt)
A missing dataset is a `ConfigError` that says how to get it; never random data.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bnlab.config import ConfigError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Per-channel mean and std of the train split (0..1 pixel scale); tests recompute
# Fashion-MNIST's from the files. Test images are normalized with the train numbers.
CHANNEL_STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

# The datasets whose every input value is a pixel normalized by CHANNEL_STATS: a
# change on the 0-1 pixel scale maps onto them exactly (C12's perturbations).
PIXEL_DATASETS = tuple(CHANNEL_STATS)


def pixel_range(name: str, change: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a dataset of `PIXEL_DATASETS`: `change` on the 0-1 pixel scale in
    normalized units, per channel, and the normalized values of pixels 0 and 1 (the
    range an image stays in)."""
    mean, std = (np.asarray(x, np.float32) for x in CHANNEL_STATS[name])
    return np.float32(change) / std, -mean / std, (1 - mean) / std


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    split: str
    images: np.ndarray  # N×H×W×C float32, normalized
    labels: np.ndarray  # N int32
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])


def load(name: str, split: str, *, data_dir: str | None = None, train_size: int | None = None,
         **options) -> Dataset:
    """Loads split 'train' or 'test' of a dataset, normalized per channel.

    `train_size` keeps a fixed subset of n training examples (the same subset for
    every seed, so runs that differ in seed see the same data). `synthetic` takes
    `num_examples`, `image_shape`, `num_classes`.
    """
    if split not in ("train", "test"):
        raise ConfigError("split", split, "allowed: train, test")
    if name == "synthetic":
        dataset = _synthetic(split, **options)
    elif name == "fashion_mnist":
        dataset = _fashion_mnist_normalized(split, data_dir)
    elif name == "fashion_mnist_rows":
        dataset = _fashion_mnist_rows(split, data_dir)
    else:
        dataset = _tfds(name, split, data_dir)
    if split == "train" and train_size is not None:
        if train_size > len(dataset):
            raise ConfigError("train_size", train_size,
                              f"the {name} train split has only {len(dataset)} examples")
        keep = np.sort(np.random.default_rng(0).permutation(len(dataset))[:train_size])
        dataset = dataclasses.replace(dataset, images=dataset.images[keep],
                                      labels=dataset.labels[keep])
    return dataset


# Training examples of the datasets whose size is fixed (a tfds dataset's size is
# in its files): what a run's epochs count without loading the data.
TRAIN_SIZES = {"fashion_mnist": 60_000, "fashion_mnist_rows": 60_000}


def train_examples(config) -> int | None:
    """The training examples a run of `config` (a ConfigDict or a flat config.json)
    trains on, without loading them: `train_size`, else the dataset's size where
    it is known (`TRAIN_SIZES`, the synthetic set's); None for a tfds dataset."""
    if config.get("train_size") is not None:
        return int(config["train_size"])
    if config.get("dataset") == "synthetic":
        nested = config.get("synthetic") or {}
        size = nested.get("num_examples") or config.get("synthetic.num_examples")
        return int(size or SYNTHETIC_SIZES["train"])
    return TRAIN_SIZES.get(config.get("dataset"))


def _normalized(name, split, images: np.ndarray, labels: np.ndarray, num_classes: int,
                stats=None) -> Dataset:
    mean, std = stats or CHANNEL_STATS[name]
    images = (images.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
    return Dataset(name, split, images.astype(np.float32), labels.astype(np.int32), num_classes)


# ---------------------------------------------------------------- Fashion-MNIST

def fashion_mnist_dir(data_dir: str | None = None) -> Path:
    """The folder that holds the Fashion-MNIST IDX files (plain or .gz): `data_dir`
    if given, else $BNLAB_DATA_DIR if set, else Debian's. A folder that was asked
    for and lacks the files is an error, not a reason to read other data."""
    chosen = data_dir or os.environ.get("BNLAB_DATA_DIR")
    candidates = [Path(chosen)] if chosen else [DEBIAN_FASHION_MNIST]
    for folder in candidates:
        for sub in (folder, folder / "fashion-mnist", folder / "fashion_mnist"):
            if all(_find_idx(sub, f) for f in _IDX_FILES["train"] + _IDX_FILES["test"]):
                return sub
    raise ConfigError(
        "data_dir", data_dir,
        "Fashion-MNIST IDX files not found in " + ", ".join(map(str, candidates))
        + "; install them with `apt-get install dataset-fashion-mnist` or point"
        " $BNLAB_DATA_DIR or --config.data_dir at a folder holding them")


def _find_idx(folder: Path, stem: str) -> Path | None:
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=4)
def _fashion_mnist_normalized(split: str, data_dir: str | None) -> Dataset:
    """Normalized once per process (0.3 s a split): a sweep worker's runs share it."""
    images, labels = _fashion_mnist(split, data_dir)
    dataset = _normalized("fashion_mnist", split, images, labels, 10)
    dataset.images.setflags(write=False)
    dataset.labels.setflags(write=False)
    return dataset


# Each example keeps its top 7 to 28 rows (uniform, fixed per example): a sequence of
# that length, padded with zero rows to 28.
MIN_ROWS = 7


def rows_as_sequences(images: np.ndarray, lengths: np.ndarray, pad_to: int) -> np.ndarray:
    """N×H×W×1 images → N×pad_to×(W+1) sequences: row t of example i is its image
    row t for t < lengths[i] and zeros after (padding); the last feature is the
    mask, 1 for a real row and 0 for padding."""
    n, height, width = images.shape[:3]
    real = np.arange(pad_to)[None, :] < lengths[:, None]  # N×pad_to
    rows = np.zeros((n, pad_to, width), np.float32)
    rows[:, :height] = images[..., 0]
    rows *= real[..., None]
    return np.concatenate([rows, real[..., None].astype(np.float32)], axis=-1)


def pad_sequences(sequences: np.ndarray, pad_to: int) -> np.ndarray:
    """The same sequences padded further, to `pad_to` steps (zero rows, mask 0)."""
    extra = pad_to - sequences.shape[1]
    return np.pad(sequences, ((0, 0), (0, extra), (0, 0))) if extra > 0 else sequences


@functools.lru_cache(maxsize=4)
def _fashion_mnist_rows(split: str, data_dir: str | None) -> Dataset:
    images = _fashion_mnist_normalized(split, data_dir)
    lengths = np.random.default_rng(("train", "test").index(split)).integers(
        MIN_ROWS, images.images.shape[1] + 1, len(images))
    sequences = rows_as_sequences(images.images, lengths, images.images.shape[1])
    sequences.setflags(write=False)
    return Dataset("fashion_mnist_rows", split, sequences, images.labels, 10)


@functools.lru_cache(maxsize=4)
def _fashion_mnist(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    folder = fashion_mnist_dir(data_dir)
    image_file, label_file = (_find_idx(folder, f) for f in _IDX_FILES[split])
    images = read_idx(image_file)
    labels = read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ConfigError("data_dir", str(folder),
                          f"IDX files disagree: images {images.shape}, labels {labels.shape}")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images[..., None], labels


def read_idx(path: Path) -> np.ndarray:
    """Reads an IDX file (LeCun's MNIST format): big-endian magic 0x0000 08 NDIM,
    NDIM big-endian uint32 sizes, then uint8 data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08 or not 1 <= magic & 0xFF <= 4:
        raise ConfigError("data_dir", str(path), f"not an IDX uint8 file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ConfigError("data_dir", str(path), f"truncated IDX file: {data.size} of "
                          f"{int(np.prod(shape))} values")
    return data.reshape(shape)


# ---------------------------------------------------------------- synthetic

SYNTHETIC_SIZES = {"train": 512, "test": 256}  # without `num_examples`


def _synthetic(split: str, num_examples: int | None = None, image_shape=(28, 28, 1),
               num_classes: int = 10, seed: int = 0) -> Dataset:
    """Fixed class templates (shared by both splits) plus per-split Gaussian noise:
    learnable, but not instantly, and deterministic."""
    num_examples = num_examples or SYNTHETIC_SIZES[split]
    templates = np.random.default_rng(seed).normal(size=(num_classes,) + tuple(image_shape))
    rng = np.random.default_rng((seed, 1 if split == "train" else 2))
    labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
    images = 0.5 * templates[labels] + rng.normal(size=(num_examples,) + tuple(image_shape))
    return Dataset("synthetic", split, images.astype(np.float32), labels, num_classes)


# ---------------------------------------------------------------- tensorflow-datasets

def _tfds(name: str, split: str, data_dir: str | None) -> Dataset:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ConfigError("dataset", name, "needs tensorflow-datasets: pip install -r "
                          "requirements-tfds.txt (or use fashion_mnist / synthetic)") from None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            builder.download_and_prepare()
        images, labels = _tfds_arrays(builder, split)
    except Exception as error:  # tfds raises many kinds; the user needs one line
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError("dataset", name, "tensorflow-datasets could not load it offline; "
                          "prepare it where there is internet (`tfds build "
                          f"{name} --data_dir DIR`) and pass --config.data_dir=DIR "
                          f"({type(error).__name__}: {first_line[:200]})") from None
    if images.ndim == 3:
        images = images[..., None]
    num_classes = builder.info.features["label"].num_classes
    stats = CHANNEL_STATS.get(name) or _train_stats(name, data_dir)
    return _normalized(name, split, images, labels, num_classes, stats)


def _tfds_arrays(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split as (images, labels). Read in chunks: `batch_size=-1` sizes its
    one batch from metadata, which tfds's mock data leaves wrong (a crash in TF)."""
    import tensorflow_datasets as tfds

    chunks = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=10_000,
                                                   as_supervised=True)))
    return (np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]))


@functools.lru_cache(maxsize=8)
def _train_stats(name: str, data_dir: str | None):
    """Per-channel mean/std of an unlisted tfds dataset's train split."""
    import tensorflow_datasets as tfds

    images, _ = _tfds_arrays(tfds.builder(name, data_dir=data_dir), "train")
    images = images.astype(np.float64) / 255.0
    axes = tuple(range(images.ndim - 1))
    return tuple(images.mean(axes).tolist()), tuple(images.std(axes).tolist())


# ---------------------------------------------------------------- batches

def train_batch_indices(num_examples: int, batch_size: int, seed: int,
                        start_step: int = 0) -> Iterator[np.ndarray]:
    """Endless shuffled batches of example indices, epoch after epoch, dropping each
    epoch's remainder (every step sees a full batch: one compiled shape, equal BN
    batches). Epoch e's order depends only on (seed, e), so a run restarted at
    `start_step` sees the batches it would have seen."""
    steps_per_epoch = num_examples // batch_size
    if steps_per_epoch == 0:
        raise ConfigError("batch_size", batch_size,
                          f"larger than the {num_examples} training examples")
    epoch, offset = divmod(start_step, steps_per_epoch)
    while True:
        order = np.random.default_rng((seed, epoch)).permutation(num_examples)
        for step in range(offset, steps_per_epoch):
            yield np.sort(order[step * batch_size:(step + 1) * batch_size])
        epoch, offset = epoch + 1, 0


def train_batches(dataset: Dataset, batch_size: int, seed: int, augment: bool = False,
                  start_step: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The batches of `train_batch_indices` as (images, labels) host arrays."""
    steps_per_epoch = max(1, len(dataset) // batch_size)
    indices = train_batch_indices(len(dataset), batch_size, seed, start_step)
    for step, index in enumerate(indices, start=start_step):
        images = dataset.images[index]
        if augment:
            epoch, within = divmod(step, steps_per_epoch)
            images = augment_batch(images, np.random.default_rng((seed, epoch, within)))
        yield images, dataset.labels[index]


def augment_batch(images: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Random crop from a zero-padded image (zero is the mean after normalization)
    and random horizontal flip, as in He et al.'s CIFAR training."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))
    dy, dx = rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n)
    crops = windows[np.arange(n), dy, dx].transpose(0, 2, 3, 1)  # N,C,H,W → N,H,W,C
    flip = rng.random(n) < 0.5
    crops[flip] = crops[flip, :, ::-1]
    return np.ascontiguousarray(crops)


def eval_batches(dataset: Dataset, batch_size: int
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The whole split in order, the last batch padded to full size with a mask,
    so evaluation compiles one shape."""
    for start in range(0, len(dataset), batch_size):
        images = dataset.images[start:start + batch_size]
        labels = dataset.labels[start:start + batch_size]
        mask = np.ones(len(labels), bool)
        short = batch_size - len(labels)
        if short:
            images = np.concatenate([images, np.zeros((short,) + images.shape[1:], images.dtype)])
            labels = np.concatenate([labels, np.zeros(short, labels.dtype)])
            mask = np.concatenate([mask, np.zeros(short, bool)])
        yield images, labels, mask
