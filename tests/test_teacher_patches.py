"""Teachers' patch features for VQ-KD, on tiny random models saved locally: ViT, DINOv2 (with registers), CLIP
(post_layernorm and visual_projection) and MAE (unmasked, identity patch order)."""

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    CLIPConfig,
    CLIPModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ViTConfig,
    ViTMAEConfig,
    ViTMAEModel,
    ViTModel,
)

from hf_vq import FrozenTeacher

SMALL = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16,
             patch_size=4, num_channels=3)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(0)
    ViTModel(ViTConfig(**SMALL)).save_pretrained(root / "vit")
    Dinov2Model(Dinov2Config(**SMALL)).save_pretrained(root / "dinov2")
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**SMALL, num_register_tokens=2)).save_pretrained(
        root / "dinov2-registers")
    ViTMAEModel(ViTMAEConfig(**SMALL, mask_ratio=0.0)).save_pretrained(root / "mae")
    clip = CLIPConfig(text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, vocab_size=50),
                      vision_config=dict(SMALL), projection_dim=12)
    CLIPModel(clip).save_pretrained(root / "clip")
    return root


def images(b: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("name,dim", [("vit", 16), ("dinov2", 16), ("dinov2-registers", 16), ("mae", 16),
                                      ("clip", 12)])
def test_patch_features_have_the_code_grid_and_are_deterministic(teachers, name, dim):
    teacher = FrozenTeacher.from_pretrained(teachers / name)
    assert teacher.patch_dim == dim
    for grid in (4, 2):  # the teacher's own 4x4 grid, and a bicubic resize to 2x2
        features = teacher.patch_features(images(), grid)
        assert features.shape == (2, grid * grid, dim) and torch.isfinite(features).all()
        assert torch.equal(teacher.patch_features(images(), grid), features)


def test_clip_patch_features_go_through_post_layernorm_and_the_projection(teachers):
    teacher = FrozenTeacher.from_pretrained(teachers / "clip")
    full = CLIPModel.from_pretrained(teachers / "clip").eval()
    x = (images() + 1) / 2
    x = F.interpolate(x, size=(16, 16), mode="bicubic", align_corners=False)
    x = (x - teacher.mean) / teacher.std
    with torch.no_grad():
        hidden = full.vision_model(pixel_values=x).last_hidden_state[:, 1:]
        expected = full.visual_projection(full.vision_model.post_layernorm(hidden))
    torch.testing.assert_close(teacher.patch_features(images(), 4), expected)


def test_mae_keeps_the_patch_order(teachers):
    teacher = FrozenTeacher.from_pretrained(teachers / "mae")
    x = images(1)
    swapped = x.clone()
    swapped[..., :4, :], swapped[..., 4:, :] = x[..., 4:, :], x[..., :4, :]  # top and bottom halves swapped
    a, b = teacher.patch_features(x, 2), teacher.patch_features(swapped, 2)
    assert not torch.allclose(a, b)  # a shuffled order would make each position's feature order-independent


def test_teachers_without_a_square_patch_grid_are_refused(teachers):
    teacher = FrozenTeacher.from_pretrained(teachers / "dinov2-registers")
    teacher.model.config.num_register_tokens = 3  # one register too many: 15 tokens left, not a square
    with pytest.raises(ValueError, match="not a square grid"):
        teacher.patch_features(images(), 4)


def test_teacher_statistics_come_from_its_preprocessor_config_and_a_missing_one_is_named(teachers, tmp_path, caplog):
    import shutil

    from transformers import ViTImageProcessor

    with caplog.at_level("WARNING", logger="hf_vq.tokenizers.teachers"):
        FrozenTeacher.from_pretrained(teachers / "vit")  # saved without a preprocessor config
    assert "has no preprocessor_config.json" in caplog.text and "CLIP" in caplog.text

    caplog.clear()
    copy = shutil.copytree(teachers / "vit", tmp_path / "vit")
    ViTImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(copy)
    with caplog.at_level("WARNING", logger="hf_vq.tokenizers.teachers"):
        teacher = FrozenTeacher.from_pretrained(copy)
    assert "preprocessor_config" not in caplog.text
    assert teacher.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert teacher.std.flatten().tolist() == pytest.approx([0.4, 0.5, 0.6])
