"""Feature networks behind the distribution metrics: each names its metrics and identifies its weights by sha256.

A Fréchet distance is FID only on the FID Inception-v3; on another network it carries that network's name
(`fd_fmnist`). Every feature set records the sha256 of the weights that produced it, and sets (or results) of
different weights are never compared: a classifier retrained on another machine gives other numbers.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from ..utils import file_sha256
from .images import from_uint8

BUNDLED_CLASSIFIER = "fmnist-classifier"
# sha256 of the bundled classifier's model.safetensors: trained by examples/train_fmnist_classifier.py
# --epochs 4 --seed 0 (1,872 steps of 128 images); the package refuses a copy that differs.
BUNDLED_CLASSIFIER_SHA256 = "f60eef29d39d86e4877e0c289834dc48048d27dc1614291563b7957610516925"


def bundled_classifier_path() -> Path:
    """The Fashion-MNIST classifier that ships inside the package (the `fd_fmnist` feature network)."""
    return Path(str(files("hf_vq") / "assets" / BUNDLED_CLASSIFIER))


class FeatureNetwork(ABC):
    """Images (B, C, H, W) in [0, 1] -> pooled features (B, D) and class logits (B, K), under metric names."""

    name: str  # the network, as recorded in results
    fd_metric: str  # its Fréchet distance: "fid" only for the FID Inception
    is_metric: str  # its Inception-Score-style score of the logits
    sha256: str  # of the weights file

    @abstractmethod
    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) of a batch of images in [0, 1]."""

    @property
    def feature_dim(self) -> int | None:
        """D, the width of the features (a Fréchet distance needs more than D images in each set); None when
        unknown, which leaves the count to be checked when the distance is computed."""
        return None

    def check_enough_images(self, count: int, what: str) -> None:
        """Refuse, before any sampling, a set too small for a Fréchet distance on these features."""
        if self.feature_dim is not None and count <= self.feature_dim:
            raise ValueError(f"{what} gives {count} images, but a Fréchet distance on {self.name}'s "
                             f"{self.feature_dim}-d features needs more than {self.feature_dim} in each set")

    @property
    def id2label(self) -> dict[int, str] | None:
        """Class names when the logits are the classes of the generated data (class accuracy), else None."""
        return None

    def describe(self) -> dict[str, str]:
        """What a result records about the network."""
        return {"name": self.name, "sha256": self.sha256, "fd_metric": self.fd_metric, "is_metric": self.is_metric}


class InceptionNetwork(FeatureNetwork):
    """The FID Inception-v3 (pytorch-fid weights): FID on pool3, the Inception Score on the unbiased logits."""

    name = "inception-v3-2015-12-05"
    fd_metric = "fid"
    is_metric = "inception_score"

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        from .fid import InceptionFeatureExtractor
        from .inception import find_fid_weights

        self.sha256 = file_sha256(find_fid_weights(weights))
        self.model = InceptionFeatureExtractor(weights).to(device)

    feature_dim = 2048  # pool3

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        return self.model.extract(images.to(device))


class ClassifierNetwork(FeatureNetwork):
    """A saved image classifier (default: the bundled Fashion-MNIST one): pooled features and its class logits."""

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        from .classifier import ClassifierAccuracy

        bundled = path is None
        path = Path(path) if path is not None else bundled_classifier_path()
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(
                f"no model.safetensors in {path}: give a classifier folder saved with save_pretrained "
                "(examples/train_fmnist_classifier.py writes one)"
            )
        self.sha256 = file_sha256(weights)
        if bundled and self.sha256 != BUNDLED_CLASSIFIER_SHA256:
            raise ValueError(
                f"the bundled classifier {weights} has sha256 {self.sha256}, not {BUNDLED_CLASSIFIER_SHA256}: the "
                "installed package is damaged or was edited; reinstall hf_vq"
            )
        self.judge = ClassifierAccuracy.from_pretrained(path, device=device)
        self.name = BUNDLED_CLASSIFIER if bundled else f"classifier-{self.sha256[:12]}"
        suffix = "fmnist" if bundled else f"classifier_{self.sha256[:12]}"
        self.fd_metric, self.is_metric = f"fd_{suffix}", f"is_{suffix}"

    @property
    def id2label(self) -> dict[int, str]:
        return self.judge.id2label

    @property
    def feature_dim(self) -> int | None:
        head = next((m for m in self.judge.model.classifier.modules() if isinstance(m, torch.nn.Linear)), None)
        return None if head is None else head.in_features

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.judge.features_and_logits(images)


FEATURE_NETWORKS: dict[str, Callable[..., FeatureNetwork]] = {
    "inception": InceptionNetwork,
    "fmnist": ClassifierNetwork,
}


def load_feature_network(
    name: str, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> FeatureNetwork:
    """A feature network by registry name ("inception": FID; "fmnist": fd_fmnist) and optional weights path."""
    if name not in FEATURE_NETWORKS:
        raise ValueError(f"unknown feature network {name!r}; choose one of {sorted(FEATURE_NETWORKS)}")
    return FEATURE_NETWORKS[name](weights, device=device)


@torch.no_grad()
def extract_features(
    network: FeatureNetwork, images: np.ndarray, batch_size: int = 200, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features and (N, K) logits, float32, of (N, H, W, C) uint8 images."""
    from tqdm.auto import tqdm

    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (
        1, 3):
        raise ValueError("images must be an (N, H, W, 1 or 3) uint8 array (ADM's arr_0 layout)")
    features, logits = [], []
    for start in tqdm(range(0, len(images), batch_size), desc="features", disable=not progress):
        f, z = network.extract(from_uint8(images[start : start + batch_size], value_range=(0.0, 1.0)))
        features.append(f.float().cpu().numpy())
        logits.append(z.float().cpu().numpy())
    return np.concatenate(features), np.concatenate(logits)
