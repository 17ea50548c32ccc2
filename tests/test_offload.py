"""Offloading and layerwise casting give the plain models' outputs (accelerate and diffusers hooks, on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.hooks import apply_group_offloading
from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS

from hf_vq import bundled_model_path
from hf_vq.generators import FARForClassConditionalGeneration
from hf_vq.generators.sampling import sampling_device
from hf_vq.pipelines.pipeline_fqgan import FQGANPipeline
from hf_vq.tokenizers import FQGANTokenizer, ViTVQGANTokenizer, VQKDTokenizer

CPU = torch.device("cpu")


def bundled_pipeline() -> FQGANPipeline:
    """A fresh copy of the bundled Fashion-MNIST pipeline."""
    return FQGANPipeline.from_pretrained(bundled_model_path())


def generate(pipe: FQGANPipeline) -> np.ndarray:
    """Two seeded images of one class, as an array."""
    return pipe(["Bag"], num_images_per_label=2, generator=torch.manual_seed(0), output_type="np").images


@pytest.fixture(scope="module")
def plain_images() -> np.ndarray:
    return generate(bundled_pipeline())


def test_sequential_cpu_offload_gives_the_plain_pipelines_images(plain_images):
    pipe = bundled_pipeline()
    pipe.enable_sequential_cpu_offload(device="cpu")  # weights wait on "meta" until each module runs
    assert np.array_equal(generate(pipe), plain_images)


def test_leaf_level_group_offload_to_disk_gives_the_plain_pipelines_images(plain_images, tmp_path):
    pipe = bundled_pipeline()
    for name in ("transformer", "vqvae"):
        apply_group_offloading(
            getattr(pipe, name), onload_device=CPU, offload_type="leaf_level", offload_to_disk_path=str(tmp_path / name)
        )
    images = generate(pipe)
    assert not np.isnan(images).any()
    assert np.array_equal(images, plain_images)


def test_device_mapped_components_with_disk_offload_give_the_plain_pipelines_images(plain_images, tmp_path):
    plain = bundled_pipeline()
    # Everything on disk except one small module per model, so both dispatch from "meta" weights.
    transformer_map = {name: "disk" for name, _ in plain.transformer.named_children()} | {"cls_embedding": "cpu"}
    vqvae_map = {name: "disk" for name, _ in plain.vqvae.named_children()} | {"post_quant_conv": "cpu"}
    transformer = FARForClassConditionalGeneration.from_pretrained(
        bundled_model_path() / "transformer", device_map=transformer_map, offload_folder=str(tmp_path / "transformer")
    )
    vqvae = FQGANTokenizer.from_pretrained(
        bundled_model_path() / "vqvae", device_map=vqvae_map, offload_folder=str(tmp_path / "vqvae")
    )
    assert {p.device.type for p in vqvae.parameters()} == {"cpu", "meta"}
    pipe = FQGANPipeline(vqvae=vqvae, transformer=transformer, id2label=plain.config.id2label)
    assert np.array_equal(generate(pipe), plain_images)


def test_a_generator_split_over_several_accelerators_is_refused_before_sampling():
    """Offload (cpu, disk) runs on the map's one accelerator; a map over several would split the KV cache."""
    far = bundled_pipeline().transformer
    far.hf_device_map = {"layers.0": 0, "layers.1": "cuda:0", "norm": "cpu", "output": "disk"}
    assert sampling_device(far, "cuda:0") == torch.device("cuda", 0)
    far.hf_device_map = {"layers.0": 0, "layers.1": 1, "norm": "cpu"}
    with pytest.raises(ValueError, match=r"split over devices \['0', '1'\] \(device_map\)"):
        far.sample([0])


def test_layerwise_casting_of_the_tokenizer_computes_with_the_stored_weights():
    plain, cast = bundled_pipeline(), bundled_pipeline()
    with torch.no_grad():  # what bf16 storage keeps of each cast layer's weights, computed in fp32
        for module in plain.vqvae.modules():
            if isinstance(module, _GO_LC_SUPPORTED_PYTORCH_LAYERS):
                for param in module.parameters(recurse=False):
                    param.copy_(param.to(torch.bfloat16).float())
    cast.vqvae.enable_layerwise_casting(
        storage_dtype=torch.bfloat16, compute_dtype=torch.float32, skip_modules_pattern=()
    )
    tokens = generate_tokens(plain)
    assert torch.equal(cast.vqvae.detokenize(tokens), plain.vqvae.detokenize(tokens))


