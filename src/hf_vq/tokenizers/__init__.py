"""Image tokenizers: the contract, the family loader, the CNN and ViT trunks, FQGAN adapters and heads, teachers."""

from .auto import TOKENIZER_CLASSES, AutoImageTokenizer, tokenizer_class
from .base import ImageTokenizerMixin, TokenizerDecoderOutput, TokenizerEncoderOutput, TokenizerOutput
from .modeling_fqgan import (
    TOKENIZER_PRESETS,
    FQGANDecoderOutput,
    FQGANEncoderOutput,
    FQGANTokenizer,
    FQGANTokenizerOutput,
)
from .modeling_vitvqgan import VITVQGAN_PRESETS, ViTVQGANTokenizer
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
    "VITVQGAN_PRESETS",
    "ViTVQGANTokenizer",
    "tokenizer_class",
]
