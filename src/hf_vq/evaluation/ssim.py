"""SSIM (Wang et al. 2004, "Image quality assessment: from error visibility to structural similarity").

Both variants reproduce `skimage.metrics.structural_similarity(a, b, data_range=1, channel_axis=...)` on images
rounded to uint8 and scaled to [0, 1], the protocol behind published tokenizer numbers (VQ-KD benchmark,
arXiv 2411.04406): `ssim` is scikit-image's default (7x7 uniform window, sample covariance), `ssim_gaussian` its
`gaussian_weights=True, sigma=1.5, use_sample_covariance=False` setting that follows the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .images import check_image_pair, to_uint8_unit

K1, K2 = 0.01, 0.03
UNIFORM_WINDOW = 7  # skimage's default win_size
GAUSSIAN_SIGMA, GAUSSIAN_TRUNCATE = 1.5, 3.5  # skimage's Gaussian setting: an 11-tap window


def _uniform_window(size: int) -> torch.Tensor:
    return torch.full((size,), 1.0 / size, dtype=torch.float64)


def _gaussian_window(sigma: float, truncate: float) -> torch.Tensor:
    # the radius rule of scipy.ndimage.gaussian_filter1d, which skimage.filters.gaussian calls
    radius = int(truncate * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (taps / sigma) ** 2)
    return weights / weights.sum()


def _ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    value_range: tuple[float, float],
    reduction: str,
    window: torch.Tensor,
    sample_covariance: bool,
) -> torch.Tensor:
    """Per-image SSIM with a separable 1-D `window`, averaged over the region where the window fits."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    check_image_pair(x, y, value_range)
    size = window.numel()
    height, width = x.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size} (its window), got {height}x{width}")
    a, b = to_uint8_unit(x, value_range), to_uint8_unit(y, value_range)
    channels = a.shape[1]

    # one grouped, 'valid' convolution filters all five moment maps: skimage filters the whole image then crops
    # (size - 1) // 2 pixels from each border, which leaves exactly the positions where the window fits
    moments = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    window = window.to(device=moments.device)
    groups = moments.shape[1]
    if bool((window == window[0]).all()):  # a uniform window is a mean: pooling is several times faster
        filtered = F.avg_pool2d(F.avg_pool2d(moments, (size, 1), stride=1), (1, size), stride=1)
    else:
        filtered = F.conv2d(moments, window.view(1, 1, size, 1).expand(groups, 1, size, 1), groups=groups)
        filtered = F.conv2d(filtered, window.view(1, 1, 1, size).expand(groups, 1, 1, size), groups=groups)
    ux, uy, uxx, uyy, uxy = filtered.split(channels, dim=1)

    n = size * size
    cov_norm = n / (n - 1) if sample_covariance else 1.0
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = K1**2, K2**2  # data_range is 1
    ssim_map = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    # every channel has the same valid region, so this is skimage's mean over channels of per-channel means
    values = ssim_map.flatten(1).mean(dim=1)
    return values.mean() if reduction == "mean" else values


def ssim(
    x: torch.Tensor, y: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0), reduction: str = "mean"
) -> torch.Tensor:
    """SSIM of image batches (B, 1|3, H, W) as skimage's `structural_similarity` defaults, on uint8-rounded images.

    Per image (mean over channels for colour), then averaged over the batch; `reduction="none"` returns (B,).
    """
    return _ssim(x, y, value_range, reduction, _uniform_window(UNIFORM_WINDOW), sample_covariance=True)


def ssim_gaussian(
    x: torch.Tensor, y: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0), reduction: str = "mean"
) -> torch.Tensor:
    """SSIM with Wang et al.'s 11x11 Gaussian window (sigma 1.5) and population covariance, as skimage computes it."""
    window = _gaussian_window(GAUSSIAN_SIGMA, GAUSSIAN_TRUNCATE)
    return _ssim(x, y, value_range, reduction, window, sample_covariance=False)
