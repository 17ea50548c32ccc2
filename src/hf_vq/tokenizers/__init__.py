"""Image tokenizers: the contract, the family loader, the CNN trunk, FQGAN adapters and heads, and teachers."""

from .auto import TOKENIZER_CLASSES, AutoImageTokenizer, tokenizer_class
from .base import ImageTokenizerMixin, TokenizerDecoderOutput, TokenizerEncoderOutput, TokenizerOutput
from .modeling_fqgan import (
    TOKENIZER_PRESETS,
    FQGANDecoderOutput,
    FQGANEncoderOutput,
    FQGANTokenizer,
    FQGANTokenizerOutput,
)
from .modeling_vqkd import VQKD_PRESETS, VQKDTokenizer
from .teachers import FrozenTeacher

__all__ = [
    "TOKENIZER_CLASSES",
    "TOKENIZER_PRESETS",
    "AutoImageTokenizer",
    "FQGANDecoderOutput",
    "FQGANEncoderOutput",
    "FQGANTokenizer",
    "FQGANTokenizerOutput",
    "FrozenTeacher",
    "ImageTokenizerMixin",
    "TokenizerDecoderOutput",
    "TokenizerEncoderOutput",
    "TokenizerOutput",
    "VQKDTokenizer",
    "VQKD_PRESETS",
    "tokenizer_class",
]
