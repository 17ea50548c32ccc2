"""Tokenizer training losses that need networks of their own: LPIPS and the PatchGAN discriminator."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# torchvision's vgg16().features layout: conv indices; "M" is max-pool. LPIPS taps relu1_2 .. relu5_3.
_VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_LPIPS_TAPS = (3, 8, 15, 22, 29)  # indices (in `features`) of the ReLUs whose outputs LPIPS compares
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_DOWNLOAD_HINT = (
    "LPIPS needs two files: the torchvision VGG16 ImageNet weights (vgg16-397923af.pth, from "
    "download.pytorch.org/models) and the LPIPS linear layers (lpips/weights/v0.1/vgg.pth from the `lpips` PyPI "
    "package). Pass their paths (--vgg16_path/--lpips_path), or set the perceptual weight to 0."
)


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for item in _VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_ch, item, 3, padding=1), nn.ReLU(inplace=False)]
            in_ch = item
    return nn.Sequential(*layers)


def _load_state(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found at {path}. {LPIPS_DOWNLOAD_HINT}")
    return torch.load(path, map_location="cpu", weights_only=True)


class LPIPS(nn.Module):
    """Learned perceptual distance (VGG16 variant), frozen; inputs in [-1, 1], 1 or 3 channels."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.features = _vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _LPIPS_CHANNELS)
        self.requires_grad_(False).eval()

    @classmethod
    def from_files(cls, vgg16_path: str | os.PathLike, lpips_path: str | os.PathLike) -> LPIPS:
        """Build from torchvision's VGG16 state dict and the LPIPS `vgg.pth` linear layers."""
        vgg = _load_state(vgg16_path, "VGG16")
        lin = _load_state(lpips_path, "LPIPS linear-layer")
        model = cls()
        features = {k[len("features."):]: v for k, v in vgg.items() if k.startswith("features.")}
        model.features.load_state_dict(features)
        model.lins.load_state_dict({f"{i}.weight": lin[f"lin{i}.model.1.weight"] for i in range(len(_LPIPS_CHANNELS))})
        return model

    def train(self, mode: bool = True) -> LPIPS:
        """Always in eval mode: the metric is frozen."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS distance between two image batches."""
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        h = (torch.cat([x, y]) - self.shift) / self.scale
        total = h.new_zeros(())
        tap = 0
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _LPIPS_TAPS:
                a, b = F.normalize(h, dim=1, eps=1e-10).chunk(2)
                total = total + self.lins[tap]((a - b) ** 2).mean()
                tap += 1
        return total


class PatchGANDiscriminator(nn.Module):
    """pix2pix NLayerDiscriminator: strided 4x4 convs, BatchNorm, LeakyReLU(0.2); a logit per patch."""

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = base_channels
        for n in range(1, num_layers + 1):
            out = base_channels * min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-mean D(x_hat)."""
    return -logits_fake.mean()
