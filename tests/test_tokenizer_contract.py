"""Every registered tokenizer class, in every "tiny*" preset it lists, honours the tokenizer contract.

The cases come from `TOKENIZER_CLASSES` and each class's presets: adding a class to the registry adds it here.
"""

import json

import pytest
import torch
from conftest import load_script, run_in_own_process_group

from hf_vq import AutoImageTokenizer, FARConfig, FARForClassConditionalGeneration, FQGANPipeline
from hf_vq.tokenizers import TOKENIZER_CLASSES, ImageTokenizerMixin, TokenizerDecoderOutput, TokenizerEncoderOutput

CASES = [(cls, name) for cls in TOKENIZER_CLASSES for name in sorted(cls.presets) if name.startswith("tiny")]


def build(cls, preset: str):
    torch.manual_seed(0)
    return cls.from_preset(preset).eval()


def images(model, batch: int = 3, seed: int = 1) -> torch.Tensor:
    size = model.sample_size
    return torch.rand(batch, model.in_channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(params=CASES, ids=[f"{cls.__name__}-{name}" for cls, name in CASES])
def model(request):
    return build(*request.param)


def test_every_class_lists_a_tiny_preset():
    assert TOKENIZER_CLASSES
    for cls in TOKENIZER_CLASSES:
        assert issubclass(cls, ImageTokenizerMixin)
        assert any(name.startswith("tiny") for name in cls.presets), cls.__name__


def test_shapes_dtypes_and_determinism(model):
    x = images(model)
    indices = model.tokenize(x)
    h, w = model.token_grid()
    assert indices.shape == (3, model.num_codebooks, h, w) and indices.dtype == torch.long
    assert len(model.codebook_sizes) == model.num_codebooks
    for j, size in enumerate(model.codebook_sizes):
        assert 0 <= int(indices[:, j].min()) and int(indices[:, j].max()) < size
    assert torch.equal(model.tokenize(x), indices)
    assert model.token_grid(2 * model.sample_size) == (2 * h, 2 * w)
    if not model.can_decode:
        with pytest.raises(ValueError, match="no pixel decoder"):
            model.detokenize(indices)
        return
    recon = model.detokenize(indices)
    assert recon.shape == x.shape and recon.dtype == torch.float32
    assert torch.equal(model.detokenize(indices), recon)


def test_a_half_precision_tokenizer_tokenizes_and_detokenizes(model):
    """Loaded with `torch_dtype=torch.bfloat16`, as diffusers users load models; codes are searched in fp32."""
    half = model.to(torch.bfloat16)
    indices = half.tokenize(images(model).bfloat16())
    assert indices.dtype == torch.long and indices.shape[1] == model.num_codebooks
    assert all(int(indices[:, j].max()) < size for j, size in enumerate(model.codebook_sizes))
    if model.can_decode:
        assert half.detokenize(indices).dtype == torch.bfloat16


def test_tokenize_takes_images_of_another_float_dtype_and_decoding_takes_any_integer_indices(model):
    """diffusers' image processors give fp32 images whatever the model's dtype; codes are often stored as uint8."""
    x = images(model)
    half = model.to(torch.bfloat16)
    indices = half.tokenize(x)
    assert torch.equal(indices, half.tokenize(x.bfloat16()))
    if model.can_decode and max(model.codebook_sizes) <= 256:
        assert torch.equal(half.detokenize(indices.to(torch.uint8)), half.detokenize(indices))


def test_every_public_method_runs_the_offload_hooks_onloading(model):
    """`enable_model_cpu_offload` onloads a model in its hook's `pre_forward`; diffusers' VAEs run it for `encode` and
    `decode` too (`apply_forward_hook`), so that calling them directly after offloading works."""
    from accelerate.hooks import ModelHook, add_hook_to_module

    class CountOnloads(ModelHook):
        calls = 0

        def pre_forward(self, module, *args, **kwargs):
            CountOnloads.calls += 1
            return args, kwargs

    add_hook_to_module(model, CountOnloads())
    x = images(model)
    indices = model.tokenize(x)
    calls = {"encode": lambda: model.encode(x), "indices_to_latents": lambda: model.indices_to_latents(indices)}
    if model.can_decode:
        latents = model.indices_to_latents(indices)
        calls["decode"] = lambda: model.decode(latents)
    for name, call in calls.items():
        before = CountOnloads.calls
        call()
        assert CountOnloads.calls > before, name


def test_encode_decode_outputs_and_tuples(model):
    x = images(model)
    enc = model.encode(x)
    assert isinstance(enc, TokenizerEncoderOutput) and torch.equal(enc.indices, model.tokenize(x))
    as_tuple = model.encode(x, return_dict=False)
    assert torch.equal(as_tuple[0], enc.latents) and torch.equal(as_tuple[1], enc.indices)
    torch.testing.assert_close(model.indices_to_latents(enc.indices), enc.latents)
    if not model.can_decode:
        return
    dec = model.decode(enc.latents)
    assert isinstance(dec, TokenizerDecoderOutput)
    torch.testing.assert_close(model.decode(enc.latents, return_dict=False)[0], dec.sample)
    torch.testing.assert_close(model.indices_to_latents(enc.indices), enc.latents)
    torch.testing.assert_close(dec.sample, model.detokenize(enc.indices))


def test_training_forward_has_named_losses_and_gradients(model):
    model.train()
    x = images(model)
    out = model(x)
    assert out.indices.shape[1] == model.num_codebooks
    assert (out.sample is None) if not model.can_decode else (out.sample.shape == x.shape)
    assert all(isinstance(name, str) and loss.ndim == 0 for name, loss in out.losses.items())
    total = sum(out.losses.values()) + (0 if out.sample is None else (out.sample - x).pow(2).mean())
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_gradient_checkpointing_gives_the_same_losses_and_gradients(model):
    assert model._supports_gradient_checkpointing  # every class: tokenizers at 256 px train near the memory limit

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        out = model(images(model))
        total = sum(out.losses.values()) + (0 if out.sample is None else out.sample.pow(2).mean())
        total.backward()
        return total.detach(), [p.grad for p in model.parameters() if p.grad is not None]

    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}  # an EMA codebook moves in a training forward
    expected, expected_grads = loss_and_grads()
    model.load_state_dict(state)
    model.enable_gradient_checkpointing()
    calls = []
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            run = module._gradient_checkpointing_func
            module._gradient_checkpointing_func = lambda *a, _run=run, **kw: calls.append(1) or _run(*a, **kw)
    got, grads = loss_and_grads()
    assert model.is_gradient_checkpointing and calls  # blocks went through the recomputing path
    torch.testing.assert_close(got, expected)
    assert len(grads) == len(expected_grads)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


