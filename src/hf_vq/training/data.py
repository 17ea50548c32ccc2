"""Image datasets for training: the local Fashion-MNIST files, an imagefolder, or a Hub dataset."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image, load_dataset
from PIL import Image as PILImage

logger = logging.getLogger(__name__)

# Debian/Ubuntu package `dataset-fashion-mnist` installs the official gz IDX files here.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_MNIST_FILES = {"train": "train", "test": "t10k"}
# Bump when the cached Arrow layout changes, so stale caches are not reused.
_FASHION_MNIST_CACHE_VERSION = "1"

_IMAGE_COLUMN_NAMES = ("image", "img", "images", "pixel_values", "picture", "photo")
_LABEL_COLUMN_NAMES = ("label", "labels", "class", "class_label", "class_labels", "fine_label", "target")


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parse a gz IDX file (the MNIST format: big-endian magic, dims, then uint8 data)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise ValueError(f"{path} is not an IDX file of the expected kind (magic {magic}, expected {expected_magic})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist_paths(split: str) -> tuple[Path, Path]:
    if split not in _FASHION_MNIST_FILES:
        raise ValueError(f"Fashion-MNIST has splits {sorted(_FASHION_MNIST_FILES)}, got split={split!r}")
    prefix = _FASHION_MNIST_FILES[split]
    paths = (
        FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz",
        FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz",
    )
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Install them with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or use the Hub dataset "
            "'zalando-datasets/fashion_mnist' as the source instead."
        )
    return paths


def _fashion_mnist_examples(images_path: str, labels_path: str) -> Iterator[dict[str, Any]]:
    images = _read_idx(Path(images_path), 2051)
    labels = _read_idx(Path(labels_path), 2049)
    if len(images) != len(labels):
        raise ValueError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    for image, label in zip(images, labels):
        buffer = io.BytesIO()
        # Low compression: encoding dominates the one-off cache build; the files stay tiny either way.
        PILImage.fromarray(image, mode="L").save(buffer, format="PNG", compress_level=1)
        yield {"image": {"bytes": buffer.getvalue(), "path": None}, "label": int(label)}


def _load_fashion_mnist(split: str) -> Dataset:
    """Parse the local IDX files once into the datasets cache; later loads memory-map the cached Arrow file.

    `split` takes the `datasets` slice syntax with absolute indices too ("train[:1000]", "test[5000:]").
    """
    match = re.fullmatch(r"(\w+)(?:\[(\d*):(\d*)\])?", split)
    if match is None:
        raise ValueError(f"Fashion-MNIST split {split!r}: use 'train' or 'test', optionally sliced as 'train[:1000]'")
    split, start, stop = match.groups()
    dataset = _load_fashion_mnist_split(split)
    if start or stop:
        dataset = dataset.select(range(len(dataset))[slice(int(start) if start else None, int(stop) if stop else None)])
    return dataset


def _load_fashion_mnist_split(split: str) -> Dataset:
    images_path, labels_path = _fashion_mnist_paths(split)
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (images_path, labels_path)]
    fingerprint = hashlib.sha256(repr((_FASHION_MNIST_CACHE_VERSION, stats)).encode()).hexdigest()[:32]
    return Dataset.from_generator(
        _fashion_mnist_examples,
        features=Features({"image": Image(mode="L"), "label": ClassLabel(names=list(FASHION_MNIST_LABELS))}),
        gen_kwargs={"images_path": str(images_path), "labels_path": str(labels_path)},
        fingerprint=fingerprint,
        split=split,
    )


def check_labelled(source: str | os.PathLike, split: str, why: str, skip_corrupt: bool = False) -> Dataset:
    """The split, refused before any work when it has no class labels; `why` says what needs them."""
    ds = load_image_dataset(source, split, skip_corrupt=skip_corrupt)
    if "label" not in ds.column_names:
        raise ValueError(f"{source}:{split} has no class labels: {why}; use a labelled dataset")
    return ds


def _resolve_column(ds: Dataset, requested: str | None, kind: str) -> str | None:
    """The column holding images or labels: the one asked for, else one detected by feature type or name."""
    available = list(ds.column_names)
    if requested is not None:
        if requested not in available:
            raise ValueError(
                f"{kind} column {requested!r} not found; the dataset has columns {available}. "
                f"Pass one of them as {kind}_column."
            )
        return requested
    feature_type, names = (Image, _IMAGE_COLUMN_NAMES) if kind == "image" else (ClassLabel, _LABEL_COLUMN_NAMES)
    by_type = [name for name in available if isinstance(ds.features[name], feature_type)]
    if by_type:
        return by_type[0]
    by_name = [name for name in names if name in available]
    if by_name:
        return by_name[0]
    if kind == "image":
        raise ValueError(
            f"Could not find an image column; the dataset has columns {available}. Pass image_column=..."
        )
    return None


def _find_corrupt_images(ds: Dataset, image_column: str) -> list[tuple[int, str]]:
    """(row, path) of every image PIL cannot decode; each is logged with the error."""
    raw = ds.cast_column(image_column, Image(decode=False))
    corrupt = []
    for index, item in enumerate(raw[image_column]):
        source = item["path"] or f"row {index}"
        try:
            with PILImage.open(item["path"] if item["bytes"] is None else io.BytesIO(item["bytes"])) as image:
                image.load()
        except Exception as error:  # PIL raises several unrelated types for unreadable files
            logger.warning("Unreadable image %s: %s", source, error)
            corrupt.append((index, source))
    return corrupt


def load_image_dataset(
    source: str | os.PathLike,
    split: str = "train",
    image_column: str | None = None,
    label_column: str | None = None,
    skip_corrupt: bool = False,
    config_name: str | None = None,
) -> Dataset:
    """Load `source` ("fashion-mnist", a local directory or a Hub dataset id) as columns image (+ label).

    The returned dataset always names its columns `image` and, when the source has labels, `label`; other
    columns are dropped. Images of a local directory are all decoded up front: unreadable ones raise (naming
    their paths) unless `skip_corrupt=True`, which drops them and logs the count.
    """
    source = os.fspath(source)
    # a local directory goes through the same load_dataset call as a Hub id: datasets picks the imagefolder
    # builder for a folder of images (class subfolders become labels) and parquet/csv/... for data files
    if source == "fashion-mnist":
        if config_name is not None:
            raise ValueError(f"Fashion-MNIST has one configuration; drop the configuration name {config_name!r}")
        ds = _load_fashion_mnist(split)
    else:
        try:
            ds = load_dataset(source, config_name, split=split)
        except ValueError as err:
            if not str(err).startswith("Unknown split"):
                raise
            # datasets names the splits there are; what to do is the command's split flag
            raise ValueError(f"{source}: {err} Choose one with the command's split flag (--split, --test_split, "
                             "--reference_split, ...)") from None

    image_column = _resolve_column(ds, image_column, "image")
    label_column = _resolve_column(ds, label_column, "label")
    if not isinstance(ds.features[image_column], Image):
        raise ValueError(
            f"Column {image_column!r} holds {ds.features[image_column]}, not images; pass the image column "
            f"as image_column (columns: {list(ds.column_names)})."
        )

    if os.path.isdir(source):
        corrupt = _find_corrupt_images(ds, image_column)
        if corrupt and not skip_corrupt:
            listed = "\n  ".join(path for _, path in corrupt[:20])
            more = f"\n  ... and {len(corrupt) - 20} more" if len(corrupt) > 20 else ""
            # What to do on the first line: commands print only that line.
            raise ValueError(
                f"{len(corrupt)} unreadable image(s) in {source}, the first {corrupt[0][1]}: remove or fix them, or "
                f"drop them with --skip_corrupt (skip_corrupt=True):\n  {listed}{more}"
            )
        if corrupt:
            bad = {index for index, _ in corrupt}
            ds = ds.select([i for i in range(len(ds)) if i not in bad])
            logger.warning("Skipped %d unreadable image(s) in %s", len(corrupt), source)

    keep = {image_column: "image"} | ({label_column: "label"} if label_column else {})
    ds = ds.remove_columns([name for name in ds.column_names if name not in keep])
    return ds.rename_columns({old: new for old, new in keep.items() if old != new})


def id2label_from_dataset(ds: Dataset, label_column: str = "label") -> dict[int, str]:
    """Class id -> name: the ClassLabel names, or each distinct integer label as its own name."""
    if label_column not in ds.column_names:
        raise ValueError(f"No label column {label_column!r}; the dataset has columns {list(ds.column_names)}")
    feature = ds.features[label_column]
    if isinstance(feature, ClassLabel):
        return dict(enumerate(feature.names))
    return {int(value): str(value) for value in sorted(set(ds[label_column]))}


# Modes of high-bit-depth grayscale images and their full-scale value; PIL's convert("L") would clip them at 255.
_HIGH_BIT_DEPTH = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535}


def to_8bit(image: PILImage.Image) -> PILImage.Image:
    """16-bit grayscale images (16-bit PNGs) scaled to 8 bits over their real range; other images unchanged."""
    full_scale = _HIGH_BIT_DEPTH.get(image.mode)
    if full_scale is None:
        return image
    array = np.asarray(image, dtype=np.float64) * (255 / full_scale)
    return PILImage.fromarray(np.rint(array).astype(np.uint8), mode="L")


class ImageTransform:
    """PIL image -> float tensor (C, H, W) in [-1, 1]: resize the shorter side, crop square, optionally flip.

    Random crops (`center_crop=False`) and flips draw from `generator` when one is passed to the call, else
    from the transform's own generator seeded with `seed`, else from torch's global RNG.
    """

    def __init__(
        self,
        resolution: int,
        channels: int = 3,
        center_crop: bool = True,
        random_flip: bool = False,
        seed: int | None = None,
    ):
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        self.resolution = resolution
        self.channels = channels
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, image: PILImage.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        generator = generator if generator is not None else self.generator
        image = to_8bit(image).convert("L" if self.channels == 1 else "RGB")

        scale = self.resolution / min(image.size)
        size = (max(self.resolution, round(image.width * scale)), max(self.resolution, round(image.height * scale)))
        if size != image.size:
            image = image.resize(size, resample=PILImage.Resampling.BICUBIC)

        spare_x, spare_y = image.width - self.resolution, image.height - self.resolution
        if self.center_crop:
            left, top = spare_x // 2, spare_y // 2
        else:
            left = int(torch.randint(spare_x + 1, (1,), generator=generator))
            top = int(torch.randint(spare_y + 1, (1,), generator=generator))
        if spare_x or spare_y:
            image = image.crop((left, top, left + self.resolution, top + self.resolution))

        if self.random_flip and float(torch.rand((), generator=generator)) < 0.5:
            image = image.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)

        array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array.reshape(self.resolution, self.resolution, self.channels)).permute(2, 0, 1)


def with_image_transform(ds: Dataset, transform: ImageTransform) -> Dataset:
    """Attach `transform` lazily: rows become {"pixel_values": (C, H, W), "class_labels": int} (label if any)."""
    if "image" not in ds.column_names:
        raise ValueError(
            f"Expected an 'image' column (as load_image_dataset returns), got columns {list(ds.column_names)}"
        )
    has_labels = "label" in ds.column_names

    def apply(batch: dict[str, list]) -> dict[str, list]:
        out = {"pixel_values": [transform(image) for image in batch["image"]]}
        if has_labels:
            out["class_labels"] = batch["label"]
        return out

    return ds.with_transform(apply)


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack rows from `with_image_transform` into a batch for a torch DataLoader."""
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if "class_labels" in examples[0]:
        batch["class_labels"] = torch.tensor([example["class_labels"] for example in examples], dtype=torch.long)
    return batch
