r"""Train a MaskGIT (NAR) class-conditional generator on extracted codes.

    accelerate launch examples/train_maskgit.py --codes_dir runs/fmnist-codes \
        --tokenizer runs/fmnist-tokenizer/tokenizer --model_config examples/configs/fmnist_maskgit.json \
        --output_dir runs/fmnist-maskgit

The objective lives in hf_vq/training/recipes/generators.py and the loop in hf_vq/training/loop.py; run with
--help for the flags. The final output, <output_dir>/pipeline, is a complete FQGANPipeline folder.
"""

from hf_vq.training import run
from hf_vq.training.recipes import NARGeneratorRecipe


def main(argv: list[str] | None = None):
    """Train; returns the final generator (EMA weights when kept) on every rank."""
    return run(NARGeneratorRecipe, argv)


if __name__ == "__main__":
    main()
