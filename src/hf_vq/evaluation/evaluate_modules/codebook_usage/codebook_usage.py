"""Codebook usage, entropy and perplexity as an `evaluate` metric, computed by `hf_vq.evaluation.CodebookStatistics`."""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np
import torch

from hf_vq.evaluation import CodebookStatistics

_DESCRIPTION = """\
Per sub-codebook statistics of the token indices of a whole evaluation set: usage (fraction of the codebook's codes
that occur at least once), entropy (nats) of the code histogram and perplexity exp(entropy). Histograms cover every
added image, so add_batch over many batches gives whole-set numbers, not a mean of per-batch ones.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: integer token indices of each image, (k,), (k, N) or (k, h, w) with k sub-codebooks; one layout
        per computation, the token count may vary between images.
    codebook_size: codes per sub-codebook, one int for all or a list of k ints (required).
Returns:
    usage: per sub-codebook fraction of codes used.
    entropy: per sub-codebook entropy (nats) of the code histogram.
    perplexity: per sub-codebook exp(entropy).
Examples:
    >>> codebook = evaluate.load(hf_vq.evaluation.evaluate_modules.evaluate_module_path("codebook_usage"))
    >>> for indices in index_batches:
    ...     codebook.add_batch(predictions=indices)
    >>> codebook.compute(codebook_size=16384)
"""


def _indices(depth: int) -> datasets.Features:
    feature = datasets.Value("int64")
    for _ in range(depth):
        feature = datasets.Sequence(feature)
    return datasets.Features({"predictions": feature})


class CodebookUsage(evaluate.Metric):
    """Per sub-codebook usage, entropy and perplexity over all added token indices."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            # a list of options: evaluate picks the first that encodes the first example, so (k, h, w) grids,
            # (k, N) sequences and (k,) single tokens are all stored without a fixed shape
            features=[_indices(3), _indices(2), _indices(1)],
        )

    def _compute(self, predictions: list, codebook_size: int | Sequence[int] | None = None) -> dict:
        if codebook_size is None:
            raise ValueError("codebook_size is required: compute(codebook_size=...) with an int or a list of k ints")
        if not predictions:
            raise ValueError("no indices were added: pass predictions to add_batch() or compute()")
        try:
            rows = [np.asarray(row, dtype=np.int64) for row in predictions]
            # one (1, k, all tokens) batch gives the same histograms as the images one by one, whatever their sizes
            tokens = np.concatenate([row.reshape(len(row), -1) for row in rows], axis=1)[None]
        except ValueError as error:
            raise ValueError(f"predictions must all be (k, ...) arrays with one k: {error}") from None
        return CodebookStatistics(codebook_size).update(torch.from_numpy(tokens)).compute()
