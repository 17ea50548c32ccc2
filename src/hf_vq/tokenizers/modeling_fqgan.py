"""FQGANTokenizer: LlamaGen VQGAN (k=1) and FQGAN factorized tokenizers (k=2, 3) as a diffusers model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ..quantizers import FactorizedQuantizer, build_quantizer
from .adapters import FactorizedAdapter, FeatureHead, info_nce_loss
from .cnn import Decoder, EncoderTrunk, group_norm

# Presets matching the official models (REFERENCE.md §1, §3) plus the Fashion-MNIST model we ship.
TOKENIZER_PRESETS: dict[str, dict] = {
    "vq-ds16": dict(channel_multipliers=(1, 1, 2, 2, 4), num_codebooks=1),
    "vq-ds8": dict(channel_multipliers=(1, 2, 2, 4), num_codebooks=1),
    "fqgan-dual-ds16": dict(
        channel_multipliers=(1, 1, 2, 2, 4), num_codebooks=2, codebook_names=("vis", "sem"), entropy_loss_ratio=0.03,
        teacher_models=(None, "openai/clip-vit-large-patch14"), teacher_dims=(None, 1024),
    ),
    "fqgan-dual-ds8": dict(
        channel_multipliers=(1, 2, 2, 4), num_codebooks=2, codebook_names=("vis", "sem"), entropy_loss_ratio=0.03,
        teacher_models=(None, "openai/clip-vit-large-patch14"), teacher_dims=(None, 1024),
    ),
    "fqgan-triple-ds16": dict(
        channel_multipliers=(1, 1, 2, 2, 4), num_codebooks=3, codebook_names=("vis", "sem_mid", "sem_high"),
        entropy_loss_ratio=0.03, teacher_models=(None, "facebook/dinov2-small", "openai/clip-vit-base-patch16"),
        teacher_dims=(None, 384, 768),
    ),
    "fqgan-triple-ds8": dict(
        channel_multipliers=(1, 2, 2, 4), num_codebooks=3, codebook_names=("vis", "sem_mid", "sem_high"),
        entropy_loss_ratio=0.03, teacher_models=(None, "facebook/dinov2-small", "openai/clip-vit-base-patch16"),
        teacher_dims=(None, 384, 768),
    ),
}


@dataclass
class FQGANEncoderOutput(BaseOutput):
    """Output of `FQGANTokenizer.encode`.

    Attributes:
        latents: (B, k*D, h, w) quantized codes, sub-codebooks concatenated in order (straight-through).
        indices: (B, k, h, w) code indices.
        losses: named quantizer losses (per sub-codebook, prefixed "i/"), plus the disentanglement loss.
        codes: the k quantized maps, one (B, D, h, w) each.
        usage: recent codebook usage per sub-codebook (training mode only).
    """

    latents: torch.Tensor
    indices: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    codes: list[torch.Tensor] | None = None
    usage: list[torch.Tensor | None] | None = None


@dataclass
class FQGANDecoderOutput(BaseOutput):
    """Output of `FQGANTokenizer.decode`: (B, C, H, W) images, nominally [-1, 1], not clamped."""

    sample: torch.Tensor


@dataclass
class FQGANTokenizerOutput(BaseOutput):
    """Output of the training forward.

    Attributes:
        sample: (B, C, H, W) reconstruction.
        indices: (B, k, h, w) code indices.
        losses: named, already-weighted losses owned by the tokenizer (quantizer, disentanglement,
            representation); pixel, perceptual and adversarial losses live in `hf_vq.training`.
        usage: recent codebook usage per sub-codebook.
    """

    sample: torch.Tensor
    indices: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    usage: list[torch.Tensor | None] | None = None


class _EncoderHead(nn.Module):
    """One sub-codebook's branch: optional transformer adapter, then GroupNorm -> swish -> 3x3 conv."""

    def __init__(self, width: int, z_channels: int, adapter: FactorizedAdapter | None):
        super().__init__()
        self.adapter = adapter
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, z_channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.adapter is not None:
            h = self.adapter(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class _Encoder(nn.Module):
    """Shared CNN trunk plus one head per sub-codebook."""

    def __init__(self, trunk: EncoderTrunk, heads: Sequence[_EncoderHead]):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.trunk(x)
        return [head(h) for head in self.heads]


class FQGANTokenizer(ModelMixin, ConfigMixin):
    """Image tokenizer with k sub-codebooks over a shared LlamaGen CNN encoder/decoder.

    `num_codebooks=1` is a plain VQGAN (LlamaGen VQ); 2 is FQGAN-Dual, 3 is FQGAN-Triple. Images are
    (B, C, H, W) in [-1, 1]; tokens are (B, k, h, w) with sub-codebooks in FAR's order (vis first).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        base_channels: int = 128,
        channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        dropout: float = 0.0,
        num_codebooks: int = 1,
        codebook_names: Sequence[str] | None = None,
        quantizer_type: str = "vq",
        codebook_size: int = 16384,
        codebook_embed_dim: int = 8,
        codebook_l2_norm: bool = True,
        commit_loss_beta: float = 0.25,
        entropy_loss_ratio: float = 0.0,
        fsq_levels: Sequence[int] | None = None,
        kmeans_init: bool = False,
        use_adapters: bool | None = None,
        adapter_layers: int = 6,
        adapter_heads: int = 8,
        sample_size: int = 256,
        disentanglement_ratio: float = 0.1,
        teacher_models: Sequence[str | None] | None = None,
        teacher_dims: Sequence[int | None] | None = None,
        feature_head_layers: int = 3,
        feature_head_heads: int = 8,
        representation_weight: float = 0.5,
    ):
        super().__init__()
        if num_codebooks < 1:
            raise ValueError(f"num_codebooks must be >= 1, got {num_codebooks}")
        if codebook_names is not None and len(codebook_names) != num_codebooks:
            raise ValueError(f"codebook_names has {len(codebook_names)} entries for {num_codebooks} codebooks")
        for name, value in (("teacher_models", teacher_models), ("teacher_dims", teacher_dims)):
            if value is not None and len(value) != num_codebooks:
                raise ValueError(f"{name} needs one entry per codebook ({num_codebooks}), got {len(value)}")
        if base_channels % 32:
            raise ValueError(f"base_channels must be a multiple of 32 (GroupNorm(32)), got {base_channels}")
        with_adapters = num_codebooks > 1 if use_adapters is None else use_adapters
        if with_adapters and sample_size % self.downsample_factor:
            raise ValueError(f"sample_size {sample_size} must be divisible by {self.downsample_factor}")

        trunk = EncoderTrunk(in_channels, base_channels, channel_multipliers, num_res_blocks, dropout)
        width = trunk.out_channels
        heads = [
            _EncoderHead(
                width,
                z_channels,
                FactorizedAdapter(width, self.grid_size, adapter_layers, adapter_heads) if with_adapters else None,
            )
            for _ in range(num_codebooks)
        ]
        self.encoder = _Encoder(trunk, heads)

        quantizer_kwargs = {}
        if quantizer_type == "vq":
            quantizer_kwargs = dict(
                commit_loss_beta=commit_loss_beta, l2_norm=codebook_l2_norm, entropy_loss_ratio=entropy_loss_ratio,
                kmeans_init=kmeans_init,
            )
        elif quantizer_type == "fsq":
            quantizer_kwargs = dict(levels=fsq_levels)
        self.quantize = FactorizedQuantizer(
            [
                build_quantizer(quantizer_type, codebook_size, codebook_embed_dim, **quantizer_kwargs)
                for _ in range(num_codebooks)
            ],
            disentanglement_ratio=disentanglement_ratio,
        )
        code_dim = self.quantize.codebooks[0].dim
        self.quant_convs = nn.ModuleList(nn.Conv2d(z_channels, code_dim, 1) for _ in range(num_codebooks))
        self.post_quant_conv = nn.Conv2d(num_codebooks * code_dim, z_channels, 1)
        self.decoder = Decoder(z_channels, out_channels, base_channels, channel_multipliers, num_res_blocks, dropout)

        # Representation-learning heads, keyed by sub-codebook index; only where a teacher is configured.
        self.feature_heads = nn.ModuleDict(
            {
                str(i): FeatureHead(code_dim, dim, self.grid_size, feature_head_layers, feature_head_heads)
                for i, dim in enumerate(teacher_dims or [])
                if dim is not None
            }
        )

    # ------------------------------------------------------------------ geometry
    @property
    def downsample_factor(self) -> int:
        """Pixels per token along each side."""
        return 2 ** (len(self.config.channel_multipliers) - 1)

    @property
    def grid_size(self) -> int:
        """Token grid side for `sample_size` images (fixed when adapters are used)."""
        return self.config.sample_size // self.downsample_factor

    @property
    def has_adapters(self) -> bool:
        """Whether the encoder heads use transformer adapters (which fix the grid)."""
        return self.encoder.heads[0].adapter is not None

    @property
    def codebook_sizes(self) -> list[int]:
        """Codebook size of each sub-codebook."""
        return [q.codebook_size for q in self.quantize.codebooks]

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixel_values.shape)}")
        b, c, h, w = pixel_values.shape
        if c != self.config.in_channels:
            raise ValueError(
                f"this tokenizer takes {self.config.in_channels}-channel images, got {c} channels "
                f"(convert with PIL `.convert('{'L' if self.config.in_channels == 1 else 'RGB'}')`)"
            )
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} must be divisible by the downsampling factor {f}; resize or crop")
        if self.has_adapters and (h != self.config.sample_size or w != self.config.sample_size):
            raise ValueError(
                f"this tokenizer's adapters have a fixed {self.grid_size}x{self.grid_size} grid: images must be "
                f"{self.config.sample_size}x{self.config.sample_size}, got {h}x{w}"
            )

    def _check_indices(self, indices: torch.Tensor) -> None:
        k = self.config.num_codebooks
        if indices.ndim != 4 or indices.shape[1] != k:
            raise ValueError(f"indices must be (B, {k}, h, w), got shape {tuple(indices.shape)}")
        if self.has_adapters and tuple(indices.shape[2:]) != (self.grid_size, self.grid_size):
            raise ValueError(
                f"indices must be on the {self.grid_size}x{self.grid_size} grid, got {tuple(indices.shape[2:])}"
            )

    # ------------------------------------------------------------------ API
    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True) -> FQGANEncoderOutput | tuple:
        """Images -> quantized latents and indices."""
        self._check_pixels(pixel_values)
        latents = [conv(z) for conv, z in zip(self.quant_convs, self.encoder(pixel_values))]
        q = self.quantize(latents)
        out = FQGANEncoderOutput(
            latents=torch.cat(q.quantized, dim=1), indices=q.indices, losses=q.losses, codes=q.quantized, usage=q.usage
        )
        return out if return_dict else (out.latents, out.indices)

    def decode(self, latents: torch.Tensor, return_dict: bool = True) -> FQGANDecoderOutput | tuple:
        """Quantized latents (B, k*D, h, w) -> images (not clamped)."""
        expected = self.post_quant_conv.in_channels
        if latents.ndim != 4 or latents.shape[1] != expected:
            raise ValueError(f"latents must be (B, {expected}, h, w), got shape {tuple(latents.shape)}")
        sample = self.decoder(self.post_quant_conv(latents))
        return FQGANDecoderOutput(sample=sample) if return_dict else (sample,)

    @torch.no_grad()
    def tokenize(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """(B, C, H, W) images in [-1, 1] -> (B, k, h, w) indices."""
        return self.encode(pixel_values).indices

    def indices_to_latents(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, k, h, w) indices -> (B, k*D, h, w) quantized latents."""
        self._check_indices(indices)
        return torch.cat(self.quantize.indices_to_codes(indices), dim=1).to(self.post_quant_conv.weight.dtype)

    @torch.no_grad()
    def detokenize(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, k, h, w) indices -> (B, C, H, W) images, nominally [-1, 1], not clamped."""
        return self.decode(self.indices_to_latents(indices)).sample

    def forward(
        self,
        pixel_values: torch.Tensor,
        teacher_features: Sequence[torch.Tensor | None] | None = None,
        return_dict: bool = True,
    ) -> FQGANTokenizerOutput | tuple:
        """Training forward: reconstruction plus the tokenizer's own named losses.

        Args:
            pixel_values: (B, C, H, W) in [-1, 1].
            teacher_features: one (B, W) frozen-teacher CLS feature (or None) per sub-codebook; where given and
                the codebook has a feature head, adds "{i}/representation_loss" (InfoNCE x representation_weight).
        """
        enc = self.encode(pixel_values)
        losses = dict(enc.losses)
        if teacher_features is not None:
            if len(teacher_features) != self.config.num_codebooks:
                raise ValueError(
                    f"teacher_features needs one entry (or None) per codebook ({self.config.num_codebooks}), "
                    f"got {len(teacher_features)}"
                )
            if pixel_values.shape[-1] != self.config.sample_size or pixel_values.shape[-2] != self.config.sample_size:
                raise ValueError(
                    f"feature heads have a fixed {self.grid_size}x{self.grid_size} grid: representation learning needs "
                    f"{self.config.sample_size}x{self.config.sample_size} images, got {tuple(pixel_values.shape[-2:])}"
                )
            for i, feats in enumerate(teacher_features):
                if feats is None:
                    continue
                if str(i) not in self.feature_heads:
                    raise ValueError(f"codebook {i} has no feature head: set teacher_dims[{i}] in the config")
                student = self.feature_heads[str(i)](enc.codes[i])
                losses[f"{i}/representation_loss"] = self.config.representation_weight * info_nce_loss(student, feats)
        sample = self.decode(enc.latents).sample
        out = FQGANTokenizerOutput(sample=sample, indices=enc.indices, losses=losses, usage=enc.usage)
        return out if return_dict else (sample, losses)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> FQGANTokenizer:
        """A randomly initialised tokenizer with an official architecture ("vq-ds16", "fqgan-dual-ds8", ...)."""
        if name not in TOKENIZER_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(TOKENIZER_PRESETS)}")
        return cls(**{**TOKENIZER_PRESETS[name], **overrides})
