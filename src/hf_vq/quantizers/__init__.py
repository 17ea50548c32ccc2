"""Quantizers: VQ (LlamaGen), factorized VQ (FQGAN), FSQ and LFQ behind one interface and one registry."""

from __future__ import annotations

from .base import Quantizer, QuantizerOutput
from .cosine_ema import CosineEMAQuantizer
from .factorized import FactorizedQuantizer, FactorizedQuantizerOutput, disentanglement_loss
from .fsq import FSQ
from .lfq import LFQ
from .vq import VectorQuantizer, entropy_loss

# The registry: a quantizer spec's "kind" -> its class. A new quantizer is one module plus one line here.
QUANTIZERS: dict[str, type[Quantizer]] = {
    "vq": VectorQuantizer,
    "fsq": FSQ,
    "lfq": LFQ,
    "cosine_ema": CosineEMAQuantizer,
}
QUANTIZER_KINDS = tuple(QUANTIZERS)


def build_quantizer(kind: str, codebook_size: int | None = None, dim: int | None = None, **kwargs) -> Quantizer:
    """Build a quantizer from its spec: `kind` ("vq", "fsq" with `levels=...`, "lfq"), codebook size, dim, own kwargs.

    A spec is stored in tokenizer configs as a dict, e.g. {"kind": "vq", "codebook_size": 16384, "dim": 8,
    "entropy_loss_ratio": 0.03}, and built with `build_quantizer(**spec)`.
    """
    if kind not in QUANTIZERS:
        raise ValueError(f"unknown quantizer kind {kind!r}; choose one of {QUANTIZER_KINDS}")
    missing = [name for name, value in (("codebook_size", codebook_size), ("dim", dim)) if value is None]
    if missing:  # a config override replaces the whole spec dict, so a partial one lands here
        raise ValueError(f"the {kind!r} quantizer spec lacks {' and '.join(missing)}: a spec gives kind, "
                         "codebook_size, dim and the kind's own settings, e.g. "
                         "{'kind': 'vq', 'codebook_size': 16384, 'dim': 8}")
    return QUANTIZERS[kind].from_spec(codebook_size, dim, **kwargs)


__all__ = [
    "CosineEMAQuantizer",
    "FSQ",
    "LFQ",
    "QUANTIZERS",
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
