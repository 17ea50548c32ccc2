"""Lookup-free quantization (MAGVIT-v2): each channel becomes a sign bit, the index is the bit string."""

from __future__ import annotations

import torch

from .base import Quantizer, QuantizerOutput
from .vq import entropy_loss

# The entropy loss scores every latent against all 2**dim codes.
MAX_LFQ_DIM = 16


class LFQ(Quantizer):
    """Binary quantizer q = sign(x) over a 2**dim implicit codebook, with an entropy loss for code diversity."""

    @classmethod
    def from_spec(cls, codebook_size: int, dim: int, **kwargs) -> LFQ:
        """An LFQ with `dim` bits, checked against the spec's codebook size (2**dim)."""
        if codebook_size != 2**dim:
            raise ValueError(
                f"an lfq codebook has 2**dim codes, but codebook_size={codebook_size} and dim={dim}; "
                "use a power-of-two codebook_size and dim = log2(codebook_size)"
            )
        return cls(dim, **kwargs)

    def __init__(
        self,
        dim: int,
        entropy_loss_weight: float = 0.1,
        diversity_gamma: float = 1.0,
        inverse_temperature: float = 100.0,
    ):
        super().__init__()
        if not 1 <= dim <= MAX_LFQ_DIM:
            raise ValueError(
                f"LFQ dim must be in [1, {MAX_LFQ_DIM}], got {dim}: the entropy loss needs the full table of 2**dim "
                f"codes; use a smaller dim (a codebook of at most 2**{MAX_LFQ_DIM} codes)"
            )
        self.dim = dim
        self.codebook_size = 2**dim
        self.entropy_loss_weight = entropy_loss_weight
        self.diversity_gamma = diversity_gamma
        self.inverse_temperature = inverse_temperature
        # Bit j has weight 2**(dim-1-j): the first channel is the most significant bit.
        self.register_buffer("bit_weights", 2 ** torch.arange(dim - 1, -1, -1), persistent=False)
        self.register_buffer("codes", self._bits_to_codes(torch.arange(self.codebook_size)), persistent=False)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize (B, D, H, W) latents to signs."""
        self.check_latents(z)
        # fp32 throughout: a softmax over logits as large as 2 * dim * inverse_temperature is not safe in fp16.
        with torch.autocast(z.device.type, enabled=False):
            x = z.permute(0, 2, 3, 1).float()
            quantized = x + (torch.where(x > 0, 1.0, -1.0) - x).detach()
            losses = {}
            if self.training and self.entropy_loss_weight > 0:
                logits = 2 * x.reshape(-1, self.dim) @ self.codes.t()
                losses["entropy_loss"] = self.entropy_loss_weight * entropy_loss(
                    logits, 1.0 / self.inverse_temperature, diversity_gamma=self.diversity_gamma
                )
        return QuantizerOutput(quantized.permute(0, 3, 1, 2).to(z.dtype), self.codes_to_indices(z), losses)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) latents or codes -> (B, H, W) long indices from their sign bits."""
        self.check_latents(codes)
        return ((codes.permute(0, 2, 3, 1) > 0).long() * self.bit_weights).sum(dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) long indices -> (B, D, H, W) codes in {-1, +1}."""
        indices = self.check_indices(indices, ndim=3)
        return self._bits_to_codes(indices).permute(0, 3, 1, 2)

    def _bits_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        bits = (indices.unsqueeze(-1) // self.bit_weights) % 2
        return bits.float() * 2 - 1
