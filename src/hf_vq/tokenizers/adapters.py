"""FQGAN's per-codebook transformer adapters and representation-learning feature heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention with `nn.MultiheadAttention`'s parameter layout, run through SDPA."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.num_heads, w // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, w))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block (exact GELU, MLP x4), CLIP-style key names."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, num_heads)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, num_layers: int, num_heads: int):
        super().__init__()
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.ModuleList(ResidualAttentionBlock(width, num_heads) for _ in range(num_layers))
        self.ln_post = nn.LayerNorm(width)
        self.gradient_checkpointing = False

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_pre(x)
        for block in self.transformer:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = self._gradient_checkpointing_func(block, x)
            else:
                x = block(x)
        return self.ln_post(x)


class FactorizedAdapter(_Transformer):
    """Transformer over the trunk's feature map with a learned position embedding of a fixed grid."""

    def __init__(self, width: int, grid_size: int, num_layers: int = 6, num_heads: int = 8):
        super().__init__(width, num_layers, num_heads)
        self.grid_size = grid_size
        self.positional_embedding = nn.Parameter(width**-0.5 * torch.randn(grid_size**2, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2) + self.positional_embedding.to(x.dtype)
        return self._blocks(tokens).transpose(1, 2).reshape(b, c, h, w)


class FeatureHead(_Transformer):
    """Predicts a teacher's CLS feature from one sub-codebook's quantized map (FQGAN's FeatPredHead)."""

    def __init__(self, input_dim: int, width: int, grid_size: int, num_layers: int = 3, num_heads: int = 8):
        super().__init__(width, num_layers, num_heads)
        self.upscale = nn.Sequential(nn.Linear(input_dim, width), nn.ReLU(), nn.Linear(width, width))
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(1, width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid_size**2 + 1, width))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) codes -> (B, width) predicted CLS feature."""
        tokens = self.upscale(codes.flatten(2).transpose(1, 2))
        cls = self.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.positional_embedding.to(tokens.dtype)
        return self._blocks(tokens)[:, 0]


def info_nce_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """One-directional InfoNCE: rows are students, softmax over the batch's teachers (FQGAN's form)."""
    student = F.normalize(student.float(), dim=-1)
    teacher = F.normalize(teacher.float(), dim=-1)
    logits = student @ teacher.t() / temperature
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))
