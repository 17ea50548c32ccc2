"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"), VGG, v0.1.

Computes what the `lpips` package's `LPIPS(net="vgg", version="0.1")` computes (lpips/lpips.py,
lpips/pretrained_networks.py), without torchvision and without downloading anything: the VGG16 trunk comes from
torchvision's ImageNet checkpoint and the linear layers from the `lpips` package's weights/v0.1/vgg.pth, both
read from local files. The trunk's parameter names follow torchvision's `vgg16().features`, so its checkpoint
loads as is.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import torch
from torch import nn

from .images import check_image_pair
from .inception import checkpoint_candidate

VGG16_WEIGHTS_NAME = "vgg16-397923af.pth"
VGG16_WEIGHTS_URL = f"https://download.pytorch.org/models/{VGG16_WEIGHTS_NAME}"
LPIPS_WEIGHTS_NAME = "vgg.pth"
LPIPS_WEIGHTS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"

# lpips/lpips.py ScalingLayer: ImageNet statistics expressed for inputs in [-1, 1]
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

# torchvision's VGG16 configuration "D": channel counts, "M" for a 2x2 max pool
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# indices into `features` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, where lpips/pretrained_networks.py
# ends its five slices
_TAPS = (3, 8, 15, 22, 29)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_LIN_KEY = re.compile(r"lin(\d)\.model\.\d\.weight")  # model.1 behind the Dropout of the released file


