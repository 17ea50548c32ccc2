import json

import pytest
import torch

from hf_vq import FQGANTokenizer, FrozenTeacher

TINY = dict(
    base_channels=32,
    channel_multipliers=(1, 2),
    num_res_blocks=1,
    z_channels=32,
    quantizer={"kind": "vq", "codebook_size": 64, "dim": 4},
    sample_size=16,
    adapter_layers=1,
    adapter_heads=2,
    feature_head_layers=1,
    feature_head_heads=2,
)


def tiny(num_codebooks: int = 2, **kwargs) -> FQGANTokenizer:
    torch.manual_seed(0)
    return FQGANTokenizer(**{**TINY, "num_codebooks": num_codebooks, **kwargs}).eval()


def images(b: int = 2, c: int = 3, size: int = 16) -> torch.Tensor:
    return torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("k", [1, 2, 3])
def test_contract_shapes_and_dtypes(k):
    model = tiny(k)
    x = images()
    idx = model.tokenize(x)
    assert idx.shape == (2, k, 8, 8) and idx.dtype == torch.long
    assert int(idx.max()) < 64
    rec = model.detokenize(idx)
    assert rec.shape == x.shape and rec.dtype == torch.float32
    enc = model.encode(x)
    assert enc.latents.shape == (2, k * 4, 8, 8)
    torch.testing.assert_close(model.decode(enc.latents).sample, rec)


def test_vq_is_fully_convolutional_and_adapters_fix_the_grid():
    vq = tiny(1)
    assert vq.tokenize(images(size=32)).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="fixed 8x8 grid"):
        tiny(2).tokenize(images(size=32))


@pytest.mark.parametrize("spec", [dict(kind="fsq", levels=[4, 4, 4], codebook_size=64, dim=3),
                                  dict(kind="lfq", codebook_size=64, dim=6)], ids=["fsq", "lfq"])
def test_other_quantizers_round_trip(spec):
    model = tiny(2, quantizer=spec)
    x = images()
    enc = model.encode(x)
    torch.testing.assert_close(model.indices_to_latents(enc.indices), enc.latents)


def test_training_forward_losses_and_straight_through_gradients():
    quantizer = {"kind": "vq", "codebook_size": 64, "dim": 4, "entropy_loss_ratio": 0.03}
    model = tiny(2, teacher_dims=(None, 24), quantizer=quantizer).train()
    x = images(4)
    teacher = torch.randn(4, 24)
    out = model(x, teacher_features=[None, teacher])
    expected = {"0/codebook_loss", "0/commit_loss", "0/entropy_loss", "1/codebook_loss", "1/commit_loss",
                "1/entropy_loss", "disentanglement_loss", "1/representation_loss"}
    assert expected <= set(out.losses)
    for name, value in out.losses.items():
        assert value.ndim == 0 and torch.isfinite(value), name
    loss = (out.sample - x).pow(2).mean() + sum(out.losses.values())
    loss.backward()
    # pixel loss reaches the encoder only through the straight-through estimator
    assert model.encoder.trunk.conv_in.weight.grad.abs().sum() > 0
    assert model.feature_heads["1"].upscale[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.quant_convs.parameters())


def test_teacher_frozen_while_student_head_learns(tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(image_size=16, patch_size=4, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=48), add_pooling_layer=False)
    vit.save_pretrained(tmp_path / "teacher")
    teacher = FrozenTeacher.from_pretrained(tmp_path / "teacher")
    assert teacher.hidden_size == 24 and teacher.image_size == 16
    model = tiny(2, teacher_dims=(None, 24)).train()
    teacher.train()  # must stay in eval mode regardless
    assert not teacher.model.training
    x = images(4)
    feats = teacher(x)
    assert feats.shape == (4, 24) and not feats.requires_grad
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    out = model(x, teacher_features=[None, feats])
    out.losses["1/representation_loss"].backward()
    assert model.feature_heads["1"].class_embedding.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(p, before[n]) for n, p in teacher.named_parameters())
    # gray images are repeated to RGB for the teacher
    assert teacher(images(2, c=1)).shape == (2, 24)


