"""Class-conditional token generators: FAR / LlamaGen GPT (autoregressive) and MaskGIT (non-autoregressive)."""

from transformers import AutoConfig, AutoModel

from .configuration_far import FAR_PRESETS, FARConfig
from .configuration_maskgit import MaskGITConfig
from .modeling_far import FARForClassConditionalGeneration, FAROutput, official_key_to_hf
from .modeling_maskgit import MaskGITForClassConditionalGeneration, MaskGITOutput

# exist_ok: importing twice (e.g. a module reload) must not fail.
AutoConfig.register(FARConfig.model_type, FARConfig, exist_ok=True)
AutoModel.register(FARConfig, FARForClassConditionalGeneration, exist_ok=True)
AutoConfig.register(MaskGITConfig.model_type, MaskGITConfig, exist_ok=True)
AutoModel.register(MaskGITConfig, MaskGITForClassConditionalGeneration, exist_ok=True)

__all__ = [
    "FAR_PRESETS",
    "FARConfig",
    "FARForClassConditionalGeneration",
    "FAROutput",
    "MaskGITConfig",
    "MaskGITForClassConditionalGeneration",
    "MaskGITOutput",
    "official_key_to_hf",
]
