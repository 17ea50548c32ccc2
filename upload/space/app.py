"""Gradio demo (Hugging Face Spaces): class-conditional samples from an hf_vq pipeline.

HF_VQ_MODEL names the pipeline (a Hub id or a folder); the default is the Fashion-MNIST model bundled with hf_vq.
Runs on CUDA (generator in fp16) when there is a GPU, else on CPU in fp32. Locally: `python upload/space/app.py`.
"""

import os
from pathlib import Path

import gradio as gr
import torch
from PIL import Image

import hf_vq
from hf_vq import FQGANPipeline, bundled_model_path
from hf_vq.utils import is_hub_id

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MIN_SIDE = 112  # small images (the bundled model's are 28x28) are enlarged, pixel for pixel, for the gallery


def load_pipeline(model: str | None = None, device: str = DEVICE) -> FQGANPipeline:
    """The pipeline on `device`; on CUDA its generator is loaded in fp16 (its logits stay fp32, see README)."""
    source = "the model" if model else "HF_VQ_MODEL"
    model = model or os.environ.get("HF_VQ_MODEL") or str(bundled_model_path())
    if not Path(model).exists() and not is_hub_id(model):
        raise SystemExit(f"{source} {model}: no such folder, and not a Hub id such as org/name")
    pipe = hf_vq.load_pipeline(model, "fp16" if torch.device(device).type == "cuda" else "fp32", device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_demo(pipe: FQGANPipeline) -> gr.Blocks:
    names = {int(i): name for i, name in pipe.config.id2label.items()}
    # class names in id order; a pipeline without names offers its ids
    labels = [names[i] for i in sorted(names)] or [str(i) for i in range(pipe.transformer.config.num_classes)]
    model = pipe.config._name_or_path
    model = "the Fashion-MNIST model bundled with hf_vq" if model == str(bundled_model_path()) else f"`{model}`"

    def generate(label: str, n: int, guidance_scale: float, temperature: float, top_k: int, seed: int):
        generator = torch.Generator().manual_seed(int(seed))  # drawn on the CPU: a seed's images on any device
        images = pipe([label], num_images_per_label=int(n), guidance_scale=guidance_scale,
                      temperature=temperature, top_k=int(top_k), generator=generator).images
        zoom = max(1, MIN_SIDE // images[0].width)
        return [im.resize((im.width * zoom, im.height * zoom), Image.NEAREST) for im in images]

    with gr.Blocks(title="hf_vq: FQGAN tokens + FAR", fill_width=True) as demo:
        gr.Markdown("# hf_vq: FQGAN tokens + FAR\nClass-conditional samples from a factorized-token "
                    f"autoregressive model: {model}, on {pipe.device.type}.")
        with gr.Row():
            with gr.Column(scale=1):
                label = gr.Dropdown(labels, value=labels[0], label="class")
                n = gr.Slider(1, 16, value=8, step=1, label="number of images")
                guidance = gr.Slider(1.0, 8.0, value=2.0, step=0.25, label="guidance scale (1 = off)")
                temperature = gr.Slider(0.5, 1.5, value=1.0, step=0.05, label="temperature")
                top_k = gr.Slider(0, pipe.transformer.config.vocab_size, value=0, step=1, label="top-k (0 = off)")
                seed = gr.Number(value=0, precision=0, label="seed")
                button = gr.Button("Generate", variant="primary")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="samples", columns=4, format="png", object_fit="contain")
        inputs = [label, n, guidance, temperature, top_k, seed]
        gr.Examples([[labels[i % len(labels)], 8, g, 1.0, 0, i] for i, g in [(7, 2.0), (8, 3.0), (9, 1.0)]],
                    inputs=inputs)
        button.click(generate, inputs, gallery, api_name="generate")
    return demo


if __name__ == "__main__":
    demo = build_demo(load_pipeline())
    demo.launch()
