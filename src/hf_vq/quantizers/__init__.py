"""Quantizers: VQ (LlamaGen), factorized VQ (FQGAN), FSQ and LFQ behind one interface."""

from __future__ import annotations

import math

from .base import Quantizer, QuantizerOutput
from .factorized import FactorizedQuantizer, FactorizedQuantizerOutput, disentanglement_loss
from .fsq import FSQ
from .lfq import LFQ
from .vq import VectorQuantizer, entropy_loss

QUANTIZER_KINDS = ("vq", "fsq", "lfq")


def build_quantizer(kind: str, codebook_size: int, dim: int, **kwargs) -> Quantizer:
    """Build a quantizer of `kind` ("vq", "fsq" with `levels=...`, or "lfq") with the given codebook size and dim."""
    if kind == "vq":
        return VectorQuantizer(codebook_size, dim, **kwargs)
    if kind == "fsq":
        if "levels" not in kwargs:
            raise ValueError("an fsq quantizer needs `levels`, e.g. levels=[8, 8, 8, 5, 5, 5] for 64000 codes")
        levels = list(kwargs.pop("levels"))
        if len(levels) != dim or math.prod(levels) != codebook_size:
            raise ValueError(
                f"fsq levels {levels} give dim {len(levels)} and codebook size {math.prod(levels)}, "
                f"but dim={dim} and codebook_size={codebook_size} were asked for; make them agree"
            )
        return FSQ(levels, **kwargs)
    if kind == "lfq":
        if codebook_size != 2**dim:
            raise ValueError(
                f"an lfq codebook has 2**dim codes, but codebook_size={codebook_size} and dim={dim}; "
                "use a power-of-two codebook_size and dim = log2(codebook_size)"
            )
        return LFQ(dim, **kwargs)
    raise ValueError(f"unknown quantizer kind {kind!r}; choose one of {QUANTIZER_KINDS}")


__all__ = [
    "FSQ",
    "LFQ",
    "QUANTIZER_KINDS",
    "FactorizedQuantizer",
    "FactorizedQuantizerOutput",
    "Quantizer",
    "QuantizerOutput",
    "VectorQuantizer",
    "build_quantizer",
    "disentanglement_loss",
    "entropy_loss",
]
