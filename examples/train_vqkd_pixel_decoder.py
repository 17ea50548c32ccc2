r"""VQ-KD stage 2: train a pixel decoder on the frozen codes of a stage-1 tokenizer.

    accelerate launch examples/train_vqkd_pixel_decoder.py --tokenizer runs/vqkd/tokenizer \
        --dataset imagenet-1k --resolution 256 --output_dir runs/vqkd-pixels --vgg16_path ... --lpips_path ...

The objective lives in hf_vq/training/recipes/vqkd.py and the loop in hf_vq/training/loop.py; run with --help
for the flags. <output_dir>/tokenizer is the whole tokenizer: encoder, codes, feature and pixel decoders.
"""

from hf_vq.training import run
from hf_vq.training.recipes import VQKDPixelDecoderRecipe


def main(argv: list[str] | None = None):
    """Train; returns the stage-2 module (the tokenizer is its `.tokenizer`) on every rank."""
    return run(VQKDPixelDecoderRecipe, argv)


if __name__ == "__main__":
    main()
