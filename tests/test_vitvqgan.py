"""ViT-VQGAN: the tokenizer (factorised unit-norm codes, separately sized encoder and decoder, patch head), the
StyleGAN2 discriminator and its losses (R1 and minibatch stddev against direct computations), and the recipe.
The contract itself is checked for every "tiny*" preset by test_tokenizer_contract.py."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import load_script, r1_at
from torch import nn

from hf_vq import AutoImageTokenizer, FARConfig, FARForClassConditionalGeneration, FQGANPipeline, ViTVQGANTokenizer
from hf_vq.tokenizers.vit import sincos_position_embedding
from hf_vq.training.data import ImageTransform, collate, load_image_dataset, with_image_transform
from hf_vq.training.recipes.vitvqgan import logit_laplace_loss
from hf_vq.training.stylegan_discriminator import (
    StyleGAN2Discriminator,
    d_logistic_loss,
    g_nonsaturating_loss,
    minibatch_stddev,
    r1_penalty,
)

ROOT = Path(__file__).resolve().parents[1]
FMNIST_CONFIG = ROOT / "examples" / "configs" / "fmnist_vitvqgan.json"
train_vitvqgan = load_script("train_vitvqgan")


def tiny(preset: str = "tiny", **overrides) -> ViTVQGANTokenizer:
    torch.manual_seed(0)
    return ViTVQGANTokenizer.from_preset(preset, **overrides).eval()


def fmnist_sized(**overrides) -> ViTVQGANTokenizer:
    """The Fashion-MNIST config's shape (28 px, patch 4, 7x7 grid, 1024 x 32 codes) at a tiny width and depth."""
    config = {**json.loads(FMNIST_CONFIG.read_text()), "encoder_layers": 1, "decoder_layers": 1, "encoder_width": 32,
              "decoder_width": 32, "encoder_mlp_dim": 64, "decoder_mlp_dim": 64, **overrides}
    torch.manual_seed(0)
    return AutoImageTokenizer.from_config(config).eval()


# ---------------------------------------------------------------------------------------------------- tokenizer
def test_codes_are_unit_norm_and_factorised():
    model = fmnist_sized()
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    enc = model.encode(x)
    assert enc.latents.shape == (2, 32, 7, 7) and enc.indices.shape == (2, 1, 7, 7)
    torch.testing.assert_close(enc.latents.norm(dim=1), torch.ones(2, 7, 7))
    torch.testing.assert_close(model.indices_to_latents(enc.indices).norm(dim=1), torch.ones(2, 7, 7))
    torch.testing.assert_close(model.quantize.codebook().norm(dim=1), torch.ones(1024))
    assert (model.quant_proj.in_features, model.quant_proj.out_features) == (32, 32)
    assert model.codebook_sizes == [1024] and model.quantize.commit_loss_beta == 0.25


def test_quantizer_loss_is_the_papers_on_normalised_vectors():
    model = tiny().train()
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    out = model(x)
    z = model.quant_proj(model.encoder_head(model.encoder(x)))
    z = F.normalize(z.reshape(-1, z.shape[-1]), dim=-1)
    q = model.quantize.codebook()[out.indices.reshape(-1)]
    torch.testing.assert_close(out.losses["codebook_loss"], (q - z.detach()).pow(2).mean())
    torch.testing.assert_close(out.losses["commit_loss"], 0.25 * (q.detach() - z).pow(2).mean())


@pytest.mark.parametrize("size, patch", [(28, 8), (28, 3), (8, 16)])
def test_a_patch_that_does_not_tile_the_image_is_refused(size, patch):
    with pytest.raises(ValueError, match=f"patch_size {patch} does not divide sample_size {size}"):
        ViTVQGANTokenizer(sample_size=size, patch_size=patch, encoder_layers=0, decoder_layers=0)


def _block_params(width: int, mlp: int) -> int:
    # LayerNorms 2 x 2w, qkv 3w^2 + q/v biases 2w, proj w^2 + w, MLP w*m + m + m*w + w.
    return 4 * width**2 + 2 * width * mlp + 8 * width + mlp


