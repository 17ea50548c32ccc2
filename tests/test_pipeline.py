import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoModel

from hf_vq import (
    FARConfig,
    FARForClassConditionalGeneration,
    FQGANPipeline,
    FQGANTokenizer,
    MaskGITConfig,
    MaskGITForClassConditionalGeneration,
    assemble_pipeline,
)

LABELS = {0: "T-shirt/top", 1: "Trouser", 2: "Sneaker, trainer"}


def tokenizer(k: int = 2, codebook_size: int = 32) -> FQGANTokenizer:
    torch.manual_seed(0)
    return FQGANTokenizer(
        in_channels=1, out_channels=1, base_channels=32, channel_multipliers=(1, 2), num_res_blocks=1, z_channels=32,
        num_codebooks=k, quantizer={"kind": "vq", "codebook_size": codebook_size, "dim": 4}, sample_size=8,
        adapter_layers=1,
        adapter_heads=2,
    ).eval()


def far(k: int = 2, vocab: int = 32, grid: int = 4) -> FARForClassConditionalGeneration:
    torch.manual_seed(0)
    config = FARConfig(vocab_size=vocab, num_codebooks=k, num_classes=3, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_head_layers=1, grid_size=grid)
    return FARForClassConditionalGeneration(config).eval()


def maskgit(k: int = 2) -> MaskGITForClassConditionalGeneration:
    torch.manual_seed(0)
    config = MaskGITConfig(vocab_size=32, num_codebooks=k, num_classes=3, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, grid_size=4)
    return MaskGITForClassConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def pipe():
    return FQGANPipeline(vqvae=tokenizer(), transformer=far(), id2label=LABELS)


@pytest.mark.parametrize("output_type", ["pil", "np", "pt"])
def test_generates_requested_count_size_and_type(pipe, output_type):
    out = pipe(["trouser", 2], num_images_per_label=2, output_type=output_type, generator=torch.manual_seed(0))
    images = out.images
    assert len(images) == 4
    if output_type == "pil":
        assert all(isinstance(im, PIL.Image.Image) and im.size == (8, 8) for im in images)
    elif output_type == "np":
        assert isinstance(images, np.ndarray) and images.shape == (4, 8, 8, 1)
        assert images.min() >= 0 and images.max() <= 1
    else:
        assert images.shape == (4, 1, 8, 8) and images.min() >= 0 and images.max() <= 1


