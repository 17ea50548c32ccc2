"""Frozen representation teachers (CLIP vision, DINOv2, any ViT with a CLS token) via `transformers.AutoModel`."""

from __future__ import annotations

import os
import re

import torch
import torch.nn.functional as F
from torch import nn

_HUB_ID = re.compile(r"^\w[\w.-]*(/\w[\w.-]*)?$")  # "org/name" or "name"; anything else can only be a folder
_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class FrozenTeacher(nn.Module):
    """Wraps a vision transformer; maps [-1, 1] images to its CLS feature with no gradient."""

    def __init__(
        self,
        model: nn.Module,
        image_size: int,
        image_mean: tuple[float, ...] = _OPENAI_CLIP_MEAN,
        image_std: tuple[float, ...] = _OPENAI_CLIP_STD,
        num_channels: int = 3,
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.image_size = image_size
        self.num_channels = num_channels
        self.register_buffer("mean", torch.tensor(image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std).view(1, -1, 1, 1), persistent=False)

    @property
    def hidden_size(self) -> int:
        """Width of the CLS feature."""
        return self.model.config.hidden_size

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs) -> FrozenTeacher:
        """Load a teacher by Hub id or local path (CLIP's vision tower is taken out of a full CLIPModel)."""
        from transformers import AutoConfig, AutoModel

        where = f"there is no folder {name_or_path} here (relative paths start at {os.getcwd()})"
        missing = (
            f"{where}; the Fashion-MNIST configs' teacher is made by `python examples/train_fmnist_teacher.py "
            "--output_dir outputs/fmnist-teacher`, a Hub teacher by `hf download ID`; or train without one: "
            "--teachers none"
        )
        if not os.path.isdir(name_or_path) and not _HUB_ID.match(str(name_or_path)):
            raise FileNotFoundError(f"could not load the teacher: {missing}")
        try:
            config = AutoConfig.from_pretrained(name_or_path, **kwargs)
        except OSError as err:
            hint = "the folder holds no transformers config.json" if os.path.isdir(name_or_path) else missing
            raise OSError(f"could not load the teacher {name_or_path!r}: {hint}") from err
        if hasattr(config, "vision_config"):  # CLIP/SigLIP: keep only the vision tower
            model = AutoModel.from_pretrained(name_or_path, **kwargs).vision_model
        else:
            model = AutoModel.from_pretrained(name_or_path, **kwargs)
        mean, std = _OPENAI_CLIP_MEAN, _OPENAI_CLIP_STD
        try:
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(name_or_path, **kwargs)
            mean, std = tuple(processor.image_mean), tuple(processor.image_std)
        except (OSError, ValueError, AttributeError, TypeError):
            pass  # no preprocessor_config.json: keep the CLIP statistics
        size = model.config.image_size
        channels = getattr(model.config, "num_channels", 3)
        if len(mean) != channels:  # e.g. a grayscale ViT saved without a preprocessor config
            mean, std = (0.5,) * channels, (0.5,) * channels
        return cls(model, image_size=size if isinstance(size, int) else size[0], image_mean=mean, image_std=std,
                   num_channels=channels)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """A teacher stays in eval mode (no dropout, frozen norms) whatever the caller asks."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, hidden_size) CLS feature."""
        x = (pixel_values.float() + 1) / 2
        if x.shape[1] == 1 and self.num_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.image_size, self.image_size))
        x = (x - self.mean) / self.std
        param = next(self.model.parameters())
        out = self.model(pixel_values=x.to(param.dtype))
        return out.last_hidden_state[:, 0].float()
