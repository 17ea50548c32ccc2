"""hf_vq: token-based image generation (FQGAN, LlamaGen, MaskGIT, VQ-KD) for the Hugging Face ecosystem."""

__version__ = "0.1.0"

from .quantizers import FSQ, LFQ, FactorizedQuantizer, VectorQuantizer
from .tokenizers import FQGANTokenizer, FrozenTeacher

__all__ = [
    "FSQ",
    "LFQ",
    "FQGANTokenizer",
    "FactorizedQuantizer",
    "FrozenTeacher",
    "VectorQuantizer",
]
