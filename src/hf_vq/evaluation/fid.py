"""Fréchet distances between image sets: FID with the standard Inception-v3, or any feature extractor.

FID is only comparable to published numbers when computed with `InceptionFeatureExtractor`. The same maths
on other features (e.g. `ClassifierAccuracy.features` of the Fashion-MNIST classifier) is a different metric:
report it under its own name (`fd_fmnist`: see `features.py`), never as FID.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .inception import load_fid_inception


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): |mu1-mu2|^2 + tr(s1 + s2 - 2 sqrt(s1 s2))."""
    try:
        from scipy import linalg
    except ImportError as error:
        raise ImportError(
            "frechet_distance needs scipy: `pip install scipy` (or `pip install hf_vq[metrics]`)"
        ) from error
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"need means of shape (d,) and covariances (d, d) with one d, got {mu1.shape}, {sigma1.shape}, "
            f"{mu2.shape}, {sigma2.shape}"
        )
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # singular product (e.g. fewer samples than dimensions): regularise both covariances slightly
        offset = np.eye(d) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    # sqrtm of a product of PSD matrices is real up to round-off; more than that means the covariances are broken
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"the Fréchet distance's matrix square root has an imaginary part of up to "
                f"{np.abs(covmean.imag).max():.3g}: the covariances are not valid (NaN or not positive semi-definite)"
            )
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D)."""
    a = feats_a.double().cpu().numpy() if isinstance(feats_a, torch.Tensor) else np.asarray(feats_a, np.float64)
    b = feats_b.double().cpu().numpy() if isinstance(feats_b, torch.Tensor) else np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D) with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 feature vectors per set to estimate a covariance, got {len(a)} and {len(b)}")
    if min(len(a), len(b)) <= a.shape[1]:
        # a rank-deficient covariance makes the distance depend on round-off rather than on the images
        raise ValueError(
            f"a Fréchet distance on {a.shape[1]}-d features needs more images than dimensions in each set, got "
            f"{len(a)} and {len(b)}; published FIDs use 50,000 samples (and never fewer than 10,000)"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("features contain NaN or infinite values")
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


class InceptionFeatureExtractor(nn.Module):
    """Images (B, 1|3, H, W) in [0, 1] -> (B, 2048) pool3 features of the FID Inception-v3 (pytorch-fid weights).

    `weights` is the path of pt_inception-2015-12-05-6726825d.pth, a folder holding it, or a Hub repo id already
    in the local cache; None looks in torch hub's checkpoint folder. Inputs are resized to 299 (bilinear), as
    pytorch-fid does. `extract` also returns the unbiased 1008-way logits for the Inception Score.
    """

    def __init__(self, weights: str | os.PathLike | None = None, inception: nn.Module | None = None):
        super().__init__()
        # `inception`: an already built FIDInceptionV3 instead of loading `weights` (benchmarks time random ones)
        self.inception = inception if inception is not None else load_fid_inception(weights)

    @staticmethod
    def _preprocess(images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be (B, 1 or 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        x = images.float().expand(-1, 3, -1, -1) if images.shape[1] == 1 else images.float()
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return 2 * x - 1

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pool3 features (B, 2048) of images in [0, 1]."""
        return self.inception(self._preprocess(images))

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool3 features (B, 2048) and unbiased logits (B, 1008) of images in [0, 1], from one network pass."""
        return self.inception.forward_features_and_logits(self._preprocess(images))


def frechet_feature_distance(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 64,
) -> float:
    """Fréchet distance between two image sets in the feature space of `feature_fn` (a batch -> (B, D) map).

    With an `InceptionFeatureExtractor` this is FID; with another extractor name the result after it.
    """
    if len(images_a) < 2 or len(images_b) < 2:
        raise ValueError(f"need at least 2 images per set, got {len(images_a)} and {len(images_b)}")

    def extract(images: torch.Tensor) -> torch.Tensor:
        batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size))
        return torch.cat([feature_fn(batch).double().cpu() for batch in batches])

    return fid_from_features(extract(images_a), extract(images_b))
