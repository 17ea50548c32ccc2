"""The StyleGAN2 discriminator and its losses, as ViT-VQGAN trains against them, in plain PyTorch.

Karras et al., "Analyzing and Improving the Image Quality of StyleGAN" (CVPR 2020), official code
NVlabs/stylegan2 `training/networks_stylegan2.py` (D_stylegan2, architecture="resnet") and `training/loss.py`
(D_logistic_r1, G_logistic_ns): equalized-learning-rate convolutions with leaky ReLU, residual blocks that blur
([1, 3, 3, 1]) before every stride-2 convolution, a minibatch standard deviation feature before the final layers,
the non-saturating logistic loss and the R1 gradient penalty on real images, applied lazily.

The depth follows the image size: blocks halve the resolution while it is even and the result is at least 4 px,
so 256 px ends at 4 x 4 like StyleGAN2, and 28 px (Fashion-MNIST) at 7 x 7, with no padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_LRELU_GAIN = math.sqrt(2)  # keeps activations' variance through leaky ReLU (StyleGAN2's def_gain)


class EqualizedConv2d(nn.Module):
    """Conv2d whose N(0, 1) weights are scaled by 1/sqrt(fan_in) at run time (StyleGAN's equalized learning rate),
    optionally followed by leaky ReLU(0.2) x sqrt(2); with `down`, a [1, 3, 3, 1] blur then stride 2."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activate: bool = True, down: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.activate = activate
        self.down = down
        self.padding = 0 if down else kernel_size // 2
        if down:
            taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
            blur = torch.outer(taps, taps)
            self.register_buffer("blur", (blur / blur.sum())[None, None], persistent=False)
            # Pads of upfirdn2d for a 4-tap filter before a stride-2 conv: the output is exactly half the input.
            self.blur_pad = (kernel_size + 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            c = x.shape[1]
            x = F.conv2d(F.pad(x, [self.blur_pad] * 4), self.blur.expand(c, 1, -1, -1).to(x.dtype), groups=c)
        x = F.conv2d(x, self.weight * self.scale, self.bias, stride=2 if self.down else 1, padding=self.padding)
        return F.leaky_relu(x, 0.2) * _LRELU_GAIN if self.activate else x


class EqualizedLinear(nn.Module):
    """Linear layer with the equalized learning rate, optionally followed by leaky ReLU(0.2) x sqrt(2)."""

    def __init__(self, in_features: int, out_features: int, activate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = 1 / math.sqrt(in_features)
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.scale, self.bias)
        return F.leaky_relu(x, 0.2) * _LRELU_GAIN if self.activate else x


class DiscriminatorBlock(nn.Module):
    """Residual block: 3x3 conv, then a downsampling 3x3 conv; the skip is a downsampling 1x1 conv; sum / sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3, down=True)
        self.skip = EqualizedConv2d(in_channels, out_channels, 1, bias=False, activate=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) / math.sqrt(2)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, num_features: int = 1) -> torch.Tensor:
    """Append `num_features` maps of the standard deviation across a group of samples (StyleGAN2's
    minibatch_stddev_layer): sample i is grouped with i + M, i + 2M, ... (M = batch / group), channels are split into
    `num_features` parts, and each part's per-pixel population std, averaged over its channels and pixels, is
    broadcast over the image. The group is the largest divisor of the batch not above `group_size`."""
    n, c, h, w = x.shape
    if c % num_features:
        raise ValueError(f"{c} channels cannot be split into {num_features} stddev features")
    group = min(group_size, n)
    while n % group:
        group -= 1
    y = x.float().reshape(group, -1, num_features, c // num_features, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # (M, F, c/F, h, w)
    y = y.mean(dim=(2, 3, 4)).to(x.dtype)  # (M, F)
    return torch.cat([x, y.repeat(group, 1)[:, :, None, None].expand(-1, -1, h, w)], dim=1)


class StyleGAN2Discriminator(nn.Module):
    """(B, C, S, S) images in [-1, 1] -> (B,) real/fake logits.

    fromRGB (1x1 conv) at full resolution with `base_channels`, residual blocks doubling the channels (up to
    `max_channels`) as they halve the resolution, then the minibatch stddev feature, a 3x3 conv, and two dense layers.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 256, base_channels: int = 64,
                 max_channels: int = 512, mbstd_group_size: int = 4, mbstd_num_features: int = 1):
        super().__init__()
        if image_size < 4:
            raise ValueError(f"image_size must be at least 4 px, got {image_size}")
        self.image_size = image_size
        self.mbstd_group_size = mbstd_group_size
        self.mbstd_num_features = mbstd_num_features
        channels = [min(base_channels, max_channels)]
        size = image_size
        while size % 2 == 0 and size // 2 >= 4:
            size //= 2
            channels.append(min(channels[-1] * 2, max_channels))
        self.final_size = size
        self.from_rgb = EqualizedConv2d(in_channels, channels[0], 1)
        self.blocks = nn.ModuleList(DiscriminatorBlock(a, b) for a, b in zip(channels[:-1], channels[1:]))
        ch = channels[-1]
        self.final_conv = EqualizedConv2d(ch + mbstd_num_features, ch, 3)
        self.final_dense = EqualizedLinear(ch * size * size, ch)
        self.out = EqualizedLinear(ch, 1, activate=False)

    def forward(self, x: torch.Tensor, *more: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Logits of `x`; given more batches, a tuple of logits, each batch's minibatch stddev taken on its own."""
        for batch in (x, *more):
            if batch.ndim != 4 or tuple(batch.shape[-2:]) != (self.image_size, self.image_size):
                raise ValueError(f"this discriminator takes (B, C, {self.image_size}, {self.image_size}) images, "
                                 f"got {tuple(batch.shape)}")
        if not more:
            return self._logits(x)
        return tuple(self._logits(batch) for batch in (x, *more))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.from_rgb(x)
        for block in self.blocks:
            x = block(x)
        x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_features)
        x = self.final_dense(self.final_conv(x).flatten(1))
        return self.out(x).squeeze(1)


def d_logistic_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's logistic loss: mean softplus(-D(x)) + mean softplus(D(x_hat))."""
    return F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()


def g_nonsaturating_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's non-saturating logistic loss: mean softplus(-D(x_hat))."""
    return F.softplus(-logits_fake).mean()


def r1_penalty(
    logits_real: torch.Tensor, real: torch.Tensor, gamma: float = 10.0, scaler: torch.amp.GradScaler | None = None
) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): gamma / 2 * mean over samples of ||grad_x D(x)||^2 at real images, differentiable
    in the discriminator's weights. With lazy regularisation multiply it by the interval it is applied at.

    `logits_real` is the discriminator's output at `real`, computed after `real.requires_grad_(True)`: the pass that
    gives the logistic loss gives the penalty too, as StyleGAN2-ADA's combined "Dboth" phase does.

    Under fp16 mixed precision pass the run's loss scaler (`accelerator.scaler`): the input gradient is then taken
    of the scaled output and unscaled in fp32, PyTorch's AMP recipe for gradient penalties, so that small gradients
    do not flush to zero in fp16. An overflow makes the penalty inf, and the scaler skips that step as for any
    other.
    """
    if not real.requires_grad or logits_real.grad_fn is None:
        raise ValueError("r1_penalty needs the discriminator's logits at `real` computed after "
                         "real.requires_grad_(True), with autograd on")
    output = logits_real.float()
    scale = torch.ones((), device=output.device)
    if scaler is not None and scaler.is_enabled():
        # The scaled mean, as under the mean losses: each sample's output gets scale / B, which fp16 can hold.
        scale = scaler.scale(scale) / output.numel()  # the current scale, read without a host sync
    (grad,) = torch.autograd.grad((output * scale).sum(), real, create_graph=True)
    grad = grad.float() / scale
    return gamma / 2 * grad.square().flatten(1).sum(dim=1).mean()
