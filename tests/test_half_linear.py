"""Half-precision weights with fp32 activations: the packed CPU kernel, its fallback, and how generators use them."""

import os
import shutil
import subprocess

import pytest
import torch
from test_far import GRID, VOCAB, tiny_model

from hf_vq.generators import cpu_decoding
from hf_vq.generators import half_linear as kernel_module
from hf_vq.generators.blocks import Linear
from hf_vq.generators.half_linear import half_linear, half_linear_supports, kernel_available, pack_weight

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


@needs_kernel
def test_op_checks_its_inputs_before_the_kernel_runs():
    packed = pack_weight(torch.randn(64, 16).half())
    x = torch.randn(2, 16)
    with pytest.raises(TypeError, match="fp32 x"):
        half_linear(x.half(), packed)
    with pytest.raises(TypeError, match="fp16/bf16"):
        half_linear(x, packed.float())
    with pytest.raises(ValueError, match="contiguous"):
        half_linear(x, packed.transpose(0, 1))
    with pytest.raises(ValueError, match="contiguous"):
        half_linear(x, packed[:1].expand(4, -1, -1))
    with pytest.raises(ValueError, match="features"):
        half_linear(torch.randn(2, 15), packed)
    assert half_linear(torch.randn(0, 16), packed).shape == (0, 64)
    assert torch.equal(half_linear(torch.randn(3, 0), pack_weight(torch.randn(32, 0).half())), torch.zeros(3, 32))


@pytest.mark.parametrize("dtype", HALF)
def test_linear_keeps_fp32_activations_with_half_weights(dtype):
    torch.manual_seed(0)
    layer = Linear(48, 64, bias=False).to(dtype).eval()
    x = torch.randn(3, 48)
    reference = x @ layer.weight.float().t()  # on CPU: fp32 maths on the rounded weight, whatever the path
    unpacked = layer(x)
    assert unpacked.dtype == torch.float32
    torch.testing.assert_close(unpacked, reference)
    prepared = cpu_decoding.prepared_for_decoding(layer, Linear, rows=3)
    prepared.__enter__()
    assert ("packed_weight" in layer._buffers) == kernel_available()
    with torch.no_grad():
        packed = layer(x)
        many = torch.randn(100, 48)  # beyond decoding shapes the upcast weight serves
        assert not half_linear_supports(many, pack_weight(layer.weight))
        torch.testing.assert_close(layer(many), many @ layer.weight.float().t())
    torch.testing.assert_close(packed, reference, rtol=1e-4, atol=1e-4)
    assert "packed_weight" not in layer.state_dict()
    assert not half_linear_supports(x, pack_weight(layer.weight))  # autograd on: the kernel has no backward
    prepared.__exit__(None, None, None)
    assert "packed_weight" not in layer._buffers


def test_only_bias_free_half_cpu_weights_with_32_column_tiles_are_packed():
    packable = cpu_decoding.packable
    assert not packable(Linear(32, 32, bias=False))  # fp32
    assert not packable(Linear(32, 32, bias=True).half())
    assert not packable(Linear(32, 40, bias=False).half())
    assert packable(Linear(32, 64, bias=False).half()) == kernel_available()


@pytest.mark.parametrize("dtype", HALF)
def test_packed_copies_exist_only_while_sampling_and_follow_weight_updates(dtype):
    model, other = tiny_model(2, seed=0).to(dtype), tiny_model(2, seed=1).to(dtype)
    blocks = [m for m in model.modules() if isinstance(m, Linear) and cpu_decoding.packable(m)]
    assert len(blocks) >= 10 or not kernel_available()  # every block's projections
    seen = []
    tokens = model.sample(
        [0, 1], guidance_scale=2.0, callback=lambda i, t: seen.append(["packed_weight" in m._buffers for m in blocks])
    )
    assert tokens.shape == (2, 2, GRID**2) and int(tokens.max()) < VOCAB
    assert seen and all(all(packed) for packed in seen)  # packed at every position...
    assert all("packed_weight" not in m._buffers for m in blocks)  # ...and dropped on exit
    assert all(m.weight.is_contiguous() for m in blocks if cpu_decoding.packable(m))  # packed ones stay row-major
    # An in-place update, even through .data (which autograd's version counter does not see), is sampled from.
    for mine, theirs in zip(model.parameters(), other.parameters()):
        mine.data.copy_(theirs.data)

    def sample(m):
        return m.sample([0, 1, 2], guidance_scale=2.0, generator=torch.Generator().manual_seed(4))

    assert torch.equal(sample(model), sample(other))


