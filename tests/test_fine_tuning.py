"""Fine-tuning a saved model (--pretrained_model_name_or_path, --subfolder) and diffusers' data flag names."""

import json

import pytest
import torch
from conftest import load_script
from test_pipeline import tokenizer

from hf_vq import FQGANPipeline, FQGANTokenizer
from hf_vq.generators import FARConfig, FARForClassConditionalGeneration, MaskGITConfig
from hf_vq.generators import MaskGITForClassConditionalGeneration as MaskGIT
from hf_vq.training.loop import parse_recipe_args
from hf_vq.training.recipes import ARGeneratorRecipe, TokenizerGANRecipe

train_fqgan = load_script("train_fqgan")
train_far = load_script("train_far")
extract_codes = load_script("extract_codes")

GAN_FLAGS = ["--perceptual_weight", "0", "--train_batch_size", "4", "--report_to", "none", "--disc_start", "100",
             "--disc_channels", "8", "--disc_layers", "1", "--resolution", "8"]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture
def pipeline_folder(tmp_path):
    """A saved pipeline whose vqvae and transformer subfolders are the models to fine-tune."""
    tok = tokenizer()
    far = FARForClassConditionalGeneration(FARConfig(
        vocab_size=tok.codebook_sizes[0], num_codebooks=len(tok.codebook_sizes), grid_size=tok.grid_size,
        num_classes=2, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_head_layers=1))
    FQGANPipeline(vqvae=tok, transformer=far, id2label={0: "a", 1: "b"}).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


def test_tokenizer_fine_tunes_from_a_pipeline_subfolder(tmp_path, imagefolder, pipeline_folder):
    # learning rate 0: the run must start from, and keep, the saved weights (no fresh init, no k-means re-init)
    train_fqgan.main(["--pretrained_model_name_or_path", str(pipeline_folder), "--subfolder", "vqvae",
                      "--dataset_name", str(imagefolder), "--output_dir", str(tmp_path / "out"), "--max_train_steps",
                      "1", "--learning_rate", "0", *GAN_FLAGS])
    saved = FQGANTokenizer.from_pretrained(pipeline_folder, subfolder="vqvae")
    assert same_weights(FQGANTokenizer.from_pretrained(tmp_path / "out" / "tokenizer"), saved)
    identity = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert identity["pretrained"] == [str(pipeline_folder), "vqvae"]


def test_generator_fine_tunes_from_a_pipeline_subfolder(tmp_path, imagefolder, pipeline_folder):
    extract_codes.main(["--tokenizer", str(pipeline_folder / "vqvae"), "--dataset", str(imagefolder),
                        "--resolution", "8", "--output_dir", str(tmp_path / "codes")])
    common = ["--codes_dir", str(tmp_path / "codes"), "--tokenizer", str(pipeline_folder / "vqvae"),
              "--pretrained_model_name_or_path", str(pipeline_folder), "--subfolder", "transformer",
              "--train_batch_size", "4", "--max_train_steps", "1", "--learning_rate", "0", "--report_to", "none"]
    train_far.main(common + ["--output_dir", str(tmp_path / "far")])
    saved = FARForClassConditionalGeneration.from_pretrained(pipeline_folder, subfolder="transformer")
    tuned = FARForClassConditionalGeneration.from_pretrained(tmp_path / "far" / "pipeline", subfolder="transformer")
    assert same_weights(tuned, saved)
    # a MaskGIT is not what the AR recipe trains
    tok = FQGANTokenizer.from_pretrained(pipeline_folder, subfolder="vqvae")
    MaskGIT(MaskGITConfig(vocab_size=tok.codebook_sizes[0], num_codebooks=2, grid_size=tok.grid_size, num_classes=2,
                          hidden_size=32, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(tmp_path / "mg")
    wrong = [a if a != str(pipeline_folder) else str(tmp_path / "mg") for a in common if a not in ("--subfolder",
                                                                                                   "transformer")]
    with pytest.raises(ValueError, match="holds a 'hf_vq_maskgit' generator; this recipe trains 'hf_vq_far'"):
        train_far.main(wrong + ["--output_dir", str(tmp_path / "far2")])


def test_config_or_pretrained_exactly_one(tmp_path, imagefolder, pipeline_folder):
    config = tmp_path / "c.json"
    config.write_text("{}")
    for flags in ([], ["--tokenizer_config", str(config), "--pretrained_model_name_or_path", str(pipeline_folder)]):
        args = parse_recipe_args(TokenizerGANRecipe, ["--output_dir", str(tmp_path / "o"), *flags])
        with pytest.raises(ValueError, match="give --tokenizer_config .* or --pretrained_model_name_or_path"):
            TokenizerGANRecipe(args)
    args = parse_recipe_args(TokenizerGANRecipe, ["--output_dir", str(tmp_path / "o"),
                                                  "--pretrained_model_name_or_path", str(pipeline_folder)])
    with pytest.raises(ValueError, match="is a pipeline folder: name the model in it with --subfolder"):
        TokenizerGANRecipe(args)


def test_diffusers_data_flags(tmp_path, imagefolder, pipeline_folder):
    args = parse_recipe_args(TokenizerGANRecipe, [
        "--pretrained_model_name_or_path", str(pipeline_folder), "--subfolder", "vqvae", "--output_dir",
        str(tmp_path / "o"), "--train_data_dir", str(imagefolder), "--max_train_samples", "5", *GAN_FLAGS])
    recipe = TokenizerGANRecipe(args)
    recipe.setup()
    assert args.dataset == str(imagefolder) and len(recipe.dataset) == 5
    far = parse_recipe_args(ARGeneratorRecipe, ["--codes_dir", "c", "--tokenizer", "t", "--model_config", "m",
                                                "--output_dir", "o", "--max_train_samples", "3"])
    assert far.max_train_samples == 3