@pytest.mark.parametrize("preset, encoder, decoder", [
    ("vitvqgan-small", (8, 512, 2048, 8), (8, 512, 2048, 8)),
    ("vitvqgan-base", (12, 768, 3072, 12), (12, 768, 3072, 12)),
    ("vitvqgan-large", (8, 512, 2048, 8), (32, 1280, 5120, 16)),  # small encoder, large decoder (ViT-VQGAN-SL)
])
def test_presets_have_the_papers_sizes(preset, encoder, decoder):
    with torch.device("meta"):
        model = ViTVQGANTokenizer.from_preset(preset)
    assert model.sample_size == 256 and model.downsample_factor == 8 and model.grid_size == 32
    assert model.codebook_sizes == [8192] and model.quantize.dim == 32 and model.quantize.l2_norm
    for trunk, (layers, width, mlp, heads) in ((model.encoder, encoder), (model.decoder, decoder)):
        assert len(trunk.blocks) == layers and trunk.width == width
        assert trunk.blocks[0].attn.num_heads == heads and trunk.blocks[0].mlp[0].out_features == mlp
        assert sum(p.numel() for p in trunk.blocks.parameters()) == layers * _block_params(width, mlp)
    assert model.decoder.patch_embed.in_channels == 32 and model.to_pixels.out_features == 8 * 8 * 3
    if preset == "vitvqgan-large":
        sizes = [sum(p.numel() for p in trunk.parameters()) for trunk in (model.encoder, model.decoder)]
        assert sizes[1] > 20 * sizes[0]


def test_pixel_head_is_a_transposed_convolution_over_patches():
    """decode's Linear(width -> C*p*p) + pixel shuffle is ConvTranspose2d(width, C, p, stride p), the unofficial head
    (whose bias is per channel; the Linear's may differ per pixel of the patch)."""
    model = tiny(in_channels=3, out_channels=3)
    width, p = model.config.decoder_width, model.config.patch_size
    with torch.no_grad():
        model.to_pixels.bias.copy_(torch.randn(3).repeat_interleave(p * p))
    conv = nn.ConvTranspose2d(width, 3, p, stride=p)
    with torch.no_grad():
        conv.weight.copy_(model.to_pixels.weight.reshape(3, p, p, width).permute(3, 0, 1, 2))
        conv.bias.copy_(model.to_pixels.bias[::p * p])
    latents = model.indices_to_latents(torch.randint(0, 32, (2, 1, 4, 4)))
    with torch.no_grad():
        tokens = model.decoder_head(model.decoder(latents))  # (B, h*w, width)
        expected = conv(tokens.transpose(1, 2).reshape(2, width, 4, 4))
        torch.testing.assert_close(model.decode(latents).sample, expected)


def test_sincos_positions_follow_the_input_and_learned_ones_fix_it():
    learned, sincos = tiny(), tiny("tiny-sincos")
    assert learned.fixed_size and not sincos.fixed_size
    assert not any("pos_embed" in k for k in sincos.state_dict()) and "encoder.pos_embed" in learned.state_dict()
    x = torch.rand(1, 1, 12, 16) * 2 - 1
    assert sincos.detokenize(sincos.tokenize(x)).shape == x.shape
    with pytest.raises(ValueError, match="fixed 4x4 grid"):
        learned.tokenize(x)
    pos = sincos_position_embedding(8, 2, 3)  # rows then columns; sin then cos; frequencies 1, 1/100
    row, col = 1, 2
    expected = [math.sin(row), math.sin(row / 100), math.cos(row), math.cos(row / 100),
                math.sin(col), math.sin(col / 100), math.cos(col), math.cos(col / 100)]
    torch.testing.assert_close(pos[row * 3 + col], torch.tensor(expected))
    with pytest.raises(ValueError, match="divisible by 4"):
        tiny("tiny-sincos", encoder_width=30, encoder_heads=2)


def test_works_inside_the_pipeline_on_a_seven_by_seven_grid(tmp_path):
    model = fmnist_sized(position_embedding="sincos")
    torch.manual_seed(0)
    far = FARForClassConditionalGeneration(FARConfig(
        vocab_size=1024, num_codebooks=1, num_classes=2, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_head_layers=1, grid_size=7)).eval()
    pipe = FQGANPipeline(vqvae=model, transformer=far, id2label={0: "a", 1: "b"})
    pipe.set_progress_bar_config(disable=True)
    images = pipe(["a", 1], output_type="pt", generator=torch.manual_seed(0)).images
    assert images.shape == (2, 1, 28, 28) and 0 <= float(images.min()) and float(images.max()) <= 1
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = FQGANPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.vqvae, ViTVQGANTokenizer) and loaded.vqvae.config.position_embedding == "sincos"
    assert torch.equal(loaded(["a", 1], output_type="pt", generator=torch.manual_seed(0)).images, images)


# ---------------------------------------------------------------------------------------------------- discriminator
class _Linear(nn.Module):
    """D(x) = sum(w * x): its input gradient is w at every sample."""

    def __init__(self, shape):
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape))

    def forward(self, x):
        return (self.w * x).sum(dim=(1, 2, 3))


