"""Throughput (images/s) of the metric feature networks and of SSIM on this machine.

The FID Inception-v3 is timed with random weights (the pytorch-fid file is not needed for speed: the work is the
same); the Fashion-MNIST classifier is the bundled one; SSIM and PSNR run on uint8-rounded images.

    python examples/benchmarks/bench_metrics.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from hf_vq.evaluation import ClassifierNetwork, FIDInceptionV3, psnr_uint8, ssim, ssim_gaussian
from hf_vq.evaluation.fid import InceptionFeatureExtractor


def images_per_second(fn, batch: torch.Tensor, min_seconds: float) -> float:
    """Images per second of `fn(batch)` over at least `min_seconds`, after one warm-up call."""
    fn(batch)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds:
        fn(batch)
        calls += 1
    return calls * len(batch) / elapsed


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=50)
    p.add_argument("--min_seconds", type=float, default=5.0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    inception = InceptionFeatureExtractor(inception=FIDInceptionV3().eval().requires_grad_(False))  # speed only
    classifier = ClassifierNetwork()
    rows = {}
    for size, channels in ((28, 1), (256, 3)):
        batch = torch.rand(args.batch_size, channels, size, size)
        pair = batch * 2 - 1
        other = (pair + 0.1 * torch.randn_like(pair)).clamp(-1, 1)
        rows[f"{size}px x{channels}"] = {
            "fid_inception_features": images_per_second(inception.extract, batch, args.min_seconds),
            "fd_fmnist_features": images_per_second(classifier.extract, batch, args.min_seconds),
            "ssim": images_per_second(lambda x, o=other: ssim(x, o), pair, args.min_seconds),
            "ssim_gaussian": images_per_second(lambda x, o=other: ssim_gaussian(x, o), pair, args.min_seconds),
            "psnr": images_per_second(lambda x, o=other: psnr_uint8(x, o), pair, args.min_seconds),
        }
    result = {"threads": torch.get_num_threads(), "batch_size": args.batch_size,
              "images_per_second": {k: {m: float(np.round(v, 1)) for m, v in r.items()} for k, r in rows.items()}}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
