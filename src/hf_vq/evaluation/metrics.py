"""Reconstruction and codebook statistics: PSNR, codebook usage, codebook perplexity."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, reduction: str = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of image batches (B, ...), per image, then averaged over the batch.

    `data_range` is max - min of the pixel scale: 2.0 for [-1, 1], 1.0 for [0, 1], 255 for uint8 values.
    Identical images give +inf. `reduction="none"` returns the (B,) per-image values.
    """
    if x.shape != y.shape:
        raise ValueError(f"psnr needs two batches of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() < 2:
        raise ValueError(f"psnr expects a batch (B, ...) of images, got shape {tuple(x.shape)}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(dim=1)
    values = 10 * torch.log10(data_range**2 / mse)
    return values.mean() if reduction == "mean" else values


def _code_counts(indices: torch.Tensor, codebook_size: int | Sequence[int]) -> list[torch.Tensor]:
    """Per sub-codebook histogram of the codes in `indices` (N, k, ...)."""
    if indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
    if indices.dim() < 2:
        raise ValueError(f"indices must be (N, k, ...) with k sub-codebooks, got shape {tuple(indices.shape)}")
    k = indices.shape[1]
    sizes = [codebook_size] * k if isinstance(codebook_size, int) else list(codebook_size)
    if len(sizes) != k:
        raise ValueError(
            f"got {len(sizes)} codebook sizes for {k} sub-codebooks (indices shape {tuple(indices.shape)})"
        )
    counts = []
    for j, size in enumerate(sizes):
        codes = indices[:, j].reshape(-1)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= size):
            raise ValueError(
                f"sub-codebook {j} has indices in [{int(codes.min())}, {int(codes.max())}], outside [0, {size})"
            )
        counts.append(torch.bincount(codes, minlength=size))
    return counts


def codebook_usage(indices: torch.Tensor, codebook_size: int | Sequence[int]) -> list[float]:
    """Fraction of each sub-codebook's codes that occur at least once in `indices` (N, k, ...)."""
    return [(counts > 0).sum().item() / counts.numel() for counts in _code_counts(indices, codebook_size)]


def codebook_perplexity(indices: torch.Tensor, codebook_size: int | Sequence[int]) -> list[float]:
    """exp(entropy) of each sub-codebook's code histogram: 1 for one code, codebook_size for uniform use."""
    perplexities = []
    for counts in _code_counts(indices, codebook_size):
        p = counts[counts > 0].double() / counts.sum()
        perplexities.append(torch.exp(-(p * p.log()).sum()).item())
    return perplexities
