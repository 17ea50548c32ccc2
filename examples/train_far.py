"""Train a FAR (k > 1) or LlamaGen GPT (k = 1) class-conditional AR generator on extracted codes.

    accelerate launch examples/train_far.py --codes_dir runs/fmnist-codes \
        --tokenizer runs/fmnist-tokenizer/tokenizer --model_config examples/configs/fmnist_far.json \
        --output_dir runs/fmnist-far

The loop lives in hf_vq/training/generator_training.py (shared with train_maskgit.py); run with --help for flags.
The final output, <output_dir>/pipeline, is a complete FQGANPipeline folder.
"""

from hf_vq.training.generator_training import main

if __name__ == "__main__":
    main("far")
