r"""Train a ViT-VQGAN tokenizer: L2 + LPIPS + a StyleGAN2 discriminator (lazy R1), Adam with warmup and cosine decay.

    accelerate launch examples/train_vitvqgan.py --tokenizer_config examples/configs/fmnist_vitvqgan.json \
        --dataset fashion-mnist --resolution 28 --output_dir runs/fmnist-vitvqgan

The objective lives in hf_vq/training/recipes/vitvqgan.py and the loop in hf_vq/training/loop.py; run with --help
for the flags. The final tokenizer is <output_dir>/tokenizer.
"""

from hf_vq.training import run
from hf_vq.training.recipes import ViTVQGANRecipe


def main(argv: list[str] | None = None):
    """Train; returns the final tokenizer (EMA weights when kept) on every rank."""
    return run(ViTVQGANRecipe, argv)


if __name__ == "__main__":
    main()
