import sys

import numpy as np
import pytest
import torch

from hf_vq.evaluation.lpips import (
    LPIPS,
    LPIPS_CHANNELS,
    VGG16_WEIGHTS_NAME,
    VGG16_WEIGHTS_URL,
    VGG16Features,
    find_lpips_weights,
    find_vgg16_weights,
)
from hf_vq.evaluation.ssim import ssim, ssim_gaussian


def _ssim_pair(seed: int, channels: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth gradient plus noise, and a noisier copy, on the uint8 grid of [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    smooth = 0.5 * (ramp[:, None] + ramp[None, :])
    x = 0.7 * smooth + 0.3 * torch.rand(channels, size, size, generator=generator)
    y = (x + 0.25 * (torch.rand(channels, size, size, generator=generator) - 0.5)).clamp(0, 1)
    x, y = (torch.round(t * 255) / 255 * 2 - 1 for t in (x, y))
    return x, y


def _ssim_batch(channels: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(_ssim_pair(seed, channels, size) for seed in (0, 1)))
    return torch.stack(xs), torch.stack(ys)


# From scikit-image 0.26.0 on the same images mapped to [0, 1] (to_uint8_unit), as numpy (C, H, W) float64:
#   uniform:  skimage.metrics.structural_similarity(a, b, data_range=1, channel_axis=0)
#   gaussian: structural_similarity(a, b, data_range=1, channel_axis=0, gaussian_weights=True, sigma=1.5,
#                                   use_sample_covariance=False)
# with channel_axis=None on the (H, W) image for greyscale; one value per image of the batch.
SKIMAGE_SSIM = {
    (1, 28): ([0.7825504661159736, 0.778846316566674], [0.7643156117454188, 0.7632469315100429]),
    (3, 32): ([0.7776743609679387, 0.7760377459497209], [0.7684447538184136, 0.7663150358110254]),
}


@pytest.mark.parametrize("channels, size", sorted(SKIMAGE_SSIM))
def test_ssim_matches_scikit_image(channels, size):
    x, y = _ssim_batch(channels, size)
    uniform, gaussian = SKIMAGE_SSIM[(channels, size)]
    assert ssim(x, y, reduction="none").tolist() == pytest.approx(uniform, abs=1e-6)
    assert ssim_gaussian(x, y, reduction="none").tolist() == pytest.approx(gaussian, abs=1e-6)
    assert ssim(x, y).item() == pytest.approx(np.mean(uniform), abs=1e-6)
    assert ssim_gaussian(x, y).item() == pytest.approx(np.mean(gaussian), abs=1e-6)
    # the same images given in [0, 1]
    assert ssim((x + 1) / 2, (y + 1) / 2, value_range=(0, 1), reduction="none").tolist() == pytest.approx(
        uniform, abs=1e-6
    )


@pytest.mark.parametrize("metric", [ssim, ssim_gaussian])
def test_ssim_of_identical_images_is_exactly_one(metric):
    x, _ = _ssim_batch(3, 32)
    assert metric(x, x, reduction="none").tolist() == [1.0, 1.0]
    # differences below half a uint8 step vanish in the rounding that saving a PNG does
    assert metric(x, (x + 1e-3).clamp(-1, 1)).item() == 1.0
    grey = torch.rand(1, 1, 11, 11, generator=torch.Generator().manual_seed(0))
    assert metric(grey, grey, value_range=(0, 1)).item() == 1.0


def test_ssim_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(torch.zeros(1, 1, 6, 28), torch.zeros(1, 1, 6, 28))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_gaussian(torch.zeros(1, 3, 10, 10), torch.zeros(1, 3, 10, 10))
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 17))
    with pytest.raises(ValueError, match="outside value_range"):
        ssim(torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 2.0))
    with pytest.raises(ValueError, match="reduction"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), reduction="sum")


# torchvision's vgg16().features: conv indices and (out, in) channels
TORCHVISION_VGG16_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
                           14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512),
                           26: (512, 512), 28: (512, 512)}


def _vgg_shapes() -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in VGG16Features().state_dict().items()}