@needs_kernel
@pytest.mark.parametrize("dtype", HALF)
def test_kernel_and_fallback_sample_alike(monkeypatch, dtype):
    """Both paths round only the weights; the fallback also rounds each GEMM's input, so near-ties may differ."""
    model = tiny_model(2).to(dtype)
    seed = 7

    def sample():
        return model.sample([0, 1, 2, 3], guidance_scale=2.0, generator=torch.Generator().manual_seed(seed))

    packed = sample()
    monkeypatch.setattr(cpu_decoding, "packable", lambda module: False)
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
    with torch._dynamo.config.patch(error_on_recompile=False):
        assert torch.equal(sample(compile=True), eager)
    assert len(calls) >= GRID**2 * 5  # every position's block GEMMs ran the kernel from inside the graph
    with torch._dynamo.config.patch(error_on_recompile=True):  # fresh packed copies are inputs, not recompiles
        assert torch.equal(sample(compile=True), eager)


# A library that records, from its load-time constructor, that it ran; and one without the kernel's symbol.
PLANTED = """
#include <stdio.h>
__attribute__((constructor)) static void ran(void) { FILE *f = fopen("%s", "w"); if (f) fclose(f); }
int hf_vq_half_linear(void) { return 0; }
"""


def build_library(source: str, path):
    c_file = path.with_suffix(".c")
    c_file.write_text(source)
    subprocess.run([shutil.which("cc") or "gcc", "-shared", "-fPIC", str(c_file), "-o", str(path)], check=True)
    c_file.unlink()
    os.chmod(path, 0o755)
    return path


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler")
def test_a_planted_library_is_never_loaded(tmp_path):
    folder = tmp_path / "kernels"
    folder.mkdir(mode=0o700)
    ran = tmp_path / "ran"
    library = build_library(PLANTED % ran, folder / "half_linear-planted.so")

    os.chmod(folder, 0o777)
    with pytest.raises(PermissionError, match="writable by group or others"):
        kernel_module._load_checked(library)
    os.chmod(folder, 0o700)
    os.chmod(library, 0o666)
    with pytest.raises(PermissionError, match="writable by group or others"):
        kernel_module._load_checked(library)
    os.chmod(library, 0o755)
    (folder / "link.so").symlink_to(library)
    with pytest.raises(OSError):
        kernel_module._load_checked(folder / "link.so")  # links are not followed
    if os.getuid() == 0:  # only root can give a file away
        os.chown(library, 12345, -1)
        with pytest.raises(PermissionError, match="another user"):
            kernel_module._load_checked(library)
        os.chown(library, 0, -1)
    assert not ran.exists(), "a refused library must not run its constructor"

    no_symbol = build_library("int something_else(void) { return 0; }", folder / "half_linear-empty.so")
    with pytest.raises(AttributeError):
        kernel_module._load_checked(no_symbol)


@needs_kernel
def test_a_library_planted_in_a_shared_cache_falls_back(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("HF_VQ_CACHE", str(tmp_path))
    path = kernel_module._library_path()
    path.parent.mkdir(parents=True)
    build_library(PLANTED % (tmp_path / "ran"), path)
    os.chmod(path.parent, 0o777)  # as if another user made the cache folder shared
    kernel_module._library.cache_clear()
    try:
        assert kernel_module._library() is None
        assert "writable by group or others" in caplog.text and not (tmp_path / "ran").exists()
    finally:
        kernel_module._library.cache_clear()
