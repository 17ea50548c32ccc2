"""Train a MaskGIT (NAR) class-conditional generator on extracted codes.

    accelerate launch examples/train_maskgit.py --codes_dir runs/fmnist-codes \
        --tokenizer runs/fmnist-tokenizer/tokenizer --model_config examples/configs/fmnist_maskgit.json \
        --output_dir runs/fmnist-maskgit

The loop lives in hf_vq/training/generator_training.py (shared with train_far.py); run with --help for flags.
The final output, <output_dir>/pipeline, is a complete FQGANPipeline folder.
"""

from hf_vq.training.generator_training import main

if __name__ == "__main__":
    main("maskgit")
