"""Tokenizer training losses that need networks of their own: LPIPS (perceptual) and the PatchGAN discriminator."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..evaluation.lpips import LPIPS

LPIPS_DOWNLOAD_HINT = (
    "LPIPS needs two files: the torchvision VGG16 ImageNet weights (vgg16-397923af.pth, from "
    "download.pytorch.org/models) and the LPIPS linear layers (lpips/weights/v0.1/vgg.pth from the `lpips` PyPI "
    "package). Pass their paths (--vgg16_path/--lpips_path), or set the perceptual weight to 0."
)


class PerceptualLoss(nn.Module):
    """The frozen LPIPS-VGG of `hf_vq.evaluation` as a differentiable training loss: (x, y) in [-1, 1] -> mean."""

    def __init__(self, lpips: LPIPS):
        super().__init__()
        self.lpips = lpips

    @classmethod
    def from_files(cls, vgg16_path: str | os.PathLike, lpips_path: str | os.PathLike) -> PerceptualLoss:
        """Build from torchvision's VGG16 state dict and the LPIPS `vgg.pth` linear layers."""
        return cls(LPIPS.from_pretrained(vgg16_path, lpips_path))

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Always in eval mode: the loss network is frozen."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lpips.distance(x, y).mean()


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

    def forward(self, x: torch.Tensor, *more: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Patch logits of `x`; given more batches, a tuple of logits, each batch normalised on its own."""
        if not more:
            return self.main(x)
        return tuple(self.main(batch) for batch in (x, *more))


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-mean D(x_hat)."""
    return -logits_fake.mean()
