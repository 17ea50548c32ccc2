"""Inception Score and improved precision/recall (as guided-diffusion evaluations/evaluator.py); Inception layout."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_vq.evaluation.inception import FIDInceptionV3
from hf_vq.evaluation.inception_score import InceptionScore, inception_score
from hf_vq.evaluation.precision_recall import PrecisionRecall, manifold_radii, precision_recall

# {key: shape} of pt_inception-2015-12-05-6726825d.pth, derived from the reference definitions (pytorch-fid 0.3.0
# pytorch_fid/inception.py fid_inception_v3() on torchvision 0.20.1 torchvision/models/inception.py), not from
# hf_vq's module; its "source" field says how
MANIFEST = Path(__file__).parent / "data" / "pt_inception_2015_12_05_manifest.json"


def test_fid_inception_matches_the_reference_checkpoint_layout():
    manifest = json.loads(MANIFEST.read_text())
    assert "pytorch-fid 0.3.0" in manifest["source"] and "torchvision 0.20.1" in manifest["source"]
    with torch.device("meta"):
        model = FIDInceptionV3()
    # BatchNorm step counters are left out of the manifest: the reference source does not settle whether the file
    # has them, and the loader accepts both
    ours = {k: list(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert ours.keys() == manifest["shapes"].keys()
    assert {k: s for k, s in ours.items() if manifest["shapes"][k] != s} == {}
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == manifest["batchnorm_modules"]
    assert manifest["shapes"]["fc.weight"] == [1008, 2048]


# ---------------------------------------------------------------- Inception Score


def test_inception_score_closed_forms():
    classes = 10
    one_hot = 1e3 * torch.eye(classes).repeat(30, 1)  # confident predictions spread evenly over the classes
    score = inception_score(one_hot)
    assert isinstance(score, InceptionScore) and score.split_scores == (pytest.approx(classes),)
    assert score.mean == pytest.approx(classes, rel=1e-12) and float(score) == score.mean and score.std == 0
    # identical predictions: p(y|x) = p(y), KL 0, score 1, whatever the prediction
    same = torch.randn(1, classes, generator=torch.Generator().manual_seed(0)).expand(40, -1)
    assert inception_score(same).mean == pytest.approx(1.0, abs=1e-12)
    # numpy input; uniform over C classes inside each split, C differing between the splits
    mixed = np.concatenate([1e3 * np.eye(4)[np.arange(20) % 4], 1e3 * np.eye(4)[np.arange(20) % 2]])
    score = inception_score(mixed, split_size=20)
    assert score.split_scores == pytest.approx((4.0, 2.0)) and score.mean == pytest.approx(3.0)
    assert score.std == pytest.approx(1.0)


def test_inception_score_matches_the_adm_formula():
    logits = torch.randn(23, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    probs = torch.softmax(logits, 1).numpy()
    expected = []
    for i in range(0, 23, 10):  # 10, 10 and the 3 that remain, as ADM's range(0, len(preds), split_size)
        part = probs[i : i + 10]
        expected.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(part.mean(0, keepdims=True))), 1))))
    score = inception_score(logits.float(), split_size=10)
    assert len(score.split_scores) == 3
    assert score.split_scores == pytest.approx(expected, rel=1e-6)
    assert score.mean == pytest.approx(np.mean(expected), rel=1e-6)
    # fewer samples than one split: one split of all of them
    assert inception_score(logits, split_size=5000).split_scores == pytest.approx([inception_score(logits, 23).mean])


def test_inception_score_rejects_bad_input():
    with pytest.raises(ValueError, match="num_classes"):
        inception_score(torch.zeros(10))
    with pytest.raises(ValueError, match="num_classes"):
        inception_score(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="num_classes"):
        inception_score(torch.zeros(0, 5))
    with pytest.raises(ValueError, match="NaN"):
        inception_score(torch.tensor([[0.0, math.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="NaN"):
        inception_score(torch.tensor([[0.0, math.inf], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="split_size"):
        inception_score(torch.zeros(4, 3), split_size=0)


# ---------------------------------------------------------------- precision and recall


def brute_force(reference: torch.Tensor, samples: torch.Tensor, k: int = 3):
    """Float64 reference implementation: full distance matrices, sorted; radius = k-th nearest other point."""
    reference, samples = reference.double(), samples.double()
    radii_ref = torch.cdist(reference, reference).square().sort(1).values[:, k]  # index 0 is the point itself
    radii_smp = torch.cdist(samples, samples).square().sort(1).values[:, k]
    distances = torch.cdist(reference, samples).square()
    precision = (distances <= radii_ref[:, None]).any(0).double().mean().item()
    recall = (distances <= radii_smp[None, :]).any(1).double().mean().item()
    return precision, recall, radii_ref, radii_smp, distances


def test_precision_recall_matches_brute_force():
    generator = torch.Generator().manual_seed(8)
    reference = torch.randn(300, 16, generator=generator)
    samples = torch.randn(250, 16, generator=generator) * 1.1 + 0.15
    precision, recall, radii_ref, radii_smp, distances = brute_force(reference, samples)
    # no distance within float32 rounding of a radius, so float32 and float64 must decide every comparison alike
    gap = torch.minimum(((distances - radii_ref[:, None]) / radii_ref[:, None]).abs().min(),
                        ((distances - radii_smp[None, :]) / radii_smp[None, :]).abs().min())
    assert gap > 1e-5
    assert 0.3 < precision < 0.9 and 0.3 < recall < 0.95  # a case where neither value is trivial

    torch.testing.assert_close(manifold_radii(reference).double(), radii_ref, rtol=1e-5, atol=0)
    for batch_size in (10000, 64, 7):
        result = precision_recall(reference, samples, batch_size=batch_size)
        assert isinstance(result, PrecisionRecall)
        assert (result.precision, result.recall) == (precision, recall)
    # numpy float64 input is computed in float32 alike
    result = precision_recall(reference.double().numpy(), samples.double().numpy())
    assert (result.precision, result.recall) == (precision, recall)


def test_precision_recall_counts_ties_as_inside():
    # integer coordinates: every float32 distance is exact, ties abound, and "<= radius" decides them
    generator = torch.Generator().manual_seed(0)
    reference = torch.randint(-3, 4, (120, 6), generator=generator).float()
    samples = torch.randint(-2, 5, (90, 6), generator=generator).float()
    precision, recall, radii_ref, _, distances = brute_force(reference, samples, k=2)
    assert (distances == radii_ref[:, None]).any()  # there are ties to decide
    result = precision_recall(reference, samples, k=2, batch_size=16)
    assert (result.precision, result.recall) == (precision, recall)


def test_precision_recall_extremes():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(50, 8, generator=generator)
    assert precision_recall(points, points) == PrecisionRecall(1.0, 1.0)
    assert precision_recall(points, points + 100) == PrecisionRecall(0.0, 0.0)
    # samples collapsed onto a few reference points: precise, but most of the reference manifold is missed
    collapsed = points[:4].repeat(10, 1)
    result = precision_recall(points, collapsed)
    assert result.precision == 1.0 and result.recall < 0.5


def test_precision_recall_rejects_bad_input():
    points = torch.randn(10, 4)
    with pytest.raises(ValueError, match="at least k \\+ 1 = 4"):
        precision_recall(points, points[:3])
    with pytest.raises(ValueError, match="at least k \\+ 1 = 6"):
        precision_recall(points[:5], points, k=5)
    with pytest.raises(ValueError, match="dimension"):
        precision_recall(points, torch.randn(10, 5))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        precision_recall(points.flatten(), points)
    with pytest.raises(ValueError, match="NaN"):
        precision_recall(points, torch.full((10, 4), math.nan))
    with pytest.raises(ValueError, match="k must"):
        precision_recall(points, points, k=0)
    with pytest.raises(ValueError, match="batch_size"):
        precision_recall(points, points, batch_size=0)
