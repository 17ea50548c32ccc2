"""Careless and hostile input: nothing the user had is lost, and bad input is refused before any work."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import load_script
from PIL import Image

from hf_vq import FARConfig, FARForClassConditionalGeneration, FQGANPipeline, FQGANTokenizer, MaskGITConfig
from hf_vq.cli import main as cli
from hf_vq.training.data import ImageTransform
from hf_vq.utils import OUTPUT_MARKER, atomic_directory

train_fqgan = load_script("train_fqgan")
train_far = load_script("train_far")


def tiny_pipeline() -> FQGANPipeline:
    torch.manual_seed(0)
    tokenizer = FQGANTokenizer.from_preset("tiny").eval()
    config = FARConfig(vocab_size=32, num_codebooks=2, num_classes=2, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_head_layers=1, grid_size=4)
    return FQGANPipeline(vqvae=tokenizer, transformer=FARForClassConditionalGeneration(config).eval(),
                         id2label={0: "a", 1: "b"})


# ------------------------------------------------------------------------------------------------ data loss
def test_assemble_never_deletes_a_folder_it_did_not_write(tmp_path, monkeypatch):
    pipe = tiny_pipeline()
    pipe.vqvae.save_pretrained(tmp_path / "tok")
    pipe.transformer.save_pretrained(tmp_path / "gen")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"0": "a", "1": "b"}))
    mine = tmp_path / "work"
    (mine / "notes").mkdir(parents=True)
    (mine / "notes" / "thesis.txt").write_text("irreplaceable")
    args = ["assemble", "--tokenizer", str(tmp_path / "tok"), "--transformer", str(tmp_path / "gen"),
            "--labels", str(labels)]
    with pytest.raises(SystemExit, match="not empty"):
        cli([*args, str(mine)])
    assert (mine / "notes" / "thesis.txt").read_text() == "irreplaceable"

    cli([*args, "--overwrite", str(mine)])  # moved aside, not deleted
    assert (mine / "model_index.json").exists() and (mine / OUTPUT_MARKER).exists()
    (aside,) = tmp_path.glob("work.replaced-*")
    assert (aside / "notes" / "thesis.txt").read_text() == "irreplaceable"
    (mine / "sub").mkdir()
    monkeypatch.chdir(mine / "sub")
    with pytest.raises(SystemExit, match="not empty"):
        cli([*args, ".."])  # from a subfolder, ".." is the non-empty parent
    (mine / "sub").rmdir()
    cli([*args, "--overwrite", str(mine)])  # a folder hf_vq wrote is replaced, and nothing else appears
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("work", ".old", ".tmp"))) == [
        "work", aside.name]


def test_the_atomic_helper_removes_only_its_own_temp_folder(tmp_path):
    (tmp_path / ".tmp-out").mkdir()  # looks like an old temp name: not the helper's to delete
    (tmp_path / ".tmp-out" / "keep.txt").write_text("keep")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "out", "test") as tmp:
        (tmp / "partial").write_text("x")
        raise RuntimeError("the work failed")
    assert (tmp_path / ".tmp-out" / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-out"]


def test_training_refuses_an_unrelated_output_folder(tmp_path, imagefolder):
    out = tmp_path / "out"
    (out / "tokenizer").mkdir(parents=True)
    (out / "tokenizer" / "mine.txt").write_text("mine")
    config = tmp_path / "tok.json"
    config.write_text(json.dumps(FQGANTokenizer.presets["tiny"]))
    with pytest.raises(FileExistsError, match="holds no hf_vq run"):
        train_fqgan.main(["--tokenizer_config", str(config), "--dataset", str(imagefolder), "--resolution", "8",
                          "--output_dir", str(out), "--perceptual_weight", "0", "--max_train_steps", "1"])
    assert sorted(p.name for p in out.rglob("*")) == ["mine.txt", "tokenizer"]


@pytest.mark.parametrize("command", ["generate", "reconstruct"])
def test_image_outputs_are_checked_before_work(tmp_path, monkeypatch, command):
    def no_work(*args, **kwargs):
        raise AssertionError("loaded a model before checking the output path")

    monkeypatch.setattr(FQGANPipeline, "from_pretrained", no_work)
    monkeypatch.setattr(FQGANTokenizer, "from_pretrained", no_work)
    (tmp_path / "grid.png").mkdir()
    base = ["generate", "--labels", "Bag"] if command == "generate" else [
        "reconstruct", "--tokenizer", str(tmp_path), "--image", str(tmp_path / "grid.png")]
    with pytest.raises(SystemExit, match="is a folder"):
        cli([*base, "--out", str(tmp_path / "grid.png")])
    with pytest.raises(SystemExit, match=r"must end in \.png"):
        cli([*base, "--out", str(tmp_path / "grid.gif")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


# ------------------------------------------------------------------------------------ refused before work
def run_tokenizer(tmp_path, data, *extra):
    config = tmp_path / "tok.json"
    if not config.exists():
        config.write_text(json.dumps(FQGANTokenizer.presets["tiny"]))
    return train_fqgan.main(["--tokenizer_config", str(config), "--dataset", str(data), "--resolution", "8",
                             "--output_dir", str(tmp_path / "out"), "--perceptual_weight", "0", "--report_to", "none",
                             "--disc_channels", "8", "--disc_layers", "1", *extra])


@pytest.mark.parametrize("flag", ["--checkpointing_steps", "--logging_steps", "--validation_steps",
                                  "--train_batch_size", "--max_train_steps"])
def test_zero_step_flags_are_refused(tmp_path, imagefolder, flag):
    with pytest.raises(ValueError, match=f"{flag} must be a positive integer"):
        run_tokenizer(tmp_path, imagefolder, flag, "0")
    assert not (tmp_path / "out").exists()


def test_datasets_smaller_than_a_batch_or_the_preview(tmp_path, imagefolder):
    with pytest.raises(ValueError, match="16 examples, fewer than one batch"):
        run_tokenizer(tmp_path, imagefolder, "--train_batch_size", "32")
    assert not (tmp_path / "out").exists()
    for image in sorted(imagefolder.rglob("*.png"))[5:]:
        image.unlink()  # 5 images: fewer than the 8 of the reconstruction preview
    run_tokenizer(tmp_path, imagefolder, "--train_batch_size", "4", "--max_train_steps", "1")
    assert (tmp_path / "out" / "samples" / "step-0000001.png").exists()


def test_config_values_of_the_wrong_type_name_the_field(tmp_path, imagefolder):
    (tmp_path / "tok.json").write_text(json.dumps({**FQGANTokenizer.presets["tiny"], "base_channels": "32"}))
    with pytest.raises(TypeError, match="'base_channels' must be int, got '32'"):
        run_tokenizer(tmp_path, imagefolder, "--max_train_steps", "1")
    with pytest.raises(TypeError, match="'hidden_size' must be int, got '128'"):
        FARConfig(hidden_size="128")
    with pytest.raises(TypeError, match="'label_smoothing' must be float"):
        MaskGITConfig(label_smoothing=None)


@pytest.fixture
def codes(tmp_path, imagefolder):
    torch.manual_seed(0)
    FQGANTokenizer.from_preset("tiny").save_pretrained(tmp_path / "tok")
    load_script("extract_codes").main(["--tokenizer", str(tmp_path / "tok"), "--dataset", str(imagefolder),
                                       "--resolution", "8", "--output_dir", str(tmp_path / "codes")])
    (tmp_path / "far.json").write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 1,
                                                   "num_attention_heads": 2, "num_head_layers": 1}))
    return tmp_path


@pytest.mark.parametrize("overrides,message", [
    (dict(num_codebooks=1), "holds codes of 2 sub-codebooks, but --tokenizer .* has 1"),
    (dict(quantizer={"kind": "vq", "codebook_size": 8, "dim": 4}), r"holds code \d+, beyond"),
    (dict(), r"was extracted by a tokenizer with other weights than --tokenizer .*other \(weights sha256"),
])
def test_generator_training_checks_the_tokenizer_against_the_codes(codes, overrides, message):
    FQGANTokenizer.from_preset("tiny", **overrides).save_pretrained(codes / "other")
    with pytest.raises(ValueError, match=message):
        train_far.main(["--codes_dir", str(codes / "codes"), "--tokenizer", str(codes / "other"), "--model_config",
                        str(codes / "far.json"), "--output_dir", str(codes / "run"), "--max_train_steps", "1"])
    assert not (codes / "run").exists()


@pytest.mark.parametrize("labels", [3.7, True, [0, 1.0], [None], torch.tensor([[0.0], [1.0]])])
def test_class_labels_that_are_neither_ids_nor_names_are_refused(labels):
    with pytest.raises(TypeError, match="ids \\(int\\) or names \\(str\\)"):
        tiny_pipeline().get_label_ids(labels)


def test_class_ids_in_a_tensor_or_array_of_any_shape_are_flattened_as_dit_does():
    pipe = tiny_pipeline()
    assert pipe.get_label_ids(torch.tensor([[1], [0]])) == [1, 0] == pipe.get_label_ids(np.array([1, 0]))
    assert pipe.get_label_ids(torch.tensor(1)) == [1] == pipe.get_label_ids([torch.tensor(1)])


@pytest.mark.parametrize("knobs,message", [
    (dict(guidance_scale=math.inf), "guidance_scale must be a finite number"),
    (dict(guidance_scale=math.nan), "guidance_scale must be a finite number"),
    (dict(temperature=math.inf), "temperature must be a finite number"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(top_k=2.5), "top_k must be an integer"),
    (dict(num_images_per_label=2, generator=[torch.Generator()] * 3), "one per image \\(2"),
    (dict(num_inference_steps=3), "an AR generator decodes one position per step"),
])
def test_sampling_settings_are_refused_up_front(knobs, message):
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=message):
        pipe(["a"], **knobs)


def test_sixteen_bit_images_are_read_at_their_real_range(tmp_path):
    values = np.array([[0, 32896, 65535, 257]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = Image.open(tmp_path / "deep.png")
    assert image.mode == "I;16"
    pixels = ImageTransform(4, channels=1)(image)
    expected = torch.tensor([0, 128, 255, 1]) / 127.5 - 1
    torch.testing.assert_close(pixels[0, 0], expected)
