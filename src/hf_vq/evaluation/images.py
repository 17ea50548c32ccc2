"""The image convention every metric shares: (B, C, H, W) batches, checked, rounded to uint8 like saved images."""

from __future__ import annotations

import numpy as np
import torch

VALUE_RANGES = ((0.0, 1.0), (-1.0, 1.0))


def check_image_batch(images: torch.Tensor, value_range: tuple[float, float], name: str = "images") -> None:
    """Refuse anything but a float (B, 1|3, H, W) batch whose values lie in `value_range` (up to 1e-3)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a (B, 1 or 3, H, W) tensor, got {shape}")
    if not images.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor with values in {value_range}, got {images.dtype}")
    if tuple(map(float, value_range)) not in VALUE_RANGES:
        raise ValueError(f"value_range must be (0, 1) or (-1, 1), got {value_range}")
    if images.numel() == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(images.shape)})")
    low, high = value_range
    lo, hi = images.min().item(), images.max().item()
    if lo < low - 1e-3 or hi > high + 1e-3:
        hint = " (they look like [-1, 1] images: pass value_range=(-1, 1))" if low == 0 and lo >= -1 - 1e-3 else ""
        raise ValueError(f"{name} have values in [{lo:.3f}, {hi:.3f}], outside value_range {value_range}{hint}")


def check_image_pair(x: torch.Tensor, y: torch.Tensor, value_range: tuple[float, float]) -> None:
    """Two batches compared image by image: same shape, each a valid batch in `value_range`."""
    check_image_batch(x, value_range, "first images")
    check_image_batch(y, value_range, "second images")
    if x.shape != y.shape:
        raise ValueError(f"image batches must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def to_uint8_unit(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Map to [0, 1] through uint8 rounding, as saving a PNG does: the protocol of published PSNR/SSIM numbers."""
    low, high = value_range
    x = ((images.double() - low) / (high - low)).clamp(0, 1)
    return torch.round(x * 255) / 255


def from_uint8(images: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """(N, H, W, C) uint8 images (ADM's `arr_0` layout) -> an (N, C, H, W) float32 batch in `value_range`."""
    low, high = value_range
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 * (high - low) + low


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """An (N, C, H, W) batch in `value_range` -> (N, H, W, C) uint8 images, clamped and rounded as a saved image."""
    low, high = value_range
    x = ((images.float() - low) / (high - low)).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

