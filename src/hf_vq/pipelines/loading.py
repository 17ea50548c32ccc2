"""Loading a pipeline the way the commands do: the bundled model, and a generator in half precision."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import torch
from transformers import AutoModel

from .pipeline_fqgan import FQGANPipeline

BUNDLED_MODEL = "fmnist-fqgan-dual-far"
GENERATOR_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def bundled_model_path() -> Path:
    """The Fashion-MNIST pipeline (FQGAN-Dual tokenizer + FAR) that ships inside the package."""
    return Path(str(files("hf_vq") / "assets" / BUNDLED_MODEL))


def load_pipeline(model: str | Path, dtype: str = "fp32", device: str | torch.device = "cpu") -> FQGANPipeline:
    """The pipeline at `model` (folder or Hub id) on `device`, its generator's weights in `dtype` (a GENERATOR_DTYPES
    key).

    Only the generator changes precision (its logits stay fp32, see `blocks.OutputHead`); the tokenizer, a small
    part of the time, stays fp32.
    """
    if Path(model).is_dir() and not (Path(model) / "model_index.json").is_file():
        raise ValueError(f"{model} is not a pipeline folder (it has no model_index.json): a tokenizer or generator "
                         "alone does not generate; put the two together with `hf-vq assemble`")
    dtype = getattr(torch, GENERATOR_DTYPES[dtype])
    transformer = AutoModel.from_pretrained(model, subfolder="transformer", dtype=dtype)
    pipe = FQGANPipeline.from_pretrained(model, transformer=transformer)
    # Loaded on the CPU already; diffusers' `.to("cpu")` would warn that half weights cannot run there, which does
    # not hold for hf_vq's generators (they keep fp32 activations on a CPU).
    return pipe if torch.device(device).type == "cpu" else pipe.to(device)
