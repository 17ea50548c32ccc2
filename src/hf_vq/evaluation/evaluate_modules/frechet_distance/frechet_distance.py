"""Fréchet distance of two feature sets as an `evaluate` metric, computed by `hf_vq.evaluation.fid_from_features`."""

from __future__ import annotations

import datasets
import evaluate

from hf_vq.evaluation import fid_from_features
from hf_vq.evaluation.evaluate_modules import stored_vectors

_DESCRIPTION = """\
Fréchet distance between Gaussians fitted to two sets of feature vectors: |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2)).
It is FID only on pool3 features of the FID Inception-v3 (hf_vq.evaluation.InceptionFeatureExtractor), and then
comparable with published FIDs only at their sample counts (50,000). On any other feature network it is a different
metric: name the result after that network with the `name` argument (default "fd"), never "fid".
"""

_CITATION = """\
@inproceedings{heusel2017gans,
  title={GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium},
  author={Heusel, Martin and Ramsauer, Hubert and Unterthiner, Thomas and Nessler, Bernhard and Hochreiter, Sepp},
  booktitle={Advances in Neural Information Processing Systems},
  year={2017}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: feature vectors (D,) of the generated (or reconstructed) images.
    references: feature vectors (D,) of the reference images. The sets may differ in size: evaluate stores them as
        columns of one table, so pad the shorter column of a batch with None (None rows are dropped). Each set needs
        more vectors than D.
    name: key of the result, after the feature network: "fid" only for the FID Inception-v3 (default "fd").
Returns:
    {name}: the Fréchet distance.
Examples:
    >>> fd = evaluate.load(hf_vq.evaluation.evaluate_modules.evaluate_module_path("frechet_distance"))
    >>> fd.compute(predictions=sample_pool3, references=reference_pool3, name="fid")
"""

_VECTOR = datasets.Sequence(datasets.Value("float64"))


class FrechetDistance(evaluate.Metric):
    """Fréchet distance between Gaussians fitted to two feature sets (FID on FID-Inception pool3 features)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": _VECTOR, "references": _VECTOR}),
        )

    def _compute(self, predictions: list, references: list, name: str = "fd") -> dict:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        samples, reference = stored_vectors(predictions, "predictions"), stored_vectors(references, "references")
        return {name: fid_from_features(samples, reference)}
