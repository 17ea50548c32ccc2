"""What only a CUDA device shows: half-precision decoding in the weights' dtype, fp32 logits from the half GEMM,
CUDA-graph compiled decoding, CPU generators driving a CUDA model, offloading onto the GPU. Skipped without CUDA;
`examples/benchmarks/gpu_check.sh` runs them on a GPU machine."""

import pytest
import torch
from conftest import r1_at, run_in_own_process_group
from test_far import GRID, VOCAB, spy_kv_caches, tiny_model

from hf_vq.generators import cpu_decoding

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def half_far():
    return tiny_model(2).to("cuda", torch.bfloat16)


def test_a_half_model_decodes_in_its_dtype_without_the_cpu_machinery(monkeypatch, half_far):
    def no_cpu_path(*args, **kwargs):
        raise AssertionError("CPU-only machinery ran on CUDA")

    monkeypatch.setattr(cpu_decoding, "mixed_precision_linear", no_cpu_path)
    monkeypatch.setattr(cpu_decoding, "set_gemm_layout", no_cpu_path)
    caches = spy_kv_caches(monkeypatch)
    tokens = half_far.sample([0, 1, 2], guidance_scale=2.0, generator=torch.manual_seed(0))
    assert tokens.device.type == "cuda" and tokens.shape == (3, 2, GRID**2) and int(tokens.max()) < VOCAB
    assert caches and all(t.dtype == torch.bfloat16 for c in caches for t in c.keys)
    assert not any("packed_weight" in m._buffers for m in half_far.modules())


def test_fp32_logits_from_the_half_gemm_match_the_upcast_product(half_far):
    ids = torch.randint(0, VOCAB, (3, 2, GRID**2), device="cuda")
    hidden = torch.randn(3, GRID**2, half_far.config.hidden_size, device="cuda", dtype=torch.bfloat16)
    head = half_far.output_heads[0]
    logits = head(hidden)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, hidden.float() @ head.weight.float().t(), rtol=1e-4, atol=1e-4)
    assert half_far(ids, torch.tensor([0, 1, 2], device="cuda")).logits.dtype == torch.float32


def test_a_half_model_trains_through_its_fp32_logits(half_far):
    ids = torch.randint(0, VOCAB, (3, 2, GRID**2), device="cuda")
    loss = half_far.train()(ids, torch.tensor([0, 1, 2], device="cuda"), labels=ids).loss
    loss.backward()
    heads = half_far.output_heads
    assert all(h.weight.grad is not None and h.weight.grad.dtype == torch.bfloat16 for h in heads)
    assert all(torch.isfinite(p.grad).all() for p in half_far.parameters() if p.grad is not None)


def test_training_forwards_never_make_the_host_wait_for_the_gpu(half_far):
    from hf_vq.quantizers import VectorQuantizer

    ids = torch.randint(0, VOCAB, (3, 2, GRID**2), device="cuda")
    labels = torch.tensor([0, 1, 2], device="cuda")
    quantizer = VectorQuantizer(8, 4, kmeans_init=True).cuda().train()
    z = torch.randn(2, 4, 4, 4, device="cuda")
    quantizer(z)  # the k-means init reads its flag once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        half_far.train()(ids, labels, labels=ids)
        quantizer(z)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_cpu_generator_drives_a_cuda_model_and_generator_lists_give_each_image_its_stream(half_far):
    a = half_far.sample([0, 1], generator=torch.manual_seed(3))
    b = half_far.sample([0, 1], generator=torch.manual_seed(3))
    assert torch.equal(a, b)
    # rows swapped in a batch of the same size (a batch of another size may take other GEMM kernels, whose last bits
    # can flip a near-tied token): each image follows its own generator
    paired = half_far.sample([0, 1], generator=[torch.Generator().manual_seed(6), torch.Generator().manual_seed(7)])
    swapped = half_far.sample([1, 0], generator=[torch.Generator().manual_seed(7), torch.Generator().manual_seed(6)])
    assert torch.equal(swapped, paired.flip(0))


