import math

import pytest
import torch
import torch.nn.functional as F

from hf_vq.quantizers import (
    FSQ,
    LFQ,
    FactorizedQuantizer,
    FactorizedQuantizerOutput,
    VectorQuantizer,
    build_quantizer,
    disentanglement_loss,
    entropy_loss,
)


def codes_as_map(codes: torch.Tensor) -> torch.Tensor:
    """(N, D) vectors -> a (1, D, 1, N) latent map whose positions are those vectors."""
    return codes.t().reshape(1, codes.shape[1], 1, codes.shape[0]).contiguous()


def set_codebook(quantizer: VectorQuantizer, codebook: torch.Tensor) -> None:
    with torch.no_grad():
        quantizer.embedding.weight.copy_(codebook)


# ---------------------------------------------------------------- VectorQuantizer


def test_vq_shapes_dtypes_and_loss_names():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(32, 4, entropy_loss_ratio=0.1)
    z = torch.randn(2, 4, 3, 5)

    out = quantizer.eval()(z)
    assert out.quantized.shape == z.shape and out.quantized.dtype == z.dtype
    assert out.indices.shape == (2, 3, 5) and out.indices.dtype == torch.long
    assert set(out.losses) == {"codebook_loss", "commit_loss"}

    out = quantizer.train()(z)
    assert set(out.losses) == {"codebook_loss", "commit_loss", "entropy_loss"}
    assert all(torch.isfinite(loss) and loss.ndim == 0 for loss in out.losses.values())
    # LlamaGen's commit loss is beta times the codebook loss in value (they differ only in what gets gradient).
    torch.testing.assert_close(out.losses["commit_loss"], 0.25 * out.losses["codebook_loss"])


def test_vq_straight_through_and_loss_gradients():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(16, 4, l2_norm=False)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = quantizer(z)
    out.quantized.sum().backward()
    # Without normalisation the straight-through estimator is the identity.
    torch.testing.assert_close(z.grad, torch.ones_like(z))
    assert quantizer.embedding.weight.grad is None

    z.grad = None
    out = quantizer(z)
    out.losses["codebook_loss"].backward()
    assert z.grad is None and quantizer.embedding.weight.grad.abs().sum() > 0

    quantizer.zero_grad()
    out = quantizer(z)
    out.losses["commit_loss"].backward()
    assert z.grad.abs().sum() > 0 and quantizer.embedding.weight.grad is None

    l2_quantizer = VectorQuantizer(16, 4)
    z.grad = None
    l2_quantizer(z).quantized.square().sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


@pytest.mark.parametrize("l2_norm", [True, False])
def test_vq_picks_the_nearest_code(l2_norm):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(64, 6, l2_norm=l2_norm).eval()
    set_codebook(quantizer, torch.randn(64, 6))
    z = torch.randn(3, 6, 4, 4)
    out = quantizer(z)

    flat = z.permute(0, 2, 3, 1).reshape(-1, 6)
    codebook = quantizer.embedding.weight.detach()
    if l2_norm:
        flat, codebook = F.normalize(flat, dim=-1), F.normalize(codebook, dim=-1)
    expected = torch.stack([((row - codebook) ** 2).sum(-1).argmin() for row in flat]).view(3, 4, 4)
    assert torch.equal(out.indices, expected)
    torch.testing.assert_close(out.quantized, quantizer.indices_to_codes(out.indices))


def test_vq_l2_norm_versus_raw_codebook():
    torch.manual_seed(0)
    z = torch.randn(2, 4, 3, 3)

    normed = VectorQuantizer(16, 4, l2_norm=True).eval()
    torch.testing.assert_close(normed.embedding.weight.norm(dim=-1), torch.ones(16))
    out = normed(z)
    torch.testing.assert_close(out.quantized.norm(dim=1), torch.ones(2, 3, 3))
    # Only directions matter once both sides are normalised.
    assert torch.equal(normed(7.0 * z).indices, out.indices)

    raw = VectorQuantizer(16, 4, l2_norm=False).eval()
    assert raw.embedding.weight.abs().max() <= 1.0 / 16
    out = raw(z)
    torch.testing.assert_close(out.quantized, raw.embedding.weight[out.indices].permute(0, 3, 1, 2))


