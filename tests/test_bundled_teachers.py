"""The Fashion-MNIST teachers shipped in the package: loaded by name, checked by sha256, made by fixed-step scripts."""

import json
import shutil

import pytest
import torch
from conftest import ROOT, load_script
from test_data import FMNIST_PRESENT

from hf_vq import FrozenTeacher
from hf_vq.tokenizers import teachers
from hf_vq.utils import file_sha256

MODEL_TYPES = {"fmnist-vit-teacher-p4": "vit", "fmnist-mae-teacher-p4": "vit_mae"}


@pytest.mark.parametrize("name", sorted(MODEL_TYPES))
def test_bundled_teacher_has_the_7x7_code_grid_and_is_deterministic(name):
    teacher = FrozenTeacher.from_pretrained(f"bundled:{name}")
    assert teacher.model.config.model_type == MODEL_TYPES[name]
    assert teacher.image_size // teacher.model.config.patch_size == 7  # native grid: no resize of the tokens
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    features = teacher.patch_features(x, 7)
    assert features.shape == (2, 49, 128)
    # an MAE draws random masking noise unless it is run unmasked in a fixed patch order
    assert torch.equal(features, teacher.patch_features(x, 7))
    assert sorted(p.name for p in teachers.BUNDLED_TEACHER_ROOT.joinpath(name).iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json"]


def test_a_bundled_teacher_with_one_changed_byte_is_refused(tmp_path, monkeypatch):
    name = "fmnist-mae-teacher-p4"
    shutil.copytree(teachers.BUNDLED_TEACHER_ROOT / name, tmp_path / name)
    weights = tmp_path / name / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(teachers, "BUNDLED_TEACHER_ROOT", tmp_path)
    with pytest.raises(ValueError) as err:
        FrozenTeacher.from_pretrained(f"bundled:{name}")
    message = str(err.value)
    for part in (str(weights), file_sha256(weights), teachers.BUNDLED_TEACHERS[name],
                 "train_fmnist_mae_teacher.py --output_dir src/hf_vq/assets/fmnist-mae-teacher-p4"):
        assert part in message


def test_an_unknown_bundled_teacher_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown bundled teacher 'fmnist-teacher'.*bundled:fmnist-mae-teacher-p4, "
                                         "bundled:fmnist-vit-teacher-p4"):
        FrozenTeacher.from_pretrained("bundled:fmnist-teacher")


def test_knn_accuracy_votes_over_the_bank():
    knn_accuracy = load_script("train_fmnist_mae_teacher").knn_accuracy
    teacher = FrozenTeacher.from_pretrained("bundled:fmnist-mae-teacher-p4")
    x = torch.rand(24, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = {"pixel_values": x, "class_labels": torch.full((24,), 3)}
    assert knn_accuracy(teacher, [batch], [batch], k=5) == 1.0
    assert knn_accuracy(teacher, [batch], [{**batch, "class_labels": torch.zeros(24, dtype=torch.long)}], k=5) == 0


@pytest.mark.skipif(not FMNIST_PRESENT, reason="Fashion-MNIST files not installed (apt package dataset-fashion-mnist)")
def test_mae_script_saves_an_unmasked_encoder_that_loads_as_a_teacher(tmp_path, capsys):
    load_script("train_fmnist_mae_teacher").main(
        ["--output_dir", str(tmp_path), "--max_steps", "3", "--batch_size", "16", "--warmup_steps", "2",
         "--knn_bank", "0", "--num_threads", "1"])
    assert "final loss" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors",
                                                          "preprocessor_config.json"]
    teacher = FrozenTeacher.from_pretrained(tmp_path)
    assert teacher.model.config.mask_ratio == 0.0 and teacher.std.flatten().tolist() == pytest.approx([0.353] * 3)
    assert teacher.patch_features(torch.zeros(2, 1, 28, 28), 7).shape == (2, 49, 128)


def test_vqkd_stage_one_runs_with_the_bundled_mae_teacher(tmp_path, imagefolder):
    config = ROOT / "examples" / "configs" / "fmnist_vqkd_mae.json"
    load_script("train_vqkd").main(
        ["--tokenizer_config", str(config), "--dataset", str(imagefolder), "--resolution", "28", "--output_dir",
         str(tmp_path / "s1"), "--max_train_steps", "2", "--train_batch_size", "4", "--report_to", "none",
         "--validation_steps", "100", "--checkpointing_steps", "100"])
    run = json.loads((tmp_path / "s1" / "run_config.json").read_text())
    assert run["teacher"] == "bundled:fmnist-mae-teacher-p4"
    assert run["teacher_sha256"] == teachers.BUNDLED_TEACHERS["fmnist-mae-teacher-p4"]
    assert (tmp_path / "s1" / "tokenizer" / "config.json").is_file()


def test_the_two_vqkd_configs_differ_only_in_the_teacher():
    configs = {k: json.loads((ROOT / "examples" / "configs" / f"fmnist_vqkd_{k}.json").read_text())
               for k in ("restart", "vit", "mae")}
    assert configs["vit"].pop("teacher_model") == "bundled:fmnist-vit-teacher-p4"
    assert configs["mae"].pop("teacher_model") == "bundled:fmnist-mae-teacher-p4"
    assert configs["vit"] == configs["mae"] == configs["restart"]
