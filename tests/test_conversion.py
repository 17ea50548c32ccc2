"""Conversion of official LlamaGen / FQGAN / BEiT-v2 VQ-KD checkpoints, on state dicts laid out like the official files.

Full-size layouts are built on the meta device (key and shape accounting against the official files' layouts); numeric
round trips use reduced widths with the same key pattern. No official code is needed.
"""

import argparse
import math

import pytest
import torch
from accelerate import init_empty_weights

from hf_vq import AutoImageTokenizer, FQGANTokenizer, VQKDTokenizer
from hf_vq.conversion import (
    add_convert_arguments,
    convert_checkpoint,
    convert_state_dict,
    detect_kind,
    hf_tokenizer_key_to_official,
    hf_vqkd_key_to_official,
    load_official_state_dict,
    official_tokenizer_key_to_hf,
    official_vqkd_key_to_hf,
    run_convert,
)
from hf_vq.generators.configuration_far import FARConfig
from hf_vq.generators.modeling_far import FARForClassConditionalGeneration

BRANCHES = {"llamagen-vq": [""], "fqgan-dual": ["vis", "sem"], "fqgan-triple": ["vis", "sem_mid", "sem_high"]}
KIND_OF_PRESET = {
    "vq-ds16": "llamagen-vq", "vq-ds8": "llamagen-vq", "fqgan-dual-ds16": "fqgan-dual",
    "fqgan-dual-ds8": "fqgan-dual", "fqgan-triple-ds16": "fqgan-triple", "fqgan-triple-ds8": "fqgan-triple",
}
TINY_TOKENIZER = dict(
    base_channels=32, channel_multipliers=(1, 2), num_res_blocks=1, z_channels=32,
    quantizer={"kind": "vq", "codebook_size": 64, "dim": 4}, sample_size=16, adapter_layers=1, adapter_heads=8,
    feature_head_layers=1, feature_head_heads=8,
)
TINY_TEACHER_DIMS = {"llamagen-vq": None, "fqgan-dual": (None, 16), "fqgan-triple": (None, 16, 24)}
TINY_GENERATOR = dict(
    vocab_size=32, num_classes=10, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_head_layers=1,
    grid_size=4,
)


def official_tokenizer_state(model: FQGANTokenizer, kind: str) -> dict:
    """Our tokenizer's weights under official names, plus the official codebook-usage buffers."""
    state = {hf_tokenizer_key_to_official(k, kind): v for k, v in model.state_dict().items()}
    device = next(model.parameters()).device
    for branch in BRANCHES[kind]:
        state[f"quantize{'_' + branch if branch else ''}.codebook_used"] = torch.zeros(65536, device=device)
    return state