def _save_lpips_files(folder, vgg_state: dict[str, torch.Tensor], seed: int = 0):
    """torchvision's VGG16 file layout (classifier included) and the lpips package's vgg.pth layout."""
    folder.mkdir(parents=True, exist_ok=True)
    vgg_state = dict(vgg_state, **{"classifier.6.weight": torch.zeros(1000, 8), "classifier.6.bias": torch.zeros(1000)})
    torch.save(vgg_state, folder / VGG16_WEIGHTS_NAME)
    generator = torch.Generator().manual_seed(seed)
    lins = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator) for k, c in enumerate(LPIPS_CHANNELS)}
    torch.save(lins, folder / "vgg.pth")
    return folder / VGG16_WEIGHTS_NAME, folder / "vgg.pth", lins


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """Random He-scaled VGG16 weights and random non-negative linear weights."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in _vgg_shapes().items():
        std = (2 / (shape[1] * 9)) ** 0.5 if key.endswith("weight") else 0.1
        state[key] = torch.randn(shape, generator=generator) * std
    return _save_lpips_files(tmp_path_factory.mktemp("lpips"), state)


@pytest.fixture(scope="module")
def lpips_model(lpips_files):
    vgg_path, lin_path, _ = lpips_files
    return LPIPS.from_pretrained(vgg_path, lin_path)


def _images(seed: int, shape=(2, 3, 32, 32)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=generator) * 2 - 1
    return x, (x + 0.5 * torch.randn(shape, generator=generator)).clamp(-1, 1)


def test_vgg16_trunk_has_torchvision_parameter_names():
    expected = {}
    for index, (out_channels, in_channels) in TORCHVISION_VGG16_CONVS.items():
        expected[f"features.{index}.weight"] = (out_channels, in_channels, 3, 3)
        expected[f"features.{index}.bias"] = (out_channels,)
    assert {k: tuple(v) for k, v in _vgg_shapes().items()} == expected
    layers = VGG16Features().features
    assert len(layers) == 30 and all(isinstance(layers[i], torch.nn.MaxPool2d) for i in (4, 9, 16, 23))
    assert all(isinstance(layers[i], torch.nn.ReLU) for i in (3, 8, 15, 22, 29))


def test_lpips_loads_files_and_gives_per_image_distances(lpips_model):
    x, y = _images(0)
    distances = lpips_model(x, y)
    assert distances.shape == (2,) and distances.dtype == torch.float32
    assert (distances > 0).all() and not distances.requires_grad
    assert lpips_model(x, y, reduction="mean").item() == pytest.approx(distances.mean().item())
    assert not lpips_model.training
    # identical images are at distance exactly 0; the distance is symmetric
    assert lpips_model(x, x).tolist() == [0.0, 0.0]
    assert torch.equal(lpips_model(y, x), distances)
    # [0, 1] inputs are mapped to [-1, 1]; greyscale is compared as three equal channels
    torch.testing.assert_close(lpips_model((x + 1) / 2, (y + 1) / 2, value_range=(0, 1)), distances)
    torch.testing.assert_close(lpips_model(x[:, :1], y[:, :1]), lpips_model(x[:, :1].expand_as(x),
                                                                            y[:, :1].expand_as(y)))


def test_lpips_recomputed_from_the_formula(lpips_model, lpips_files):
    """Zhang et al. eq. 1 on the trunk's five maps, with the ScalingLayer of lpips/lpips.py written out."""
    _, _, lins = lpips_files
    x, y = _images(1, (2, 3, 48, 40))
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    # the five slices of lpips/pretrained_networks.py end after features[3, 8, 15, 22, 29]
    features = lpips_model.net.features
    taps_x, taps_y = ([features[:end]((t - shift) / scale) for end in (4, 9, 16, 23, 30)] for t in (x, y))
    assert [tuple(t.shape[1:]) for t in taps_x] == [(64, 48, 40), (128, 24, 20), (256, 12, 10), (512, 6, 5),
                                                     (512, 3, 2)]
    expected = torch.zeros(2, dtype=torch.float64)
    for k, (fx, fy) in enumerate(zip(taps_x, taps_y)):
        fx, fy = fx.double(), fy.double()
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = lins[f"lin{k}.model.1.weight"].double().view(1, -1, 1, 1)
        expected += (w * (nx - ny) ** 2).sum(1).mean(dim=(1, 2))
    torch.testing.assert_close(lpips_model(x, y).double(), expected, rtol=1e-5, atol=1e-7)


def test_lpips_by_hand_with_an_identity_first_slice(tmp_path):
    """relu1_2 copies relu(scaled input) into channels 0-2 and later slices are constant: LPIPS is eq. 1 on pixels."""
    state = {key: torch.zeros(shape) for key, shape in _vgg_shapes().items()}
    for channel in range(3):
        state["features.0.weight"][channel, channel, 1, 1] = 1.0
        state["features.2.weight"][channel, channel, 1, 1] = 1.0
    for index in (5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28):
        state[f"features.{index}.bias"] += 1.0  # zero weights: every later map is 1 everywhere, for any input
    vgg_path, lin_path, lins = _save_lpips_files(tmp_path, state, seed=3)
    model = LPIPS.from_pretrained(vgg_path, lin_path)

    generator = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 16, 16, generator=generator) * 2 - 1
    y = torch.rand(3, 3, 16, 16, generator=generator) * 2 - 1
    x[0] = y[0]
    x[1, :, :4] = y[1, :, :4]

    def unit(images: np.ndarray) -> np.ndarray:
        scaled = (images - np.array([-0.030, -0.088, -0.188])[:, None, None]) / np.array([0.458, 0.448, 0.450])[
            :, None, None]
        rectified = np.maximum(scaled, 0)
        return rectified / (np.sqrt((rectified**2).sum(axis=1, keepdims=True)) + 1e-10)

    w0 = lins["lin0.model.1.weight"].numpy().reshape(-1)[:3]
    diff = (unit(x.double().numpy()) - unit(y.double().numpy())) ** 2
    expected = (w0[None, :, None, None] * diff).sum(axis=1).mean(axis=(1, 2))
    got = model(x, y)
    assert got[0].item() == 0.0 and got[1].item() > 0
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)
    # greyscale is repeated over the three channels before the ScalingLayer
    grey_expected = (w0[None, :, None, None] * (unit(x[:, :1].expand_as(x).double().numpy())
                                                - unit(y[:, :1].expand_as(y).double().numpy())) ** 2)
    np.testing.assert_allclose(model(x[:, :1], y[:, :1]).numpy(), grey_expected.sum(axis=1).mean(axis=(1, 2)),
                               rtol=1e-5, atol=1e-7)


