"""Gradio demo (Hugging Face Spaces): class-conditional samples from an hf_vq pipeline.

Set HF_VQ_MODEL to a Hub id or folder; the default is the Fashion-MNIST model bundled with hf_vq.
"""

import os

import gradio as gr
import torch
from diffusers.utils import make_image_grid

from hf_vq import FQGANPipeline
from hf_vq.cli import bundled_model_path

pipe = FQGANPipeline.from_pretrained(os.environ.get("HF_VQ_MODEL") or bundled_model_path())
labels = [pipe.config.id2label[i] for i in sorted(pipe.config.id2label)]


def generate(label: str, n: int, guidance_scale: float, temperature: float, top_k: int, seed: int):
    images = pipe([label], num_images_per_label=int(n), guidance_scale=guidance_scale, temperature=temperature,
                  top_k=int(top_k), generator=torch.manual_seed(int(seed))).images
    grid = make_image_grid(images, rows=1, cols=len(images))
    return grid.resize((grid.width * 4, grid.height * 4), resample=0)


demo = gr.Interface(
    fn=generate,
    inputs=[
        gr.Dropdown(labels, value=labels[0], label="class"),
        gr.Slider(1, 16, value=8, step=1, label="images"),
        gr.Slider(1.0, 8.0, value=2.0, step=0.25, label="guidance scale"),
        gr.Slider(0.5, 1.5, value=1.0, step=0.05, label="temperature"),
        gr.Slider(0, pipe.transformer.config.vocab_size, value=0, step=1, label="top-k (0 = off)"),
        gr.Number(value=0, label="seed"),
    ],
    outputs=gr.Image(label="samples"),
    title="hf_vq: FQGAN tokens + FAR",
)

if __name__ == "__main__":
    demo.launch()