def official_generator_state(model: FARForClassConditionalGeneration) -> dict:
    """Our generator's weights (official names already) plus the `freqs_cis` entry some released files carry."""
    c = model.config
    return {**model.state_dict(), "freqs_cis": torch.zeros(1 + c.grid_size**2, c.head_dim // 2, 2)}


def tiny_tokenizer(kind: str) -> FQGANTokenizer:
    torch.manual_seed(0)
    k = len(BRANCHES[kind])
    return FQGANTokenizer(**TINY_TOKENIZER, num_codebooks=k, teacher_dims=TINY_TEACHER_DIMS[kind]).eval()


def tiny_generator(k: int = 1, seed: int = 0) -> FARForClassConditionalGeneration:
    torch.manual_seed(seed)
    model = FARForClassConditionalGeneration(FARConfig(**TINY_GENERATOR, num_codebooks=k)).eval()
    with torch.no_grad():
        for head in model.output_heads:  # zero-initialised: randomise so that logits are informative
            head.weight.normal_(0, 0.5)
    return model


def images(size: int = 16) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------------------------------- key renames
@pytest.mark.parametrize(
    "kind,official,ours",
    [
        ("llamagen-vq", "encoder.conv_blocks.4.attn.1.q.weight", "encoder.trunk.conv_blocks.4.attn.1.q.weight"),
        ("llamagen-vq", "encoder.mid.1.proj_out.bias", "encoder.trunk.mid.1.proj_out.bias"),
        ("llamagen-vq", "encoder.norm_out.weight", "encoder.heads.0.norm_out.weight"),
        ("llamagen-vq", "quant_conv.weight", "quant_convs.0.weight"),
        ("llamagen-vq", "quantize.embedding.weight", "quantize.codebooks.0.embedding.weight"),
        ("llamagen-vq", "decoder.conv_blocks.0.upsample.conv.weight", "decoder.conv_blocks.0.upsample.conv.weight"),
        ("fqgan-dual", "encoder.visual_head.0.transformer.0.attn.in_proj_weight",
         "encoder.heads.0.adapter.transformer.0.attn.in_proj_weight"),
        ("fqgan-dual", "encoder.semantic_head.0.ln_pre.weight", "encoder.heads.1.adapter.ln_pre.weight"),
        ("fqgan-dual", "encoder.norm_out_sem.weight", "encoder.heads.1.norm_out.weight"),
        ("fqgan-dual", "encoder.conv_out_vis.bias", "encoder.heads.0.conv_out.bias"),
        ("fqgan-dual", "quant_conv_vis.weight", "quant_convs.0.weight"),
        ("fqgan-dual", "quantize_sem.embedding.weight", "quantize.codebooks.1.embedding.weight"),
        ("fqgan-dual", "feat_pred_head.upscale.2.bias", "feature_heads.1.upscale.2.bias"),
        ("fqgan-triple", "encoder.semantic_head_high.0.positional_embedding",
         "encoder.heads.2.adapter.positional_embedding"),
        ("fqgan-triple", "encoder.conv_out_sem_mid.weight", "encoder.heads.1.conv_out.weight"),
        ("fqgan-triple", "quant_conv_sem_high.bias", "quant_convs.2.bias"),
        ("fqgan-triple", "mid_sem_feat_pred.class_embedding", "feature_heads.1.class_embedding"),
        ("fqgan-triple", "high_sem_feat_pred.ln_post.weight", "feature_heads.2.ln_post.weight"),
    ],
)
def test_tokenizer_key_renames(kind, official, ours):
    assert official_tokenizer_key_to_hf(official, kind) == ours
    assert hf_tokenizer_key_to_official(ours, kind) == official


def test_codebook_usage_buffers_are_dropped_and_unknown_keys_rejected():
    assert official_tokenizer_key_to_hf("quantize_sem_high.codebook_used", "fqgan-triple") is None
    assert official_tokenizer_key_to_hf("quantize.codebook_used", "llamagen-vq") is None
    with pytest.raises(KeyError):
        official_tokenizer_key_to_hf("encoder.semantic_head.0.ln_pre.weight", "fqgan-triple")


# ------------------------------------------------------------------------------------------- full-size layouts
@pytest.mark.parametrize("preset", list(KIND_OF_PRESET))
def test_full_size_tokenizer_layout_matches_the_official_facts_and_converts(preset):
    kind = KIND_OF_PRESET[preset]
    with init_empty_weights():
        model = FQGANTokenizer.from_preset(preset)
    state = official_tokenizer_state(model, kind)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    levels = len(model.config.channel_multipliers)
    grid, k = 256 // 2 ** (levels - 1), len(BRANCHES[kind])
    # LlamaGen tokenizer/tokenizer_image/vq_model.py: the CNN trunk.
    assert shapes["encoder.conv_in.weight"] == (128, 3, 3, 3)
    assert shapes[f"encoder.conv_blocks.{levels - 1}.attn.1.q.weight"] == (512, 512, 1, 1)
    assert f"encoder.conv_blocks.{levels - 1}.downsample.conv.weight" not in shapes
    assert shapes["decoder.conv_blocks.0.attn.2.proj_out.weight"] == (512, 512, 1, 1)  # lowest resolution first
    assert "decoder.conv_blocks.0.upsample.conv.weight" in shapes
    assert f"decoder.conv_blocks.{levels - 1}.upsample.conv.weight" not in shapes
    assert shapes["decoder.conv_out.weight"] == (3, 128, 3, 3)
    assert shapes["post_quant_conv.weight"] == (256, 8 * k, 1, 1)
    for branch in BRANCHES[kind]:
        suffix = f"_{branch}" if branch else ""
        assert shapes[f"quantize{suffix}.embedding.weight"] == (16384, 8)
        assert shapes[f"quant_conv{suffix}.weight"] == (8, 256, 1, 1)
        assert shapes[f"encoder.conv_out{suffix}.weight"] == (256, 512, 3, 3)
    num_params = sum(v.numel() for key, v in state.items() if not key.endswith("codebook_used")) / 1e6
    if kind == "llamagen-vq":
        assert round(num_params, 2) == {5: 71.88, 4: 70.11}[levels]
    else:  # FQGAN tokenizer/vq_model_dual.py, vq_model_triple.py
        assert 150 <= num_params <= 160
        adapters = ["visual_head"] + (["semantic_head"] if k == 2 else ["semantic_head_mid", "semantic_head_high"])
        for adapter in adapters:
            assert shapes[f"encoder.{adapter}.0.positional_embedding"] == (grid**2, 512)
            assert shapes[f"encoder.{adapter}.0.transformer.5.attn.in_proj_weight"] == (1536, 512)
            assert shapes[f"encoder.{adapter}.0.transformer.5.mlp.c_fc.weight"] == (2048, 512)
            assert f"encoder.{adapter}.0.transformer.6.ln_1.weight" not in shapes
        heads = {"feat_pred_head": 1024} if k == 2 else {"mid_sem_feat_pred": 384, "high_sem_feat_pred": 768}
        for head, width in heads.items():
            assert shapes[f"{head}.class_embedding"] == (1, width)
            assert shapes[f"{head}.positional_embedding"] == (grid**2 + 1, width)
            assert shapes[f"{head}.upscale.0.weight"] == (width, 8)
            assert f"{head}.transformer.2.ln_1.weight" in shapes and f"{head}.transformer.3.ln_1.weight" not in shapes

    converted, report = convert_state_dict(state)
    assert report.kind == kind
    assert set(report.dropped) == {key for key in state if key.endswith("codebook_used")}
    assert report.num_mapped == len(state) - k
    settings = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert settings(converted.config) == settings(model.config)
    assert converted.config.sample_size == 256


GENERATORS = [("GPT-B", 1, 110.9), ("GPT-L", 1, 342.9), ("GPT-XL", 1, 774.7), ("GPT-XXL", 1, 1411.0),
              ("GPT-3B", 1, None), ("FAR-Base", 2, 415), ("FAR-Large", 2, 898), ("FAR-Base", 3, None),
              ("FAR-Large", 3, None)]


@pytest.mark.parametrize("preset,k,millions", GENERATORS)
def test_full_size_generator_layout_matches_the_official_facts_and_converts(preset, k, millions):
    with init_empty_weights():
        model = FARForClassConditionalGeneration(FARConfig.from_preset(preset, num_codebooks=k))
    state = official_generator_state(model)
    shapes = {key: tuple(v.shape) for key, v in state.items()}
    c = model.config
    d = c.hidden_size
    # LlamaGen autoregressive/models/gpt.py; FQGAN autoregressive/models/far_dual.py, far_triple.py.
    assert shapes["cls_embedding.embedding_table.weight"] == (1001, d)
    assert shapes[f"layers.{c.num_hidden_layers - 1}.attention.wqkv.weight"] == (3 * d, d)
    assert shapes["layers.0.feed_forward.w1.weight"] == (math.ceil(8 * d / 3 / 256) * 256, d)
    assert shapes["norm.weight"] == (d,)
    if k == 1:
        assert shapes["tok_embeddings.weight"] == shapes["output.weight"] == (16384, d)
    else:
        assert shapes["aggregation_layer.weight"] == (d, k * d) and shapes["aggregation_layer.bias"] == (d,)
        assert shapes[f"tok_embeddings_{k}.weight"] == shapes[f"output_{k}.weight"] == (16384, d)
        assert f"ar_head.{c.num_head_layers - 1}.attention.wqkv.weight" in shapes
    num_params = sum(v.numel() for key, v in state.items() if key != "freqs_cis") / 1e6
    if millions is not None:
        # GPT sizes are given to 0.1M; the FAR paper rounds its sizes (415M / 898M) more coarsely.
        assert abs(num_params - millions) / millions < (5e-4 if k == 1 else 1e-2)

    converted, report = convert_state_dict(state)
    assert report.kind == ("llamagen-gpt" if k == 1 else "far")
    assert report.dropped == {"freqs_cis": "precomputed table, rebuilt from the config"}
    assert converted.config.num_attention_heads == c.num_attention_heads
    assert preset in report.settings["num_attention_heads"]
    expected_grid = 24 if preset in ("GPT-XL", "GPT-XXL", "GPT-3B") else 16  # released image sizes
    assert converted.config.grid_size == expected_grid
    for name in ("num_hidden_layers", "hidden_size", "num_codebooks", "vocab_size", "num_classes",
                 "intermediate_size") + (("num_head_layers",) if k > 1 else ()):
        assert getattr(converted.config, name) == getattr(c, name), name


@pytest.mark.parametrize("name,grid", [("c2i_L_384.pt", 24), ("c2i_L_256.pt", 16), ("0050000.pt", 16)])
def test_generator_grid_from_the_file_name_hint(name, grid):
    with init_empty_weights():
        model = FARForClassConditionalGeneration(FARConfig.from_preset("GPT-L"))
    converted, report = convert_state_dict(official_generator_state(model), checkpoint_name=name)
    assert converted.config.grid_size == grid
    converted, _ = convert_state_dict(official_generator_state(model), checkpoint_name=name, image_size=512)
    assert converted.config.grid_size == 32


# ------------------------------------------------------------------------------------------- numeric round trips
@pytest.mark.parametrize("kind", list(BRANCHES))
def test_tokenizer_round_trip_through_an_official_training_file(tmp_path, kind):
    model = tiny_tokenizer(kind)
    training_file = {
        "model": official_tokenizer_state(model, kind),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "steps": 7,
        "args": argparse.Namespace(vq_model="VQ-16", codebook_size=64),
    }
    torch.save(training_file, tmp_path / "ckpt.pt")
    out = convert_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")
    assert out == tmp_path / "out" and (out / "diffusion_pytorch_model.safetensors").is_file()
    loaded = FQGANTokenizer.from_pretrained(out).eval()
    assert_same_weights(model, loaded)
    x = images()
    indices = model.tokenize(x)
    torch.testing.assert_close(loaded.tokenize(x), indices, rtol=0, atol=0)
    torch.testing.assert_close(loaded.detokenize(indices), model.detokenize(indices), rtol=0, atol=0)
    assert loaded.config.teacher_dims == (list(TINY_TEACHER_DIMS[kind]) if TINY_TEACHER_DIMS[kind] else None)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_generator_round_trip_gives_the_same_logits(tmp_path, k):
    model = tiny_generator(k)
    state = official_generator_state(model)
    state["layers.0.attention.kv_cache.k_cache"] = torch.zeros(2, 4, 24, 16)  # left by a sampling run
    torch.save({"model": state}, tmp_path / "far.pt")
    out = convert_checkpoint(tmp_path / "far.pt", tmp_path / "out", num_heads=4, image_size=64)
    loaded = FARForClassConditionalGeneration.from_pretrained(out).eval()
    assert_same_weights(model, loaded)
    ids = torch.randint(32, (2, k, 16), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 10])
    expected = model(input_ids=ids, class_labels=labels).logits
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(loaded(input_ids=ids, class_labels=labels).logits, expected, rtol=0, atol=0)


CONTAINERS = {
    "model": lambda sd, other: {"model": sd, "steps": 1},
    "ema preferred": lambda sd, other: {"model": other, "ema": sd, "args": argparse.Namespace(ema=True)},
    "module": lambda sd, other: {"module": sd, "global_steps": 3},
    "state_dict": lambda sd, other: {"state_dict": sd},
    "bare": lambda sd, other: sd,
    "ddp prefix": lambda sd, other: {"model": {f"module.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("container", list(CONTAINERS))
def test_checkpoint_containers(tmp_path, container):
    wanted, other = official_generator_state(tiny_generator(seed=0)), official_generator_state(tiny_generator(seed=1))
    torch.save(CONTAINERS[container](wanted, other), tmp_path / "ckpt.pt")
    state, source = load_official_state_dict(tmp_path / "ckpt.pt")
    expected_source = {"ema preferred": "ema", "ddp prefix": "model", "bare": "bare state dict"}
    assert source == expected_source.get(container, container)
    assert state.keys() == wanted.keys()
    for key in wanted:
        torch.testing.assert_close(state[key], wanted[key], rtol=0, atol=0)


def test_views_of_one_buffer_are_saved_as_separate_tensors(tmp_path):
    # DeepSpeed's zero_to_fp32 writes views of one flat fp32 buffer; safetensors refuses shared memory.
    model = tiny_generator()
    state = official_generator_state(model)
    flat = torch.cat([v.flatten() for v in state.values()])
    views, offset = {}, 0
    for key, v in state.items():
        views[key] = flat[offset : offset + v.numel()].view(v.shape)
        offset += v.numel()
    torch.save(views, tmp_path / "zero.pt")
    out = convert_checkpoint(tmp_path / "zero.pt", tmp_path / "out", num_heads=4, image_size=64)
    assert_same_weights(model, FARForClassConditionalGeneration.from_pretrained(out))


def test_cli_helpers_print_the_report(tmp_path, capsys):
    torch.save({"model": official_generator_state(tiny_generator())}, tmp_path / "gpt.pt")
    parser = argparse.ArgumentParser()
    add_convert_arguments(parser)
    args = parser.parse_args(
        [str(tmp_path / "gpt.pt"), str(tmp_path / "out"), "--num-heads", "4", "--image-size", "64"]
    )
    assert run_convert(args) == 0
    printed = capsys.readouterr().out
    assert "llamagen-gpt checkpoint" in printed and "freqs_cis" in printed and "4 (--num-heads)" in printed
    assert FARForClassConditionalGeneration.from_pretrained(tmp_path / "out").config.grid_size == 4


# ------------------------------------------------------------------------------------------- bad input
def test_truncated_and_garbage_files_name_the_file(tmp_path):
    torch.save({"model": official_generator_state(tiny_generator())}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all" * 10)
    for name in ("cut.pt", "junk.pt"):
        with pytest.raises(ValueError, match=rf"{name}.*truncated or corrupted"):
            convert_checkpoint(tmp_path / name, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        convert_checkpoint(tmp_path / "missing.pt", tmp_path / "out")


class _NotAWeight:
    pass


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model": official_generator_state(tiny_generator()), "extra": _NotAWeight()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights-only"):
        convert_checkpoint(tmp_path / "evil.pt", tmp_path / "out")


def test_wrong_kind_names_the_missing_and_found_keys(tmp_path):
    torch.save({"model": official_generator_state(tiny_generator())}, tmp_path / "gpt.pt")
    with pytest.raises(ValueError, match=r"not a tokenizer checkpoint.*quantize\.embedding\.weight.*llamagen-gpt"):
        convert_checkpoint(tmp_path / "gpt.pt", tmp_path / "out", kind="tokenizer")
    with pytest.raises(ValueError, match=r"not a fqgan-dual checkpoint.*quantize_sem\.embedding\.weight"):
        convert_checkpoint(tmp_path / "gpt.pt", tmp_path / "out", kind="fqgan-dual")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "foo.pt")
    with pytest.raises(ValueError, match=r"match no known kind.*foo\.weight"):
        convert_checkpoint(tmp_path / "foo.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda sd: sd.update({"encoder.extra.weight": torch.zeros(3)}), r"unexpected keys \(1\): encoder\.extra\."),
        (lambda sd: sd.pop("decoder.conv_out.bias"), r"missing keys \(1\): decoder\.conv_out\.bias"),
        (lambda sd: sd.pop("encoder.semantic_head.0.ln_post.bias"), r"missing keys \(1\): encoder\.semantic_head\."),
        (lambda sd: sd.update({"decoder.conv_in.bias": torch.zeros(5)}), r"shape \(1\): decoder\.conv_in\.bias \(5,\)"),
    ],
)
def test_key_accounting_errors_before_writing(tmp_path, change, message):
    state = official_tokenizer_state(tiny_tokenizer("fqgan-dual"), "fqgan-dual")
    change(state)
    torch.save({"model": state}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=message):
        convert_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_empty_output_dir_is_refused_unless_overwrite(tmp_path):
    torch.save({"model": official_generator_state(tiny_generator())}, tmp_path / "gpt.pt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        convert_checkpoint(tmp_path / "gpt.pt", out, num_heads=4)
    assert (out / "old.txt").read_text() == "keep me"
    convert_checkpoint(tmp_path / "gpt.pt", out, num_heads=4, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "config.json").is_file()


def test_settings_the_weights_cannot_give_are_checked(tmp_path):
    gpt = official_generator_state(tiny_generator())
    with pytest.raises(ValueError, match="no preset for a llamagen-gpt with 2 layers of width 64.*--num-heads"):
        convert_state_dict(gpt)
    with pytest.raises(ValueError, match="3 heads do not fit width 64"):
        convert_state_dict(gpt, num_heads=3)
    with pytest.raises(ValueError, match="multiple of 16"):
        convert_state_dict(gpt, num_heads=4, image_size=100)
    tokenizer = official_tokenizer_state(tiny_tokenizer("fqgan-dual"), "fqgan-dual")
    with pytest.raises(ValueError, match="--num-heads applies to generators"):
        convert_state_dict(tokenizer, num_heads=8)
    with pytest.raises(ValueError, match="fixed 8x8 grid.*16 px"):
        convert_state_dict(tokenizer, image_size=32)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_runs_code_is_refused_as_such(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": official_generator_state(tiny_generator()), "payload": _RunsCode(marker)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="refused by weights-only loading.*Python objects or code") as error:
        convert_checkpoint(tmp_path / "x.pt", tmp_path / "out")
    assert "weights_only=False" not in str(error.value) and "truncated" not in str(error.value)
    assert "safe_globals" not in str(error.value)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_nan_and_integer_weights_are_refused_by_name(tmp_path):
    state = official_generator_state(tiny_generator())
    state["layers.0.attention.wo.weight"] = state["layers.0.attention.wo.weight"].clone()
    state["layers.0.attention.wo.weight"][1, 2] = float("nan")
    torch.save({"model": state}, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=r"layers\.0\.attention\.wo\.weight.*NaN or infinite"):
        convert_checkpoint(tmp_path / "nan.pt", tmp_path / "out", num_heads=4)
    state = official_generator_state(tiny_generator())
    state["norm.weight"] = state["norm.weight"].to(torch.int8)
    torch.save({"model": state}, tmp_path / "int.pt")
    with pytest.raises(ValueError, match=r"floating point.*norm\.weight \(torch\.int8\)"):
        convert_checkpoint(tmp_path / "int.pt", tmp_path / "out", num_heads=4)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- BEiT-v2 VQ-KD
# Teacher keys: a sample of CLIP ViT-B/16's (the converter drops the whole `teacher_model.` prefix).
VQKD_TEACHER_KEYS = {
    "teacher_model.positional_embedding": (77, 512), "teacher_model.text_projection": (512, 512),
    "teacher_model.logit_scale": (), "teacher_model.visual.class_embedding": (768,),
    "teacher_model.visual.positional_embedding": (197, 768), "teacher_model.visual.proj": (768, 512),
    "teacher_model.visual.conv1.weight": (768, 3, 16, 16), "teacher_model.visual.ln_pre.weight": (768,),
    "teacher_model.visual.ln_post.weight": (768,), "teacher_model.token_embedding.weight": (49408, 512),
}


def official_vqkd_shapes(
    decoder_depth=1, teacher_dim=512, width=768, depth=12, patch=16, image=224, channels=3, codes=8192, code_dim=32
) -> dict[str, tuple]:
    """Key -> shape of a VQKD state dict as microsoft/unilm beit2/modeling_vqkd.py saves it (`VQKD.state_dict()`).

    The ViTs are beit2/modeling_finetune.py's VisionTransformer under get_model_default_params(): qkv_bias=True
    (q_bias, v_bias; qkv without bias), init_values=0 (no gamma_1/gamma_2), use_mean_pooling=True (fc_norm; norm is
    an Identity), num_classes=0 (head is an Identity), use_abs_pos_emb=True (a CLS position too), mlp_ratio 4. The
    decoder reads the codes through 1x1 patches on the encoder's grid. The quantizer is norm_ema_quantizer.py's
    NormEMAVectorQuantizer (EmbeddingEMA weight, cluster_size, embed_avg, initted; its own cluster_size buffer).
    """
    grid = image // patch
    shapes = {}

    def vit(prefix, w, layers, in_channels, p):
        shapes.update({
            f"{prefix}.cls_token": (1, 1, w), f"{prefix}.pos_embed": (1, grid**2 + 1, w),
            f"{prefix}.patch_embed.proj.weight": (w, in_channels, p, p), f"{prefix}.patch_embed.proj.bias": (w,),
            f"{prefix}.fc_norm.weight": (w,), f"{prefix}.fc_norm.bias": (w,),
        })
        for i in range(layers):
            b = f"{prefix}.blocks.{i}."
            shapes.update({
                b + "norm1.weight": (w,), b + "norm1.bias": (w,), b + "attn.q_bias": (w,), b + "attn.v_bias": (w,),
                b + "attn.qkv.weight": (3 * w, w), b + "attn.proj.weight": (w, w), b + "attn.proj.bias": (w,),
                b + "norm2.weight": (w,), b + "norm2.bias": (w,), b + "mlp.fc1.weight": (4 * w, w),
                b + "mlp.fc1.bias": (4 * w,), b + "mlp.fc2.weight": (w, 4 * w), b + "mlp.fc2.bias": (w,),
            })

    vit("encoder", width, depth, channels, patch)
    vit("decoder", width, decoder_depth, code_dim, 1)
    shapes.update({
        "quantize.cluster_size": (codes,), "quantize.embedding.weight": (codes, code_dim),
        "quantize.embedding.cluster_size": (codes,), "quantize.embedding.embed_avg": (codes, code_dim),
        "quantize.embedding.initted": (1,),
        "encode_task_layer.0.weight": (width, width), "encode_task_layer.0.bias": (width,),
        "encode_task_layer.2.weight": (code_dim, width), "encode_task_layer.2.bias": (code_dim,),
        "decode_task_layer.0.weight": (width, width), "decode_task_layer.0.bias": (width,),
        "decode_task_layer.2.weight": (teacher_dim, width), "decode_task_layer.2.bias": (teacher_dim,),
        "scaling_layer.shift": (1, 3, 1, 1), "scaling_layer.scale": (1, 3, 1, 1),
        **VQKD_TEACHER_KEYS,
    })
    return shapes


def tiny_vqkd_state(seed: int = 0, **changes) -> dict[str, torch.Tensor]:
    """A random official-layout VQ-KD state dict: 32 wide, 1 + 1 blocks, 8 px images of 2 px patches, 16 x 8 codes."""
    gen = torch.Generator().manual_seed(seed)
    shapes = official_vqkd_shapes(teacher_dim=16, width=32, depth=1, patch=2, image=8, codes=16, code_dim=8)
    state = {key: torch.randn(shape, generator=gen) * 0.5 for key, shape in shapes.items()}
    state["quantize.embedding.weight"] = torch.nn.functional.normalize(state["quantize.embedding.weight"], dim=-1)
    state["quantize.embedding.initted"] = torch.ones(1)
    state.update(changes)
    return state


@pytest.mark.parametrize(
    "official,ours",
    [
        ("encoder.patch_embed.proj.weight", "encoder.patch_embed.weight"),
        ("decoder.blocks.2.mlp.fc1.bias", "decoder.blocks.2.mlp.0.bias"),
        ("encoder.blocks.11.mlp.fc2.weight", "encoder.blocks.11.mlp.2.weight"),
        ("encoder.blocks.3.attn.q_bias", "encoder.blocks.3.attn.q_bias"),
        ("encoder.fc_norm.weight", "encoder.fc_norm.weight"),
        ("encode_task_layer.2.weight", "encode_task_layer.2.weight"),
        ("quantize.embedding.weight", "quantize.embedding.weight"),
    ],
)
def test_vqkd_key_renames(official, ours):
    assert official_vqkd_key_to_hf(official) == ours
    assert hf_vqkd_key_to_official(ours) == official


def test_vqkd_teacher_and_statistics_are_dropped_and_unknown_keys_rejected():
    for key in ("teacher_model.visual.proj", "scaling_layer.shift", "quantize.embedding.embed_avg",
                "quantize.cluster_size", "quantize.embedding.initted"):
        assert official_vqkd_key_to_hf(key) is None
    with pytest.raises(KeyError):
        official_vqkd_key_to_hf("head.weight")


@pytest.mark.parametrize("name,decoder_depth,teacher_dim,millions", [
    ("vqkd_encoder_base_decoder_1x768x12_clip", 1, 512, 94.66),
    ("vqkd_encoder_base_decoder_3x768x12_clip", 3, 512, 108.83),
    ("vqkd_encoder_base_decoder_1x768x12_dino", 1, 768, 94.85),
])
def test_full_size_vqkd_layout_converts_with_every_key_accounted_for(name, decoder_depth, teacher_dim, millions):
    shapes = official_vqkd_shapes(decoder_depth=decoder_depth, teacher_dim=teacher_dim)
    with torch.device("meta"):
        state = {key: torch.empty(shape) for key, shape in shapes.items()}
    assert detect_kind(state.keys()) == "beitv2-vqkd" and detect_kind(state.keys(), "tokenizer") == "beitv2-vqkd"
    model, report = convert_state_dict(state)
    assert isinstance(model, VQKDTokenizer) and report.kind == "beitv2-vqkd"
    dropped = {k for k in state if k.startswith(("teacher_model.", "scaling_layer.")) or
               k in {"quantize.cluster_size", "quantize.embedding.cluster_size", "quantize.embedding.embed_avg",
                     "quantize.embedding.initted"}}
    assert set(report.dropped) == dropped
    assert report.num_mapped + len(report.dropped) == len(state)
    c = model.config
    assert (c.sample_size, c.patch_size, c.encoder_width, c.encoder_layers, c.encoder_heads) == (224, 16, 768, 12, 12)
    assert (c.decoder_width, c.decoder_layers, c.decoder_heads, c.teacher_dim) == (768, decoder_depth, 12, teacher_dim)
    assert c.quantizer == {"kind": "cosine_ema", "codebook_size": 8192, "dim": 32} and c.pixel_decoder is None
    assert c.teacher_model == ("openai/clip-vit-base-patch16" if teacher_dim == 512 else None)
    assert round(report.num_parameters / 1e6, 2) == millions  # as the official modules count (check_parity.py)
    assert bool(model.quantize.initted) and not model.can_decode


def test_tiny_vqkd_checkpoint_converts_loads_and_tokenizes(tmp_path):
    state = tiny_vqkd_state()
    torch.save({"model": state, "epoch": 3, "args": argparse.Namespace(model="vqkd")}, tmp_path / "vqkd.pth")
    out = convert_checkpoint(tmp_path / "vqkd.pth", tmp_path / "out", num_heads=2)
    loaded = AutoImageTokenizer.from_pretrained(out).eval()
    assert isinstance(loaded, VQKDTokenizer) and not loaded.can_decode
    ours = loaded.state_dict()
    for key, tensor in state.items():
        new = official_vqkd_key_to_hf(key)
        if new is not None:
            torch.testing.assert_close(ours[new], tensor, rtol=0, atol=0, msg=key)
    assert bool(loaded.quantize.initted)
    # the inverse map turns a converted model back into a checkpoint the converter takes again, key for key
    back = {hf_vqkd_key_to_official(key): tensor for key, tensor in ours.items()}
    assert "quantize.embedding.initted" in back and set(back) <= set(state)
    torch.save({"model": back}, tmp_path / "back.pth")
    again = AutoImageTokenizer.from_pretrained(convert_checkpoint(tmp_path / "back.pth", tmp_path / "again",
                                                                  num_heads=2))
    assert all(torch.equal(again.state_dict()[key], tensor) for key, tensor in ours.items())
    x = images(8)
    indices = loaded.tokenize(x)
    assert indices.shape == (2, 1, 4, 4) and indices.dtype == torch.long and 0 <= indices.min() <= indices.max() < 16
    with torch.no_grad():  # the official encoder + quantizer, written out: argmax cosine of encode_task_layer output
        tokens = loaded.encode_task_layer(loaded.encoder(x))
        codebook = state["quantize.embedding.weight"]
        expected = (torch.nn.functional.normalize(tokens, dim=-1) @ codebook.t()).argmax(-1).view(2, 1, 4, 4)
    torch.testing.assert_close(indices, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no pixel decoder"):
        loaded.detokenize(indices)


def test_vqkd_report_groups_the_teacher_keys(tmp_path, capsys):
    torch.save({"model": tiny_vqkd_state()}, tmp_path / "vqkd.pth")
    parser = argparse.ArgumentParser()
    add_convert_arguments(parser)
    assert run_convert(parser.parse_args([str(tmp_path / "vqkd.pth"), str(tmp_path / "out"), "--num-heads", "2"])) == 0
    printed = capsys.readouterr().out
    assert "beitv2-vqkd checkpoint" in printed and "2 (--num-heads)" in printed
    assert f"{len(VQKD_TEACHER_KEYS)} keys (teacher_model." in printed and "scaling_layer.shift:" in printed
    assert "quantize.embedding.embed_avg:" in printed


@pytest.mark.parametrize(
    "change,message",
    [
        ({"encoder.head.weight": torch.zeros(4, 32)}, r"unexpected keys \(1\): encoder\.head\.weight"),
        ({"decoder.norm.weight": torch.zeros(32)}, r"unexpected keys \(1\): decoder\.norm\.weight"),
        ({"extra.weight": torch.zeros(3)}, r"unexpected keys \(1\): extra\.weight"),
        ({"encoder.blocks.0.gamma_1": torch.ones(32)}, r"layer scale.*init_values=0"),
        ({"quantize.embedding.weight": torch.ones(16, 8)}, r"not unit vectors"),
        ({"quantize.embedding.initted": torch.zeros(1)}, r"never initialised"),
        ({"decoder.pos_embed": torch.zeros(1, 10, 32)}, r"decoder\.pos_embed has 9 patch positions"),
    ],
)
def test_vqkd_key_accounting_errors_before_writing(tmp_path, change, message):
    torch.save({"model": tiny_vqkd_state(**change)}, tmp_path / "vqkd.pth")
    with pytest.raises(ValueError, match=message):
        convert_checkpoint(tmp_path / "vqkd.pth", tmp_path / "out", num_heads=2)
    assert not (tmp_path / "out").exists()


def test_vqkd_missing_key_and_settings_are_checked():
    state = tiny_vqkd_state()
    del state["decoder.blocks.0.attn.v_bias"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): decoder\.blocks\.0\.attn\.v_bias"):
        convert_state_dict(state, num_heads=2)
    state = tiny_vqkd_state()
    with pytest.raises(ValueError, match="12 heads do not fit the encoder width 32.*--num-heads"):
        convert_state_dict(state)
    with pytest.raises(ValueError, match="fix a 4x4 grid.*8 px"):
        convert_state_dict(state, num_heads=2, image_size=16)
    with pytest.raises(ValueError, match="not a llamagen-vq checkpoint.*beitv2-vqkd"):
        convert_state_dict(state, kind="llamagen-vq")
