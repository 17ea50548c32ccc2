"""Reconstruction PSNR, on raw tensors or (the protocol of published numbers) on uint8-rounded images."""

from __future__ import annotations

import torch

from .images import check_image_pair, to_uint8_unit


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


def psnr_uint8(
    x: torch.Tensor, y: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0), reduction: str = "mean"
) -> torch.Tensor:
    """PSNR of two (B, C, H, W) batches first rounded to uint8 and scaled to [0, 1], as published tokenizer PSNRs are
    measured (saved images; the VQ-KD benchmark's protocol)."""
    check_image_pair(x, y, value_range)
    return psnr(to_uint8_unit(x, value_range), to_uint8_unit(y, value_range), data_range=1.0, reduction=reduction)