def test_layerwise_casting_of_the_generator_samples_with_the_stored_weights():
    """diffusers' `apply_layerwise_casting` on the transformers generator: half (or fp8) storage, computed in fp32;
    the heads and projections read their weights inside their own forward, where the hook casts them."""
    from diffusers.hooks import apply_layerwise_casting

    plain, cast = bundled_pipeline(), bundled_pipeline()
    with torch.no_grad():
        for module in plain.transformer.modules():
            if isinstance(module, _GO_LC_SUPPORTED_PYTORCH_LAYERS):
                for param in module.parameters(recurse=False):
                    param.copy_(param.to(torch.bfloat16).float())
    apply_layerwise_casting(cast.transformer, storage_dtype=torch.bfloat16, compute_dtype=torch.float32,
                            skip_modules_pattern=())
    assert torch.bfloat16 in {p.dtype for p in cast.transformer.parameters()}
    assert torch.equal(generate_tokens(cast), generate_tokens(plain))


def generate_tokens(pipe: FQGANPipeline) -> torch.Tensor:
    """Two seeded token grids of one class."""
    return pipe([8, 8], generator=torch.manual_seed(0), output_type="latent").images


def test_model_cpu_offload_onloads_the_generator_and_the_tokenizer_before_they_run(plain_images):
    pipe = bundled_pipeline()
    pipe.enable_model_cpu_offload(device="cpu")
    onloaded = []
    for name in ("transformer", "vqvae"):
        hook = getattr(pipe, name)._hf_hook
        pre_forward = hook.pre_forward

        def spy(module: torch.nn.Module, *args, _name: str = name, _pre_forward=pre_forward, **kwargs):
            onloaded.append(_name)
            return _pre_forward(module, *args, **kwargs)

        hook.pre_forward = spy
    images = generate(pipe)
    # `sample` and `detokenize` are not `forward`: without `apply_forward_hook` neither hook would run, and on an
    # accelerator the models would still sit on the CPU.
    assert onloaded[:1] == ["transformer"] and "vqvae" in onloaded
    assert np.array_equal(images, plain_images)


@pytest.mark.parametrize(
    "cls,overrides",
    [
        (FQGANTokenizer, {}),
        (FQGANTokenizer, dict(quantizer=dict(kind="vq", codebook_size=32, dim=4, l2_norm=False))),
        (ViTVQGANTokenizer, {}),
        (VQKDTokenizer, {}),  # the cosine-EMA codebook is a buffer, not a weight
    ],
    ids=["fqgan", "vqgan-unnormalised-codes", "vit-vqgan", "vq-kd"],
)
def test_tiny_tokenizers_decode_under_leaf_level_disk_offload(cls, overrides, tmp_path):
    torch.manual_seed(0)
    plain = cls.from_preset("tiny", **overrides).eval()
    offloaded = cls.from_preset("tiny", **overrides).eval()
    offloaded.load_state_dict(plain.state_dict())
    offloaded.enable_group_offload(onload_device=CPU, offload_type="leaf_level", offload_to_disk_path=str(tmp_path))
    grid = plain.token_grid()
    indices = torch.randint(0, min(plain.codebook_sizes), (2, plain.num_codebooks, *grid))
    images = torch.rand(2, plain.in_channels, plain.sample_size, plain.sample_size) * 2 - 1
    assert torch.equal(offloaded.detokenize(indices), plain.detokenize(indices))
    assert torch.equal(offloaded.tokenize(images), plain.tokenize(images))


# accelerate reads a 0-dim buffer back from disk with torch.tensor(numpy scalar), which torch before 2.10 refuses for
# numpy 2's bool: VQ-KD's k-means flag is one
_OLD_TORCH = tuple(int(part) for part in torch.__version__.split(".")[:2]) < (2, 10)
_BOOL_FROM_DISK = pytest.mark.xfail(_OLD_TORCH and np.lib.NumpyVersion(np.__version__) >= "2.0.0", strict=True,
                                    reason="torch < 2.10 cannot make a tensor of numpy 2's bool scalar")


@pytest.mark.parametrize("cls", [FQGANTokenizer, ViTVQGANTokenizer, pytest.param(VQKDTokenizer, marks=_BOOL_FROM_DISK)],
                         ids=lambda c: c.__name__)
def test_a_device_mapped_tokenizers_forward_gives_the_plain_output(cls, tmp_path):
    """accelerate moves a device-mapped model's output between devices by rebuilding it from a dict, which
    diffusers' outputs allow only when every field after the first may be None."""
    torch.manual_seed(0)
    plain = cls.from_preset("tiny").eval()
    plain.save_pretrained(tmp_path / "tok")
    device_map = {name: "disk" if name == "decoder" else "cpu" for name, _ in plain.named_children()}
    mapped = cls.from_pretrained(tmp_path / "tok", device_map=device_map, offload_folder=str(tmp_path / "off")).eval()
    images = torch.rand(2, plain.in_channels, plain.sample_size, plain.sample_size) * 2 - 1
    with torch.no_grad():
        expected, got = plain(images), mapped(images)
    assert list(got.keys()) == list(expected.keys())
    for key in ("indices", "sample"):
        if expected.get(key) is not None:
            assert torch.equal(got[key], expected[key])