def test_vq_usage_is_a_fifo_updated_only_in_training():
    quantizer = VectorQuantizer(8, 8, l2_norm=False, usage_window=5)
    set_codebook(quantizer, torch.eye(8))
    assert quantizer.codebook_used.dtype == torch.long and "codebook_used" not in quantizer.state_dict()

    quantizer.eval()
    out = quantizer(codes_as_map(torch.eye(8)[:3]))
    assert torch.equal(quantizer.codebook_used, torch.full((5,), -1)) and out.usage == 0

    quantizer.train()
    out = quantizer(codes_as_map(torch.eye(8)[:3]))
    assert torch.equal(out.indices.flatten(), torch.tensor([0, 1, 2]))
    assert torch.equal(quantizer.codebook_used, torch.tensor([-1, -1, 0, 1, 2]))
    assert out.usage.item() == pytest.approx(3 / 8)

    out = quantizer(codes_as_map(torch.eye(8)[3:7]))
    assert torch.equal(quantizer.codebook_used, torch.tensor([2, 3, 4, 5, 6]))
    assert out.usage.item() == pytest.approx(5 / 8)

    out = quantizer(codes_as_map(torch.eye(8)[[7] * 6]))
    assert torch.equal(quantizer.codebook_used, torch.full((5,), 7)) and out.usage.item() == pytest.approx(1 / 8)


def test_vq_kmeans_init_fits_clustered_data_once():
    torch.manual_seed(0)
    centres = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]])
    points = centres.repeat_interleave(64, dim=0) + 0.02 * torch.randn(256, 3)
    quantizer = VectorQuantizer(8, 3, kmeans_init=True)
    assert "initted" in quantizer.state_dict() and not quantizer.initted
    assert "initted" not in VectorQuantizer(8, 3).state_dict()

    quantizer.eval()(codes_as_map(points))
    assert not quantizer.initted

    quantizer.train()(codes_as_map(points))
    assert quantizer.initted
    distances = torch.cdist(centres, quantizer.codebook())
    assert (distances.min(dim=1).values < 0.05).all()  # every cluster has a code
    assert (distances.min(dim=0).values < 0.05).all()  # every code sits on a cluster

    codebook = quantizer.embedding.weight.detach().clone()
    quantizer(codes_as_map(torch.randn(256, 3)))
    assert torch.equal(quantizer.embedding.weight, codebook)


@pytest.mark.parametrize("l2_norm", [True, False])
def test_vq_restart_dead_codes_replaces_exactly_the_unused(l2_norm):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 8, l2_norm=l2_norm, usage_window=16).train()
    set_codebook(quantizer, torch.eye(8))
    quantizer(codes_as_map(torch.eye(8)[[0, 2, 5]]))
    before = quantizer.embedding.weight.detach().clone()

    latents = 100 + torch.randn(20, 8)
    assert quantizer.restart_dead_codes(latents) == 5

    after = quantizer.embedding.weight.detach()
    alive = torch.tensor([0, 2, 5])
    dead = torch.tensor([1, 3, 4, 6, 7])
    assert torch.equal(after[alive], before[alive])
    candidates = F.normalize(latents, dim=-1) if l2_norm else latents
    for row in after[dead]:
        assert torch.isclose(candidates, row).all(dim=1).any()
    assert len({tuple(row.tolist()) for row in after[dead]}) == 5  # drawn without replacement