def test_r1_penalty_matches_closed_forms():
    torch.manual_seed(0)
    real = torch.randn(5, 2, 4, 4)
    linear = _Linear((2, 4, 4))
    penalty = r1_at(linear, real, gamma=10.0)
    torch.testing.assert_close(penalty, 5.0 * linear.w.pow(2).sum())
    penalty.backward()  # differentiable in the weights: d/dw 5||w||^2 = 10 w
    torch.testing.assert_close(linear.w.grad, 10.0 * linear.w.detach())

    class Square(nn.Module):  # D(x) = sum(x^2): gradient 2x
        def forward(self, x):
            return x.pow(2).sum(dim=(1, 2, 3))

    expected = 2.0 / 2 * (2 * real).pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(r1_at(Square(), real, gamma=2.0), expected)
    with pytest.raises(ValueError, match="requires_grad_"):  # logits of an input without its gradient
        r1_penalty(Square()(real), real)


def test_r1_penalty_through_the_loss_scaler_keeps_fp16_gradients_that_would_flush_to_zero():
    class TwoScales(nn.Module):  # D(x) = sum(a * (b * x)) in fp16: grad_x = a * b, below fp16's smallest subnormal
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.full((2, 4, 4), 1e-4, dtype=torch.float16))
            self.b = nn.Parameter(torch.full((2, 4, 4), 1e-4, dtype=torch.float16))

        def forward(self, x):
            return (self.a * (self.b * x)).sum(dim=(1, 2, 3))

    disc, real = TwoScales(), torch.randn(3, 2, 4, 4, dtype=torch.float16)
    expected = 10.0 / 2 * (disc.a.float() * disc.b.float()).pow(2).sum()
    assert r1_at(disc, real) == 0  # flushed to zero
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    penalty = r1_at(disc, real, scaler=scaler)
    torch.testing.assert_close(penalty, expected, rtol=2e-2, atol=0)
    penalty.backward()
    assert disc.a.grad is not None and disc.a.grad.dtype == torch.float16
    # a disabled scaler (fp32 and bf16 runs have none) leaves the penalty as it was
    linear, off = _Linear((2, 4, 4)), torch.amp.GradScaler("cpu", enabled=False)
    torch.testing.assert_close(r1_at(linear, real.float(), scaler=off), r1_at(linear, real.float()))