def test_same_seed_same_images_and_synonyms(pipe):
    a = pipe([1, "Sneaker"], output_type="pt", generator=torch.manual_seed(3)).images
    b = pipe(["TROUSER", "trainer"], output_type="pt", generator=torch.manual_seed(3)).images
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["ar", "nar"])
def test_a_generator_per_image_makes_each_image_independent_of_its_batch(kind):
    """With one generator per image, image i is the same alone or in any batch: sharded sampling relies on it."""
    pipe = FQGANPipeline(vqvae=tokenizer(), transformer=far() if kind == "ar" else maskgit(), id2label=LABELS)

    def generators(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    knobs = dict(output_type="latent", guidance_scale=2.0, top_k=8)
    batch = pipe([0, 1, 2], generator=generators(10, 11, 12), **knobs).images
    alone = pipe([1], generator=generators(11), **knobs).images
    reordered = pipe([2, 1], generator=generators(12, 11), **knobs).images
    assert torch.equal(batch[1:2], alone) and torch.equal(reordered, batch[[2, 1]])
    assert not torch.equal(pipe([1], generator=generators(13), **knobs).images, alone)
    with pytest.raises(ValueError, match="one per image"):
        pipe([0, 1], generator=generators(1))
    with pytest.raises(ValueError, match="one torch.Generator per sample"):
        pipe.transformer.sample([0, 1], generator=[torch.Generator(), 3])


def test_nar_pipeline():
    pipe = FQGANPipeline(vqvae=tokenizer(), transformer=maskgit(), id2label=LABELS)
    images = pipe([0, 1], num_inference_steps=3, output_type="pt", generator=torch.manual_seed(0)).images
    assert images.shape == (2, 1, 8, 8)


def test_compile_knob_reaches_the_ar_sampler_and_is_refused_for_maskgit(pipe, monkeypatch):
    seen = {}
    sample = pipe.transformer.sample

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return sample(*args, **{**kwargs, "compile": False})  # compilation itself is tested in test_far

    monkeypatch.setattr(pipe.transformer, "sample", spy)
    pipe([0], output_type="pt", compile=True)
    assert seen["compile"] is True
    nar = FQGANPipeline(vqvae=tokenizer(), transformer=maskgit(), id2label=LABELS)
    with pytest.raises(ValueError, match="compile=True is for AR generators"):
        nar([0], compile=True)


def test_round_trip_through_save_and_load(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["vqvae"] == ["hf_vq", "FQGANTokenizer"]
    assert index["transformer"] == ["hf_vq", "FARForClassConditionalGeneration"]
    loaded = FQGANPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.get_label_ids("sneaker") == [2]
    kwargs = dict(class_labels=[0, 2], output_type="pt")
    torch.testing.assert_close(loaded(**kwargs, generator=torch.manual_seed(1)).images,
                               pipe(**kwargs, generator=torch.manual_seed(1)).images)


def test_loads_from_hub_id_offline(pipe, tmp_path):
    """Lay the saved folder out as a Hub cache snapshot and load it by repo id with HF_HUB_OFFLINE=1."""
    repo = tmp_path / "hf" / "hub" / "models--org--fqgan-tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    pipe.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    script = textwrap.dedent(
        """
        import torch
        from hf_vq import AutoImageTokenizer, FQGANPipeline
        pipe = FQGANPipeline.from_pretrained("org/fqgan-tiny")
        images = pipe(["Trouser"], num_images_per_label=2, output_type="pt", generator=torch.manual_seed(0)).images
        assert type(AutoImageTokenizer.from_pretrained("org/fqgan-tiny")) is type(pipe.vqvae)  # the repo's vqvae/
        print(tuple(images.shape))
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "(2, 1, 8, 8)"


def test_assemble_pipeline_folder(tmp_path):
    tokenizer().save_pretrained(tmp_path / "tok")
    far().save_pretrained(tmp_path / "far")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({str(k): v for k, v in LABELS.items()}))
    assemble_pipeline(tmp_path / "tok", tmp_path / "far", tmp_path / "pipe", id2label=labels)
    assert FQGANPipeline.from_pretrained(tmp_path / "pipe").get_label_ids(["T-shirt/top"]) == [0]
    # the generator carries the names too, where transformers keeps them
    assert AutoModel.from_pretrained(tmp_path / "pipe" / "transformer").config.id2label == LABELS
    # JSON text; a generator without names of its own and not ImageNet-sized gets none (ids only), not ImageNet's
    inline = assemble_pipeline(tmp_path / "tok", tmp_path / "far", tmp_path / "inline", id2label='{"1": "Trouser"}')
    assert inline.get_label_ids(["trouser", 2]) == [1, 2]
    assert assemble_pipeline(tmp_path / "tok", tmp_path / "far", tmp_path / "ids").config.id2label == {}
    for bad, message in [('{"0": "a", "7": "b"}', "up to 7, but the generator has 3 classes"),
                         ('["a", "b"]', "JSON object of class id -> name")]:
        with pytest.raises(ValueError, match=message):
            assemble_pipeline(tmp_path / "tok", tmp_path / "far", tmp_path / "bad", id2label=bad)
    assert not (tmp_path / "bad").exists()
    # a folder assembled before labels were checked holds ImageNet's 1000 names: it loads, with only its classes'
    index = json.loads((tmp_path / "ids" / "model_index.json").read_text())
    index["id2label"] = {str(i): f"class {i}" for i in range(1000)}
    (tmp_path / "ids" / "model_index.json").write_text(json.dumps(index))
    old = FQGANPipeline.from_pretrained(tmp_path / "ids")
    assert old.get_label_ids(["class 2"]) == [2] and old.transformer.config.label2id["class 2"] == 2
    with pytest.raises(ValueError, match="Unknown class label 'class 3'"):
        old.get_label_ids(["class 3"])


def test_bad_input(pipe):
    with pytest.raises(ValueError, match="Did you mean: 'Sneaker'"):  # spelled as the labels spell it
        pipe(["sneakers"])
    with pytest.raises(ValueError, match="out of range"):
        pipe([3])
    with pytest.raises(ValueError, match="class id -1 is out of range"):
        pipe(["-1"])
    with pytest.raises(ValueError, match="output_type"):
        pipe([0], output_type="jpeg")
    with pytest.raises(ValueError):
        pipe([0], guidance_scale=-1.0)
    with pytest.raises(ValueError):
        pipe([0], top_k=33)
    with pytest.raises(ValueError):
        pipe([0], top_p=0.0)
    with pytest.raises(ValueError, match="sub-codebooks"):
        FQGANPipeline(vqvae=tokenizer(k=3), transformer=far(k=2))
    with pytest.raises(ValueError, match="codebook sizes"):
        FQGANPipeline(vqvae=tokenizer(codebook_size=64), transformer=far())
    with pytest.raises(ValueError, match="grid"):
        FQGANPipeline(vqvae=tokenizer(), transformer=far(grid=3))


def test_sampling_settings_and_labels_take_numpy_scalars_and_any_ordered_iterable(pipe):
    def images(labels, **knobs):
        return pipe(labels, output_type="pt", generator=torch.manual_seed(0), **knobs).images

    plain = images([0, 1, 2], num_images_per_label=2, guidance_scale=2.0, top_k=5)
    assert torch.equal(plain, images(range(3), num_images_per_label=np.int64(2), guidance_scale=np.float32(2.0),
                                     top_k=np.int64(5)))
    assert torch.equal(plain, images((i for i in range(3)), num_images_per_label=2, top_k=5))
    with pytest.raises(TypeError, match="must come in order"):
        pipe({0, 1})
    with pytest.raises(ValueError, match="num_images_per_label must be an integer"):
        pipe([0], num_images_per_label=2.5)


def test_a_name_several_classes_share_is_asked_for_by_id():
    pipe = FQGANPipeline(vqvae=tokenizer(), transformer=far(), id2label={0: "crane", 1: "crane, derrick", 2: "kite"})
    with pytest.raises(ValueError, match="'Crane' is shared by classes 0, 1: ask for one of them by id"):
        pipe.get_label_ids(["Crane"])
    assert pipe.get_label_ids(["derrick", "kite", 0]) == [1, 2, 0]


def test_a_pipeline_built_from_another_ones_components_keeps_its_class_names(pipe):
    again = FQGANPipeline(**pipe.components)
    assert again.get_label_ids(["Trouser", "trainer"]) == [1, 2]
    assert {int(i): name for i, name in again.config.id2label.items()} == LABELS


def test_from_pipe_shares_the_components(pipe):
    derived = FQGANPipeline.from_pipe(pipe)
    assert derived.vqvae is pipe.vqvae and derived.transformer is pipe.transformer
    a = derived(["Trouser"], output_type="pt", generator=torch.manual_seed(1)).images
    assert torch.equal(a, pipe(["Trouser"], output_type="pt", generator=torch.manual_seed(1)).images)


def test_latent_output_and_step_callbacks(pipe):
    seen = []

    def on_step(pipeline, step, timestep, tensors):
        assert pipeline is pipe and step == timestep
        assert pipe.num_timesteps == pipe.transformer.num_sampling_steps() and pipe.guidance_scale == 2.0
        assert pipe.do_classifier_free_guidance
        seen.append(tensors["tokens"].clone())
        return tensors  # diffusers' callbacks hand their tensors back

    out = pipe(["Trouser", 0], num_images_per_label=2, output_type="latent", generator=torch.manual_seed(0),
               callback_on_step_end=on_step)
    tokens = out.images
    assert tokens.shape == (4, 2, 4, 4) and tokens.dtype == torch.long
    assert len(seen) == pipe.transformer.num_sampling_steps() and torch.equal(seen[-1].view_as(tokens), tokens)
    images = pipe(["Trouser", 0], num_images_per_label=2, output_type="pt", generator=torch.manual_seed(0)).images
    torch.testing.assert_close(images, ((pipe.vqvae.detokenize(tokens).clamp(-1, 1) + 1) / 2))
    with pytest.raises(ValueError, match="can hold"):
        pipe(["Trouser"], callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"])
    # what a callback cannot do is refused, not ignored
    with pytest.raises(ValueError, match="changed the tokens"):
        pipe(["Trouser"], callback_on_step_end=lambda p, i, t, kw: {"tokens": torch.zeros_like(kw["tokens"])})

    def edit_in_place(pipeline, step, timestep, tensors):
        tensors["tokens"][:, :, step] = (tensors["tokens"][:, :, step] + 1) % 32

    with pytest.raises(ValueError, match=r"changed the tokens \(in what it returned, or in place\)"):
        pipe(["Trouser"], callback_on_step_end=edit_in_place)

    def dynamic_guidance(pipeline, step, timestep, tensors):
        pipeline._guidance_scale = 0.0  # diffusers' "turn CFG off midway" recipe
        return tensors

    with pytest.raises(ValueError, match="changed the guidance scale"):
        pipe(["Trouser"], callback_on_step_end=dynamic_guidance)
    pipe(["Trouser"], guidance_scale=1.0, callback_on_step_end=lambda p, i, t, kw: seen.append(
        p.do_classifier_free_guidance))
    assert seen[-1] is False


def test_a_compiled_transformer_can_be_assigned(pipe):
    compiled = FQGANPipeline(vqvae=pipe.vqvae, transformer=pipe.transformer, id2label=LABELS)
    compiled.set_progress_bar_config(disable=True)
    compiled.transformer = torch.compile(pipe.transformer)  # the diffusers idiom; sampling goes through the model
    tokens = compiled(["Trouser"], output_type="latent", generator=torch.manual_seed(0)).images
    expected = pipe(["Trouser"], output_type="latent", generator=torch.manual_seed(0)).images
    assert torch.equal(tokens, expected)


def test_the_diffusers_loader_tables_hf_vq_registers_in_keep_their_shape():
    from diffusers.pipelines import pipeline_loading_utils as loading

    from hf_vq.generators import GENERATOR_CLASSES
    from hf_vq.tokenizers import TOKENIZER_CLASSES

    # The private tables hf_vq extends: {library: {class name: [save method, load method]}} and the flat union.
    assert isinstance(loading.LOADABLE_CLASSES, dict) and isinstance(loading.ALL_IMPORTABLE_CLASSES, dict)
    assert loading.LOADABLE_CLASSES["diffusers"]["ModelMixin"] == ["save_pretrained", "from_pretrained"]
    for cls in TOKENIZER_CLASSES + GENERATOR_CLASSES:
        assert loading.LOADABLE_CLASSES["hf_vq"][cls.__name__] == ["save_pretrained", "from_pretrained"]
        assert loading.ALL_IMPORTABLE_CLASSES[cls.__name__] == ["save_pretrained", "from_pretrained"]


def test_model_cpu_offload_gives_the_plain_pipelines_images():
    from hf_vq import bundled_model_path

    plain = FQGANPipeline.from_pretrained(bundled_model_path())
    expected = plain(["Bag"], num_images_per_label=2, generator=torch.manual_seed(0), output_type="np").images
    offloaded = FQGANPipeline.from_pretrained(bundled_model_path())
    offloaded.enable_model_cpu_offload(device="cpu")  # the hooks move each model to the execution device as it runs
    images = offloaded(["Bag"], num_images_per_label=2, generator=torch.manual_seed(0), output_type="np").images
    assert np.array_equal(images, expected)


def test_sampling_device_comes_from_the_caller_when_weights_are_offloaded():
    from hf_vq.generators.sampling import sampling_device

    with torch.device("meta"):
        model = torch.nn.Linear(2, 2)
    assert sampling_device(model, "cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="weights are offloaded"):
        sampling_device(model, None)
