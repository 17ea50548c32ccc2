"""The CNN trunk's fast paths compute the plain formulas: folded upsampling, in-place blocks, channels-last, bf16."""

import pytest
import torch
import torch.nn.functional as F

from hf_vq import FQGANTokenizer
from hf_vq.tokenizers.cnn import AttnBlock, ResnetBlock, Upsample, fold_nearest_upsample

TINY_VQ = {
    "base_channels": 32, "channel_multipliers": (1, 2, 2), "num_res_blocks": 1, "z_channels": 32,
    "quantizer": {"kind": "vq", "codebook_size": 256, "dim": 8}, "num_codebooks": 1,
}


def randomize_norms(module: torch.nn.Module) -> torch.nn.Module:
    """Norms away from their 1/0 init, so a misplaced affine or residual term shows."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
    return module


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_equals_nearest_then_conv_with_gradients(channels_last):
    torch.manual_seed(0)
    up = Upsample(6)
    x = torch.randn(2, 6, 5, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    out = up(x)
    ref = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), up.conv.weight, up.conv.bias, padding=1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, (x, up.conv.weight, up.conv.bias), grad)
    want = torch.autograd.grad(ref, (x, up.conv.weight, up.conv.bias), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_upsample_fold_stays_fp32_under_autocast():
    weight = torch.randn(4, 3, 3, 3)
    with torch.autocast("cpu", torch.bfloat16):
        folded = fold_nearest_upsample(weight)
    assert folded.dtype == torch.float32 and folded.shape == (3, 4, 4, 4)
    torch.testing.assert_close(folded, fold_nearest_upsample(weight))
    # the 1-D rule [w2, w1 + w2, w0 + w1, w0] on both axes, e.g. corner and centre taps
    torch.testing.assert_close(folded[:, :, 0, 0], weight[:, :, 2, 2].t())
    center = weight[:, :, 0:2, 0:2].sum(dim=(2, 3))
    torch.testing.assert_close(folded[:, :, 2, 2], center.t())


def test_blocks_match_out_of_place_formulas_and_leave_input_alone():
    torch.manual_seed(0)
    res = randomize_norms(ResnetBlock(32, 64))
    attn = randomize_norms(AttnBlock(64))
    x = torch.randn(2, 32, 6, 6, requires_grad=True)
    x_before = x.detach().clone()

    out = attn(res(x))
    h = res.conv2(F.silu(res.norm2(res.conv1(F.silu(res.norm1(x))))))
    h = res.nin_shortcut(x) + h
    y = attn.norm(h)
    q, k, v = (p(y).flatten(2).transpose(1, 2) for p in (attn.q, attn.k, attn.v))
    weights = (q @ k.transpose(1, 2) / 64**0.5).softmax(dim=-1)
    ref = h + attn.proj_out((weights @ v).transpose(1, 2).reshape(h.shape))

    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.detach(), x_before, rtol=0, atol=0)
    params = [x, res.norm1.weight, res.conv1.weight, attn.q.weight, attn.proj_out.bias]
    for g, w in zip(torch.autograd.grad(out.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_cpu_trunk_runs_channels_last_and_returns_standard_images():
    torch.manual_seed(0)
    model = FQGANTokenizer(**TINY_VQ).eval()
    layouts = []
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.GroupNorm)):
            m.register_forward_hook(
                lambda mod, inp, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last))
            )
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    recon = model.detokenize(model.tokenize(images))
    assert layouts and all(layouts), f"{layouts.count(False)} of {len(layouts)} layers left channels-last"
    assert recon.is_contiguous() and recon.shape == images.shape


def test_bf16_autocast_keeps_most_indices_and_the_reconstruction():
    torch.manual_seed(0)
    model = randomize_norms(FQGANTokenizer(**TINY_VQ)).eval()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    indices = model.tokenize(images)
    recon = model.detokenize(indices)
    with torch.autocast("cpu", torch.bfloat16):
        indices_bf16 = model.tokenize(images)
        recon_bf16 = model.detokenize(indices)
    assert indices_bf16.dtype == torch.long
    assert (indices_bf16 == indices).float().mean() >= 0.9
    assert recon_bf16.dtype == torch.bfloat16
    assert (recon_bf16.float() - recon).norm() / recon.norm() < 0.05
