import logging

import datasets
import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from PIL import Image
from torch.utils.data import DataLoader

from hf_vq.training import (
    FASHION_MNIST_LABELS,
    ImageTransform,
    collate,
    id2label_from_dataset,
    load_image_dataset,
    with_image_transform,
)
from hf_vq.training import data as data_module

FMNIST_PRESENT = all(
    (data_module.FASHION_MNIST_DIR / f"{prefix}-{kind}-ubyte.gz").is_file()
    for prefix in ("train", "t10k")
    for kind in ("images-idx3", "labels-idx1")
)


@pytest.fixture
def image_folder(tmp_path):
    """Two classes of three 8x6 RGB images each."""
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    return tmp_path


@pytest.mark.skipif(not FMNIST_PRESENT, reason="Fashion-MNIST files not installed (apt package dataset-fashion-mnist)")
def test_fashion_mnist_splits_and_names():
    train = load_image_dataset("fashion-mnist", split="train")
    test = load_image_dataset("fashion-mnist", split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert id2label_from_dataset(train) == dict(enumerate(FASHION_MNIST_LABELS))
    assert id2label_from_dataset(train)[0] == "T-shirt/top" and id2label_from_dataset(train)[9] == "Ankle boot"
    image = test[0]["image"]
    assert image.mode == "L" and image.size == (28, 28)
    # the official test split is balanced: 1000 images per class
    assert np.bincount(test["label"]).tolist() == [1000] * 10


def test_fashion_mnist_missing_files_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_image_dataset("fashion-mnist")
    with pytest.raises(ValueError, match="split"):
        load_image_dataset("fashion-mnist", split="validation")


def test_fashion_mnist_idx_parsing(tmp_path, monkeypatch):
    """A hand-written pair of IDX files comes back pixel for pixel with its labels."""
    import gzip

    images = np.arange(3 * 28 * 28, dtype=np.uint64).reshape(3, 28, 28).astype(np.uint8)
    labels = np.array([9, 0, 4], dtype=np.uint8)
    for prefix in ("train", "t10k"):
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write((2051).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (3, 28, 28)) + images.tobytes())
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + labels.tobytes())
    monkeypatch.setattr(data_module, "FASHION_MNIST_DIR", tmp_path)
    ds = load_image_dataset("fashion-mnist", split="test")
    assert ds["label"] == [9, 0, 4]
    np.testing.assert_array_equal(np.asarray(ds[2]["image"]), images[2])


def test_imagefolder_columns_and_labels(image_folder):
    ds = load_image_dataset(str(image_folder))
    assert ds.column_names == ["image", "label"] and len(ds) == 6
    assert id2label_from_dataset(ds) == {0: "cat", 1: "dog"}


def test_a_split_the_folder_lacks_is_named_with_the_splits_it_has_and_the_flag_to_choose(image_folder):
    with pytest.raises(ValueError, match=r"Unknown split \"test\". Should be one of \['train'\]. Choose one with "
                                         "the command's split flag"):
        load_image_dataset(str(image_folder), "test")


def test_imagefolder_corrupt_image_raises_with_path(image_folder):
    bad = image_folder / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(ValueError, match="broken.png") as error:
        load_image_dataset(str(image_folder))
    assert "skip_corrupt" in str(error.value)


def test_imagefolder_skip_corrupt_drops_and_counts(image_folder, caplog):
    (image_folder / "cat" / "truncated.png").write_bytes((image_folder / "cat" / "0.png").read_bytes()[:40])
    with caplog.at_level(logging.WARNING, logger=data_module.__name__):
        ds = load_image_dataset(str(image_folder), skip_corrupt=True)
    assert len(ds) == 6
    assert "Skipped 1 unreadable image" in caplog.text and "truncated.png" in caplog.text
    assert all(row["image"].size == (8, 6) for row in ds)


@pytest.fixture
def parquet_folder(tmp_path):
    """A local dataset with non-standard column names and an extra column."""
    features = Features(
        {"picture": datasets.Image(), "fine_label": ClassLabel(names=["x", "y"]), "caption": Value("string")}
    )
    pictures = [Image.fromarray(np.full((5, 7, 3), 40 * i, dtype=np.uint8)) for i in range(3)]
    rows = {"picture": pictures, "fine_label": [1, 0, 1], "caption": ["a", "b", "c"]}
    Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "train.parquet")
    return tmp_path