def test_save_load_round_trip_and_family_loader(model, tmp_path):
    model.save_pretrained(tmp_path / "tok")
    x = images(model)
    for loaded in (type(model).from_pretrained(tmp_path / "tok"), AutoImageTokenizer.from_pretrained(tmp_path / "tok")):
        assert type(loaded) is type(model)
        saved, fresh = json.loads(loaded.to_json_string()), json.loads(model.to_json_string())
        assert {k: v for k, v in saved.items() if not k.startswith("_")} == {
            k: v for k, v in fresh.items() if not k.startswith("_")}
        assert torch.equal(loaded.eval().tokenize(x), model.tokenize(x))
    config = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert config["_class_name"] == type(model).__name__


def test_device_map_auto_loads_the_same_tokenizer(model, tmp_path):
    """diffusers refuses device_map="auto" for a class that does not say which modules must stay whole."""
    model.save_pretrained(tmp_path / "tok")
    mapped = AutoImageTokenizer.from_pretrained(tmp_path / "tok", device_map="auto").eval()
    assert mapped.hf_device_map
    x = images(model)
    assert torch.equal(mapped.tokenize(x), model.tokenize(x))


def test_a_concrete_class_refuses_another_class_folder(model, tmp_path):
    model.save_pretrained(tmp_path / "tok")
    config_path = tmp_path / "tok" / "config.json"
    config = json.loads(config_path.read_text())
    config["_class_name"] = "SomeOtherTokenizer"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"belongs to a SomeOtherTokenizer, not a {type(model).__name__}"):
        type(model).from_pretrained(tmp_path / "tok")
    with pytest.raises(ValueError, match="not an hf_vq tokenizer class"):
        AutoImageTokenizer.from_pretrained(tmp_path / "tok")


def test_bad_input_is_refused_before_work(model):
    size, c = model.sample_size, model.in_channels
    with pytest.raises(ValueError, match=f"{c}-channel"):
        model.tokenize(torch.zeros(1, c + 1, size, size))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model.tokenize(torch.zeros(c, size, size))
    with pytest.raises(TypeError, match="floating point"):
        model.tokenize(torch.zeros(1, c, size, size, dtype=torch.uint8))
    with pytest.raises(ValueError, match="divisible"):
        model.tokenize(torch.zeros(1, c, size + 1, size + 1))
    # pixels in [0, 255] or NaN would give codes without a word; a resampling overshoot past [-1, 1] is taken
    with pytest.raises(ValueError, match=r"finite and in \[-1, 1\], got values in \[.*\]: scale 8-bit pixels"):
        model.tokenize(torch.rand(1, c, size, size) * 255)
    with pytest.raises(ValueError, match=r"got values in \[nan, nan\]"):
        model.tokenize(torch.full((1, c, size, size), float("nan")))
    assert model.tokenize(torch.full((1, c, size, size), 1.2)).shape[0] == 1
    h, w = model.token_grid()
    with pytest.raises(ValueError, match=rf"\(B, {model.num_codebooks}, h, w\)"):
        model.indices_to_latents(torch.zeros(1, model.num_codebooks + 1, h, w, dtype=torch.long))
    with pytest.raises(ValueError, match=rf"\[0, {model.codebook_sizes[0]}\)"):
        model.indices_to_latents(torch.full((1, model.num_codebooks, h, w), model.codebook_sizes[0]))


