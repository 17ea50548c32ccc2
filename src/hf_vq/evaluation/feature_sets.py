"""Features of an image set under one feature network, saved beside the images in ADM's `.npz` layout.

A reference batch is what samples are scored against: either an ADM-style `.npz` with `arr_0` images (the
features are computed here), or a file this module wrote, which records the network's sha256 and the image
size; a file of another network or size is refused rather than scored against.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..utils import write_file_atomic
from .features import FeatureNetwork, extract_features
from .images import to_uint8

FORMAT = "hf_vq-feature-set-1"


@dataclass
class FeatureSet:
    """(N, D) features and (N, K) logits of N images of `image_size` (H, W), under the network `network`."""

    features: np.ndarray
    logits: np.ndarray
    network: dict[str, str]
    image_size: tuple[int, int]
    labels: np.ndarray | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.features)

    def check_compatible(self, other: FeatureSet) -> None:
        """Refuse to compare sets of different feature networks (by weight hash) or image sizes."""
        if self.network.get("sha256") != other.network.get("sha256"):
            raise ValueError(
                f"feature sets come from different feature networks: {other.source or 'one'} from "
                f"{other.network.get('name')} (sha256 {other.network.get('sha256', '?')[:12]}...), "
                f"{self.source or 'the other'} from {self.network.get('name')} "
                f"(sha256 {self.network.get('sha256', '?')[:12]}...); recompute one with the other's network"
            )
        if tuple(self.image_size) != tuple(other.image_size):
            raise ValueError(
                f"feature sets of different image sizes: {tuple(other.image_size)} ({other.source or 'one'}) and "
                f"{tuple(self.image_size)} ({self.source or 'the other'}); sample and reference at one size"
            )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the set (features, logits, labels, mu, sigma and a JSON header) to one `.npz`, atomically."""
        meta = {"format": FORMAT, "network": self.network, "image_size": list(self.image_size),
                "num_images": len(self), "source": self.source}
        arrays = {"features": self.features, "logits": self.logits, "mu": self.features.mean(0, dtype=np.float64),
                  "sigma": np.cov(self.features.astype(np.float64), rowvar=False),
                  "hf_vq_meta": np.asarray(json.dumps(meta))}
        if self.labels is not None:
            arrays["labels"] = self.labels

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        return write_file_atomic(path, write)


def feature_set_of_images(
    network: FeatureNetwork,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    source: str = "",
    batch_size: int = 200,
    progress: bool = False,
) -> FeatureSet:
    """Features of (N, H, W, C) uint8 images."""
    features, logits = extract_features(network, images, batch_size, progress)
    return FeatureSet(features, logits, network.describe(), tuple(images.shape[1:3]), labels, source)


def load_feature_set(
    path: str | os.PathLike, network: FeatureNetwork, batch_size: int = 200, progress: bool = False
) -> FeatureSet:
    """A reference batch for `network`: a feature set this module saved, or an ADM `.npz` whose `arr_0` is embedded.

    A saved set of another network or layout is refused; ADM's precomputed `mu`/`sigma` (TensorFlow Inception)
    are never mixed with this network's features: its images are embedded instead.
    """
    from .sampling import load_samples

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no reference batch at {path}")
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.keys())
        if "hf_vq_meta" in keys:
            meta = json.loads(str(data["hf_vq_meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is a feature set of format {meta.get('format')!r}, expected {FORMAT!r}")
            saved = FeatureSet(data["features"], data["logits"], meta["network"], tuple(meta["image_size"]),
                               data["labels"] if "labels" in keys else None, meta.get("source") or str(path))
            if saved.network.get("sha256") != network.sha256:
                raise ValueError(
                    f"{path} holds features of {saved.network.get('name')} (sha256 "
                    f"{saved.network.get('sha256', '?')[:12]}...), not of {network.name} (sha256 "
                    f"{network.sha256[:12]}...); recompute the reference with this network"
                )
            return saved
    if "arr_0" not in keys:
        raise ValueError(
            f"{path} is neither an hf_vq feature set nor an ADM reference batch with arr_0 images (keys {sorted(keys)})"
        )
    images, labels = load_samples(path)
    return feature_set_of_images(network, images, labels, str(path), batch_size, progress)


def dataset_images(
    dataset: str, split: str, resolution: int, channels: int, max_images: int | None = None, skip_corrupt: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, H, W, C) uint8 images of a dataset split, resized and centre-cropped as the models' inputs are."""
    import torch

    from ..training.data import ImageTransform, collate, load_image_dataset, with_image_transform

    data = load_image_dataset(dataset, split, skip_corrupt=skip_corrupt)
    if max_images is not None:
        data = data.select(range(min(max_images, len(data))))
    transform = ImageTransform(resolution, channels=channels)
    loader = torch.utils.data.DataLoader(with_image_transform(data, transform), batch_size=500, collate_fn=collate)
    images, labels = [], []
    for batch in loader:
        images.append(to_uint8(batch["pixel_values"]))
        if "class_labels" in batch:
            labels.append(batch["class_labels"].numpy())
    return np.concatenate(images), np.concatenate(labels) if labels else None
