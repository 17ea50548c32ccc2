"""Factorized quantization (FQGAN): k sub-codebooks, one per latent map, kept apart by a disentanglement loss."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .base import Quantizer


def disentanglement_loss(codes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Squared cosine between the codes of two sub-codebooks at each position, averaged over positions and pairs."""
    if len(codes) < 2:
        raise ValueError(f"disentanglement_loss needs at least two code maps, got {len(codes)}")
    if any(c.shape != codes[0].shape for c in codes):
        raise ValueError(
            "disentanglement_loss compares codes position by position, so all maps need the same (B, D, H, W) shape; "
            f"got {[tuple(c.shape) for c in codes]}"
        )
    unit = [F.normalize(c.float(), dim=1) for c in codes]
    pair_losses = [(a * b).sum(dim=1).pow(2).mean() for a, b in itertools.combinations(unit, 2)]
    return torch.stack(pair_losses).mean()


@dataclass
class FactorizedQuantizerOutput:
    """What a factorized quantizer returns.

    Attributes:
        quantized: one (B, D_i, H, W) code map per sub-codebook, with straight-through gradients.
        indices: (B, k, H, W) long indices.
        losses: each sub-quantizer's losses prefixed "{i}/", plus "disentanglement_loss" when k > 1.
        usage: each sub-quantizer's codebook usage (None where not tracked).
    """

    quantized: list[torch.Tensor]
    indices: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    usage: list[torch.Tensor | None] = field(default_factory=list)


class FactorizedQuantizer(nn.Module):
    """k sub-quantizers applied to k latent maps; sub-codebook i is `codebooks[i]`."""

    def __init__(self, quantizers: Sequence[Quantizer], disentanglement_ratio: float = 0.1):
        super().__init__()
        if not quantizers or not all(isinstance(q, Quantizer) for q in quantizers):
            raise ValueError("FactorizedQuantizer needs a non-empty sequence of Quantizer modules")
        dims = [q.dim for q in quantizers]
        if disentanglement_ratio > 0 and len(set(dims)) > 1:
            raise ValueError(
                f"the disentanglement loss compares codes across sub-codebooks, so their dims must match, got {dims}; "
                "use equal dims or disentanglement_ratio=0"
            )
        self.codebooks = nn.ModuleList(quantizers)
        self.disentanglement_ratio = disentanglement_ratio

    @property
    def num_codebooks(self) -> int:
        """Number of sub-codebooks k."""
        return len(self.codebooks)

    def forward(self, latents: Sequence[torch.Tensor]) -> FactorizedQuantizerOutput:
        """Quantize one (B, D_i, H, W) latent map per sub-codebook."""
        if len(latents) != self.num_codebooks:
            raise ValueError(f"expected {self.num_codebooks} latent maps (one per sub-codebook), got {len(latents)}")
        outputs = [quantizer(z) for quantizer, z in zip(self.codebooks, latents)]
        quantized = [out.quantized for out in outputs]
        losses = {f"{i}/{name}": loss for i, out in enumerate(outputs) for name, loss in out.losses.items()}
        if self.num_codebooks > 1 and self.disentanglement_ratio > 0:
            losses["disentanglement_loss"] = self.disentanglement_ratio * disentanglement_loss(quantized)
        indices = torch.stack([out.indices for out in outputs], dim=1)
        return FactorizedQuantizerOutput(quantized, indices, losses, [out.usage for out in outputs])

    def indices_to_codes(self, indices: torch.Tensor) -> list[torch.Tensor]:
        """(B, k, H, W) long indices -> one (B, D_i, H, W) code map per sub-codebook."""
        if indices.ndim != 4 or indices.shape[1] != self.num_codebooks:
            raise ValueError(
                f"indices must have shape (B, {self.num_codebooks}, H, W) for {self.num_codebooks} sub-codebooks, "
                f"got {tuple(indices.shape)}"
            )
        return [quantizer.indices_to_codes(indices[:, i]) for i, quantizer in enumerate(self.codebooks)]
