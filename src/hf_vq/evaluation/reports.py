"""Whole evaluations that produce the JSON results model cards and benchmark tables read.

`evaluate_tokenizer`: reconstruction PSNR/SSIM (uint8-rounded), LPIPS when its weights are given, codebook
statistics over the whole set, and the Fréchet distance of reconstructions to originals ("rFID" on the FID
Inception, `rfd_fmnist` on the Fashion-MNIST classifier). `evaluate_generation`: the Fréchet distance of samples
to a reference batch, the Inception-Score-style score, precision/recall and, with a classifier of the same
classes, the class accuracy of the samples. Every result records its feature network's sha256, and
`check_comparable` refuses results of different networks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .codebook import CodebookStatistics
from .feature_sets import FeatureSet, feature_set_of_images
from .features import FeatureNetwork
from .fid import fid_from_features
from .images import from_uint8, to_uint8
from .inception_score import inception_score
from .metrics import psnr_uint8
from .precision_recall import precision_recall
from .ssim import ssim

PROTOCOL = {
    "psnr_db": "mean per-image PSNR of uint8-rounded images scaled to [0, 1]",
    "ssim": "skimage structural_similarity defaults (7x7 uniform window, data_range 1) on uint8-rounded images",
    "lpips": "LPIPS-VGG v0.1, mean per image",
    "codebook": "usage, entropy (nats) and perplexity exp(entropy) per sub-codebook over the whole set",
    "teacher_cosine": "mean over images of the mean over patches of cos(predicted, teacher patch features)",
    "frechet": "Fréchet distance of Gaussians fitted to the feature network's pooled features (float64)",
    "score": "ADM's Inception Score: exp(mean KL(p(y|x) || p(y))) over splits of 5000, mean of splits",
    "precision_recall": "Kynkäänniemi et al. as ADM's evaluator: k = 3, fp32 distances",
}


def _pixels_to_tensor(images: np.ndarray, channels: int) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, channels, H, W) float in [-1, 1]."""
    x = from_uint8(images)
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1)
    return (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)



@torch.no_grad()
def evaluate_tokenizer(
    tokenizer,
    images: np.ndarray,
    network: FeatureNetwork | None = None,
    lpips_model: torch.nn.Module | None = None,
    teacher=None,
    batch_size: int = 100,
    progress: bool = False,
) -> dict:
    """Reconstruction and codebook metrics of any hf_vq tokenizer on (N, H, W, C) uint8 images.

    A tokenizer without a pixel decoder (VQ-KD after stage 1) gets the codebook statistics only. With a
    `FrozenTeacher`, a tokenizer that predicts teacher features (VQ-KD) also reports their mean cosine similarity
    to the teacher's patch features.
    """
    from tqdm.auto import tqdm

    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be an (N, H, W, C) uint8 array, got {images.dtype} {images.shape}")
    if teacher is not None and not hasattr(tokenizer, "predict_teacher_features"):
        raise ValueError(f"a {type(tokenizer).__name__} does not predict teacher features: drop the teacher")
    device = next(tokenizer.parameters()).device
    stats = CodebookStatistics(tokenizer.codebook_sizes)
    psnrs, ssims, lpipses, reconstructions, cosines = [], [], [], [], []
    for start in tqdm(range(0, len(images), batch_size), desc="tokenizing", disable=not progress):
        x = _pixels_to_tensor(images[start : start + batch_size], tokenizer.in_channels).to(device)
        codes = tokenizer.tokenize(x)
        stats.update(codes)
        if teacher is not None:
            predicted = tokenizer.predict_teacher_features(tokenizer.indices_to_latents(codes))
            target = teacher.patch_features(x, tokenizer.grid_size)
            cosines.append(torch.nn.functional.cosine_similarity(predicted, target, dim=-1).mean(1).cpu())
        if not tokenizer.can_decode:
            continue
        recon = tokenizer.detokenize(codes).float().clamp(-1, 1)
        psnrs.append(psnr_uint8(recon.cpu(), x.cpu(), reduction="none"))
        ssims.append(ssim(recon.cpu(), x.cpu(), reduction="none"))
        if lpips_model is not None:
            lpips_device = next(lpips_model.parameters()).device
            lpipses.append(lpips_model(recon.to(lpips_device), x.to(lpips_device)).cpu())
        reconstructions.append(to_uint8(recon))
    codebook = stats.compute()
    result = {
        "num_images": len(images),
        "image_size": list(images.shape[1:3]),
        "psnr_db": float(torch.cat(psnrs).mean()) if psnrs else None,
        "ssim": float(torch.cat(ssims).mean()) if ssims else None,
        "lpips": float(torch.cat(lpipses).mean()) if lpipses else None,
        "codebook_usage": codebook["usage"],
        "codebook_entropy": codebook["entropy"],
        "codebook_perplexity": codebook["perplexity"],
    }
    if cosines:
        result["teacher_cosine"] = float(torch.cat(cosines).mean())
    if network is not None and reconstructions:
        originals = feature_set_of_images(network, images, source="originals")
        recon_set = feature_set_of_images(network, np.concatenate(reconstructions), source="reconstructions")
        result["feature_network"] = network.describe()
        result["r" + network.fd_metric] = fid_from_features(recon_set.features, originals.features)
    return result


def evaluate_generation(samples: FeatureSet, reference: FeatureSet, id2label: dict[int, str] | None = None) -> dict:
    """Distribution metrics of generated samples against a reference batch, both under one feature network.

    With `id2label` (the feature network is a classifier of the generated classes) and sample labels, also the
    class accuracy of the samples.
    """
    samples.check_compatible(reference)
    network = samples.network
    pr = precision_recall(reference.features, samples.features)
    score = inception_score(samples.logits)
    result = {
        "num_samples": len(samples),
        "num_reference": len(reference),
        "image_size": list(samples.image_size),
        "feature_network": network,
        network["fd_metric"]: fid_from_features(samples.features, reference.features),
        network["is_metric"]: score.mean,
        "precision": pr.precision,
        "recall": pr.recall,
    }
    if id2label is not None and samples.labels is not None:
        predicted = samples.logits.argmax(1)
        result["class_accuracy"] = float((predicted == samples.labels).mean())
    return result


def check_comparable(results: Sequence[dict]) -> None:
    """Refuse to put results side by side when their feature networks (by weight sha256) differ."""
    hashes = {r.get("feature_network", {}).get("sha256") for r in results if "feature_network" in r}
    if len(hashes) > 1:
        short = ", ".join(sorted(str(h)[:12] for h in hashes))
        raise ValueError(
            f"results come from different feature networks (sha256 {short}): their distances are not comparable; "
            "recompute them with one network"
        )
