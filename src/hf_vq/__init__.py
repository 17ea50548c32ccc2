"""hf_vq: token-based image generation (FQGAN, LlamaGen, MaskGIT, VQ-KD, ViT-VQGAN) for the Hugging Face ecosystem."""

__version__ = "0.1.0"

from .conversion import convert_checkpoint
from .generators import (
    FARConfig,
    FARForClassConditionalGeneration,
    MaskGITConfig,
    MaskGITForClassConditionalGeneration,
)
from .pipelines import FQGANPipeline, assemble_pipeline, bundled_model_path, load_pipeline
from .quantizers import FSQ, LFQ, FactorizedQuantizer, VectorQuantizer
from .tokenizers import (
    AutoImageTokenizer,
    FQGANTokenizer,
    FrozenTeacher,
    ImageTokenizerMixin,
    ViTVQGANTokenizer,
    VQKDTokenizer,
)

__all__ = [
    "AutoImageTokenizer",
    "FARConfig",
    "FARForClassConditionalGeneration",
    "FQGANPipeline",
    "FQGANTokenizer",
    "FSQ",
    "FactorizedQuantizer",
    "FrozenTeacher",
    "ImageTokenizerMixin",
    "LFQ",
    "MaskGITConfig",
    "MaskGITForClassConditionalGeneration",
    "VQKDTokenizer",
    "VectorQuantizer",
    "ViTVQGANTokenizer",
    "assemble_pipeline",
    "bundled_model_path",
    "convert_checkpoint",
    "load_pipeline",
]