def test_a_cpu_generator_drives_a_cuda_maskgit_and_generator_lists_give_each_image_its_stream():
    from test_maskgit import tiny_model as tiny_maskgit

    model = tiny_maskgit(2).to("cuda", torch.bfloat16)
    a = model.sample([0, 1], num_inference_steps=4, generator=torch.manual_seed(3))
    assert torch.equal(a, model.sample([0, 1], num_inference_steps=4, generator=torch.manual_seed(3)))
    paired = model.sample([0, 1], num_inference_steps=4,
                          generator=[torch.Generator().manual_seed(6), torch.Generator().manual_seed(7)])
    swapped = model.sample([1, 0], num_inference_steps=4,
                           generator=[torch.Generator().manual_seed(7), torch.Generator().manual_seed(6)])
    assert torch.equal(swapped, paired.flip(0))


def test_compiled_decoding_uses_cuda_graphs_and_samples_valid_tokens(half_far):
    from torch._dynamo.utils import counters

    tokens = half_far.sample([0, 1], guidance_scale=2.0, generator=torch.manual_seed(0), compile=True)
    graphs = counters["stats"]["unique_graphs"]
    again = half_far.sample([0, 1], guidance_scale=2.0, generator=torch.manual_seed(0), compile=True)
    assert counters["stats"]["unique_graphs"] == graphs  # no recompilation: not for the new cache, nor any position
    assert tokens.shape == (2, 2, GRID**2) and int(tokens.max()) < VOCAB
    assert torch.equal(tokens, again)  # a new cache re-records the graph; the draws are the same
    eager = half_far.sample([0, 1], guidance_scale=2.0, generator=torch.manual_seed(0))
    assert (eager == tokens).float().mean() > 0.9


def test_model_cpu_offload_onto_the_gpu_gives_the_plain_pipelines_images():
    import numpy as np

    from hf_vq import FQGANPipeline, bundled_model_path

    plain = FQGANPipeline.from_pretrained(bundled_model_path()).to("cuda")
    expected = plain(["Bag"], num_images_per_label=2, generator=torch.manual_seed(0), output_type="np").images
    offloaded = FQGANPipeline.from_pretrained(bundled_model_path())
    offloaded.enable_model_cpu_offload()
    images = offloaded(["Bag"], num_images_per_label=2, generator=torch.manual_seed(0), output_type="np").images
    assert np.array_equal(images, expected)


def test_the_codebook_init_on_the_cpu_runs_under_an_nccl_group():
    """accelerate's GPU group is NCCL alone (no CPU backend); VQ-KD's k-means init all-reduces on the CPU before
    `prepare`."""
    out = run_in_own_process_group(
        """
        from hf_vq.quantizers import build_quantizer

        q = build_quantizer("cosine_ema", codebook_size=8, dim=4).train()
        q(torch.randn(2, 4, 4, 4))  # on the CPU
        assert not q.needs_data_init and q.codebook.device.type == "cpu"
        print("initialised")
        """,
        backend="nccl",
    )
    assert "initialised" in out


def test_the_r1_penalty_under_fp16_autocast_and_the_loss_scaler_matches_fp32():
    from hf_vq.training.stylegan_discriminator import StyleGAN2Discriminator

    torch.manual_seed(0)
    disc = StyleGAN2Discriminator(1, 16, base_channels=8, max_channels=16).cuda()
    x = torch.rand(4, 1, 16, 16, device="cuda") * 2 - 1
    reference = r1_at(disc, x)
    with torch.autocast("cuda", torch.float16):
        penalty = r1_at(disc, x, scaler=torch.amp.GradScaler("cuda"))
    torch.testing.assert_close(penalty, reference, rtol=5e-2, atol=0)


@pytest.mark.parametrize("implementation", ["eager", "flash_attention_2"])
def test_the_attention_implementations_agree_with_sdpa_on_the_gpu(half_far, implementation):
    if implementation == "flash_attention_2":
        pytest.importorskip("flash_attn")
    ids = torch.randint(0, VOCAB, (3, 2, GRID**2), device="cuda")
    labels = torch.tensor([0, 1, 2], device="cuda")
    expected = half_far(ids, labels).logits
    half_far.set_attn_implementation(implementation)
    torch.testing.assert_close(half_far(ids, labels).logits, expected, rtol=2e-2, atol=2e-2)
