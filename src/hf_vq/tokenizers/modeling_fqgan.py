"""FQGANTokenizer: LlamaGen VQGAN (k=1) and FQGAN factorized tokenizers (k=2, 3) as a diffusers model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from ..quantizers import FactorizedQuantizer, build_quantizer
from .adapters import FactorizedAdapter, FeatureHead, info_nce_loss
from .base import ImageTokenizerMixin, TokenizerDecoderOutput, TokenizerEncoderOutput, TokenizerOutput
from .cnn import Decoder, EncoderTrunk, group_norm

_DEFAULT_QUANTIZER = dict(kind="vq", codebook_size=16384, dim=8)  # LlamaGen's VQ
_FQGAN_QUANTIZER = dict(_DEFAULT_QUANTIZER, entropy_loss_ratio=0.03)  # FQGAN's training scripts

# Presets matching the official models (LlamaGen tokenizer/tokenizer_image/vq_model.py; FQGAN
# tokenizer/vq_model_dual.py, vq_model_triple.py and their training scripts).
TOKENIZER_PRESETS: dict[str, dict] = {
    "vq-ds16": dict(channel_multipliers=(1, 1, 2, 2, 4), num_codebooks=1),
    "vq-ds8": dict(channel_multipliers=(1, 2, 2, 4), num_codebooks=1),
    "fqgan-dual-ds16": dict(
        channel_multipliers=(1, 1, 2, 2, 4), num_codebooks=2, codebook_names=("vis", "sem"),
        quantizer=_FQGAN_QUANTIZER, teacher_models=(None, "openai/clip-vit-large-patch14"), teacher_dims=(None, 1024),
    ),
    "fqgan-dual-ds8": dict(
        channel_multipliers=(1, 2, 2, 4), num_codebooks=2, codebook_names=("vis", "sem"),
        quantizer=_FQGAN_QUANTIZER, teacher_models=(None, "openai/clip-vit-large-patch14"), teacher_dims=(None, 1024),
    ),
    "fqgan-triple-ds16": dict(
        channel_multipliers=(1, 1, 2, 2, 4), num_codebooks=3, codebook_names=("vis", "sem_mid", "sem_high"),
        quantizer=_FQGAN_QUANTIZER, teacher_models=(None, "facebook/dinov2-small", "openai/clip-vit-base-patch16"),
        teacher_dims=(None, 384, 768),
    ),
    "fqgan-triple-ds8": dict(
        channel_multipliers=(1, 2, 2, 4), num_codebooks=3, codebook_names=("vis", "sem_mid", "sem_high"),
        quantizer=_FQGAN_QUANTIZER, teacher_models=(None, "facebook/dinov2-small", "openai/clip-vit-base-patch16"),
        teacher_dims=(None, 384, 768),
    ),
}

# Small configurations for tests and smoke runs, one per quantizer kind (the contract tests run every "tiny*").
_TINY = dict(
    in_channels=1, out_channels=1, base_channels=32, channel_multipliers=(1, 2), num_res_blocks=1, z_channels=32,
    sample_size=8, adapter_layers=1, adapter_heads=2,
)
TINY_PRESETS: dict[str, dict] = {
    "tiny": dict(_TINY, num_codebooks=2, quantizer=dict(kind="vq", codebook_size=32, dim=4)),
    "tiny-vq": dict(_TINY, num_codebooks=1, quantizer=dict(kind="vq", codebook_size=32, dim=4)),
    "tiny-fsq": dict(_TINY, num_codebooks=1, quantizer=dict(kind="fsq", codebook_size=27, dim=3, levels=[3, 3, 3])),
    "tiny-lfq": dict(_TINY, num_codebooks=1, quantizer=dict(kind="lfq", codebook_size=16, dim=4)),
}

# Configs saved before the quantizer spec had flat quantizer fields: old field -> spec key, and which spec keys
# each kind took (the others were ignored for that kind).
_LEGACY_QUANTIZER_FIELDS = {
    "quantizer_type": "kind", "codebook_size": "codebook_size", "codebook_embed_dim": "dim",
    "codebook_l2_norm": "l2_norm", "commit_loss_beta": "commit_loss_beta", "entropy_loss_ratio": "entropy_loss_ratio",
    "kmeans_init": "kmeans_init", "fsq_levels": "levels",
}
_LEGACY_KIND_FIELDS = {
    "vq": ("l2_norm", "commit_loss_beta", "entropy_loss_ratio", "kmeans_init"),
    "fsq": ("levels",),
    "lfq": (),
}


def upgrade_legacy_quantizer_fields(config: dict[str, Any]) -> dict[str, Any]:
    """Fold the flat quantizer fields of an older FQGANTokenizer config into one `quantizer` spec."""
    legacy = {new: config.pop(old) for old, new in _LEGACY_QUANTIZER_FIELDS.items() if old in config}
    if not legacy:
        return config
    if config.get("quantizer") is not None:
        raise ValueError(
            f"the config sets both a `quantizer` spec and the old flat fields {sorted(legacy)}; keep only the spec"
        )
    kind = legacy.pop("kind", None) or "vq"
    spec = {
        "kind": kind,
        "codebook_size": legacy.pop("codebook_size", _DEFAULT_QUANTIZER["codebook_size"]),
        "dim": legacy.pop("dim", _DEFAULT_QUANTIZER["dim"]),
    }
    spec.update({key: value for key, value in legacy.items() if key in _LEGACY_KIND_FIELDS.get(kind, ())})
    config["quantizer"] = spec
    return config


@dataclass
class FQGANEncoderOutput(TokenizerEncoderOutput):
    """Output of `FQGANTokenizer.encode`: the contract's fields plus `codes`, the k quantized (B, D, h, w) maps.

    `latents` are the codes concatenated along channels in sub-codebook order; `losses` hold each sub-quantizer's
    losses prefixed "{i}/", plus the disentanglement loss.
    """

    codes: list[torch.Tensor] | None = None


# The decoder and training outputs are the contract's; these names stay for code written against them.
FQGANDecoderOutput = TokenizerDecoderOutput
FQGANTokenizerOutput = TokenizerOutput


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


class FQGANTokenizer(ImageTokenizerMixin, ModelMixin, ConfigMixin):
    """Image tokenizer with k sub-codebooks over a shared LlamaGen CNN encoder/decoder.

    `num_codebooks=1` is a plain VQGAN (LlamaGen VQ); 2 is FQGAN-Dual, 3 is FQGAN-Triple. Each sub-codebook is
    built from the `quantizer` spec: {"kind": "vq" | "fsq" | "lfq", "codebook_size": ..., "dim": ..., and the
    kind's own kwargs}. Images are (B, C, H, W) in [-1, 1]; tokens are (B, k, h, w) with sub-codebooks in FAR's
    order (vis first).
    """

    _supports_gradient_checkpointing = True
    # what device_map="auto" keeps whole on one device: the trunks' blocks, the adapters' blocks, each quantizer
    _no_split_modules = ["ResnetBlock", "AttnBlock", "ResidualAttentionBlock", "VectorQuantizer", "FactorizedQuantizer"]
    presets = {**TOKENIZER_PRESETS, **TINY_PRESETS}

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
        quantizer: dict[str, Any] | None = None,
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
        if quantizer is not None and not (isinstance(quantizer, dict) and "kind" in quantizer):
            raise ValueError(f"quantizer must be a spec dict such as {_DEFAULT_QUANTIZER}, got {quantizer!r}")
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

        spec = dict(_DEFAULT_QUANTIZER if quantizer is None else quantizer)
        self.register_to_config(quantizer=spec)  # saved configs name their quantizer in full
        self.quantize = FactorizedQuantizer(
            [build_quantizer(**spec) for _ in range(num_codebooks)], disentanglement_ratio=disentanglement_ratio
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

    # ------------------------------------------------------------------ the tokenizer contract
    @property
    def downsample_factor(self) -> int:
        """Pixels per token along each side."""
        return 2 ** (len(self.config.channel_multipliers) - 1)

    @property
    def has_adapters(self) -> bool:
        """Whether the encoder heads use transformer adapters."""
        return self.encoder.heads[0].adapter is not None

    @property
    def fixed_size(self) -> bool:
        """The adapters' position tables fix the grid; without adapters the model is fully convolutional."""
        return self.has_adapters

    @property
    def num_codebooks(self) -> int:
        """k, the number of sub-codebooks."""
        return self.quantize.num_codebooks

    @property
    def codebook_sizes(self) -> list[int]:
        """Codebook size of each sub-codebook."""
        return [q.codebook_size for q in self.quantize.codebooks]

    @apply_forward_hook
    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True) -> FQGANEncoderOutput | tuple:
        """Images -> quantized latents and indices."""
        self.check_pixels(pixel_values)
        latents = [conv(z) for conv, z in zip(self.quant_convs, self.encoder(pixel_values))]
        q = self.quantize(latents)
        out = FQGANEncoderOutput(
            latents=torch.cat(q.quantized, dim=1), indices=q.indices, losses=q.losses, usage=q.usage, codes=q.quantized
        )
        return out if return_dict else out.to_tuple()

    @apply_forward_hook
    def decode(self, latents: torch.Tensor, return_dict: bool = True) -> TokenizerDecoderOutput | tuple:
        """Quantized latents (B, k*D, h, w) -> images (not clamped)."""
        expected = self.post_quant_conv.in_channels
        if latents.ndim != 4 or latents.shape[1] != expected:
            raise ValueError(f"latents must be (B, {expected}, h, w), got shape {tuple(latents.shape)}")
        sample = self.decoder(self.post_quant_conv(latents))
        return TokenizerDecoderOutput(sample=sample) if return_dict else (sample,)

    @apply_forward_hook
    def indices_to_latents(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, k, h, w) indices -> (B, k*D, h, w) quantized latents."""
        self.check_indices(indices)
        return torch.cat(self.quantize.indices_to_codes(indices), dim=1).to(self.dtype)

    def forward(
        self,
        pixel_values: torch.Tensor,
        teacher_features: Sequence[torch.Tensor | None] | None = None,
        return_dict: bool = True,
    ) -> TokenizerOutput | tuple:
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
        out = TokenizerOutput(sample=sample, indices=enc.indices, losses=losses, usage=enc.usage)
        return out if return_dict else out.to_tuple()

    @classmethod
    def upgrade_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Configs saved before the quantizer spec had flat quantizer fields; fold them into `quantizer`."""
        return upgrade_legacy_quantizer_fields(config)
