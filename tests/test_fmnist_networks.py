"""The scripts that train the Fashion-MNIST teacher and judge classifier run and save loadable networks."""

import pytest
import torch
from conftest import load_script
from test_data import FMNIST_PRESENT

from hf_vq import FrozenTeacher
from hf_vq.evaluation import ClassifierAccuracy

pytestmark = pytest.mark.skipif(not FMNIST_PRESENT, reason="Fashion-MNIST files not installed")


def test_teacher_script_saves_an_automodel_teacher(tmp_path, capsys):
    load_script("train_fmnist_teacher").main(
        ["--output_dir", str(tmp_path), "--max_minutes", "0.02", "--hidden_size", "32", "--num_layers", "1",
         "--num_heads", "2", "--batch_size", "32", "--warmup_steps", "2"]
    )
    assert "test accuracy" in capsys.readouterr().out
    teacher = FrozenTeacher.from_pretrained(tmp_path)
    assert teacher(torch.zeros(2, 1, 28, 28)).shape == (2, 32)


def test_classifier_script_saves_a_judge(tmp_path, capsys):
    load_script("train_fmnist_classifier").main(
        ["--output_dir", str(tmp_path), "--max_minutes", "0.02", "--batch_size", "32", "--warmup_steps", "2"]
    )
    assert "test accuracy" in capsys.readouterr().out
    judge = ClassifierAccuracy.from_pretrained(tmp_path)
    assert judge.classify(torch.zeros(3, 1, 28, 28), value_range=(-1, 1)).shape == (3,)
