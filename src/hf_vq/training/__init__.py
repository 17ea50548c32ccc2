"""Training utilities: datasets and image transforms."""

from .data import (
    FASHION_MNIST_LABELS,
    ImageTransform,
    collate,
    id2label_from_dataset,
    load_image_dataset,
    with_image_transform,
)

__all__ = [
    "FASHION_MNIST_LABELS",
    "ImageTransform",
    "collate",
    "id2label_from_dataset",
    "load_image_dataset",
    "with_image_transform",
]
