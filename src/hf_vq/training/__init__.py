"""Training: the one loop and its recipes, datasets and image transforms."""

from .codes import extract_codes
from .data import (
    FASHION_MNIST_LABELS,
    ImageTransform,
    collate,
    id2label_from_dataset,
    load_image_dataset,
    with_image_transform,
)
from .loop import TrainingRecipe, run, train

__all__ = [
    "FASHION_MNIST_LABELS",
    "ImageTransform",
    "TrainingRecipe",
    "collate",
    "extract_codes",
    "id2label_from_dataset",
    "load_image_dataset",
    "run",
    "train",
    "with_image_transform",
]