def test_columns_are_detected_and_renamed(parquet_folder):
    ds = load_image_dataset(parquet_folder)
    assert ds.column_names == ["image", "label"] and ds["label"] == [1, 0, 1]
    assert np.asarray(ds[2]["image"]).max() == 80 and id2label_from_dataset(ds) == {0: "x", 1: "y"}
    explicit = load_image_dataset(parquet_folder, image_column="picture", label_column="fine_label")
    assert explicit.column_names == ["image", "label"]


def test_missing_columns_list_the_available_ones(parquet_folder):
    with pytest.raises(ValueError, match=r"\['picture', 'fine_label', 'caption'\]"):
        load_image_dataset(parquet_folder, image_column="image")
    with pytest.raises(ValueError, match="label_column"):
        load_image_dataset(parquet_folder, label_column="label")
    with pytest.raises(ValueError, match="not images"):
        load_image_dataset(parquet_folder, image_column="caption")


def test_id2label_without_label_column_errors(image_folder):
    ds = load_image_dataset(str(image_folder)).remove_columns("label")
    with pytest.raises(ValueError, match="columns"):
        id2label_from_dataset(ds)


def test_transform_shapes_and_ranges():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    rgb = ImageTransform(16, channels=3)(image)
    gray = ImageTransform(16, channels=1)(image)
    assert rgb.shape == (3, 16, 16) and gray.shape == (1, 16, 16)
    assert rgb.dtype == torch.float32 and rgb.min() >= -1 and rgb.max() <= 1
    # a gray image becomes RGB with three equal channels
    from_gray = ImageTransform(16, channels=3)(image.convert("L"))
    assert torch.equal(from_gray[0], from_gray[1]) and torch.equal(from_gray[1], from_gray[2])
    # exact pixel mapping at native size: 0 -> -1, 255 -> 1
    black_white = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8))
    assert ImageTransform(2, channels=1)(black_white).tolist() == [[[-1.0, 1.0], [1.0, -1.0]]]


def test_center_crop_keeps_the_middle():
    array = np.zeros((10, 20), dtype=np.uint8)
    array[:, 5:15] = 255  # the central 10x10 square is white, the sides black
    assert (ImageTransform(10, channels=1)(Image.fromarray(array)) == 1).all()


def test_random_flip_and_crop_are_deterministic_given_a_seed():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 20, 3), dtype=np.uint8))
    first = ImageTransform(8, center_crop=False, random_flip=True, seed=3)
    second = ImageTransform(8, center_crop=False, random_flip=True, seed=3)
    a = [first(image) for _ in range(16)]
    b = [second(image) for _ in range(16)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # the draws differ from call to call
    distinct = {tuple(x.flatten().tolist()) for x in a}
    assert len(distinct) > 2
    # an explicit generator gives the same draws as the same seed
    c = [ImageTransform(8, center_crop=False, random_flip=True)(image, torch.Generator().manual_seed(3))]
    assert torch.equal(c[0], a[0])


def test_flip_mirrors_the_image():
    image = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16)
    plain = ImageTransform(4, channels=1)(image)
    flips = [ImageTransform(4, channels=1, random_flip=True, seed=s)(image) for s in range(8)]
    assert any(torch.equal(f, plain.flip(-1)) for f in flips) and any(torch.equal(f, plain) for f in flips)


def test_transform_rejects_bad_arguments():
    with pytest.raises(ValueError, match="channels"):
        ImageTransform(8, channels=2)
    with pytest.raises(ValueError, match="resolution"):
        ImageTransform(0)


def test_with_image_transform_feeds_a_dataloader(image_folder):
    ds = with_image_transform(load_image_dataset(str(image_folder)), ImageTransform(4, channels=1))
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert batch["pixel_values"].shape == (4, 1, 4, 4)
    assert batch["class_labels"].dtype == torch.long and batch["class_labels"].tolist() == [0, 0, 0, 1]
    unlabelled = with_image_transform(load_image_dataset(str(image_folder)).remove_columns("label"),
                                      ImageTransform(4))
    assert set(collate([unlabelled[0], unlabelled[1]])) == {"pixel_values"}
