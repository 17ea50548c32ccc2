"""Reconstruction PSNR and codebook usage of a tokenizer on a held-out split.

    python examples/evaluate_tokenizer.py --tokenizer runs/fmnist-tokenizer/tokenizer --dataset fashion-mnist \
        --split test --resolution 28
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hf_vq import AutoImageTokenizer
from hf_vq.evaluation import codebook_perplexity, codebook_usage, psnr
from hf_vq.training.data import ImageTransform, collate, load_image_dataset, with_image_transform


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--split", default="test")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=256)
    args = p.parse_args(argv)

    tokenizer = AutoImageTokenizer.from_pretrained(args.tokenizer).eval()
    dataset = load_image_dataset(args.dataset, args.split)
    transform = ImageTransform(args.resolution, channels=tokenizer.in_channels)
    loader = DataLoader(with_image_transform(dataset, transform), batch_size=args.batch_size, collate_fn=collate)
    scores, indices = [], []
    for batch in tqdm(loader, desc="evaluating"):
        x = batch["pixel_values"]
        codes = tokenizer.tokenize(x)
        recon = tokenizer.detokenize(codes).clamp(-1, 1)
        scores.append(psnr(recon, x, reduction="none"))
        indices.append(codes)
    indices = torch.cat(indices)
    result = {
        "images": len(indices),
        "psnr_db": round(float(torch.cat(scores).mean()), 3),
        "codebook_usage": [round(u, 4) for u in codebook_usage(indices, tokenizer.codebook_sizes)],
        "codebook_perplexity": [round(u, 1) for u in codebook_perplexity(indices, tokenizer.codebook_sizes)],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
