"""The tokenizer contract: what every hf_vq image tokenizer implements, and what its consumers may rely on.

A tokenizer is a diffusers model (`ModelMixin` + `ConfigMixin`) that also derives from `ImageTokenizerMixin`.
Consumers (the pipeline, code extraction, evaluation, the CLI, training recipes) use only what is defined
here, so a new tokenizer is one modeling file plus one line in `tokenizers.auto.TOKENIZER_CLASSES`.
"""

from __future__ import annotations

import abc
import typing
from dataclasses import dataclass, fields
from typing import Any

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook

from ..utils import check_config_types, may_read_values


class _LossesOutput(BaseOutput):
    """An output whose fields after the first default to None, as diffusers' outputs must for accelerate to rebuild
    one from a dict (it does, moving a device-mapped model's outputs between devices); `losses` then becomes {}."""

    def __post_init__(self) -> None:
        names = [f.name for f in fields(self)]
        from_dict = isinstance(getattr(self, names[0]), dict) and all(getattr(self, n) is None for n in names[1:])
        if self.losses is None and not from_dict:
            self.losses = {}  # before BaseOutput registers the fields, so that tuples keep the dataclass order
        super().__post_init__()
        if self.losses is None:  # a dict without losses
            self["losses"] = {}


@dataclass
class TokenizerEncoderOutput(_LossesOutput):
    """Output of `encode`.

    Attributes:
        latents: (B, C_latent, h, w) quantized latents, what `decode` takes (straight-through gradients).
        indices: (B, k, h, w) long code indices.
        losses: named, already-weighted losses of the quantizer(s); training-only terms are absent in eval mode.
        usage: recent codebook usage per sub-codebook (None where not tracked).
    """

    latents: torch.Tensor
    indices: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] | None = None
    usage: list[torch.Tensor | None] | None = None


@dataclass
class TokenizerDecoderOutput(BaseOutput):
    """Output of `decode`: (B, C, H, W) images, nominally [-1, 1], not clamped."""

    sample: torch.Tensor


@dataclass
class TokenizerOutput(_LossesOutput):
    """Output of the training `forward`.

    Attributes:
        sample: (B, C, H, W) reconstruction (None for a tokenizer that cannot decode, see `can_decode`).
        indices: (B, k, h, w) code indices.
        losses: named, already-weighted losses owned by the tokenizer (quantizer, and whatever else the model
            computes itself); pixel, perceptual and adversarial losses belong to the training recipe.
        usage: recent codebook usage per sub-codebook.
    """

    sample: torch.Tensor
    indices: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] | None = None
    usage: list[torch.Tensor | None] | None = None


# Past [-1, 1] by a margin for resampling overshoot (bicubic resizing rings); pixels in [0, 255], or normalised with
# ImageNet's mean and std, land well beyond it.
PIXEL_RANGE_MARGIN = 0.5


def check_pixel_range(pixel_values: torch.Tensor) -> None:
    """Raise a clear error for images that are not finite values in [-1, 1] (up to `PIXEL_RANGE_MARGIN`): a tokenizer
    would turn them into codes without a word, and garbage ones."""
    if pixel_values.numel() == 0:
        return
    low, high = torch.stack(torch.aminmax(pixel_values.detach())).tolist()  # one read of the device
    bound = 1 + PIXEL_RANGE_MARGIN
    if not -bound <= low <= high <= bound:  # False for NaN too
        raise ValueError(
            f"pixel_values must be finite and in [-1, 1], got values in [{low:.4g}, {high:.4g}]: scale 8-bit pixels "
            "with x / 127.5 - 1 (as diffusers' VaeImageProcessor.preprocess does)"
        )