def test_vq_bf16_autocast_keeps_fp32_indices():
    torch.manual_seed(0)
    # Random unit vectors against a 512-code book have many near ties: a bf16 distance would flip some of them.
    quantizer = VectorQuantizer(512, 8).eval()
    z = torch.randn(4, 8, 32, 32).bfloat16()
    reference = quantizer(z.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = quantizer(z)
    assert torch.equal(out.indices, reference.indices)
    assert out.quantized.dtype == torch.bfloat16
    assert all(loss.dtype == torch.float32 for loss in out.losses.values())


def test_entropy_loss_extremes():
    uniform = torch.zeros(10, 4)
    assert entropy_loss(uniform, 0.01).item() == pytest.approx(0.0, abs=1e-3)
    confident_and_diverse = 100.0 * torch.eye(4)
    assert entropy_loss(confident_and_diverse, 0.01).item() == pytest.approx(-math.log(4), abs=1e-3)
    assert entropy_loss(confident_and_diverse, 0.01, diversity_gamma=0.5).item() == pytest.approx(
        -0.5 * math.log(4), abs=1e-3
    )


# ---------------------------------------------------------------- FactorizedQuantizer


def test_factorized_forward_keys_losses_and_round_trip():
    torch.manual_seed(0)
    quantizer = FactorizedQuantizer([VectorQuantizer(16, 4), VectorQuantizer(32, 4)], disentanglement_ratio=0.1)
    assert {"codebooks.0.embedding.weight", "codebooks.1.embedding.weight"} <= set(quantizer.state_dict())
    latents = [torch.randn(2, 4, 3, 3, requires_grad=True) for _ in range(2)]

    out = quantizer(latents)
    assert isinstance(out, FactorizedQuantizerOutput)
    assert out.indices.shape == (2, 2, 3, 3) and out.indices.dtype == torch.long
    assert set(out.losses) == {
        "0/codebook_loss",
        "0/commit_loss",
        "1/codebook_loss",
        "1/commit_loss",
        "disentanglement_loss",
    }
    torch.testing.assert_close(out.losses["disentanglement_loss"], 0.1 * disentanglement_loss(out.quantized))
    assert len(out.usage) == 2 and all(u is not None for u in out.usage)

    for code, quantized in zip(quantizer.indices_to_codes(out.indices), out.quantized):
        torch.testing.assert_close(code, quantized)

    sum(out.losses.values()).backward()
    assert all(z.grad is not None and z.grad.abs().sum() > 0 for z in latents)

    single = FactorizedQuantizer([VectorQuantizer(16, 4)])
    assert "disentanglement_loss" not in single([latents[0]]).losses


def test_disentanglement_loss_values():
    a = torch.zeros(2, 4, 3, 3)
    a[:, 0] = 1.0
    b = torch.zeros(2, 4, 3, 3)
    b[:, 1] = 1.0
    assert disentanglement_loss([a, b]).item() == 0.0
    assert disentanglement_loss([a, -2.0 * a]).item() == pytest.approx(1.0)
    assert disentanglement_loss([a, a, b]).item() == pytest.approx(1 / 3)

    quantizer = FactorizedQuantizer([VectorQuantizer(16, 4), VectorQuantizer(16, 4)], disentanglement_ratio=0.1)
    quantizer.codebooks[1].load_state_dict(quantizer.codebooks[0].state_dict())
    z = torch.randn(2, 4, 3, 3)
    assert quantizer([z, z]).losses["disentanglement_loss"].item() == pytest.approx(0.1)


def test_factorized_bad_input():
    quantizer = FactorizedQuantizer([VectorQuantizer(16, 4), VectorQuantizer(16, 4)])
    with pytest.raises(ValueError, match="expected 2 latent maps"):
        quantizer([torch.randn(1, 4, 2, 2)])
    with pytest.raises(ValueError, match=r"shape \(B, 2, H, W\)"):
        quantizer.indices_to_codes(torch.zeros(1, 3, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="dims must match"):
        FactorizedQuantizer([VectorQuantizer(16, 4), VectorQuantizer(16, 8)])
    FactorizedQuantizer([VectorQuantizer(16, 4), VectorQuantizer(16, 8)], disentanglement_ratio=0.0)


# ---------------------------------------------------------------- FSQ


def test_fsq_levels_give_exactly_l_values_per_channel():
    levels = [2, 3, 4, 5, 8]
    quantizer = FSQ(levels)
    assert quantizer.dim == 5 and quantizer.codebook_size == math.prod(levels)
    z = torch.linspace(-10, 10, 2001).expand(1, 5, 1, -1).contiguous()
    out = quantizer(z)
    assert out.losses == {} and out.indices.shape == (1, 1, 2001)
    for channel, level in enumerate(levels):
        values = out.quantized[0, channel].unique()
        expected = (torch.arange(level) - level // 2) / (level // 2)
        torch.testing.assert_close(values, expected)


def test_fsq_round_trip_over_the_whole_table_and_gradient():
    quantizer = FSQ([3, 4, 5])
    indices = torch.arange(60).view(1, 6, 10)
    codes = quantizer.indices_to_codes(indices)
    assert codes.shape == (1, 3, 6, 10)
    assert torch.equal(quantizer.codes_to_indices(codes), indices)
    assert codes.flatten(2).unique(dim=2).shape[2] == 60

    z = (3 * torch.randn(2, 3, 8, 8)).requires_grad_()
    out = quantizer(z)
    torch.testing.assert_close(quantizer.indices_to_codes(out.indices), out.quantized)
    out.quantized.sum().backward()
    assert z.grad.abs().sum() > 0

    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_out = quantizer(z.detach().bfloat16())
    assert bf16_out.quantized.dtype == torch.bfloat16
    assert torch.equal(bf16_out.indices, quantizer(z.detach().bfloat16().float()).indices)


# ---------------------------------------------------------------- LFQ


def test_lfq_round_trip_bit_order_and_gradient():
    quantizer = LFQ(4)
    assert quantizer.codebook_size == 16
    indices = torch.arange(16).view(1, 4, 4)
    codes = quantizer.indices_to_codes(indices)
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(quantizer.codes_to_indices(codes), indices)

    z = torch.tensor([0.3, -0.2, -1.0, 0.0]).view(1, 4, 1, 1)  # bits 1000, zero counts as negative
    out = quantizer.eval()(z)
    assert out.indices.item() == 8 and out.losses == {}
    torch.testing.assert_close(out.quantized.flatten(), torch.tensor([1.0, -1.0, -1.0, -1.0]))

    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = quantizer.train()(z)
    torch.testing.assert_close(quantizer.indices_to_codes(out.indices), out.quantized)
    (out.quantized.sum() + out.losses["entropy_loss"]).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_lfq_entropy_loss_is_finite_for_fp16_latents():
    torch.manual_seed(0)
    quantizer = LFQ(8).train()
    # Logits reach 2 * 8 * ~300 / 0.01, far past the fp16 range.
    out = quantizer((100 * torch.randn(2, 8, 4, 4)).half())
    assert out.quantized.dtype == torch.float16
    assert out.losses["entropy_loss"].dtype == torch.float32 and torch.isfinite(out.losses["entropy_loss"])


# ---------------------------------------------------------------- build_quantizer and bad input


def test_build_quantizer():
    vq = build_quantizer("vq", 64, 8, commit_loss_beta=0.5)
    assert isinstance(vq, VectorQuantizer) and vq.commit_loss_beta == 0.5
    fsq = build_quantizer("fsq", 60, 3, levels=[3, 4, 5])
    assert isinstance(fsq, FSQ) and fsq.codebook_size == 60
    lfq = build_quantizer("lfq", 256, 8)
    assert isinstance(lfq, LFQ) and lfq.dim == 8
    with pytest.raises(ValueError, match="needs `levels`"):
        build_quantizer("fsq", 60, 3)
    with pytest.raises(ValueError, match="make them agree"):
        build_quantizer("fsq", 64, 3, levels=[3, 4, 5])
    with pytest.raises(ValueError, match="2\\*\\*dim codes"):
        build_quantizer("lfq", 100, 8)
    with pytest.raises(ValueError, match="the 'vq' quantizer spec lacks codebook_size and dim"):
        build_quantizer(**{"kind": "vq"})  # a partial override of a preset's spec
    with pytest.raises(ValueError, match="unknown quantizer kind"):
        build_quantizer("rvq", 64, 8)


@pytest.mark.parametrize(
    "quantizer", [VectorQuantizer(16, 4), FSQ([2, 2, 2, 2]), LFQ(4)], ids=["vq", "fsq", "lfq"]
)
def test_bad_input_errors(quantizer):
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        quantizer.indices_to_codes(torch.full((1, 2, 2), 16))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        quantizer.indices_to_codes(torch.full((1, 2, 2), -1))
    with pytest.raises(TypeError, match="integer"):
        quantizer.indices_to_codes(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="3 dimensions"):
        quantizer.indices_to_codes(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        quantizer(torch.randn(1, 5, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        quantizer(torch.randn(4, 2, 2))
    with pytest.raises(TypeError, match="floating-point"):
        quantizer(torch.zeros(1, 4, 2, 2, dtype=torch.long))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="smaller dim"):
        LFQ(17)
    with pytest.raises(ValueError, match="integers >= 2"):
        FSQ([8, 1, 5])
    with pytest.raises(ValueError, match="usage_window"):
        VectorQuantizer(16, 4, usage_window=0)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        VectorQuantizer(16, 4).restart_dead_codes(torch.randn(2, 4, 3, 3))


# ---------------------------------------------------------------- cosine EMA codebook (VQ-KD)
def test_cosine_ema_update_matches_a_hand_computed_case():
    from hf_vq.quantizers import CosineEMAQuantizer

    q = CosineEMAQuantizer(3, 2, decay=0.5, kmeans_init=False).train()
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    q.codebook.copy_(codes)
    # four latents: three nearest code 0, one nearest code 1, none nearest code 2
    z = torch.tensor([[2.0, 0.2], [1.0, -0.1], [3.0, 0.3], [0.1, 5.0]]).t().reshape(1, 2, 2, 2)
    out = q(z)
    assert out.indices.flatten().tolist() == [0, 0, 0, 1]
    unit = F.normalize(z.reshape(2, 4).t(), dim=-1)
    mean0 = F.normalize(unit[:3].sum(0) / 3, dim=0)
    expected0 = F.normalize(0.5 * codes[0] + 0.5 * mean0, dim=0)
    expected1 = F.normalize(0.5 * codes[1] + 0.5 * unit[3], dim=0)
    torch.testing.assert_close(q.codebook[0], expected0)
    torch.testing.assert_close(q.codebook[1], expected1)
    torch.testing.assert_close(q.codebook[2], codes[2])  # not chosen: unchanged
    torch.testing.assert_close(out.losses["commit_loss"], F.mse_loss(unit, codes[[0, 0, 0, 1]]))


def test_cosine_ema_restarts_codes_whose_assignment_average_falls_below_the_threshold():
    from hf_vq.quantizers import CosineEMAQuantizer, build_quantizer

    q = CosineEMAQuantizer(3, 2, decay=0.5, kmeans_init=False, dead_code_threshold=0.3).train()
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    q.codebook.copy_(codes)
    z = torch.tensor([[2.0, 0.2], [1.0, -0.1], [3.0, 0.3], [0.1, 5.0]]).t().reshape(1, 2, 2, 2)
    unit = F.normalize(z.reshape(2, 4).t(), dim=-1)
    q(z)  # code 2 unused: its average falls from 1 to 0.5, still above 0.3
    torch.testing.assert_close(q.cluster_size, torch.tensor([2.0, 1.0, 0.5]))
    torch.testing.assert_close(q.codebook[2], codes[2])
    q(z)  # 0.25 < 0.3: code 2 restarts at one of the batch's (normalised) latents, with a fresh average
    assert any(torch.allclose(q.codebook[2], row) for row in unit)
    assert q.cluster_size[2] == 1.0 and "cluster_size" in q.state_dict()
    # off by default, as the official quantizer: no buffer, so folders saved before still load
    assert "cluster_size" not in build_quantizer("cosine_ema", 3, 2).state_dict()
    with pytest.raises(ValueError, match="dead_code_threshold"):
        CosineEMAQuantizer(3, 2, dead_code_threshold=-1)


def test_cosine_ema_collectives_go_through_the_gpu_when_the_group_has_no_cpu_backend(monkeypatch):
    """The k-means init runs on the CPU before `prepare`; accelerate's NCCL group cannot reduce CPU tensors."""
    from hf_vq.quantizers.cosine_ema import collective_device

    cpu = torch.device("cpu")
    assert collective_device(cpu, "cpu:gloo,cuda:gloo") == cpu  # gloo, and torch's default "cpu:gloo,cuda:nccl"
    assert collective_device(torch.device("cuda", 1), "cuda:nccl") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("cuda"))
    monkeypatch.setattr(torch.accelerator, "current_device_index", lambda: 3)
    assert collective_device(cpu, "cuda:nccl") == torch.device("cuda", 3)  # this rank's GPU
    with pytest.raises(RuntimeError, match=r"the process group \(xpu:xccl\) has no backend for cpu tensors"):
        collective_device(cpu, "xpu:xccl")


def test_cosine_ema_codebook_starts_from_kmeans_of_the_first_batch_and_gets_no_gradient():
    from hf_vq.quantizers import CosineEMAQuantizer

    torch.manual_seed(0)
    q = CosineEMAQuantizer(4, 3, kmeans_init=True).train()
    assert q.needs_data_init and not any(p.requires_grad for p in q.parameters())
    batch = F.normalize(torch.randn(4, 3), dim=-1)  # as many latents as codes: k-means makes each one a code
    z = batch.t().reshape(1, 3, 2, 2).requires_grad_()
    out = q(z)
    assert not q.needs_data_init
    torch.testing.assert_close(q.codebook[out.indices.flatten()], batch)
    assert sorted(out.indices.flatten().tolist()) == [0, 1, 2, 3]
    (out.quantized.sum() + out.losses["commit_loss"]).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()  # straight-through to the encoder
    assert not dict(q.named_parameters()) and "embedding.weight" in q.state_dict()  # the official key
    frozen = q.codebook.clone()
    q.eval()(z.detach())
    assert torch.equal(q.codebook, frozen)  # eval never moves the codebook


def test_cosine_ema_codebooks_saved_under_the_old_key_load(tmp_path):
    from safetensors.torch import load_file, save_file

    from hf_vq.tokenizers import VQKDTokenizer

    torch.manual_seed(0)
    model = VQKDTokenizer.from_preset("tiny")
    model.save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    old = load_file(weights)
    old["quantize.codebook"] = old.pop("quantize.embedding.weight")  # as folders saved before the official key
    save_file(old, weights)
    codebook = model.quantize.embedding.weight
    # a buffer missing from the file would load silently as a fresh random one
    assert torch.equal(VQKDTokenizer.from_pretrained(tmp_path).quantize.embedding.weight, codebook)
    fresh = VQKDTokenizer.from_preset("tiny")
    fresh.load_state_dict(old)  # strict: the old key is renamed, not left unexpected
    assert torch.equal(fresh.quantize.embedding.weight, codebook)


@pytest.mark.parametrize("kind", ["vq", "cosine_ema"])
def test_a_training_step_after_the_kmeans_init_reads_no_values(kind):
    """On a GPU each read of a value (the init flag, a boolean mask) makes the host wait, at every step."""
    from conftest import HostReads

    from hf_vq.quantizers import CosineEMAQuantizer

    torch.manual_seed(0)
    make = {"vq": lambda: VectorQuantizer(8, 4, kmeans_init=True), "cosine_ema": lambda: CosineEMAQuantizer(8, 4)}[kind]
    q = make().train()
    z = torch.randn(2, 4, 4, 4)
    with HostReads() as reads:
        q(z)  # k-means of the first batch reads the flag
    assert reads.ops and not q.needs_data_init
    with HostReads() as reads:
        q(z).losses["commit_loss"].item()
    assert reads.ops == ["aten._local_scalar_dense.default"]  # the caller's .item(), nothing else

    q.load_state_dict(make().state_dict())  # a checkpoint saved before the init: the flag is read again
    assert q.needs_data_init
    q(z)
    q.initted.fill_(False)  # any write in place, or a new tensor (accelerate's loaders set one), is seen
    assert q.needs_data_init
    q(z)
    q.initted = torch.tensor(False)
    assert q.needs_data_init


def test_vq_used_codes_ignores_the_unfilled_window():
    quantizer = VectorQuantizer(6, 2, usage_window=4)
    assert not quantizer.used_codes().any()
    quantizer.codebook_used.copy_(torch.tensor([-1, 5, 0, 5]))
    assert quantizer.used_codes().tolist() == [True, False, False, False, False, True]
