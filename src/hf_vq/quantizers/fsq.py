"""Finite scalar quantization (Mentzer et al. 2023): round each channel to a few fixed levels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .base import Quantizer, QuantizerOutput


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round with a straight-through (identity) gradient."""
    return x + (x.round() - x).detach()


class FSQ(Quantizer):
    """Channel i takes `levels[i]` values in [-1, 1]; the implicit codebook is their product (no parameters or loss)."""

    @classmethod
    def from_spec(cls, codebook_size: int, dim: int, **kwargs) -> FSQ:
        """An FSQ from `levels=[...]`, checked against the spec's codebook size and dim."""
        if "levels" not in kwargs:
            raise ValueError("an fsq quantizer needs `levels`, e.g. levels=[8, 8, 8, 5, 5, 5] for 64000 codes")
        levels = list(kwargs.pop("levels"))
        if len(levels) != dim or math.prod(levels) != codebook_size:
            raise ValueError(
                f"fsq levels {levels} give dim {len(levels)} and codebook size {math.prod(levels)}, "
                f"but dim={dim} and codebook_size={codebook_size} were asked for; make them agree"
            )
        return cls(levels, **kwargs)

    def __init__(self, levels: Sequence[int], eps: float = 1e-3):
        super().__init__()
        levels = list(levels)
        if not levels or any(not isinstance(level, int) or level < 2 for level in levels):
            raise ValueError(f"levels must be a non-empty list of integers >= 2, got {levels}")
        self.dim = len(levels)
        self.codebook_size = math.prod(levels)
        self.eps = eps
        self.register_buffer("levels", torch.tensor(levels), persistent=False)
        self.register_buffer("basis", torch.cumprod(torch.tensor([1] + levels[:-1]), dim=0), persistent=False)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash (..., D) latents so that rounding yields exactly L_i integer values per channel."""
        half_l = (self.levels - 1) * (1 + self.eps) / 2
        # Even L needs a half-step offset so the integers are symmetric around zero after the shift.
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize (B, D, H, W) latents channel-wise."""
        self.check_latents(z)
        with torch.autocast(z.device.type, enabled=False):
            codes = (round_ste(self.bound(z.permute(0, 2, 3, 1).float())) / (self.levels // 2)).permute(0, 3, 1, 2)
        return QuantizerOutput(codes.to(z.dtype), self.codes_to_indices(codes.detach()))

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) codes on the level grid -> (B, H, W) long indices."""
        self.check_latents(codes)
        half_width = self.levels // 2
        digits = (codes.permute(0, 2, 3, 1).float() * half_width + half_width).round().long()
        return (digits * self.basis).sum(dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) long indices -> (B, D, H, W) codes."""
        indices = self.check_indices(indices, ndim=3)
        half_width = self.levels // 2
        digits = (indices.unsqueeze(-1) // self.basis) % self.levels
        return ((digits - half_width) / half_width).permute(0, 3, 1, 2)
