"""PSNR of uint8-rounded images as an `evaluate` metric, computed by `hf_vq.evaluation.psnr_uint8`."""

from __future__ import annotations

import datasets
import evaluate

from hf_vq.evaluation import psnr_uint8
from hf_vq.evaluation.evaluate_modules import stored_images

_DESCRIPTION = """\
Peak signal-to-noise ratio (dB) between reconstructions and originals, each image first rounded to uint8 and scaled
to [0, 1] as saving a PNG does: the protocol of published tokenizer PSNRs (VQ-KD benchmark). Per image, then
averaged over all added images; identical images give +inf.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: reconstructed images, each (C, H, W) with C 1 or 3 (nested lists, numpy arrays or tensors).
    references: the original images, same shapes, in the same order.
    value_range: (low, high) pixel range of both, (-1, 1) (default) or (0, 1).
Returns:
    psnr: mean PSNR in dB.
Examples:
    >>> psnr = evaluate.load(hf_vq.evaluation.evaluate_modules.evaluate_module_path("psnr"))
    >>> psnr.compute(predictions=reconstructions, references=images, value_range=(0, 1))
"""

_IMAGE = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float64"))))


class Psnr(evaluate.Metric):
    """PSNR (dB) of uint8-rounded image pairs."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": _IMAGE, "references": _IMAGE}),
        )

    def _compute(self, predictions: list, references: list, value_range: tuple[float, float] = (-1.0, 1.0)) -> dict:
        x, y = stored_images(predictions, "predictions"), stored_images(references, "references")
        return {"psnr": float(psnr_uint8(x, y, value_range=tuple(value_range)))}
