"""Half-precision weights with fp32 activations: the packed CPU kernel, its fallback, and how generators use them."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from test_far import GRID, VOCAB, tiny_model

from hf_vq.generators import half_linear as kernel_module
from hf_vq.generators.blocks import Linear
from hf_vq.generators.half_linear import half_linear, half_linear_supports, kernel_available, pack_weight
from hf_vq.generators.sampling import set_gemm_layout

needs_kernel = pytest.mark.skipif(not kernel_available(), reason="needs an AVX-512 CPU and a C compiler")
HALF = [torch.float16, torch.bfloat16]


@needs_kernel
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("shape", [(1, 7, 32), (5, 64, 96), (16, 512, 256), (17, 33, 64), (2, 20, 40, 128)])
def test_kernel_equals_fp32_product_of_the_rounded_weight(dtype, shape):
    *rows, in_features, out_features = shape
    x = torch.randn(*rows, in_features)
    weight = torch.randn(out_features, in_features).to(dtype)
    out = half_linear(x, pack_weight(weight))
    assert out.dtype == torch.float32 and out.shape == (*rows, out_features)
    torch.testing.assert_close(out, x @ weight.float().t(), rtol=1e-4, atol=1e-4)  # fp32, summed in another order


def test_pack_weight_tiles_32_columns():
    weight = torch.arange(64 * 3, dtype=torch.float16).view(64, 3)
    packed = pack_weight(weight)
    assert packed.shape == (2, 3, 32) and packed.is_contiguous()
    assert torch.equal(packed[1, 2], weight[32:, 2])  # tile 1, input 2: outputs 32..63


@pytest.mark.parametrize("dtype", HALF)
def test_linear_keeps_fp32_activations_with_half_weights(dtype):
    torch.manual_seed(0)
    layer = Linear(48, 64, bias=False).to(dtype).eval()
    x = torch.randn(3, 48)
    fallback = layer(x)  # not packed: the input is cast to the weight's dtype for the GEMM
    assert fallback.dtype == torch.float32
    torch.testing.assert_close(fallback, F.linear(x.to(dtype), layer.weight).float())
    layer.pack_for_decoding()
    assert (layer.packed_weight is not None) == kernel_available()
    with torch.no_grad():
        packed = layer(x)
    assert packed.dtype == torch.float32
    torch.testing.assert_close(packed, x @ layer.weight.float().t(), rtol=1e-2, atol=1e-2)
    assert "packed_weight" not in layer.state_dict()
    many = torch.randn(100, 48)  # beyond decoding shapes: fp32 maths on the upcast weight, as the kernel's
    assert not half_linear_supports(many, pack_weight(layer.weight))
    torch.testing.assert_close(layer(many), many @ layer.weight.float().t())


@needs_kernel
def test_packed_copy_follows_the_weight():
    """A packed copy never goes stale: an in-place update (load_state_dict) or a new tensor repacks it."""
    layer = Linear(32, 32, bias=False).half().eval()
    layer.pack_for_decoding()
    first = layer.packed_weight
    layer.pack_for_decoding()
    assert layer.packed_weight is first  # unchanged weight: nothing is repacked
    new = torch.randn(32, 32).half()
    layer.load_state_dict({"weight": new})
    layer.pack_for_decoding()
    assert torch.equal(layer.packed_weight, pack_weight(new))
    x = torch.randn(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ new.float().t(), rtol=1e-5, atol=1e-5)
    layer.pack_for_decoding(False)
    assert layer.packed_weight is None


def test_only_bias_free_half_cpu_weights_with_32_column_tiles_are_packed():
    assert not Linear(32, 32, bias=False).packable  # fp32
    assert not Linear(32, 32, bias=True).half().packable
    assert not Linear(32, 40, bias=False).half().packable
    assert Linear(32, 64, bias=False).half().packable == kernel_available()


@pytest.mark.parametrize("dtype", HALF)
def test_half_generator_packs_for_sampling_and_unpacks_for_training(dtype):
    model = tiny_model(2).to(dtype)
    for head in model.output_heads:
        head.float()
    blocks = [m for m in model.modules() if isinstance(m, Linear)]
    tokens = model.sample([0, 1], guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (2, 2, GRID**2) and int(tokens.max()) < VOCAB
    assert all((m.packed_weight is not None) == kernel_available() for m in blocks)
    assert all(m.weight.is_contiguous() for m in blocks)  # packed weights keep the row-major layout
    set_gemm_layout(model, None)
    assert all(m.packed_weight is None for m in blocks)
    model.sample([0, 1])
    model.train()
    assert all(m.packed_weight is None for m in blocks)


@needs_kernel
@pytest.mark.parametrize("dtype", HALF)
def test_kernel_and_fallback_sample_alike(monkeypatch, dtype):
    """Both paths round only the weights; the fallback also rounds each GEMM's input, so near-ties may differ."""
    model = tiny_model(2).to(dtype)
    seed = 7

    def sample():
        return model.sample([0, 1, 2, 3], guidance_scale=2.0, generator=torch.Generator().manual_seed(seed))

    packed = sample()
    monkeypatch.setattr(Linear, "packable", property(lambda self: False))
    fallback = sample()
    assert (packed == fallback).float().mean() > 0.9


def test_no_kernel_when_disabled_or_unbuildable(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("HF_VQ_CACHE", str(tmp_path))
    kernel_module._library.cache_clear()
    try:
        monkeypatch.setenv("HF_VQ_DISABLE_KERNELS", "1")
        assert kernel_module._library() is None
        kernel_module._library.cache_clear()
        monkeypatch.delenv("HF_VQ_DISABLE_KERNELS")
        monkeypatch.setenv("CC", shutil.which("false") or "/bin/false")
        if torch.backends.cpu.get_cpu_capability() == "AVX512":
            assert kernel_module._library() is None
            assert "failed" in caplog.text
            assert not list((tmp_path / "kernels").glob("*.so"))  # nothing half-written is left behind
            kernel_module._library.cache_clear()
            monkeypatch.delenv("CC")
            (tmp_path / "file").write_text("")
            monkeypatch.setenv("HF_VQ_CACHE", str(tmp_path / "file"))  # no folder can be made there
            assert kernel_module._library() is None
    finally:
        kernel_module._library.cache_clear()


@needs_kernel
@pytest.mark.skipif(shutil.which("c++") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_half_sampling_keeps_the_kernel_in_the_graph(monkeypatch):
    model = tiny_model(2).half()
    labels = [0, 3]

    def sample(**kwargs):
        return model.sample(labels, guidance_scale=2.0, generator=torch.Generator().manual_seed(0), **kwargs)

    eager = sample()
    library, calls = kernel_module._library(), []

    class CountingLibrary:
        def hf_vq_half_linear(self, *args):
            calls.append(args)
            return library.hf_vq_half_linear(*args)

    monkeypatch.setattr(kernel_module, "_library", CountingLibrary)
    torch._dynamo.reset()
    assert torch.equal(sample(compile=True), eager)
    assert len(calls) >= GRID**2 * 5  # every position's block GEMMs ran the kernel from inside the graph
