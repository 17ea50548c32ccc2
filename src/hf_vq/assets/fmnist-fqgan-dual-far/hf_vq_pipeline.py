"""Entry point for `DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)` on an hf_vq pipeline repo.

hf_vq's `FQGANPipeline.save_pretrained` writes this file beside model_index.json, whose `_class_name`
["hf_vq_pipeline", "FQGANPipeline"] tells diffusers to take the pipeline class from it. It defines no code of its
own: it imports the installed hf_vq library (which also registers hf_vq's tokenizer and generator classes with
diffusers' loader) and re-exports its pipeline class. diffusers runs this file only when `trust_remote_code=True` is
passed; `hf_vq.FQGANPipeline.from_pretrained(repo)` loads the same repo without running it.
"""

from hf_vq import FQGANPipeline

__all__ = ["FQGANPipeline"]