class VGG16Features(nn.Module):
    """torchvision's `vgg16().features` up to relu5_3: (B, 3, H, W) -> the five ReLU maps LPIPS compares."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for spec in _VGG16_LAYOUT:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, spec, kernel_size=3, padding=1), nn.ReLU()]
                in_channels = spec
        # the final pool (index 30) comes after relu5_3 and has no parameters: leaving it out keeps the key names
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _TAPS:
                taps.append(x)
        return taps


def _normalize_channels(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # lpips.normalize_tensor: eps is added to the norm, not inside the square root
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS-VGG v0.1 distance (build it with `from_pretrained`): `model(x, y, value_range)` -> (B,) distances."""

    def __init__(self):
        super().__init__()
        self.net = VGG16Features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in LPIPS_CHANNELS)
        self.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(
        cls, vgg_weights: str | os.PathLike | None = None, lpips_weights: str | os.PathLike | None = None
    ) -> LPIPS:
        """Load torchvision's VGG16 checkpoint and the lpips v0.1 linear weights (see `find_vgg16_weights`)."""
        vgg_path, lin_path = find_vgg16_weights(vgg_weights), find_lpips_weights(lpips_weights)
        with torch.device("meta"):
            model = cls()  # every weight comes from the files: skip the random init
        state_dict = _vgg_state_dict(vgg_path, model.net) | _lin_state_dict(lin_path, model.lins)
        model.load_state_dict(state_dict, assign=True)
        return model.eval().requires_grad_(False)

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        dtype = self.lins[0].weight.dtype
        x = images.to(dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        shift = torch.tensor(_SHIFT, dtype=dtype, device=x.device).view(1, 3, 1, 1)
        scale = torch.tensor(_SCALE, dtype=dtype, device=x.device).view(1, 3, 1, 1)
        return [_normalize_channels(f) for f in self.net((x - shift) / scale)]

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image distances (B,) of [-1, 1] batches, differentiable and unchecked: the perceptual training loss."""
        # each batch goes through the trunk on its own, as the lpips package does
        features_x, features_y = self._features(x), self._features(y)
        return sum(lin((fx - fy) ** 2).mean(dim=(1, 2, 3)) for lin, fx, fy in zip(self.lins, features_x, features_y))

    @torch.no_grad()
    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        value_range: tuple[float, float] = (-1.0, 1.0),
        reduction: str = "none",
    ) -> torch.Tensor:
        """Per-image LPIPS distances (B,) between two checked batches (the metric); `reduction="mean"` averages."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        check_image_pair(x, y, value_range)
        height, width = x.shape[-2:]
        if height < 16 or width < 16:  # relu5_3 sits behind four 2x2 pools
            raise ValueError(f"LPIPS-VGG needs images of at least 16x16, got {height}x{width}")
        if tuple(map(float, value_range)) == (0.0, 1.0):
            x, y = 2 * x - 1, 2 * y - 1  # lpips expects [-1, 1]; its normalize=True does the same
        values = self.distance(x, y)
        return values.mean() if reduction == "mean" else values


def find_vgg16_weights(weights: str | os.PathLike | None = None) -> Path:
    """Locate torchvision's VGG16 ImageNet checkpoint (the file or its folder; None: torch hub's checkpoints)."""
    candidate, torch_hub = checkpoint_candidate(VGG16_WEIGHTS_NAME, weights)
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(
        f"VGG16 weights {VGG16_WEIGHTS_NAME} (torchvision's ImageNet checkpoint, needed by LPIPS) not found at "
        f"{candidate}. Download them from {VGG16_WEIGHTS_URL} and pass the file's path, or put the file in "
        f"{torch_hub.parent}."
    )


def find_lpips_weights(weights: str | os.PathLike | None = None) -> Path:
    """Locate the lpips v0.1 VGG linear weights: the file or its folder; None: an installed `lpips` package."""
    if weights is not None:
        path = Path(weights).expanduser()
        candidate = path / LPIPS_WEIGHTS_NAME if path.is_dir() else path
        where = str(candidate)
    else:
        # find_spec locates the package without running it: its __init__ imports torchvision
        spec = importlib.util.find_spec("lpips")
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        candidate = Path(folders[0]) / "weights" / "v0.1" / LPIPS_WEIGHTS_NAME if folders else None
        where = str(candidate) if candidate else "an installed `lpips` package (none found)"
    if candidate is not None and candidate.is_file():
        return candidate
    raise FileNotFoundError(
        f"LPIPS linear weights v0.1/{LPIPS_WEIGHTS_NAME} not found at {where}. They ship with the `lpips` package: "
        f"`pip install --no-deps lpips` (it is only read, never imported), or download {LPIPS_WEIGHTS_URL} "
        f"and pass the file's path."
    )


def _vgg_state_dict(path: Path, trunk: VGG16Features) -> dict[str, torch.Tensor]:
    """The `features.*` tensors of a torchvision VGG16 checkpoint, keyed for `LPIPS.net`; the classifier is ignored."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    expected = trunk.state_dict()
    state = {k: v for k, v in loaded.items() if k.startswith("features.")} if isinstance(loaded, dict) else {}
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} is not torchvision's VGG16 checkpoint: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong[:5]}"
        )
    return {f"net.{k}": v for k, v in state.items()}


def _lin_state_dict(path: Path, lins: nn.ModuleList) -> dict[str, torch.Tensor]:
    """The five `lin{k}.model.*.weight` tensors of an lpips weights file, keyed for `LPIPS.lins`."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    loaded = loaded if isinstance(loaded, dict) else {}
    state, foreign = {}, []
    for key, value in loaded.items():
        match = _LIN_KEY.fullmatch(key)
        if match is None or int(match.group(1)) >= len(lins):
            foreign.append(key)
        else:
            state[f"lins.{match.group(1)}.weight"] = value
    expected = {f"lins.{k}.weight": lin.weight.shape for k, lin in enumerate(lins)}
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(shape)}" for k, shape in expected.items()
             if k in state and state[k].shape != shape]
    if foreign or wrong or state.keys() != expected.keys():
        raise ValueError(
            f"{path} is not the lpips v0.1 VGG weights file: expected lin0..lin4.model.1.weight of shapes "
            f"(1, C, 1, 1) for C in {LPIPS_CHANNELS}; unexpected keys {foreign[:5]}, wrong shapes {wrong[:5]}, "
            f"found {sorted(loaded)[:5]}"
        )
    # the paper constrains the linear weights to be non-negative, which keeps the distance non-negative
    negative = [k for k, v in state.items() if (v < 0).any()]
    if negative:
        raise ValueError(f"{path} has negative LPIPS linear weights in {negative}: not a trained lpips file")
    return state
