"""Class-conditional token generators: FAR / LlamaGen GPT (autoregressive) and MaskGIT (non-autoregressive)."""

from transformers import AutoConfig, AutoModel, PreTrainedModel

from .configuration_base import ClassConditionalGeneratorConfig
from .configuration_far import FAR_PRESETS, FARConfig
from .configuration_maskgit import MaskGITConfig
from .modeling_far import FARForClassConditionalGeneration, FAROutput, official_key_to_hf
from .modeling_maskgit import MaskGITForClassConditionalGeneration, MaskGITOutput

# Every generator class, in one place: the Auto registrations below and the diffusers pipeline loader read it.
# Members share the sampling contract `sample(class_labels, guidance_scale=, temperature=, top_k=, top_p=,
# generator=, callback=, compile=, num_inference_steps=)` and `num_sampling_steps(num_inference_steps)`.
GENERATOR_CLASSES: list[type[PreTrainedModel]] = [
    FARForClassConditionalGeneration,
    MaskGITForClassConditionalGeneration,
]

for _model_class in GENERATOR_CLASSES:
    # exist_ok: importing twice (e.g. a module reload) must not fail.
    AutoConfig.register(_model_class.config_class.model_type, _model_class.config_class, exist_ok=True)
    AutoModel.register(_model_class.config_class, _model_class, exist_ok=True)

__all__ = [
    "FAR_PRESETS",
    "GENERATOR_CLASSES",
    "ClassConditionalGeneratorConfig",
    "FARConfig",
    "FARForClassConditionalGeneration",
    "FAROutput",
    "MaskGITConfig",
    "MaskGITForClassConditionalGeneration",
    "MaskGITOutput",
    "official_key_to_hf",
]
