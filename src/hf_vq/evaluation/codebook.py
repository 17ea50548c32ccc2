"""Codebook statistics over a whole evaluation set, per sub-codebook: usage, entropy, perplexity exp(H)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


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


def _entropy(counts: torch.Tensor) -> float:
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log()).sum())


class CodebookStatistics:
    """Code histograms accumulated batch by batch, so usage and entropy cover the whole set, not one batch."""

    def __init__(self, codebook_size: int | Sequence[int]):
        self.codebook_size = codebook_size
        self.counts: list[torch.Tensor] | None = None

    def update(self, indices: torch.Tensor) -> CodebookStatistics:
        """Add a batch of (B, k, ...) indices."""
        counts = _code_counts(indices.cpu(), self.codebook_size)
        self.counts = counts if self.counts is None else [a + b for a, b in zip(self.counts, counts, strict=True)]
        return self

    def compute(self) -> dict[str, list[float]]:
        """Per sub-codebook usage (fraction of codes used), entropy (nats) and perplexity exp(entropy)."""
        if self.counts is None:
            raise ValueError("no indices were added: call update() with at least one batch")
        entropy = [_entropy(counts) for counts in self.counts]
        return {"usage": [(counts > 0).sum().item() / counts.numel() for counts in self.counts],
                "entropy": entropy, "perplexity": [math.exp(h) for h in entropy]}


def codebook_usage(indices: torch.Tensor, codebook_size: int | Sequence[int]) -> list[float]:
    """Fraction of each sub-codebook's codes that occur at least once in `indices` (N, k, ...)."""
    return CodebookStatistics(codebook_size).update(indices).compute()["usage"]


def codebook_entropy(indices: torch.Tensor, codebook_size: int | Sequence[int]) -> list[float]:
    """Entropy in nats of each sub-codebook's code histogram: 0 for one code, ln(codebook_size) for uniform use."""
    return CodebookStatistics(codebook_size).update(indices).compute()["entropy"]


def codebook_perplexity(indices: torch.Tensor, codebook_size: int | Sequence[int]) -> list[float]:
    """exp(entropy) of each sub-codebook's code histogram: 1 for one code, codebook_size for uniform use."""
    return CodebookStatistics(codebook_size).update(indices).compute()["perplexity"]