# ABCMeta rather than abc.ABC: ABC's empty __slots__ makes FSDP2's `fully_shard`, which swaps in a subclass of the
# model's class, fail with "object layout differs".
class ImageTokenizerMixin(metaclass=abc.ABCMeta):
    """The contract of an image tokenizer; mix into a diffusers `ModelMixin` + `ConfigMixin` class.

    Images are float (B, C, H, W) in [-1, 1]; tokens are long (B, k, h, w), sub-codebooks in generator order.
    Members implement `encode`, `decode`, `indices_to_latents`, `forward`, `num_codebooks`, `codebook_sizes`,
    `downsample_factor` and `fixed_size`; their config has `in_channels` and `sample_size`. Members also list a
    "tiny" preset (and optionally more "tiny-*" presets) in `presets`, which the contract tests run.
    """

    presets: dict[str, dict[str, Any]] = {}

    def _fix_state_dict_keys_on_load(self, state_dict: dict[str, torch.Tensor]) -> None:
        """diffusers' hook for renamed weights in `from_pretrained`: each module that defines `rename_legacy_keys`
        renames its own (a missing buffer would otherwise load silently as a freshly initialised one)."""
        super()._fix_state_dict_keys_on_load(state_dict)
        for name, module in self.named_modules():
            if hasattr(module, "rename_legacy_keys"):
                module.rename_legacy_keys(state_dict, f"{name}." if name else "")

    # ------------------------------------------------------------------ what each member implements
    @abc.abstractmethod
    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True) -> TokenizerEncoderOutput | tuple:
        """Images -> quantized latents and indices (a tuple in the dataclass order with return_dict=False)."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor, return_dict: bool = True) -> TokenizerDecoderOutput | tuple:
        """Quantized latents -> images, not clamped."""

    @abc.abstractmethod
    def indices_to_latents(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, k, h, w) indices -> the quantized latents `decode` takes."""

    @abc.abstractmethod
    def forward(self, pixel_values: torch.Tensor, **kwargs) -> TokenizerOutput | tuple:
        """Training forward: reconstruction plus the tokenizer's own named losses."""

    @property
    @abc.abstractmethod
    def num_codebooks(self) -> int:
        """k, the number of sub-tokens per grid position."""

    @property
    @abc.abstractmethod
    def codebook_sizes(self) -> list[int]:
        """Codebook size of each sub-codebook."""

    @property
    @abc.abstractmethod
    def downsample_factor(self) -> int:
        """Pixels per token along each side."""

    @property
    @abc.abstractmethod
    def fixed_size(self) -> bool:
        """True when the model takes only `sample_size` images (learned position tables, fixed adapters)."""

    # ------------------------------------------------------------------ provided by the contract
    @property
    def can_decode(self) -> bool:
        """Whether this tokenizer turns tokens back into images (a VQ-KD tokenizer before stage 2 does not)."""
        return True

    def check_can_decode(self) -> None:  # noqa: B027 - a hook: most tokenizers always decode
        """Raise a clear error, before any work, when this tokenizer cannot turn tokens into images."""

    @property
    def in_channels(self) -> int:
        """Image channels the tokenizer takes (1 for grayscale, 3 for RGB)."""
        return self.config.in_channels

    @property
    def sample_size(self) -> int:
        """Side of the images the tokenizer was built for (the only size when `fixed_size`)."""
        return self.config.sample_size

    def token_grid(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """(h, w) token grid for an image size (default `sample_size`)."""
        size = self.sample_size if image_size is None else image_size
        height, width = (size, size) if isinstance(size, int) else size
        return height // self.downsample_factor, width // self.downsample_factor

    @property
    def grid_size(self) -> int:
        """Token grid side for `sample_size` images."""
        return self.token_grid()[0]

    def check_pixels(self, pixel_values: torch.Tensor) -> None:
        """Raise a clear error, before any work, for images this tokenizer cannot take."""
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
            raise ValueError(f"pixel_values must be a (B, C, H, W) tensor, got {shape}")
        if not pixel_values.dtype.is_floating_point:
            raise TypeError(f"pixel_values must be floating point in [-1, 1], got {pixel_values.dtype}")
        _, c, h, w = pixel_values.shape
        if c != self.in_channels:
            mode = "L" if self.in_channels == 1 else "RGB"
            raise ValueError(
                f"this tokenizer takes {self.in_channels}-channel images, got {c} channels "
                f"(convert with PIL `.convert('{mode}')`)"
            )
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} must be divisible by the downsampling factor {f}; resize or crop")
        if self.fixed_size and (h, w) != (self.sample_size, self.sample_size):
            g = self.grid_size
            raise ValueError(
                f"this tokenizer has a fixed {g}x{g} grid: images must be {self.sample_size}x{self.sample_size}, "
                f"got {h}x{w}"
            )

    def check_indices(self, indices: torch.Tensor) -> None:
        """Raise a clear error for token grids this tokenizer cannot decode (values are checked per quantizer)."""
        k = self.num_codebooks
        if not isinstance(indices, torch.Tensor) or indices.ndim != 4 or indices.shape[1] != k:
            shape = tuple(indices.shape) if isinstance(indices, torch.Tensor) else type(indices)
            raise ValueError(f"indices must be (B, {k}, h, w), got shape {shape}")
        if self.fixed_size and tuple(indices.shape[2:]) != self.token_grid():
            g = self.grid_size
            raise ValueError(f"indices must be on the {g}x{g} grid, got {tuple(indices.shape[2:])}")

    # Not `forward`: `apply_forward_hook` runs a model-offload hook's onloading first, as diffusers' VAEs do.
    @apply_forward_hook
    @torch.no_grad()
    def tokenize(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """(B, C, H, W) images in [-1, 1] -> (B, k, h, w) indices; floating-point images are first cast to the
        model's dtype, as diffusers pipelines cast what they hand a VAE (`encode` takes them as they are)."""
        if isinstance(pixel_values, torch.Tensor) and pixel_values.is_floating_point():
            if may_read_values(pixel_values.device):
                check_pixel_range(pixel_values)
            pixel_values = pixel_values.to(self.dtype)
        return self.encode(pixel_values).indices

    @apply_forward_hook
    @torch.no_grad()
    def detokenize(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, k, h, w) indices -> (B, C, H, W) images, nominally [-1, 1], not clamped."""
        return self.decode(self.indices_to_latents(indices)).sample

    @classmethod
    def from_preset(cls, name: str, **overrides) -> ImageTokenizerMixin:
        """A randomly initialised tokenizer from one of `presets`, with config overrides."""
        if name not in cls.presets:
            raise ValueError(f"unknown preset {name!r} for {cls.__name__}; choose one of {sorted(cls.presets)}")
        return cls.from_config({**cls.presets[name], **overrides})

    # ------------------------------------------------------------------ loading
    @classmethod
    def upgrade_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Translate a config saved by an older hf_vq into the current fields (identity unless overridden)."""
        return config

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs):
        """diffusers' hook between a loaded config and `__init__`: refuse another class's folder, upgrade old fields."""
        saved = config_dict.get("_class_name", cls.__name__)
        if isinstance(saved, str) and saved != cls.__name__:
            raise ValueError(
                f"this config belongs to a {saved}, not a {cls.__name__}: load it with {saved}.from_pretrained(...) "
                "or hf_vq.AutoImageTokenizer.from_pretrained(...), which picks the class from the config"
            )
        init_dict, unused, hidden = super().extract_init_dict(cls.upgrade_config(dict(config_dict)), **kwargs)
        check_config_types(init_dict, typing.get_type_hints(cls.__init__), cls.__name__)
        return init_dict, unused, hidden
