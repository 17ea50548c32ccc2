"""VQ-KD's two stages on the shared loop, with a tiny random ViT teacher saved locally."""

import json

import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file
from transformers import ViTConfig, ViTModel

from hf_vq import AutoImageTokenizer, FQGANTokenizer, VQKDTokenizer
from hf_vq.cli import build_parser
from hf_vq.evaluation.command import evaluate_tokenizer_command

stage1 = load_script("train_vqkd")
stage2 = load_script("train_vqkd_pixel_decoder")
COMMON = ["--resolution", "8", "--train_batch_size", "4", "--report_to", "none", "--validation_steps", "100",
          "--checkpointing_steps", "100", "--logging_steps", "1"]


@pytest.fixture
def teacher(tmp_path):
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=8, patch_size=2, num_channels=1)).save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


def stage1_config(tmp_path):
    path = tmp_path / "vqkd.json"
    path.write_text(json.dumps(VQKDTokenizer.presets["tiny-no-pixel-decoder"]))
    return path


def test_stage_one_distils_and_stage_two_leaves_the_codes_alone(tmp_path, imagefolder, teacher):
    # a preset's stage-1 part: its pixel decoder is stage 2's
    stage1.main(["--tokenizer_config", "tiny", "--teacher", str(teacher), "--dataset",
                 str(imagefolder), "--output_dir", str(tmp_path / "s1"), "--max_train_steps", "4", *COMMON])
    tokenizer = AutoImageTokenizer.from_pretrained(tmp_path / "s1" / "tokenizer")
    assert isinstance(tokenizer, VQKDTokenizer) and not tokenizer.can_decode
    summary = json.loads((tmp_path / "s1" / "train_summary.json").read_text())
    assert {"cosine_loss", "commit_loss", "loss"} <= set(summary["last_logs"])

    decoder = tmp_path / "decoder.json"
    decoder.write_text(json.dumps(dict(base_channels=32, channel_multipliers=[1, 2], num_res_blocks=1,
                                       z_channels=32)))
    stage2.main(["--tokenizer", str(tmp_path / "s1" / "tokenizer"), "--pixel_decoder", str(decoder), "--dataset",
                 str(imagefolder), "--output_dir", str(tmp_path / "s2"), "--max_train_steps", "3",
                 "--perceptual_weight", "0", "--disc_start", "1", "--disc_channels", "8", "--disc_layers", "1",
                 *COMMON])
    full = AutoImageTokenizer.from_pretrained(tmp_path / "s2" / "tokenizer").eval()
    assert full.can_decode
    before = load_file(tmp_path / "s1" / "tokenizer" / "diffusion_pytorch_model.safetensors")
    after = load_file(tmp_path / "s2" / "tokenizer" / "diffusion_pytorch_model.safetensors")
    for key, value in before.items():  # encoder, codebook, feature decoder: bit-identical
        assert torch.equal(after[key], value), key
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.equal(full.tokenize(x), tokenizer.eval().tokenize(x))
    assert full.detokenize(full.tokenize(x)).shape == x.shape
    result = evaluate_tokenizer_command(build_parser().parse_args(
        ["evaluate", "tokenizer", str(tmp_path / "s2" / "tokenizer"), "--dataset", str(imagefolder), "--split",
         "train", "--features", "none", "--teacher", str(teacher)]))
    assert result["num_images"] == 16 and result["psnr_db"] > 0 and -1 <= result["teacher_cosine"] <= 1
    stage1_only = evaluate_tokenizer_command(build_parser().parse_args(
        ["evaluate", "tokenizer", str(tmp_path / "s1" / "tokenizer"), "--dataset", str(imagefolder), "--split",
         "train", "--features", "none", "--teacher", str(teacher)]))
    assert stage1_only["psnr_db"] is None and stage1_only["teacher_cosine"] == result["teacher_cosine"]
    # what was measured, and against which teacher, is in the result
    assert result["teacher"] == stage1_only["teacher"] == str(teacher)
    assert set(result["protocol"]) == {"codebook", "psnr_db", "ssim", "teacher_cosine"}  # --features none
    assert set(stage1_only["protocol"]) == {"codebook", "teacher_cosine"} and "no pixel decoder" in stage1_only["note"]


def test_bad_stage_inputs_are_refused_before_work(tmp_path, imagefolder, teacher):
    with pytest.raises(FileNotFoundError, match="train stage 1 first"):
        stage2.main(["--tokenizer", str(tmp_path), "--dataset", str(imagefolder), "--output_dir",
                     str(tmp_path / "s2"), "--perceptual_weight", "0", *COMMON])
    FQGANTokenizer.from_preset("tiny").save_pretrained(tmp_path / "fqgan")
    with pytest.raises(ValueError, match="holds a FQGANTokenizer; stage 2 adds a pixel decoder to a VQ-KD tokenizer"):
        stage2.main(["--tokenizer", str(tmp_path / "fqgan"), "--dataset", str(imagefolder), "--output_dir",
                     str(tmp_path / "s2"), "--perceptual_weight", "0", *COMMON])
    config = tmp_path / "with-decoder.json"
    config.write_text(json.dumps(VQKDTokenizer.presets["tiny"]))
    with pytest.raises(ValueError, match="stage 1 trains the encoder and the feature decoder only"):
        stage1.main(["--tokenizer_config", str(config), "--teacher", str(teacher), "--dataset", str(imagefolder),
                     "--output_dir", str(tmp_path / "s1"), *COMMON])
    wide = {**VQKDTokenizer.presets["tiny-no-pixel-decoder"], "teacher_dim": 24}
    config.write_text(json.dumps(wide))
    with pytest.raises(ValueError, match="16-wide patch features, the config's teacher_dim is 24: set teacher_dim "
                                         "to 16"):
        stage1.main(["--tokenizer_config", str(config), "--teacher", str(teacher), "--dataset", str(imagefolder),
                     "--output_dir", str(tmp_path / "s1"), *COMMON])
    config.write_text("{'teacher_dim': 16}")
    with pytest.raises(ValueError, match=r"--tokenizer_config .*with-decoder.json is not valid JSON"):
        stage1.main(["--tokenizer_config", str(config), "--teacher", str(teacher), "--dataset", str(imagefolder),
                     "--output_dir", str(tmp_path / "s1"), *COMMON])
    VQKDTokenizer.from_preset("tiny-no-pixel-decoder").save_pretrained(tmp_path / "stage1")
    decoder = tmp_path / "decoder.json"
    for text, message in (("{", r"--pixel_decoder .*decoder.json is not valid JSON"),
                          (json.dumps({**VQKDTokenizer.presets["tiny"]["pixel_decoder"], "base_channels": 16}),
                           "the decoder's base_channels must be a multiple of 32")):
        decoder.write_text(text)
        with pytest.raises(ValueError, match=message):
            stage2.main(["--tokenizer", str(tmp_path / "stage1"), "--pixel_decoder", str(decoder), "--dataset",
                         str(imagefolder), "--output_dir", str(tmp_path / "s2"), "--perceptual_weight", "0", *COMMON])
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()
