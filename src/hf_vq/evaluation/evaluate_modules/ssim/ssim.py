"""SSIM of uint8-rounded images as an `evaluate` metric, computed by `hf_vq.evaluation.ssim` / `ssim_gaussian`."""

from __future__ import annotations

import datasets
import evaluate

from hf_vq.evaluation import ssim, ssim_gaussian
from hf_vq.evaluation.evaluate_modules import stored_images

_DESCRIPTION = """\
Structural similarity between reconstructions and originals, each image first rounded to uint8 and scaled to
[0, 1] (the protocol of published tokenizer numbers, VQ-KD benchmark), as scikit-image's structural_similarity
computes it: window="uniform" is its default (7x7 uniform window, sample covariance), window="gaussian" its
gaussian_weights=True, sigma=1.5, use_sample_covariance=False setting that follows Wang et al. Per image (mean over
channels), then averaged over all added images.
"""

_CITATION = """\
@article{wang2004ssim,
  title={Image quality assessment: from error visibility to structural similarity},
  author={Wang, Zhou and Bovik, Alan C. and Sheikh, Hamid R. and Simoncelli, Eero P.},
  journal={IEEE Transactions on Image Processing},
  volume={13},
  number={4},
  pages={600--612},
  year={2004}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: reconstructed images, each (C, H, W) with C 1 or 3 and H, W at least the window size.
    references: the original images, same shapes, in the same order.
    value_range: (low, high) pixel range of both, (-1, 1) (default) or (0, 1).
    window: "uniform" (default, scikit-image's default) or "gaussian" (Wang et al.'s 11x11, sigma 1.5).
Returns:
    ssim: mean SSIM.
Examples:
    >>> ssim = evaluate.load(hf_vq.evaluation.evaluate_modules.evaluate_module_path("ssim"))
    >>> ssim.compute(predictions=reconstructions, references=images, window="gaussian")
"""

_IMAGE = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float64"))))
_WINDOWS = {"uniform": ssim, "gaussian": ssim_gaussian}


class Ssim(evaluate.Metric):
    """SSIM of uint8-rounded image pairs."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": _IMAGE, "references": _IMAGE}),
        )

    def _compute(
        self,
        predictions: list,
        references: list,
        value_range: tuple[float, float] = (-1.0, 1.0),
        window: str = "uniform",
    ) -> dict:
        if window not in _WINDOWS:
            raise ValueError(f"window must be one of {sorted(_WINDOWS)}, got {window!r}")
        x, y = stored_images(predictions, "predictions"), stored_images(references, "references")
        return {"ssim": float(_WINDOWS[window](x, y, value_range=tuple(value_range)))}
