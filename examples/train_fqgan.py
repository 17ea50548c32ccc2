r"""Train an image tokenizer (VQGAN, FQGAN-Dual/Triple, FSQ, LFQ) with Accelerate.

    accelerate launch examples/train_fqgan.py --tokenizer_config examples/configs/fmnist_fqgan_dual.json \
        --dataset fashion-mnist --resolution 28 --output_dir runs/fmnist-tokenizer --perceptual_weight 0

(LPIPS, the perceptual loss, needs VGG16 weights, --vgg16_path and --lpips_path; 0 trains without it.)

The objective lives in hf_vq/training/recipes/tokenizer_gan.py and the loop in hf_vq/training/loop.py; run with
--help for the flags. The final tokenizer is <output_dir>/tokenizer.
"""

from hf_vq.training import run
from hf_vq.training.recipes import TokenizerGANRecipe


def main(argv: list[str] | None = None):
    """Train; returns the final tokenizer (EMA weights when kept) on every rank."""
    return run(TokenizerGANRecipe, argv)


if __name__ == "__main__":
    main()
