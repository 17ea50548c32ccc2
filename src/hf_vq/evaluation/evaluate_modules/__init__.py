"""The `hf_vq.evaluation` metrics of stored predictions as local Hugging Face `evaluate` modules.

`evaluate.load(evaluate_module_path(name))` loads one. Each folder holds `<name>/<name>.py`, a thin
`evaluate.Metric` that converts its stored inputs and calls the hf_vq function, so the numbers are those of
`hf_vq.evaluation` under the same protocols. Networks stay outside: extract features or logits with
`hf_vq.evaluation` and pass them here; metrics that run a network on images or tokens (LPIPS, classifier accuracy,
validation perplexity) have no module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

EVALUATE_MODULES = ("psnr", "ssim", "frechet_distance", "inception_score", "precision_recall", "codebook_usage")


def evaluate_module_path(name: str) -> str:
    """The folder to pass to `evaluate.load` for the hf_vq metric `name` (one of `EVALUATE_MODULES`)."""
    if name not in EVALUATE_MODULES:
        raise ValueError(f"unknown evaluate module {name!r}; available: {', '.join(EVALUATE_MODULES)}")
    folder = Path(__file__).resolve().parent / name
    if not (folder / f"{name}.py").is_file():
        # the scripts ship as package data: a missing one means a broken install, not a wrong name
        raise FileNotFoundError(f"the {name} evaluate module script is missing from this install: {folder}")
    return str(folder)


def stored_vectors(rows: list, name: str) -> np.ndarray:
    """Stored (D,) rows, None padding dropped (sets of different sizes share one table) -> one (N, D) float64 array."""
    rows = [row for row in rows if row is not None]
    try:
        return np.asarray(rows, dtype=np.float64)
    except ValueError as error:
        raise ValueError(f"{name} must all have one dimension D: {error}") from None


def stored_images(rows: list, name: str) -> torch.Tensor:
    """Stored (C, H, W) rows -> one (B, C, H, W) float64 batch; an image pair may not be missing a side."""
    if any(row is None for row in rows):
        raise ValueError(f"{name} contain None: every prediction needs its reference image")
    try:
        return torch.from_numpy(np.asarray(rows, dtype=np.float64))
    except ValueError as error:
        raise ValueError(f"{name} must all have one (C, H, W) shape: {error}") from None


__all__ = ["EVALUATE_MODULES", "evaluate_module_path", "stored_images", "stored_vectors"]