def test_tokenize_and_detokenize_compile_as_one_graph(model):
    # the eager calls check token values; a compiled graph reads none (it could not raise), so nothing splits it
    x = images(model, batch=2)
    indices = model.tokenize(x)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(model.tokenize, fullgraph=True, backend="eager")(x), indices)
    if not model.can_decode:  # a VQ-KD tokenizer before its pixel decoder is trained
        return
    decoded = torch.compile(model.detokenize, fullgraph=True, backend="eager")(indices)
    assert torch.equal(decoded, model.detokenize(indices))


def tiny_far(model) -> FARForClassConditionalGeneration:
    torch.manual_seed(0)
    grid = model.grid_size
    config = FARConfig(vocab_size=model.codebook_sizes[0], num_codebooks=model.num_codebooks, num_classes=2,
                       hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_head_layers=1, grid_size=grid)
    return FARForClassConditionalGeneration(config).eval()


def test_works_inside_the_pipeline(model, tmp_path):
    if not model.can_decode:
        with pytest.raises(ValueError, match="no pixel decoder"):
            FQGANPipeline(vqvae=model, transformer=tiny_far(model), id2label={0: "a", 1: "b"})
        return
    pipe = FQGANPipeline(vqvae=model, transformer=tiny_far(model), id2label={0: "a", 1: "b"})
    pipe.set_progress_bar_config(disable=True)
    images_ = pipe(["a", 1], num_images_per_label=2, output_type="pt", generator=torch.manual_seed(0)).images
    assert images_.shape == (4, model.in_channels, model.sample_size, model.sample_size)
    assert 0 <= float(images_.min()) and float(images_.max()) <= 1
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = FQGANPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.vqvae) is type(model)
    again = loaded(["a", 1], num_images_per_label=2, output_type="pt", generator=torch.manual_seed(0)).images
    assert torch.equal(again, images_)
    # the family loader, given the pipeline, opens its tokenizer (what every --tokenizer flag takes)
    assert type(AutoImageTokenizer.from_pretrained(tmp_path / "pipe")) is type(model)
    with pytest.raises(ValueError, match="generator \\(a transformers model\\), not a tokenizer"):
        AutoImageTokenizer.from_pretrained(tmp_path / "pipe" / "transformer")


def test_code_extraction(model, tmp_path, imagefolder):
    from datasets import load_from_disk

    if model.sample_size != 8 or model.in_channels != 1:
        pytest.skip("the imagefolder fixture holds 8x8 grayscale images")
    model.save_pretrained(tmp_path / "tok")
    load_script("extract_codes").main(["--tokenizer", str(tmp_path / "tok"), "--dataset", str(imagefolder),
                                       "--resolution", "8", "--output_dir", str(tmp_path / "codes"), "--no_flip"])
    table = load_from_disk(str(tmp_path / "codes"))
    h, w = model.token_grid()
    assert table.features["codes"].shape == (model.num_codebooks, h * w) and len(table) == 16


def test_every_class_can_be_sharded_by_fsdp2():
    """`fully_shard` swaps in a subclass of the model's class, which Python refuses when the class layouts differ (as
    abc.ABC's empty __slots__ made them)."""
    out = run_in_own_process_group(
        """
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
        from hf_vq.tokenizers import TOKENIZER_CLASSES

        mesh = init_device_mesh("cpu", (1,))
        for cls in TOKENIZER_CLASSES:
            torch.manual_seed(0)
            model = cls.from_preset("tiny").eval()
            x = torch.rand(2, model.in_channels, model.sample_size, model.sample_size) * 2 - 1
            expected = model.encode(x).indices
            fully_shard(model, mesh=mesh)
            register_fsdp_forward_method(model, "encode")  # FSDP gathers the weights around forward only
            assert isinstance(model, FSDPModule) and isinstance(model, cls)
            assert torch.equal(model.encode(x).indices, expected), cls.__name__
        print("sharded", len(TOKENIZER_CLASSES))
        """
    )
    assert f"sharded {len(TOKENIZER_CLASSES)}" in out
