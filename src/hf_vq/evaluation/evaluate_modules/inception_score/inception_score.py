"""Inception Score of Inception logits as an `evaluate` metric, computed by `hf_vq.evaluation.inception_score`."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

from hf_vq.evaluation import inception_score
from hf_vq.evaluation.inception_score import ADM_SPLIT_SIZE

_DESCRIPTION = """\
Inception Score as OpenAI's ADM evaluator computes it: p(y|x) = softmax(logits), the samples cut in the order they
were added into consecutive splits of `split_size` (default 5000: 50,000 samples give 10 splits), each split scoring
exp(mean_x KL(p(y|x) || p(y))). The inputs are the unbiased 1008-way logits of the FID Inception-v3
(hf_vq.evaluation.InceptionFeatureExtractor.extract); pass a multiple of `split_size` samples for numbers comparable
with published ones.
"""

_CITATION = """\
@inproceedings{salimans2016improved,
  title={Improved Techniques for Training GANs},
  author={Salimans, Tim and Goodfellow, Ian and Zaremba, Wojciech and Cheung, Vicki and Radford, Alec and Chen, Xi},
  booktitle={Advances in Neural Information Processing Systems},
  year={2016}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: logits (num_classes,) of each generated image, in order.
    split_size: samples per split (default 5000, ADM's).
Returns:
    inception_score: mean score over the splits (the number ADM reports).
    inception_score_std: standard deviation (ddof 0) over the splits.
Examples:
    >>> inception = evaluate.load(hf_vq.evaluation.evaluate_modules.evaluate_module_path("inception_score"))
    >>> inception.compute(predictions=logits)
"""


class InceptionScore(evaluate.Metric):
    """Inception Score over consecutive splits, as ADM's evaluator."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float64"))}),
        )

    def _compute(self, predictions: list, split_size: int = ADM_SPLIT_SIZE) -> dict:
        try:
            logits = np.asarray(predictions, dtype=np.float64)
        except ValueError as error:
            raise ValueError(f"predictions must all have one number of classes: {error}") from None
        score = inception_score(logits, split_size=split_size)
        return {"inception_score": score.mean, "inception_score_std": score.std}
