r"""Train a FAR (k > 1) or LlamaGen GPT (k = 1) class-conditional AR generator on extracted codes.

    accelerate launch examples/train_far.py --codes_dir runs/fmnist-codes \
        --tokenizer runs/fmnist-tokenizer/tokenizer --model_config examples/configs/fmnist_far.json \
        --output_dir runs/fmnist-far

The objective lives in hf_vq/training/recipes/generators.py and the loop in hf_vq/training/loop.py; run with
--help for the flags. The final output, <output_dir>/pipeline, is a complete FQGANPipeline folder.
"""

from hf_vq.training import run
from hf_vq.training.recipes import ARGeneratorRecipe


def main(argv: list[str] | None = None):
    """Train; returns the final generator (EMA weights when kept) on every rank."""
    return run(ARGeneratorRecipe, argv)


if __name__ == "__main__":
    main()
