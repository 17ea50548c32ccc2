r"""Tokenize an image dataset (each image and its horizontal flip) into a `datasets` dataset of codes and labels.

    python examples/extract_codes.py --tokenizer runs/fmnist-tokenizer/tokenizer --dataset fashion-mnist \
        --resolution 28 --output_dir runs/fmnist-codes
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_vq import AutoImageTokenizer
from hf_vq.training.codes import extract_codes
from hf_vq.training.data import load_image_dataset
from hf_vq.utils import atomic_directory, check_output_dir, error_line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="a saved tokenizer folder or Hub id")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--dataset", "--dataset_name", "--train_data_dir", dest="dataset", default="fashion-mnist",
                   help="'fashion-mnist', an imagefolder path or a Hub id (diffusers' flag names work too)")
    p.add_argument("--split", default="train")
    p.add_argument("--image_column", default=None)
    p.add_argument("--label_column", default=None)
    p.add_argument("--skip_corrupt", action="store_true")
    p.add_argument("--resolution", type=int, default=None,
                   help="side of the square images tokenized; default: the tokenizer's sample_size")
    p.add_argument("--no_flip", action="store_true", help="do not add the horizontally flipped copy")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, args.overwrite)
    tokenizer = AutoImageTokenizer.from_pretrained(args.tokenizer).eval()
    dataset = load_image_dataset(args.dataset, args.split, args.image_column, args.label_column, args.skip_corrupt)
    resolution = tokenizer.sample_size if args.resolution is None else args.resolution
    table = extract_codes(tokenizer, dataset, resolution, flip=not args.no_flip, batch_size=args.batch_size)
    with atomic_directory(output_dir, "extract_codes", args.overwrite) as tmp:
        table.save_to_disk(str(tmp))
    k, n = table.features["codes"].shape
    print(f"saved {len(table)} code grids of shape ({k}, {n}) to {output_dir}")
    return output_dir


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as err:  # bad input, as the training scripts and hf-vq report it: one line
        raise SystemExit(f"extract_codes: {error_line(err)}") from err
