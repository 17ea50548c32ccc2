import json
import math

import numpy as np
import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

from hf_vq.evaluation import (
    FID_WEIGHTS_NAME,
    ClassifierAccuracy,
    FIDInceptionV3,
    InceptionFeatureExtractor,
    codebook_perplexity,
    codebook_usage,
    fid_from_features,
    frechet_distance,
    frechet_feature_distance,
    load_fid_inception,
    psnr,
)


def test_psnr_known_values():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.zeros(2, 3, 4, 4)
    y[0] += 0.1  # mse 0.01 -> 10 log10(4 / 0.01)
    y[1] += 0.2  # mse 0.04 -> 10 log10(4 / 0.04) = 20 dB
    per_image = psnr(x, y, reduction="none")
    assert per_image.tolist() == pytest.approx([10 * math.log10(400), 20.0])
    # the batch value is the mean of per-image PSNRs, not the PSNR of the mean error
    assert psnr(x, y).item() == pytest.approx((10 * math.log10(400) + 20) / 2)
    assert psnr(x[:1], y[:1] / 2, data_range=1.0).item() == pytest.approx(10 * math.log10(1 / 0.0025))
    assert psnr(x, x).isinf().all()


def test_psnr_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5))


def test_codebook_usage_and_perplexity():
    # k = 2 sub-codebooks of size 4 over a 1x2 grid: the first uses codes {0, 1}, the second all four equally
    indices = torch.tensor([[[[0, 1]], [[0, 1]]], [[[1, 0]], [[2, 3]]]])
    assert indices.shape == (2, 2, 1, 2)
    assert codebook_usage(indices, 4) == [0.5, 1.0]
    assert codebook_perplexity(indices, 4) == pytest.approx([2.0, 4.0])
    # perplexity between 1 and the number of used codes for a skewed histogram
    skewed = torch.tensor([0, 0, 0, 1]).view(4, 1)
    (value,) = codebook_perplexity(skewed, 8)
    assert 1 < value < 2 and value == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    # per sub-codebook sizes
    assert codebook_usage(indices, [2, 8]) == [1.0, 0.5]


def test_codebook_stats_reject_bad_indices():
    with pytest.raises(ValueError, match="outside"):
        codebook_usage(torch.tensor([[5]]), 4)
    with pytest.raises(TypeError, match="integer"):
        codebook_usage(torch.zeros(2, 1), 4)
    with pytest.raises(ValueError, match="sizes"):
        codebook_usage(torch.zeros(2, 2, dtype=torch.long), [4, 4, 4])


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.5, 2, size=5), rng.uniform(0.5, 2, size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_is_rotation_invariant():
    """A shared rotation of both Gaussians (non-diagonal covariances) leaves the distance unchanged."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    s1, s2 = np.diag(rng.uniform(0.5, 2, 4)), np.diag(rng.uniform(0.5, 2, 4))
    rotated = frechet_distance(q @ mu1, q @ s1 @ q.T, q @ mu2, q @ s2 @ q.T)
    assert rotated == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-7)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_fid_from_features_on_gaussian_samples():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(size=(4000, 3)))
    b = torch.from_numpy(rng.normal(size=(4000, 3)) * 2 + 1)
    # closed form: |1|^2 * 3 + 3 * (1 + 4 - 2 * 2) = 6, up to sampling error
    assert fid_from_features(a, b) == pytest.approx(6.0, abs=0.3)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="same D"):
        fid_from_features(a, b[:, :2])
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(a[:1], b)


def test_frechet_feature_distance_with_any_extractor():
    rng = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 4, 4, generator=rng)
    mean_pixel = lambda x: x.flatten(1)[:, :3]  # noqa: E731 - a trivial feature map
    assert frechet_feature_distance(images, images, mean_pixel, batch_size=10) == pytest.approx(0.0, abs=1e-9)
    assert frechet_feature_distance(images, images + 1, mean_pixel, batch_size=10) == pytest.approx(3.0, rel=1e-6)


def test_inception_missing_weights_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match=FID_WEIGHTS_NAME) as error:
        InceptionFeatureExtractor()
    assert "https://" in str(error.value)
    with pytest.raises(FileNotFoundError, match=FID_WEIGHTS_NAME):
        InceptionFeatureExtractor(tmp_path / "nowhere.pth")


def test_inception_loads_a_pytorch_fid_style_checkpoint(tmp_path):
    """The torchvision/pytorch-fid key layout (with fc, without step counters) loads; foreign files do not."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in FIDInceptionV3().state_dict().items()}
    # zero convs and identity BatchNorm statistics: every BasicConv2d outputs relu(its bn.bias), so pool3 is
    # the last block's branch biases in torchvision's concatenation order
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.ones(shape) if k.endswith("running_var") else torch.zeros(shape)
             for k, shape in shapes.items() if not k.endswith("num_batches_tracked")}
    state |= {k: torch.randn(shape, generator=generator) for k, shape in shapes.items() if k.endswith("bn.bias")}
    # the unbiased logits must ignore fc.bias (as ADM's evaluator and torch-fidelity's logits_unbiased)
    state["fc.weight"], state["fc.bias"] = torch.randn(1008, 2048, generator=generator), torch.full((1008,), 1e3)
    torch.save(state, tmp_path / FID_WEIGHTS_NAME)

    extractor = InceptionFeatureExtractor(tmp_path)
    images = torch.rand(2, 1, 32, 32)
    features = extractor(images)
    branches = ["branch1x1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"]
    expected = torch.cat([state[f"Mixed_7c.{name}.bn.bias"] for name in branches]).relu()
    torch.testing.assert_close(features, expected[None].expand(2, -1))
    calls = []
    extractor.inception.Mixed_7c.register_forward_hook(lambda *args: calls.append(1))
    pool, logits = extractor.extract(images)
    assert len(calls) == 1  # features and logits come from one pass
    torch.testing.assert_close(pool, features)
    assert logits.shape == (2, 1008)
    torch.testing.assert_close(logits, pool @ state["fc.weight"].T)

    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not the pytorch-fid Inception checkpoint"):
        load_fid_inception(tmp_path / "other.pth")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(0)
    config = ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    ResNetForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.3], image_std=[0.4]).save_pretrained(path)
    return path