def test_lpips_refuses_bad_images(lpips_model):
    with pytest.raises(ValueError, match="at least 16x16"):
        lpips_model(torch.zeros(1, 3, 8, 32), torch.zeros(1, 3, 8, 32))
    with pytest.raises(ValueError, match="same shape"):
        lpips_model(torch.zeros(1, 3, 32, 32), torch.zeros(1, 1, 32, 32))


def test_lpips_missing_files_are_refused(tmp_path, monkeypatch, lpips_files):
    vgg_path, lin_path, _ = lpips_files
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match=VGG16_WEIGHTS_NAME) as error:
        LPIPS.from_pretrained(lpips_weights=lin_path)
    assert VGG16_WEIGHTS_URL in str(error.value) and str(tmp_path / "checkpoints") in str(error.value)
    with pytest.raises(FileNotFoundError, match=VGG16_WEIGHTS_URL):
        find_vgg16_weights(tmp_path / "nowhere.pth")
    assert find_vgg16_weights(vgg_path.parent) == vgg_path
    with pytest.raises(FileNotFoundError, match="vgg.pth"):
        LPIPS.from_pretrained(vgg_path, tmp_path)
    # no lpips package to find: the hint says how to get one
    monkeypatch.setitem(sys.modules, "lpips", None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps lpips"):
        find_lpips_weights()


def _fake_lpips_package(root, lin_path=None):
    package = root / "lpips"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('the lpips package must not be imported')\n")
    if lin_path is not None:
        (package / "weights" / "v0.1").mkdir(parents=True)
        (package / "weights" / "v0.1" / "vgg.pth").write_bytes(lin_path.read_bytes())
    return package


def test_lpips_weights_found_in_an_installed_package_without_importing_it(tmp_path, monkeypatch, lpips_files):
    vgg_path, lin_path, _ = lpips_files
    monkeypatch.delitem(sys.modules, "lpips", raising=False)
    package = _fake_lpips_package(tmp_path / "site", lin_path)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert find_lpips_weights() == package / "weights" / "v0.1" / "vgg.pth"
    x, y = _images(0)
    torch.testing.assert_close(LPIPS.from_pretrained(vgg_path)(x, y), LPIPS.from_pretrained(vgg_path, lin_path)(x, y))
    assert "lpips" not in sys.modules


def test_lpips_package_without_weights_is_refused(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "lpips", raising=False)
    package = _fake_lpips_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps lpips") as error:
        find_lpips_weights()
    assert str(package / "weights" / "v0.1" / "vgg.pth") in str(error.value)


def test_lpips_wrong_file_layouts_are_refused(tmp_path, lpips_files):
    vgg_path, lin_path, lins = lpips_files
    # the lpips package's own module names are not torchvision's
    torch.save({"net.slice1.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "slices.pth")
    with pytest.raises(ValueError, match="not torchvision's VGG16 checkpoint"):
        LPIPS.from_pretrained(tmp_path / "slices.pth", lin_path)
    bad_lins = {
        "wrong shapes \\['lins.2.weight": dict(lins, **{"lin2.model.1.weight": torch.rand(1, 128, 1, 1)}),
        "not the lpips v0.1 VGG weights": {k: v for k, v in lins.items() if not k.startswith("lin4")},
        "unexpected keys \\['scaling_layer.shift'\\]": dict(lins, **{"scaling_layer.shift": torch.zeros(1, 3, 1, 1)}),
        "negative LPIPS linear weights": dict(lins, **{"lin0.model.1.weight": -lins["lin0.model.1.weight"]}),
    }
    for message, state in bad_lins.items():
        torch.save(state, tmp_path / "bad.pth")
        with pytest.raises(ValueError, match=message):
            LPIPS.from_pretrained(vgg_path, tmp_path / "bad.pth")


def test_the_training_perceptual_loss_is_the_metric_with_gradients(lpips_files, lpips_model):
    from hf_vq.training.losses import PerceptualLoss

    loss = PerceptualLoss.from_files(*lpips_files[:2]).train()
    assert not loss.training and not any(p.requires_grad for p in loss.parameters())
    x, y = _images(3)
    x.requires_grad_(True)
    value = loss(x, y)
    value.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.testing.assert_close(value.detach(), lpips_model(x.detach(), y, reduction="mean"))
