"""The one interface every quantizer implements."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..utils import may_read_values


@dataclass
class QuantizerOutput:
    """What a quantizer returns for a latent map.

    Attributes:
        quantized: (B, D, H, W) codes with straight-through gradient to the input.
        indices: (B, H, W) long code indices.
        losses: named scalar losses (already weighted); training-only terms (entropy) are absent in eval mode.
        usage: fraction of the codebook used in the recent window (a float tensor), when tracked.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    usage: torch.Tensor | None = None


class Quantizer(nn.Module):
    """Base class: maps (B, D, H, W) latents to codes and indices, and indices back to codes."""

    codebook_size: int
    dim: int

    @classmethod
    def from_spec(cls, codebook_size: int, dim: int, **kwargs) -> Quantizer:
        """Build from a spec: the codebook size and code dim every quantizer has, plus its own kwargs.

        Quantizers whose size follows from other arguments (FSQ levels, LFQ bits) check that the two agree.
        """
        return cls(codebook_size, dim, **kwargs)

    _initted_seen: tuple[torch.Tensor, int] | None = None  # the `initted` tensor and its version, when read set

    @property
    def needs_data_init(self) -> bool:
        """True while the codebook waits to be initialised from the first training batch (k-means init).

        A quantizer with such an init keeps an `initted` bool buffer, saved with the model. Its value is read only
        while it may have changed since it was last read as set (another tensor, or one written in place since): on
        a GPU each read makes the host wait for the device, at every training step.
        """
        initted = getattr(self, "initted", None)
        if initted is None:
            return False
        seen = self._initted_seen
        if seen is not None and seen[0] is initted and seen[1] == initted._version:
            return False
        if not bool(initted):
            return True
        self._initted_seen = (initted, initted._version)
        return False

    def forward(self, z: torch.Tensor) -> QuantizerOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """(B, H, W) long indices -> (B, D, H, W) codes."""
        raise NotImplementedError

    def check_latents(self, z: torch.Tensor) -> None:
        """Raise a clear error unless z is a floating-point (B, dim, H, W) map."""
        if z.ndim != 4 or z.shape[1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects latents of shape (B, {self.dim}, H, W), got {tuple(z.shape)}; "
                f"make the layer before the quantizer output {self.dim} channels"
            )
        if not z.dtype.is_floating_point:
            raise TypeError(f"latents must be a floating-point tensor, got {z.dtype}")

    def check_indices(self, indices: torch.Tensor, ndim: int | None = None) -> torch.LongTensor:
        """The indices as a long tensor (uint8 ones would index as a mask); a clear error unless they are integers
        in [0, codebook_size) (with `ndim` dims if given)."""
        if ndim is not None and indices.ndim != ndim:
            raise ValueError(f"indices must have {ndim} dimensions, got shape {tuple(indices.shape)}")
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
        indices = indices.long()
        if not indices.numel() or not may_read_values(indices.device):
            return indices
        if int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size:
            raise ValueError(
                f"indices must lie in [0, {self.codebook_size}), got values in "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )
        return indices