def test_save_load_exact_and_bf16(tmp_path):
    model = tiny(3, teacher_dims=(None, 16, 24))
    model.save_pretrained(tmp_path / "tok")
    assert (tmp_path / "tok" / "diffusion_pytorch_model.safetensors").exists()
    loaded = FQGANTokenizer.from_pretrained(tmp_path / "tok").eval()
    x = images()
    idx = model.tokenize(x)
    assert torch.equal(loaded.tokenize(x), idx)
    assert torch.equal(loaded.detokenize(idx), model.detokenize(idx))
    half = FQGANTokenizer.from_pretrained(tmp_path / "tok", torch_dtype=torch.bfloat16).eval()
    assert half.decoder.conv_out.weight.dtype == torch.bfloat16
    rec = half.detokenize(idx)
    assert rec.dtype == torch.bfloat16 and torch.isfinite(rec.float()).all()
    assert half.tokenize(x.bfloat16()).shape == idx.shape


def test_gradient_checkpointing_matches():
    model = tiny(2).train()
    x = images()
    torch.manual_seed(0)
    ref = model(x).sample
    model.enable_gradient_checkpointing()
    torch.manual_seed(0)
    out = model(x).sample
    torch.testing.assert_close(out, ref)
    out.mean().backward()
    assert model.encoder.trunk.conv_in.weight.grad is not None


def test_presets_match_official_parameter_counts():
    with torch.device("meta"):
        vq16 = FQGANTokenizer.from_preset("vq-ds16")
        vq8 = FQGANTokenizer.from_preset("vq-ds8")
    # LlamaGen's VQ-16 and VQ-8 (tokenizer/tokenizer_image/vq_model.py): 71.88M and 70.11M parameters
    assert round(sum(p.numel() for p in vq16.parameters()) / 1e6, 2) == 71.88
    assert round(sum(p.numel() for p in vq8.parameters()) / 1e6, 2) == 70.11


def test_bad_input_errors():
    model = tiny(2)
    with pytest.raises(ValueError, match="3-channel"):
        model.tokenize(images(c=1))
    with pytest.raises(ValueError, match="divisible by the downsampling factor 2"):
        tiny(1).tokenize(images(size=15))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.detokenize(torch.full((1, 2, 8, 8), 64))
    with pytest.raises(ValueError, match=r"\(B, 2, h, w\)"):
        model.detokenize(torch.zeros(1, 3, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        model.detokenize(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="unknown preset"):
        FQGANTokenizer.from_preset("vq-ds32")
    with pytest.raises(ValueError, match="one entry per codebook"):
        FQGANTokenizer(**{**TINY, "num_codebooks": 2, "teacher_dims": (8,)})
    with pytest.raises(ValueError, match="no feature head"):
        model(images(), teacher_features=[None, torch.randn(2, 8)])


def test_configs_saved_before_the_quantizer_spec_load_unchanged(tmp_path):
    quantizer = {"kind": "vq", "codebook_size": 64, "dim": 4, "entropy_loss_ratio": 0.03, "kmeans_init": False}
    model = tiny(2, quantizer=quantizer)
    model.save_pretrained(tmp_path / "tok")
    # Rewrite the config as hf_vq wrote it before: flat quantizer fields, including the ones the kind ignores.
    config_path = tmp_path / "tok" / "config.json"
    config = json.loads(config_path.read_text())
    del config["quantizer"]
    config.update(quantizer_type="vq", codebook_size=64, codebook_embed_dim=4, codebook_l2_norm=True,
                  commit_loss_beta=0.25, entropy_loss_ratio=0.03, fsq_levels=None, kmeans_init=False)
    config_path.write_text(json.dumps(config))
    old = FQGANTokenizer.from_pretrained(tmp_path / "tok").eval()
    assert old.config.quantizer == {**quantizer, "l2_norm": True, "commit_loss_beta": 0.25}
    x = images()
    assert torch.equal(old.tokenize(x), model.tokenize(x))
    old.save_pretrained(tmp_path / "resaved")
    resaved = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert "codebook_size" not in resaved and resaved["quantizer"]["codebook_size"] == 64
    with pytest.raises(ValueError, match="both a `quantizer` spec and the old flat fields"):
        FQGANTokenizer.from_config({**config, "quantizer": quantizer})
    with pytest.raises(ValueError, match="quantizer must be a spec dict"):
        FQGANTokenizer(quantizer="vq")
