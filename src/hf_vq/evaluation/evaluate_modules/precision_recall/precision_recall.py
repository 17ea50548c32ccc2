"""Improved precision and recall as an `evaluate` metric, computed by `hf_vq.evaluation.precision_recall`."""

from __future__ import annotations

import datasets
import evaluate

from hf_vq.evaluation import precision_recall
from hf_vq.evaluation.evaluate_modules import stored_vectors
from hf_vq.evaluation.precision_recall import ADM_BATCH_SIZE, ADM_NEIGHBORHOOD

_DESCRIPTION = """\
Improved precision and recall (Kynkäänniemi et al. 2019) as OpenAI's ADM evaluator computes them: each set's
manifold is the union of balls reaching each point's k-th nearest neighbour in its own set; precision is the
fraction of samples inside the reference manifold, recall the fraction of references inside the sample manifold.
ADM uses FID Inception-v3 pool3 features and k = 3.
"""

_CITATION = """\
@inproceedings{kynkaanniemi2019improved,
  title={Improved Precision and Recall Metric for Assessing Generative Models},
  author={Kynk{\\"a}{\\"a}nniemi, Tuomas and Karras, Tero and Laine, Samuli and Lehtinen, Jaakko and Aila, Timo},
  booktitle={Advances in Neural Information Processing Systems},
  year={2019}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: feature vectors (D,) of the generated samples.
    references: feature vectors (D,) of the reference images. The sets may differ in size: evaluate stores them as
        columns of one table, so pad the shorter column of a batch with None (None rows are dropped).
    k: neighbourhood size of the manifold radii (default 3, ADM's).
    batch_size: rows of distances computed at once, a memory bound that does not change the result (default 10000).
Returns:
    precision: fraction of samples on the reference manifold.
    recall: fraction of references on the sample manifold.
Examples:
    >>> pr = evaluate.load(hf_vq.evaluation.evaluate_modules.evaluate_module_path("precision_recall"))
    >>> pr.compute(predictions=sample_pool3, references=reference_pool3)
"""

_VECTOR = datasets.Sequence(datasets.Value("float64"))


class PrecisionRecall(evaluate.Metric):
    """Improved precision and recall of sample features against reference features, as ADM's evaluator."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": _VECTOR, "references": _VECTOR}),
        )

    def _compute(
        self, predictions: list, references: list, k: int = ADM_NEIGHBORHOOD, batch_size: int = ADM_BATCH_SIZE
    ) -> dict:
        result = precision_recall(
            reference_features=stored_vectors(references, "references"),
            sample_features=stored_vectors(predictions, "predictions"),
            k=k,
            batch_size=batch_size,
        )
        return {"precision": result.precision, "recall": result.recall}