def test_classifier_accuracy_handles_ranges_and_channels(classifier_dir):
    judge = ClassifierAccuracy.from_pretrained(classifier_dir, batch_size=5)
    assert judge.image_size == (16, 16) and judge.id2label == {0: "a", 1: "b", 2: "c"}
    images = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    predictions = judge.classify(images)
    assert predictions.shape == (12,) and predictions.dtype == torch.long
    # the same pictures as [-1, 1] tensors or as RGB (equal channels) are judged identically
    assert torch.equal(judge.classify(images * 2 - 1, value_range=(-1, 1)), predictions)
    assert torch.equal(judge.classify(images.expand(-1, 3, -1, -1)), predictions)
    assert judge.accuracy(images, predictions) == 1.0
    assert judge.accuracy(images, (predictions + 1) % 3) == 0.0
    # batching does not change the logits
    torch.testing.assert_close(judge.logits(images), judge.model(pixel_values=judge.preprocess(images)).logits)
    assert judge.features(images).shape == (12, 16)


def test_classifier_accuracy_rejects_bad_input(classifier_dir):
    judge = ClassifierAccuracy.from_pretrained(classifier_dir)
    with pytest.raises(ValueError, match=r"value_range=\(-1, 1\)"):
        judge.classify(torch.full((2, 1, 8, 8), -1.0))
    with pytest.raises(ValueError, match="tensor"):
        judge.classify(torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match="labels"):
        judge.accuracy(torch.rand(2, 1, 8, 8), [0, 1, 2])
    with pytest.raises(OSError, match="train_fmnist_classifier"):
        ClassifierAccuracy.from_pretrained(classifier_dir / "missing")


def test_image_processor_config_reads_the_statistics_or_says_there_are_none(classifier_dir, tmp_path):
    import shutil

    from hf_vq.utils import image_processor_config

    # a from_pretrained call's keyword arguments may come along: the Hub ones are used, the rest ignored
    config = image_processor_config(classifier_dir, subfolder="", dtype=torch.float32)
    assert config["image_mean"] == [0.3] and config["size"] == {"height": 16, "width": 16}
    assert image_processor_config(tmp_path) is None
    assert image_processor_config("org/not-cached", local_files_only=True, cache_dir=tmp_path / "cache") is None
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(OSError):
        image_processor_config(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("[0.5]")
    with pytest.raises(ValueError, match="not a JSON object"):
        image_processor_config(tmp_path)

    copy = shutil.copytree(classifier_dir, tmp_path / "classifier")
    (copy / "preprocessor_config.json").write_text(json.dumps({**config, "size": {"longest_edge": 16}}))
    with pytest.raises(ValueError, match="height and width or shortest_edge"):
        ClassifierAccuracy.from_pretrained(copy)
    (copy / "preprocessor_config.json").write_text(json.dumps({"size": 16}))
    with pytest.raises(ValueError, match="lacks image_mean, image_std"):
        ClassifierAccuracy.from_pretrained(copy)
    (copy / "preprocessor_config.json").unlink()
    with pytest.raises(OSError, match="train_fmnist_classifier"):
        ClassifierAccuracy.from_pretrained(copy)
