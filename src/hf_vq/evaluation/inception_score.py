"""Inception Score as OpenAI's ADM evaluator computes it (guided-diffusion evaluations/evaluator.py).

The input is the unbiased logits of the FID Inception-v3 (`InceptionFeatureExtractor.extract` or
`FIDInceptionV3.forward_features_and_logits`: pool3 @ fc.weight.T, no bias), as `Evaluator.compute_inception_score`
feeds pool3 through the graph's softmax/logits/MatMul weight only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ADM_SPLIT_SIZE = 5000


@dataclass(frozen=True)
class InceptionScore:
    """Inception Score: `mean` over splits (the number ADM reports), their `std` (ddof 0) and each split's score."""

    mean: float
    std: float
    split_scores: tuple[float, ...]

    def __float__(self) -> float:
        return self.mean


def inception_score(logits: torch.Tensor | np.ndarray, split_size: int = ADM_SPLIT_SIZE) -> InceptionScore:
    """Inception Score of (N, C) unbiased Inception logits, over consecutive splits of `split_size` samples.

    As guided-diffusion evaluations/evaluator.py `Evaluator.compute_inception_score`: p(y|x) = softmax(logits),
    the samples are cut in order into chunks of `split_size` (50,000 samples -> 10 splits), and each chunk scores
    exp(mean_x KL(p(y|x) || p(y))) with p(y) the chunk's mean prediction. Like ADM, the last chunk keeps whatever
    remains, so N < split_size gives one split of N samples and N = 50,001 a last split of one sample (score 1):
    pass a multiple of `split_size` for numbers comparable with published ones. Computed in float64; a class whose
    probability underflows to 0 contributes 0 (the limit of p log p), where ADM's float32 numpy would give NaN.
    """
    if isinstance(split_size, bool) or not isinstance(split_size, int) or split_size < 1:
        raise ValueError(f"split_size must be a positive int, got {split_size!r}")
    logits = torch.as_tensor(logits).detach()
    if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits must be a non-empty (N, num_classes) array, got shape {tuple(logits.shape)}")
    if logits.dtype == torch.bool or logits.is_complex():
        raise TypeError(f"logits must be real numbers, got {logits.dtype}")
    logits = logits.to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(logits).all():
        raise ValueError(f"logits contain {int((~torch.isfinite(logits)).sum())} NaN or infinite values")

    log_probs = torch.log_softmax(logits, dim=1)
    probs = log_probs.exp()
    scores = []
    for part, log_part in zip(probs.split(split_size), log_probs.split(split_size)):
        log_marginal = part.mean(0, keepdim=True).log()
        # where p(y|x) > 0, p(y) >= p(y|x) / n > 0, so the log is finite wherever it is used
        kl = torch.where(part > 0, part * (log_part - log_marginal), 0.0).sum(1)
        scores.append(kl.mean().exp().item())
    values = np.asarray(scores)
    return InceptionScore(mean=float(values.mean()), std=float(values.std()), split_scores=tuple(scores))
