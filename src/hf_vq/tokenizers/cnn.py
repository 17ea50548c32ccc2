"""The LlamaGen / taming CNN trunk: encoder and decoder, key-compatible with the official VQ models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(32) with the trunk's eps; channel counts must be multiples of 32."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block with an optional 1x1 shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # (B, 1, HW, C): one head over all channels, so SDPA's default scale C^-0.5 is the official one.
        q, k, v = (proj(y).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        y = y.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(y)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after a (0, 1, 0, 1) zero pad, as in taming."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: residual blocks, attention after each at the lowest level, a resampler."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, with_attn: bool, dropout: float):
        super().__init__()
        self.res = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, dropout) for i in range(num_blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(num_blocks if with_attn else 0))

    def blocks(self) -> list[nn.Module]:
        """The level's blocks in execution order (res, attn interleaved)."""
        if not len(self.attn):
            return list(self.res)
        return [m for pair in zip(self.res, self.attn) for m in pair]


def _mid(channels: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(channels, channels, dropout), AttnBlock(channels), ResnetBlock(channels, channels, dropout)])


class _CheckpointedTrunk(nn.Module):
    """Runs a list of blocks, through activation checkpointing when enabled by diffusers."""

    def __init__(self):
        super().__init__()
        self.gradient_checkpointing = False

    def _run(self, blocks: Sequence[nn.Module], h: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = self._gradient_checkpointing_func(block, h)
            else:
                h = block(h)
        return h


class EncoderTrunk(_CheckpointedTrunk):
    """conv_in -> levels (downsampling on all but the last) -> mid; output width base * mult[-1]."""

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 128,
        channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        widths = [base_channels * m for m in channel_multipliers]
        self.conv_blocks = nn.ModuleList()
        block_in = base_channels
        for i, width in enumerate(widths):
            level = _Level(block_in, width, num_res_blocks, with_attn=i == len(widths) - 1, dropout=dropout)
            if i != len(widths) - 1:
                level.downsample = Downsample(width)
            self.conv_blocks.append(level)
            block_in = width
        self.mid = _mid(block_in, dropout)
        self.out_channels = block_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = self._run(level.blocks(), h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self._run(self.mid, h)


class Decoder(_CheckpointedTrunk):
    """conv_in -> mid -> levels from lowest resolution up (upsampling on all but the last) -> norm, swish, conv_out."""

    def __init__(
        self,
        z_channels: int = 256,
        out_channels: int = 3,
        base_channels: int = 128,
        channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        widths = [base_channels * m for m in channel_multipliers]
        block_in = widths[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in, dropout)
        self.conv_blocks = nn.ModuleList()
        # conv_blocks.0 is the lowest resolution, matching the official key order.
        for i, width in reversed(list(enumerate(widths))):
            level = _Level(block_in, width, num_res_blocks + 1, with_attn=i == len(widths) - 1, dropout=dropout)
            if i != 0:
                level.upsample = Upsample(width)
            self.conv_blocks.append(level)
            block_in = width
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self._run(self.mid, self.conv_in(z))
        for level in self.conv_blocks:
            h = self._run(level.blocks(), h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
