"""A plain ViT trunk as VQ-KD's encoder and feature decoder (BEiT / BEiT-v2 style) and ViT-VQGAN use it.

Pre-LN blocks (LayerNorm eps 1e-6), attention with separate q and v biases and no k bias (BEiT), MLP x4 (or
`mlp_dim`) with exact GELU, a CLS token (optional) and learned (or fixed 2D sin-cos) position embeddings; the output
is the patch tokens after `fc_norm` (CLS dropped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QKVLinear(nn.Linear):
    """The fused q/k/v projection; its bias comes from the caller (BEiT's q and v biases, no k bias).

    The weight is read only in this layer's own forward, where offloading and layerwise-casting hooks have put it.
    """

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x @ weight.T + bias."""
        return F.linear(x, self.weight, bias)


class Attention(nn.Module):
    """Multi-head self-attention with BEiT's biases: q and v have one, k has none."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} must be a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = QKVLinear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, width = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        q, k, v = self.qkv(x, bias).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, width))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, mlp_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        hidden = int(width * mlp_ratio) if mlp_dim is None else mlp_dim
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sincos_position_embedding(dim: int, rows: int, cols: int) -> torch.Tensor:
    """(rows * cols, dim) fixed 2D sin-cos positions, row-major: half the channels encode the row, half the column.

    Each half is the 1D sin-cos code of "Attention Is All You Need" (frequencies 1 / 10000^(i / (dim / 4))), as in
    MAE's `get_2d_sincos_pos_embed`; computed in fp32.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    grid = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")
    codes = [torch.outer(pos.reshape(-1), omega) for pos in grid]
    return torch.cat([f(c) for c in codes for f in (torch.sin, torch.cos)], dim=1).float()


POSITION_EMBEDDINGS = ("learned", "sincos")


class VisionTransformer(nn.Module):
    """(B, C, H, W) -> (B, N, width) patch tokens.

    Learned positions fix the grid to `grid_size` x `grid_size`; sin-cos positions are computed for the grid of each
    input, so any size divisible by `patch_size` goes through.
    """

    def __init__(
        self, in_channels: int, patch_size: int, grid_size: int, width: int, num_layers: int, num_heads: int,
        mlp_ratio: float = 4.0, *, cls_token: bool = True, position_embedding: str = "learned",
        mlp_dim: int | None = None,
    ):
        super().__init__()
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be one of {POSITION_EMBEDDINGS}, got {position_embedding!r}")
        if position_embedding == "sincos" and width % 4:  # refused here, not at the first forward
            raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {width}")
        self.grid_size = grid_size
        self.width = width
        self.patch_embed = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)
        self.cls_token = self.pos_embed = None
        if cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        if position_embedding == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, int(cls_token) + grid_size**2, width))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(Block(width, num_heads, mlp_ratio, mlp_dim) for _ in range(num_layers))
        self.fc_norm = nn.LayerNorm(width, eps=1e-6)
        self.gradient_checkpointing = False  # set by the model's `enable_gradient_checkpointing()` (diffusers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        rows, cols = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        if self.pos_embed is None:  # the CLS token, if any, gets no position (MAE)
            x = x + sincos_position_embedding(self.width, rows, cols).to(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = self._gradient_checkpointing_func(block, x)
            else:
                x = block(x)
        return self.fc_norm(x if self.cls_token is None else x[:, 1:])


def task_layer(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """VQ-KD's head between a trunk and the code space (or the teacher's space): Linear -> Tanh -> Linear."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, out_features))
