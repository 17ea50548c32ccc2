"""Linear probe of a frozen generator's block features, or of a tokenizer's encoder (VIM, ICLR 2022).

The work is `hf_vq.evaluation.linear_probe`; this script is its command line.

    python examples/linear_probe.py --blocks all --num_threads 1 --output runs/probe/far.json     # bundled FAR
    python examples/linear_probe.py --target encoder --output runs/probe/encoder.json             # its encoder
    python examples/linear_probe.py runs/my-pipeline --blocks 6 12 18 --max_train_images 20000 --output p.json
"""

from hf_vq.evaluation.linear_probe import main

if __name__ == "__main__":
    main()
