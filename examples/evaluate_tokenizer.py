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

from hf_vq import AutoImageTokenizer, FrozenTeacher
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
    p.add_argument("--teacher", default=None,
                   help="for a VQ-KD tokenizer: also report the cosine similarity of its predicted teacher features")
    args = p.parse_args(argv)

    tokenizer = AutoImageTokenizer.from_pretrained(args.tokenizer).eval()
    dataset = load_image_dataset(args.dataset, args.split)
    transform = ImageTransform(args.resolution, channels=tokenizer.in_channels)
    loader = DataLoader(with_image_transform(dataset, transform), batch_size=args.batch_size, collate_fn=collate)
    teacher = FrozenTeacher.from_pretrained(args.teacher) if args.teacher else None
    if teacher is not None and not hasattr(tokenizer, "predict_teacher_features"):
        raise SystemExit(f"--teacher: a {type(tokenizer).__name__} does not predict teacher features")
    scores, indices, cosines = [], [], []
    for batch in tqdm(loader, desc="evaluating"):
        x = batch["pixel_values"]
        codes = tokenizer.tokenize(x)
        if tokenizer.can_decode:
            recon = tokenizer.detokenize(codes).clamp(-1, 1)
            scores.append(psnr(recon, x, reduction="none"))
        if teacher is not None:
            predicted = tokenizer.predict_teacher_features(tokenizer.indices_to_latents(codes))
            target = teacher.patch_features(x, tokenizer.grid_size)
            cosines.append(torch.nn.functional.cosine_similarity(predicted, target, dim=-1).mean(1))
        indices.append(codes)
    indices = torch.cat(indices)
    result = {
        "images": len(indices),
        "psnr_db": round(float(torch.cat(scores).mean()), 3) if scores else None,
        "codebook_usage": [round(u, 4) for u in codebook_usage(indices, tokenizer.codebook_sizes)],
        "codebook_perplexity": [round(u, 1) for u in codebook_perplexity(indices, tokenizer.codebook_sizes)],
    }
    if cosines:
        result["teacher_cosine"] = round(float(torch.cat(cosines).mean()), 4)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
