"""Improved precision and recall (Kynkäänniemi et al. 2019) as OpenAI's ADM evaluator computes them.

Follows guided-diffusion evaluations/evaluator.py (`ManifoldEstimator`, `DistanceBlock`), itself adapted from
kynkaat/improved-precision-and-recall-metric: each set's manifold is the union of balls around its points whose
squared radius is the squared distance to the k-th nearest other point of the same set. Precision is the fraction
of samples inside the reference manifold, recall the fraction of references inside the sample manifold. ADM feeds
Inception pool3 features (`InceptionFeatureExtractor`), with k = 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ADM_NEIGHBORHOOD = 3
ADM_BATCH_SIZE = 10000


@dataclass(frozen=True)
class PrecisionRecall:
    """Improved precision (samples on the reference manifold) and recall (references on the sample manifold)."""

    precision: float
    recall: float


def _as_features(features: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    features = torch.as_tensor(features).detach()
    if features.dim() != 2 or features.shape[1] == 0:
        raise ValueError(f"{name} must be an (N, D) array, got shape {tuple(features.shape)}")
    if features.dtype == torch.bool or features.is_complex():
        raise TypeError(f"{name} must be real numbers, got {features.dtype}")
    features = features.float()
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return features


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # |a|^2 - 2ab + |b|^2 clamped at 0, the expansion (and summation order) of evaluator.py _batch_pairwise_distances
    norm_a = a.square().sum(1, keepdim=True)
    norm_b = b.square().sum(1)[None]
    return (norm_a - 2 * a @ b.T + norm_b).clamp_min_(0)


def manifold_radii(features: torch.Tensor | np.ndarray, k: int = ADM_NEIGHBORHOOD,
                   batch_size: int = ADM_BATCH_SIZE) -> torch.Tensor:
    """Squared distance (float32) from each of the (N, D) features to its k-th nearest other point of the set."""
    features = _as_features(features, "features")
    _check_k_and_batch(k, batch_size, len(features), "features")
    return _manifold_radii(features, k, batch_size)


def _manifold_radii(features: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    # the (k+1)-th smallest distance of a row, its own zero distance included, as ManifoldEstimator.manifold_radii
    # takes index k of np.partition: a duplicate point thus counts as a neighbour at distance 0
    return torch.cat([
        _squared_distances(rows, features).kthvalue(k + 1, dim=1).values
        for rows in features.split(batch_size)
    ])


def _check_k_and_batch(k: int, batch_size: int, n: int, name: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if n < k + 1:
        raise ValueError(f"{name} need at least k + 1 = {k + 1} points to find k = {k} neighbours, got {n}")


def precision_recall(
    reference_features: torch.Tensor | np.ndarray,
    sample_features: torch.Tensor | np.ndarray,
    k: int = ADM_NEIGHBORHOOD,
    batch_size: int = ADM_BATCH_SIZE,
) -> PrecisionRecall:
    """Improved precision and recall of (M, D) sample features against (N, D) reference features, as ADM.

    A point is inside a manifold when its squared distance to some point of the other set is <= that point's
    radius (`manifold_radii`). Distances are float32 on the inputs' device, computed `batch_size` rows at a time:
    the radii hold batch_size x N (or M) distances at once, the comparison batch_size x batch_size. ADM computes
    them in float16 and falls back to float32 only when a block overflows; float32 throughout here, so values can
    differ from ADM's in the rare points whose distance lies within float16 rounding of a radius.
    """
    reference = _as_features(reference_features, "reference_features")
    samples = _as_features(sample_features, "sample_features")
    if reference.shape[1] != samples.shape[1]:
        raise ValueError(
            f"reference and sample features must have the same dimension, got {reference.shape[1]} and "
            f"{samples.shape[1]}"
        )
    _check_k_and_batch(k, batch_size, len(reference), "reference_features")
    _check_k_and_batch(k, batch_size, len(samples), "sample_features")
    samples = samples.to(reference.device)
    reference_radii = _manifold_radii(reference, k, batch_size)
    sample_radii = _manifold_radii(samples, k, batch_size)

    # one distance block serves both directions, as ManifoldEstimator.evaluate_pr / DistanceBlock.less_thans
    reference_in = torch.zeros(len(reference), dtype=torch.bool, device=reference.device)
    sample_in = torch.zeros(len(samples), dtype=torch.bool, device=reference.device)
    for start_r in range(0, len(reference), batch_size):
        rows = slice(start_r, start_r + batch_size)
        for start_s in range(0, len(samples), batch_size):
            cols = slice(start_s, start_s + batch_size)
            distances = _squared_distances(reference[rows], samples[cols])
            reference_in[rows] |= (distances <= sample_radii[None, cols]).any(1)
            sample_in[cols] |= (distances <= reference_radii[rows, None]).any(0)
    return PrecisionRecall(precision=sample_in.double().mean().item(), recall=reference_in.double().mean().item())