@pytest.mark.parametrize("batch, group_size, features", [(8, 4, 1), (8, 4, 2), (6, 4, 1), (3, 4, 1), (1, 4, 1)])
def test_minibatch_stddev_matches_a_direct_computation(batch, group_size, features):
    torch.manual_seed(0)
    x = torch.randn(batch, 4, 3, 3)
    out = minibatch_stddev(x, group_size, features)
    assert out.shape == (batch, 4 + features, 3, 3) and torch.equal(out[:, :4], x)
    group = max(g for g in range(1, group_size + 1) if batch % g == 0 and g <= batch)
    stride = batch // group  # StyleGAN2 groups sample i with i + M, i + 2M, ...
    for i in range(batch):
        members = x[[i % stride + k * stride for k in range(group)]]
        for f in range(features):
            part = members[:, f * 4 // features:(f + 1) * 4 // features]
            std = (part.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
            torch.testing.assert_close(out[i, 4 + f], std.expand(3, 3))


@pytest.mark.parametrize("size, final_size, blocks", [(28, 7, 2), (8, 4, 1), (32, 4, 3)])
def test_discriminator_works_at_small_sizes(size, final_size, blocks):
    torch.manual_seed(0)
    disc = StyleGAN2Discriminator(1, size, base_channels=8, max_channels=16)
    assert disc.final_size == final_size and len(disc.blocks) == blocks
    x = torch.rand(4, 1, size, size) * 2 - 1
    logits = disc(x)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    loss = d_logistic_loss(logits, disc(-x)) + 16 * r1_at(disc, x)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in disc.parameters())
    with pytest.raises(ValueError, match=f"takes \\(B, C, {size}, {size}\\) images"):
        disc(torch.zeros(1, 1, size + 2, size + 2))


def test_logistic_and_logit_laplace_losses():
    zeros = torch.zeros(3)
    torch.testing.assert_close(d_logistic_loss(zeros, zeros), torch.tensor(2 * math.log(2)))
    torch.testing.assert_close(g_nonsaturating_loss(torch.tensor([2.0])), torch.tensor(math.log1p(math.exp(-2))))
    x = torch.full((1, 1, 2, 2), -1.0)
    assert float(logit_laplace_loss(x, x)) == 0
    # -1 -> 0.1 and 1 -> 0.9 after DALL-E's squashing: |logit(0.1) - logit(0.9)| = 2 ln 9.
    torch.testing.assert_close(logit_laplace_loss(x, -x), torch.tensor(2 * math.log(9)))


# ---------------------------------------------------------------------------------------------------- recipe
COMMON = ["--resolution", "8", "--train_batch_size", "8", "--report_to", "none", "--validation_steps", "100",
          "--checkpointing_steps", "100", "--logging_steps", "1", "--disc_channels", "8", "--disc_max_channels", "16"]


def tiny_config(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "vitvqgan.json"
    path.write_text(json.dumps({**ViTVQGANTokenizer.presets["tiny"], **overrides}))
    return path


def test_recipe_trains_reduces_the_loss_and_saves_a_loadable_tokenizer(tmp_path, imagefolder):
    model = train_vitvqgan.main([
        "--tokenizer_config", "tiny", "--dataset", str(imagefolder), "--output_dir",
        str(tmp_path / "run"), "--max_train_steps", "40", "--learning_rate", "3e-3", "--lr_warmup_steps", "2",
        "--r1_interval", "4", "--logit_laplace_weight", "0.1", *COMMON])
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    logs = summary["last_logs"]
    assert {"reconstruction_loss", "logit_laplace_loss", "codebook_loss", "commit_loss", "generator_adv_loss",
            "discriminator_loss", "0/usage"} <= set(logs) and "perceptual_loss" not in logs
    tokenizer = AutoImageTokenizer.from_pretrained(tmp_path / "run" / "tokenizer").eval()
    assert isinstance(tokenizer, ViTVQGANTokenizer)
    images = collate(list(with_image_transform(load_image_dataset(str(imagefolder), "train"),
                                               ImageTransform(8, channels=1))))["pixel_values"]
    assert torch.equal(tokenizer.tokenize(images), model.tokenize(images))
    before = tiny()  # the recipe builds its model under the run's seed, as this does
    error = [(m.detokenize(m.tokenize(images)) - images).pow(2).mean() for m in (before, tokenizer)]
    assert error[1] < 0.85 * error[0], error


def test_recipe_refuses_bad_setups_before_work(tmp_path, imagefolder, caplog):
    base = ["--dataset", str(imagefolder), "--output_dir", str(tmp_path / "run"), *COMMON]
    fqgan = tmp_path / "fqgan.json"
    fqgan.write_text(json.dumps({"_class_name": "FQGANTokenizer", "sample_size": 8}))
    with pytest.raises(ValueError, match="this recipe trains ViTVQGANTokenizer"):
        train_vitvqgan.main(["--tokenizer_config", str(fqgan), *base])
    with pytest.raises(ValueError, match="learned positions fix its size to 8 px"):
        train_vitvqgan.main(["--tokenizer_config", str(tiny_config(tmp_path)), *base, "--resolution", "16"])
    with pytest.raises(ValueError, match="--disc_layers is the PatchGAN's"):
        train_vitvqgan.main(["--tokenizer_config", str(tiny_config(tmp_path)), *base, "--disc_layers", "2"])
    with pytest.raises(SystemExit, match="needs LPIPS weights"):
        train_vitvqgan.main(["--tokenizer_config", str(tiny_config(tmp_path)), *base, "--perceptual_weight", "0.1"])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["patchgan", "stylegan2"])
def test_a_discriminator_step_survives_a_buffer_broadcast_before_each_call(kind):
    """DDP broadcasts a module's buffers in place before each forward, and torch before 2.12 then fails the backward
    of an earlier call that saved them (BatchNorm's running statistics, the blur kernel). The recipes' discriminator
    step is one call, as in LlamaGen's train_vq.py, and its passes give what separate calls give."""
    from types import SimpleNamespace

    from hf_vq.training.losses import PatchGANDiscriminator
    from hf_vq.training.recipes.tokenizer_gan import TokenizerGANRecipe
    from hf_vq.training.recipes.vitvqgan import ViTVQGANRecipe

    torch.manual_seed(0)
    if kind == "patchgan":
        recipe, disc = TokenizerGANRecipe, PatchGANDiscriminator(1, 8, 1)
    else:
        recipe, disc = ViTVQGANRecipe, StyleGAN2Discriminator(1, 8, base_channels=8, max_channels=16)
    real, fake = torch.rand(4, 1, 8, 8) * 2 - 1, torch.rand(4, 1, 8, 8) * 2 - 1
    together = disc(real, fake)
    assert all(torch.equal(a, b) for a, b in zip(together, (disc(real), disc(fake)), strict=True))

    def broadcast(module, args):  # what DDP does before each forward (torch < 2.12 counts it as a change)
        for buffer in module.buffers():
            buffer.add_(0)

    disc.register_forward_pre_hook(broadcast)
    state = SimpleNamespace(args=SimpleNamespace(disc_weight=1.0, r1_interval=1, r1_gamma=10.0),
                            discriminator=disc, accelerator=SimpleNamespace(scaler=None))
    loss, logs = recipe.discriminator_loss(state, real, fake, step=0)
    loss.backward()
    assert all(p.grad is not None for p in disc.parameters())
    if kind == "stylegan2":  # the penalty comes from the same pass as the logistic loss
        assert logs["r1_penalty"] > 0
