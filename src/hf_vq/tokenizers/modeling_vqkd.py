"""VQKDTokenizer: the tokenizer distilled from a frozen image-understanding teacher (BEiT-v2's VQ-KD, and the
tokenizer of "Image Understanding Makes for A Good Tokenizer for Image Generation", arXiv 2411.04406).

Stage 1 trains the ViT encoder and the feature decoder so that the feature decoder, reading only the codes,
predicts the teacher's patch features (1 - cosine, plus the quantizer's commitment loss; the cosine codebook
learns by EMA). Stage 2 trains a pixel decoder (the LlamaGen CNN decoder) on the frozen codes. One folder holds
all of it; a folder without a pixel decoder tokenizes but cannot turn tokens back into images.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from ..quantizers import build_quantizer
from .base import ImageTokenizerMixin, TokenizerDecoderOutput, TokenizerEncoderOutput, TokenizerOutput
from .cnn import Decoder
from .vit import VisionTransformer, task_layer

_DEFAULT_QUANTIZER = dict(kind="cosine_ema", codebook_size=8192, dim=32)  # the VQ-KD benchmark's codebook

# The benchmark's tokenizer (configs/vqkd): ViT-B/16 encoder at 224 px, a 1-block feature decoder, 8192 x 32
# cosine codes; its pixel decoder is LlamaGen's VQ-16 decoder (ch_mult 1, 1, 2, 2, 4).
_VQ16_DECODER = dict(base_channels=128, channel_multipliers=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256)
VQKD_PRESETS: dict[str, dict] = {
    "vqkd-vit-b16": dict(teacher_dim=768, pixel_decoder=_VQ16_DECODER),
    "vqkd-vit-b16-clip": dict(teacher_dim=512, teacher_model="openai/clip-vit-base-patch16",
                              pixel_decoder=_VQ16_DECODER),
    "tiny": dict(
        in_channels=1, out_channels=1, sample_size=8, patch_size=2, encoder_width=32, encoder_layers=1,
        encoder_heads=2, decoder_width=32, decoder_layers=1, decoder_heads=2, teacher_dim=16,
        quantizer=dict(kind="cosine_ema", codebook_size=32, dim=8),
        pixel_decoder=dict(base_channels=32, channel_multipliers=(1, 2), num_res_blocks=1, z_channels=32),
    ),
    "tiny-no-pixel-decoder": dict(
        in_channels=1, out_channels=1, sample_size=8, patch_size=2, encoder_width=32, encoder_layers=1,
        encoder_heads=2, decoder_width=32, decoder_layers=1, decoder_heads=2, teacher_dim=16,
        quantizer=dict(kind="cosine_ema", codebook_size=32, dim=8),
    ),
}


class VQKDTokenizer(ImageTokenizerMixin, ModelMixin, ConfigMixin):
    """ViT encoder -> cosine codes -> (feature decoder to the teacher's space | optional pixel decoder).

    Tokens are (B, 1, h, w) on the fixed (sample_size / patch_size)^2 grid of the learned position embeddings.
    The config's `pixel_decoder` is None (stage 1 only) or the CNN decoder's kwargs (its upsampling must equal
    `patch_size`); the module is `image_decoder`, after the 1x1 `post_quant_conv`.
    """

    _supports_gradient_checkpointing = True
    # what device_map="auto" keeps whole on one device: the ViT blocks, the pixel decoder's, the quantizer
    _no_split_modules = ["Block", "ResnetBlock", "AttnBlock", "CosineEMAQuantizer"]

    presets = VQKD_PRESETS

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        sample_size: int = 224,
        patch_size: int = 16,
        encoder_width: int = 768,
        encoder_layers: int = 12,
        encoder_heads: int = 12,
        decoder_width: int = 768,
        decoder_layers: int = 1,
        decoder_heads: int = 12,
        mlp_ratio: float = 4.0,
        teacher_dim: int = 768,
        teacher_model: str | None = None,
        quantizer: dict[str, Any] | None = None,
        pixel_decoder: dict[str, Any] | None = None,
    ):
        super().__init__()
        if sample_size % patch_size:
            raise ValueError(f"sample_size {sample_size} must be a multiple of patch_size {patch_size}")
        spec = dict(_DEFAULT_QUANTIZER if quantizer is None else quantizer)
        self.register_to_config(quantizer=spec)
        grid = sample_size // patch_size
        self.encoder = VisionTransformer(in_channels, patch_size, grid, encoder_width, encoder_layers, encoder_heads,
                                         mlp_ratio)
        self.quantize = build_quantizer(**spec)
        code_dim = self.quantize.dim
        self.encode_task_layer = task_layer(encoder_width, encoder_width, code_dim)
        # The feature decoder reads the codes through a 1x1 patch embedding.
        self.decoder = VisionTransformer(code_dim, 1, grid, decoder_width, decoder_layers, decoder_heads, mlp_ratio)
        self.decode_task_layer = task_layer(decoder_width, decoder_width, teacher_dim)
        self.post_quant_conv = self.image_decoder = None
        if pixel_decoder is not None:
            levels = len(pixel_decoder["channel_multipliers"])
            if 2 ** (levels - 1) != patch_size:
                raise ValueError(
                    f"a pixel decoder with {levels} levels upsamples {2 ** (levels - 1)}x, but tokens are "
                    f"{patch_size} px apart; give it log2(patch_size) + 1 = {int(math.log2(patch_size)) + 1} levels"
                )
            z = pixel_decoder["z_channels"]
            self.post_quant_conv = nn.Conv2d(code_dim, z, 1)
            self.image_decoder = Decoder(z, out_channels, pixel_decoder["base_channels"],
                                         pixel_decoder["channel_multipliers"], pixel_decoder["num_res_blocks"], 0.0)

    # ------------------------------------------------------------------ the tokenizer contract
    @property
    def downsample_factor(self) -> int:
        return self.config.patch_size

    @property
    def fixed_size(self) -> bool:
        """Learned position embeddings fix the grid."""
        return True

    @property
    def num_codebooks(self) -> int:
        return 1

    @property
    def codebook_sizes(self) -> list[int]:
        return [self.quantize.codebook_size]

    @property
    def can_decode(self) -> bool:
        """Whether stage 2 has given this tokenizer a pixel decoder."""
        return self.image_decoder is not None

    def check_can_decode(self) -> None:
        if self.image_decoder is None:
            raise ValueError(
                "this VQ-KD tokenizer has no pixel decoder, so tokens cannot become images: train stage 2 with "
                "`examples/train_vqkd_pixel_decoder.py --tokenizer FOLDER ...`"
            )

    @apply_forward_hook
    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True) -> TokenizerEncoderOutput | tuple:
        """Images -> (B, D, h, w) unit-norm codes and (B, 1, h, w) indices."""
        self.check_pixels(pixel_values)
        tokens = self.encode_task_layer(self.encoder(pixel_values))
        g = self.grid_size
        q = self.quantize(tokens.transpose(1, 2).reshape(tokens.shape[0], -1, g, g))
        out = TokenizerEncoderOutput(latents=q.quantized, indices=q.indices[:, None], losses=q.losses,
                                     usage=[q.usage])
        return out if return_dict else out.to_tuple()

    @apply_forward_hook
    def decode(self, latents: torch.Tensor, return_dict: bool = True) -> TokenizerDecoderOutput | tuple:
        """Codes (B, D, h, w) -> images through the pixel decoder (not clamped)."""
        self.check_can_decode()
        sample = self.image_decoder(self.post_quant_conv(latents))
        return TokenizerDecoderOutput(sample=sample) if return_dict else (sample,)

    @apply_forward_hook
    def indices_to_latents(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) indices -> (B, D, h, w) codes."""
        self.check_indices(indices)
        return self.quantize.indices_to_codes(indices[:, 0])

    def predict_teacher_features(self, latents: torch.Tensor) -> torch.Tensor:
        """Codes (B, D, h, w) -> (B, h*w, teacher_dim): the feature decoder's guess of the teacher's patch tokens."""
        return self.decode_task_layer(self.decoder(latents))

    def forward(
        self, pixel_values: torch.Tensor, teacher_features: torch.Tensor | None = None, return_dict: bool = True
    ) -> TokenizerOutput | tuple:
        """Training forward: the quantizer's losses, "cosine_loss" (1 - cos to the (B, h*w, teacher_dim) teacher
        patch features) when given, and the reconstruction when there is a pixel decoder (else `sample` is None)."""
        enc = self.encode(pixel_values)
        losses = dict(enc.losses)
        if teacher_features is not None:
            expected = (pixel_values.shape[0], self.grid_size**2, self.config.teacher_dim)
            if tuple(teacher_features.shape) != expected:
                raise ValueError(f"teacher_features must be {expected} (patch tokens on the code grid), "
                                 f"got {tuple(teacher_features.shape)}")
            predicted = self.predict_teacher_features(enc.latents)
            cosine = F.cosine_similarity(predicted.float(), teacher_features.float(), dim=-1)
            losses["cosine_loss"] = (1 - cosine).mean()
        sample = self.decode(enc.latents).sample if self.can_decode else None
        out = TokenizerOutput(sample=sample, indices=enc.indices, losses=losses, usage=enc.usage)
        return out if return_dict else out.to_tuple()
