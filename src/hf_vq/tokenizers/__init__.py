"""Image tokenizers: the CNN trunk, FQGAN adapters and heads, teachers, and `FQGANTokenizer`."""

from .modeling_fqgan import (
    TOKENIZER_PRESETS,
    FQGANDecoderOutput,
    FQGANEncoderOutput,
    FQGANTokenizer,
    FQGANTokenizerOutput,
)
from .teachers import FrozenTeacher

__all__ = [
    "TOKENIZER_PRESETS",
    "FQGANDecoderOutput",
    "FQGANEncoderOutput",
    "FQGANTokenizer",
    "FQGANTokenizerOutput",
    "FrozenTeacher",
]
