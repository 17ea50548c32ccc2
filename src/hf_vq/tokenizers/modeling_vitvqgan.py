"""ViTVQGANTokenizer: the ViT-VQGAN tokenizer of "Vector-quantized Image Modeling with Improved VQGAN" (Yu et al.,
ICLR 2022, arXiv 2110.04627).

A ViT encoder over non-overlapping patches, factorised codes (a linear projection to a low-dimensional space, then
nearest-neighbour lookup among L2-normalised codes), and a ViT decoder that maps each token back to a patch. At the
output of both transformers sits a two-layer feed-forward network with a tanh in the middle (paper, section 3.1);
no activation is applied on the encoder's or the decoder's output.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from ..quantizers import build_quantizer
from .base import ImageTokenizerMixin, TokenizerDecoderOutput, TokenizerEncoderOutput, TokenizerOutput
from .vit import POSITION_EMBEDDINGS, VisionTransformer, task_layer

# The paper's codebook: 8192 codes of dimension 32 looked up with L2-normalised vectors, commitment 0.25.
_DEFAULT_QUANTIZER = dict(kind="vq", codebook_size=8192, dim=32, l2_norm=True, commit_loss_beta=0.25)

# The paper's transformer sizes (Table 1): layers, width, MLP width, heads.
_SIZES = {
    "small": dict(layers=8, width=512, mlp_dim=2048, heads=8),
    "base": dict(layers=12, width=768, mlp_dim=3072, heads=12),
    "large": dict(layers=32, width=1280, mlp_dim=5120, heads=16),
}


def _stack(part: str, size: str) -> dict[str, int]:
    return {f"{part}_{key}": value for key, value in _SIZES[size].items()}


# 256 px images in 8 px patches (32 x 32 tokens); "large" pairs the small encoder with the large decoder, the
# paper's ViT-VQGAN-SL.
VITVQGAN_PRESETS: dict[str, dict] = {
    "vitvqgan-small": dict(**_stack("encoder", "small"), **_stack("decoder", "small")),
    "vitvqgan-base": dict(**_stack("encoder", "base"), **_stack("decoder", "base")),
    "vitvqgan-large": dict(**_stack("encoder", "small"), **_stack("decoder", "large")),
    "tiny": dict(
        in_channels=1, out_channels=1, sample_size=8, patch_size=2, encoder_layers=1, encoder_width=32,
        encoder_mlp_dim=64, encoder_heads=2, decoder_layers=1, decoder_width=32, decoder_mlp_dim=64, decoder_heads=2,
        quantizer=dict(kind="vq", codebook_size=32, dim=8),
    ),
    "tiny-sincos": dict(
        in_channels=1, out_channels=1, sample_size=8, patch_size=2, encoder_layers=1, encoder_width=32,
        encoder_mlp_dim=64, encoder_heads=2, decoder_layers=1, decoder_width=32, decoder_mlp_dim=64, decoder_heads=2,
        position_embedding="sincos", quantizer=dict(kind="vq", codebook_size=32, dim=8),
    ),
}


class ViTVQGANTokenizer(ImageTokenizerMixin, ModelMixin, ConfigMixin):
    """ViT encoder -> Linear(width -> code dim) -> L2-normalised codes -> ViT decoder -> pixels.

    Encoder and decoder are sized separately (the paper's large model has a small encoder). Tokens are
    (B, 1, h, w) with h = H / patch_size. The code -> decoder-width projection is the decoder's 1x1 `patch_embed`,
    and the pixel head is `to_pixels`, a Linear(width -> patch_size^2 * out_channels) whose outputs are the pixels of
    each token's patch (the same map as a ConvTranspose2d with kernel = stride = patch_size). With learned position
    embeddings the model takes only `sample_size` images; with "sincos" ones any size divisible by `patch_size`.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["Block", "VectorQuantizer"]  # what device_map="auto" keeps whole on one device

    presets = VITVQGAN_PRESETS

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        sample_size: int = 256,
        patch_size: int = 8,
        encoder_layers: int = 12,
        encoder_width: int = 768,
        encoder_mlp_dim: int = 3072,
        encoder_heads: int = 12,
        decoder_layers: int = 12,
        decoder_width: int = 768,
        decoder_mlp_dim: int = 3072,
        decoder_heads: int = 12,
        position_embedding: str = "learned",
        quantizer: dict[str, Any] | None = None,
    ):
        super().__init__()
        if patch_size < 1 or sample_size % patch_size:
            raise ValueError(
                f"patch_size {patch_size} does not divide sample_size {sample_size}: the patches must tile the image "
                f"(e.g. patch 4 for 28 px, patch 8 for 256 px)"
            )
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be one of {POSITION_EMBEDDINGS}, got {position_embedding!r}")
        if quantizer is not None and not (isinstance(quantizer, dict) and "kind" in quantizer):
            raise ValueError(f"quantizer must be a spec dict such as {_DEFAULT_QUANTIZER}, got {quantizer!r}")
        spec = dict(_DEFAULT_QUANTIZER if quantizer is None else quantizer)
        self.register_to_config(quantizer=spec)  # saved configs name their quantizer in full
        grid = sample_size // patch_size
        vit = dict(cls_token=False, position_embedding=position_embedding)

        self.encoder = VisionTransformer(in_channels, patch_size, grid, encoder_width, encoder_layers, encoder_heads,
                                         mlp_dim=encoder_mlp_dim, **vit)
        self.encoder_head = task_layer(encoder_width, encoder_width, encoder_width)
        self.quantize = build_quantizer(**spec)
        code_dim = self.quantize.dim
        self.quant_proj = nn.Linear(encoder_width, code_dim)
        # The decoder reads the (B, code_dim, h, w) codes through a 1x1 patch embedding: Linear(code_dim -> width).
        self.decoder = VisionTransformer(code_dim, 1, grid, decoder_width, decoder_layers, decoder_heads,
                                         mlp_dim=decoder_mlp_dim, **vit)
        self.decoder_head = task_layer(decoder_width, decoder_width, decoder_width)
        self.to_pixels = nn.Linear(decoder_width, patch_size**2 * out_channels)
        for part in (self.encoder, self.encoder_head, self.quant_proj, self.decoder, self.decoder_head,
                     self.to_pixels):
            part.apply(_init_vit_weights)

    # ------------------------------------------------------------------ the tokenizer contract
    @property
    def downsample_factor(self) -> int:
        return self.config.patch_size

    @property
    def fixed_size(self) -> bool:
        """Learned position embeddings fix the grid; sin-cos ones follow the input."""
        return self.config.position_embedding == "learned"

    @property
    def num_codebooks(self) -> int:
        return 1

    @property
    def codebook_sizes(self) -> list[int]:
        return [self.quantize.codebook_size]

    @apply_forward_hook
    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True) -> TokenizerEncoderOutput | tuple:
        """Images -> (B, code_dim, h, w) unit-norm codes and (B, 1, h, w) indices."""
        self.check_pixels(pixel_values)
        h, w = self.token_grid(tuple(pixel_values.shape[-2:]))
        z = self.quant_proj(self.encoder_head(self.encoder(pixel_values)))
        q = self.quantize(z.transpose(1, 2).reshape(z.shape[0], -1, h, w))
        out = TokenizerEncoderOutput(latents=q.quantized, indices=q.indices[:, None], losses=q.losses,
                                     usage=[q.usage])
        return out if return_dict else out.to_tuple()

    @apply_forward_hook
    def decode(self, latents: torch.Tensor, return_dict: bool = True) -> TokenizerDecoderOutput | tuple:
        """Codes (B, code_dim, h, w) -> (B, C, h * patch_size, w * patch_size) images (not clamped)."""
        code_dim = self.quantize.dim
        if latents.ndim != 4 or latents.shape[1] != code_dim:
            raise ValueError(f"latents must be (B, {code_dim}, h, w), got shape {tuple(latents.shape)}")
        if self.fixed_size and tuple(latents.shape[2:]) != self.token_grid():
            g = self.grid_size
            raise ValueError(f"latents must be on the {g}x{g} grid, got {tuple(latents.shape[2:])}")
        h, w = latents.shape[2:]
        patches = self.to_pixels(self.decoder_head(self.decoder(latents)))  # (B, h*w, C*p*p)
        sample = F.pixel_shuffle(patches.transpose(1, 2).reshape(latents.shape[0], -1, h, w), self.config.patch_size)
        return TokenizerDecoderOutput(sample=sample) if return_dict else (sample,)

    @apply_forward_hook
    def indices_to_latents(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) indices -> (B, code_dim, h, w) unit-norm codes."""
        self.check_indices(indices)
        return self.quantize.indices_to_codes(indices[:, 0]).to(self.dtype)

    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True) -> TokenizerOutput | tuple:
        """Training forward: the reconstruction and the quantizer's losses (codebook and commitment)."""
        enc = self.encode(pixel_values)
        sample = self.decode(enc.latents).sample
        out = TokenizerOutput(sample=sample, indices=enc.indices, losses=dict(enc.losses), usage=enc.usage)
        return out if return_dict else out.to_tuple()


def _init_vit_weights(module: nn.Module) -> None:
    """ViT's initialisation (truncated normal, std 0.02, zero biases) for linear and patch-embedding layers."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
