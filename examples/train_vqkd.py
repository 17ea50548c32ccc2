r"""VQ-KD stage 1: distil a frozen image-understanding teacher's patch features into a cosine codebook.

    accelerate launch examples/train_vqkd.py --tokenizer_config CONFIG.json --teacher openai/clip-vit-base-patch16 \
        --dataset imagenet-1k --resolution 224 --output_dir runs/vqkd

The objective lives in hf_vq/training/recipes/vqkd.py and the loop in hf_vq/training/loop.py; run with --help
for the flags. The stage-1 tokenizer, <output_dir>/tokenizer, tokenizes; examples/train_vqkd_pixel_decoder.py
gives it a pixel decoder.
"""

from hf_vq.training import run
from hf_vq.training.recipes import VQKDRecipe


def main(argv: list[str] | None = None):
    """Train; returns the stage-1 tokenizer (EMA weights when kept) on every rank."""
    return run(VQKDRecipe, argv)


if __name__ == "__main__":
    main()
