"""Official LlamaGen / FQGAN / BEiT-v2 VQ-KD checkpoints -> hf_vq models (`convert_checkpoint`, `hf-vq convert`)."""

from .api import (
    CHECKPOINT_KINDS,
    KIND_FAMILIES,
    add_convert_arguments,
    convert_checkpoint,
    convert_state_dict,
    detect_kind,
    run_convert,
)
from .checkpoint import ConversionReport, load_official_state_dict
from .generator import GENERATOR_KINDS
from .tokenizer import TOKENIZER_KINDS, hf_tokenizer_key_to_official, official_tokenizer_key_to_hf
from .vqkd import hf_vqkd_key_to_official, official_vqkd_key_to_hf

__all__ = [
    "CHECKPOINT_KINDS",
    "GENERATOR_KINDS",
    "KIND_FAMILIES",
    "TOKENIZER_KINDS",
    "ConversionReport",
    "add_convert_arguments",
    "convert_checkpoint",
    "convert_state_dict",
    "detect_kind",
    "hf_tokenizer_key_to_official",
    "hf_vqkd_key_to_official",
    "load_official_state_dict",
    "official_tokenizer_key_to_hf",
    "official_vqkd_key_to_hf",
    "run_convert",
]
