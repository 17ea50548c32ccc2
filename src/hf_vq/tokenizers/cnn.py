"""The LlamaGen / taming CNN trunk: encoder and decoder, key-compatible with the official VQ models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(32) with the trunk's eps; channel counts must be multiples of 32."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def conv_layout(x: torch.Tensor) -> torch.Tensor:
    """x in the memory layout its device convolves fastest: channels-last on CPU, unchanged elsewhere."""
    # oneDNN convolves NCHW tensors by reordering them to a blocked layout and back around every conv;
    # channels-last skips both copies (about 1.4x faster convs at 256 px) and every op downstream keeps it.
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x


# Row j: which taps (0, 1, 2) of a 3-tap kernel add up to tap j of the equal 4-tap transposed kernel.
_NEAREST_FOLD = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def fold_nearest_upsample(weight: torch.Tensor) -> torch.Tensor:
    """(O, I, 3, 3) kernel of a conv applied after nearest x2 upsampling -> the equal stride-2 transposed-conv kernel.

    Along each axis an even output pixel sees the previous input pixel through tap 0 and its own through taps
    1 and 2; an odd one its own through taps 0 and 1 and the next through tap 2. With padding 1 that is the
    4-tap transposed kernel [w2, w1 + w2, w0 + w1, w0]; returned as (I, O, 4, 4).
    """
    out_channels, in_channels = weight.shape[:2]
    fold = torch.tensor(_NEAREST_FOLD, dtype=weight.dtype, device=weight.device)
    # One (O*I, 9) x (9, 16) product: slicing the 3x3 taps apart is ~10x slower. Outside autocast, so the taps
    # are summed in the weights' own precision before any cast.
    with torch.autocast(weight.device.type, enabled=False):
        kernel = weight.reshape(out_channels * in_channels, 9) @ torch.kron(fold, fold).t()
    return kernel.view(out_channels, in_channels, 4, 4).transpose(0, 1)


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
        # At 256 px an activation is tens of MB: rebinding h frees each one as soon as the next exists, and
        # in-place ops (only on tensors made here; autograd keeps what it needs) skip fresh allocations, each
        # of which costs page faults on CPU. At most three activations are alive at once.
        h = F.silu(self.norm1(x), inplace=True)
        h = self.conv1(h)
        h = F.silu(self.norm2(h), inplace=True)
        h = self.conv2(self.dropout(h))
        return h.add_(x if self.nin_shortcut is None else self.nin_shortcut(x))


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
        # Channels last, so SDPA's fused kernels apply; from a channels-last map these are views.
        q, k, v = (proj(y).permute(0, 2, 3, 1).reshape(b, 1, h * w, c) for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        # Back to (B, C, H, W) as a channels-last view, so the layout survives the block.
        y = y.reshape(b, h, w, c).permute(0, 3, 1, 2)
        return self.proj_out(y).add_(x)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after a (0, 1, 0, 1) zero pad, as in taming."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class NearestUpsampleConv(nn.Conv2d):
    """A 3x3 conv applied after nearest x2 upsampling, both run as one stride-2 transposed conv of the folded kernel.

    The upsampling lives in this conv's own forward so that the weights are read only there: offloading and
    layerwise-casting hooks (diffusers, accelerate) onload and cast a layer's weights around its forward alone.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, 2H, 2W): nearest x2 upsampling, then this conv."""
        return F.conv_transpose2d(x, fold_nearest_upsample(self.weight), self.bias, stride=2, padding=1)


class Upsample(nn.Module):
    """Nearest x2 then a 3x3 conv, run as one stride-2 transposed conv: 16 instead of 36 multiply-adds per pixel."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = NearestUpsampleConv(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


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
    return nn.ModuleList(
        [ResnetBlock(channels, channels, dropout), AttnBlock(channels), ResnetBlock(channels, channels, dropout)]
    )


class _CheckpointedTrunk(nn.Module):
    """Runs blocks one at a time, through activation checkpointing when enabled by diffusers."""

    def __init__(self):
        super().__init__()
        self.gradient_checkpointing = False

    def _block(self, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
        # Called once per block from the forward loops (not over a list): a caller holding a level's input
        # keeps one more full-resolution activation alive for the whole level.
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(block, h)
        return block(h)


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
        h = self.conv_in(conv_layout(x))
        for level in self.conv_blocks:
            for block in level.blocks():
                h = self._block(block, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = self._block(block, h)
        return h


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
        if base_channels % 32:
            raise ValueError(f"the decoder's base_channels must be a multiple of 32 (GroupNorm(32)), "
                             f"got {base_channels}")
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
        h = self.conv_in(conv_layout(z))
        for block in self.mid:
            h = self._block(block, h)
        for level in self.conv_blocks:
            for block in level.blocks():
                h = self._block(block, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        # Images leave in the standard layout, so callers can `.view` them.
        return self.conv_out(F.silu(self.norm_out(h), inplace=True)).contiguous()
