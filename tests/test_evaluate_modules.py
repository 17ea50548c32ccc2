"""The hf_vq metrics as local `evaluate` modules: loaded by path offline, numbers equal to the hf_vq functions'."""

import itertools
import socket
import sys
from pathlib import Path

import pytest
import torch

from hf_vq.evaluation import (
    CodebookStatistics,
    fid_from_features,
    inception_score,
    precision_recall,
    psnr_uint8,
    ssim,
    ssim_gaussian,
)
from hf_vq.evaluation.evaluate_modules import EVALUATE_MODULES, evaluate_module_path


def _no_network(*args, **kwargs):
    raise AssertionError(f"an evaluate module tried to reach the network: {args}")


def _dynamic_module_names() -> list[str]:
    return [name for name in sys.modules if name == "evaluate_modules" or name.startswith("evaluate_modules.")]


@pytest.fixture(scope="module")
def load(tmp_path_factory):
    """`load(name)`: `evaluate.load` of an hf_vq module with every cache under tmp and the network cut."""
    evaluate = pytest.importorskip("evaluate")
    cache = tmp_path_factory.mktemp("hf_cache")
    with pytest.MonkeyPatch.context() as patch:
        for variable, folder in (("HF_HOME", ""), ("HF_MODULES_CACHE", "modules"), ("HF_EVALUATE_CACHE", "evaluate")):
            patch.setenv(variable, str(cache / folder))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_EVALUATE_OFFLINE", "1")
        # evaluate reads those variables once, when first imported (perhaps by an earlier test): patch its config too
        patch.setattr(evaluate.config, "HF_MODULES_CACHE", cache / "modules")
        patch.setattr(evaluate.config, "HF_METRICS_CACHE", cache / "metrics")
        patch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
        # the copied scripts are imported as `evaluate_modules.…` from the first such package found: make it ours
        for name in _dynamic_module_names():
            patch.delitem(sys.modules, name)
        patch.syspath_prepend(str(cache / "modules"))
        patch.setattr(socket.socket, "connect", _no_network)

        experiments = itertools.count()

        def load_module(name: str):
            # an instance whose compute raised keeps its cache-file lock while alive; a fresh experiment id per
            # instance spares the next one evaluate's wait for that lock
            return evaluate.load(
                evaluate_module_path(name), cache_dir=str(cache / "metrics"), experiment_id=f"test{next(experiments)}"
            )

        yield load_module
        for name in _dynamic_module_names():
            del sys.modules[name]  # later loads must find their own cache's package, not this tmp one


def _image_pair(value_range: tuple[float, float], shape: tuple[int, ...], seed: int = 0):
    """Images in `value_range` and a noisy copy, float64 (B, C, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    low, high = value_range
    x = torch.rand(shape, generator=generator, dtype=torch.float64)
    y = (x + 0.2 * (torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5)).clamp(0, 1)
    return x * (high - low) + low, y * (high - low) + low


def test_module_names_and_paths():
    assert EVALUATE_MODULES == (
        "psnr", "ssim", "frechet_distance", "inception_score", "precision_recall", "codebook_usage"
    )
    for name in EVALUATE_MODULES:
        folder = Path(evaluate_module_path(name))
        assert folder.name == name and (folder / f"{name}.py").is_file() and (folder / "README.md").is_file()
    with pytest.raises(ValueError, match="available: psnr, ssim, frechet_distance"):
        evaluate_module_path("fid")


@pytest.mark.parametrize("value_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_psnr(load, value_range):
    x, y = _image_pair(value_range, (4, 3, 8, 8))
    metric = load("psnr")
    # numpy, nested lists and tensors are all accepted, and batches add up
    metric.add_batch(predictions=x[:2].numpy(), references=y[:2].tolist())
    result = metric.compute(predictions=x[2:], references=y[2:], value_range=value_range)
    assert result == {"psnr": pytest.approx(float(psnr_uint8(x, y, value_range=value_range)), rel=1e-12)}


@pytest.mark.parametrize(("window", "function"), [("uniform", ssim), ("gaussian", ssim_gaussian)])
def test_ssim(load, window, function):
    x, y = _image_pair((-1.0, 1.0), (3, 1, 12, 12), seed=1)
    result = load("ssim").compute(predictions=x, references=y, window=window)
    assert result == {"ssim": pytest.approx(float(function(x, y)), rel=1e-12)}
    with pytest.raises(ValueError, match="window"):
        load("ssim").compute(predictions=x, references=y, window="box")


def test_frechet_distance(load):
    generator = torch.Generator().manual_seed(2)
    samples = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    reference = torch.randn(10, 3, generator=generator, dtype=torch.float64) + 0.5
    expected = fid_from_features(samples, reference)
    # sets of different sizes: the shorter column is padded with None
    padded = [*reference.numpy(), None, None]
    assert load("frechet_distance").compute(predictions=samples, references=padded) == {
        "fd": pytest.approx(expected, rel=1e-12)
    }
    metric = load("frechet_distance")
    metric.add_batch(predictions=samples[:6], references=padded[:6])
    metric.add_batch(predictions=samples[6:], references=padded[6:])
    assert metric.compute(name="fid") == {"fid": pytest.approx(expected, rel=1e-12)}


def test_inception_score(load):
    logits = torch.randn(10, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    expected = inception_score(logits, split_size=5)
    metric = load("inception_score")
    metric.add_batch(predictions=logits[:3])
    result = metric.compute(predictions=logits[3:].tolist(), split_size=5)
    assert result == {
        "inception_score": pytest.approx(expected.mean, rel=1e-12),
        "inception_score_std": pytest.approx(expected.std, rel=1e-12, abs=1e-15),
    }


def test_precision_recall(load):
    generator = torch.Generator().manual_seed(4)
    samples = torch.randn(9, 4, generator=generator, dtype=torch.float64)
    reference = torch.randn(12, 4, generator=generator, dtype=torch.float64) + 0.3
    expected = precision_recall(reference_features=reference, sample_features=samples, k=2)
    padded = [*samples.numpy(), None, None, None]
    result = load("precision_recall").compute(predictions=padded, references=reference, k=2)
    assert result == {"precision": expected.precision, "recall": expected.recall}
    assert 0 < result["precision"] < 1 or 0 < result["recall"] < 1  # a non-trivial case


def test_codebook_usage_over_batches(load):
    indices = torch.randint(0, 8, (6, 2, 3, 3), generator=torch.Generator().manual_seed(5))
    codebook_size = [16, 8]
    expected = CodebookStatistics(codebook_size).update(indices).compute()
    whole = load("codebook_usage").compute(predictions=indices, codebook_size=codebook_size)
    metric = load("codebook_usage")
    metric.add_batch(predictions=indices[:4].numpy())
    metric.add_batch(predictions=indices[4:].tolist())
    batched = metric.compute(codebook_size=codebook_size)
    assert whole == batched == expected
    assert 0 < expected["usage"][0] < 1  # one batch alone would see fewer codes


def test_codebook_usage_sequences_of_any_length(load):
    generator = torch.Generator().manual_seed(6)
    images = [torch.randint(0, 32, (2, n), generator=generator) for n in (5, 9, 3)]
    statistics = CodebookStatistics(32)
    for tokens in images:
        statistics.update(tokens[None])
    assert load("codebook_usage").compute(predictions=images, codebook_size=32) == statistics.compute()
    with pytest.raises(ValueError, match="codebook_size is required"):
        load("codebook_usage").compute(predictions=images)
