"""Pipelines, and the registration that lets diffusers load hf_vq components (also from the Hub)."""

from diffusers.pipelines import pipeline_loading_utils

from ..generators import GENERATOR_CLASSES
from ..tokenizers import TOKENIZER_CLASSES
from .loading import bundled_model_path, load_pipeline
from .pipeline_fqgan import FQGANPipeline, assemble_pipeline, check_components, check_tokenizer_fits, load_id2label

# diffusers only loads components from libraries it knows; register hf_vq's classes (and their load/save methods)
# so model_index.json entries ["hf_vq", "FQGANTokenizer"] resolve, from a local folder and from the Hub. These
# tables are diffusers internals: pyproject bounds the diffusers version, and tests/test_pipeline.py checks their
# shape, so an upgrade that changes them fails a test instead of failing users.
_HF_VQ_CLASSES = {cls.__name__: ["save_pretrained", "from_pretrained"] for cls in TOKENIZER_CLASSES + GENERATOR_CLASSES}
pipeline_loading_utils.LOADABLE_CLASSES["hf_vq"] = _HF_VQ_CLASSES
pipeline_loading_utils.ALL_IMPORTABLE_CLASSES.update(_HF_VQ_CLASSES)

__all__ = ["FQGANPipeline", "assemble_pipeline", "bundled_model_path", "check_components", "check_tokenizer_fits",
           "load_id2label", "load_pipeline"]
