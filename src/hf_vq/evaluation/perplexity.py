"""The AR proposal network's validation perplexity exp(mean cross-entropy) on held-out token grids.

The "PPL" column of the VQ-KD benchmark (arXiv 2411.04406) is most likely this quantity (its code's
`CodebookPPLMetric` is the codebook entropy instead, see `codebook.py`): how well the generator predicts tokens
of images it did not train on. With k sub-codebooks it is reported overall, per sub-token and per position.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ValidationPerplexity:
    """exp of the mean cross-entropy (nats) over all held-out tokens, per sub-token j, and per grid position."""

    perplexity: float
    per_codebook: tuple[float, ...]
    per_position: tuple[float, ...]
    num_tokens: int

    def to_dict(self) -> dict:
        """A JSON-ready dict (per-position values rounded to 3 decimals)."""
        return {"perplexity": self.perplexity, "per_codebook": list(self.per_codebook),
                "per_position": [round(v, 3) for v in self.per_position], "num_tokens": self.num_tokens}


@torch.no_grad()
def validation_perplexity(
    model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> ValidationPerplexity:
    """Validation perplexity of an AR generator over (token grids (B, k, h, w) or (B, k, N), class ids (B,)) batches.

    Teacher-forced, class-conditional (no guidance, no label dropout: the model is put in eval mode for the pass).
    """
    if not getattr(model, "is_autoregressive", False):
        raise ValueError(
            f"validation perplexity needs an autoregressive generator (FAR/GPT); a {type(model).__name__} does not "
            "predict each token from the ones before it"
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums, count = None, 0
    try:
        for tokens, labels in batches:
            tokens = tokens.to(device).flatten(2)
            logits = model(input_ids=tokens, class_labels=torch.as_tensor(labels, device=device)).logits
            nll = F.cross_entropy(logits.float().flatten(0, 2), tokens.flatten(), reduction="none").view(tokens.shape)
            batch_sum = nll.double().sum(0).cpu()  # (k, N)
            sums = batch_sum if sums is None else sums + batch_sum
            count += tokens.shape[0]
    finally:
        model.train(was_training)
    if sums is None:
        raise ValueError("no held-out batches were given")
    mean = sums / count
    return ValidationPerplexity(
        perplexity=math.exp(mean.mean().item()),
        per_codebook=tuple(math.exp(v) for v in mean.mean(1).tolist()),
        per_position=tuple(math.exp(v) for v in mean.mean(0).tolist()),
        num_tokens=count * sums.numel(),
    )
