"""Frozen representation teachers (CLIP vision, DINOv2, any ViT with a CLS token) via `transformers.AutoModel`."""

from __future__ import annotations

import logging
import math
import os
from importlib.resources import files
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import file_sha256, image_processor_config, is_hub_id

logger = logging.getLogger(__name__)

_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Teachers that ship inside the package, loaded as "bundled:NAME" (':' is in no Hub id): the sha256 of each one's
# model.safetensors, and the fixed-step command that made it. The package refuses a copy that differs.
BUNDLED_PREFIX = "bundled:"
BUNDLED_TEACHERS = {
    "fmnist-vit-teacher-p4": "881849528452a1ec1492541577028884b015acccfce0b092dcb21be744fdca02",
    "fmnist-mae-teacher-p4": "16831a7dc74412dd1b5eb31de8a7c674e370f787f537772517ca9fa9c1f8f109",
}
BUNDLED_TEACHER_COMMANDS = {
    "fmnist-vit-teacher-p4": "python examples/train_fmnist_teacher.py --output_dir "
    "src/hf_vq/assets/fmnist-vit-teacher-p4 --image_size 28 --patch_size 4 --epochs 2 --seed 0 --num_threads 1",
    "fmnist-mae-teacher-p4": "python examples/train_fmnist_mae_teacher.py --output_dir "
    "src/hf_vq/assets/fmnist-mae-teacher-p4 --epochs 3 --seed 0 --num_threads 1",
}
BUNDLED_TEACHER_ROOT = Path(str(files("hf_vq") / "assets"))


def bundled_teacher_path(name: str) -> Path:
    """The package folder of "bundled:NAME" (or NAME), after checking its weights' sha256 against the registry."""
    name = name.removeprefix(BUNDLED_PREFIX)
    if name not in BUNDLED_TEACHERS:
        raise ValueError(f"unknown bundled teacher {name!r}; the package ships "
                         f"{', '.join(BUNDLED_PREFIX + known for known in sorted(BUNDLED_TEACHERS))}")
    weights = BUNDLED_TEACHER_ROOT / name / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"the bundled teacher {name} has no {weights}: reinstall hf_vq, or remake it with "
                                f"`{BUNDLED_TEACHER_COMMANDS[name]}`")
    actual = file_sha256(weights)
    if actual != BUNDLED_TEACHERS[name]:
        raise ValueError(f"the bundled teacher {weights} has sha256 {actual}, not {BUNDLED_TEACHERS[name]}: the "
                         f"installed package is damaged or was edited; reinstall hf_vq, or remake it with "
                         f"`{BUNDLED_TEACHER_COMMANDS[name]}` and record its new sha256 in BUNDLED_TEACHERS")
    return weights.parent


class FrozenTeacher(nn.Module):
    """Wraps a vision transformer; maps [-1, 1] images to its CLS feature (FQGAN) or its patch features (VQ-KD),
    with no gradient.

    `projection` is CLIP's `visual_projection` (it lives outside `vision_model`), applied to patch features.
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: int,
        image_mean: tuple[float, ...] = _OPENAI_CLIP_MEAN,
        image_std: tuple[float, ...] = _OPENAI_CLIP_STD,
        num_channels: int = 3,
        projection: nn.Module | None = None,
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.projection = projection.eval().requires_grad_(False) if projection is not None else None
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
        """Load a teacher by Hub id, local path or "bundled:NAME" (a checked teacher shipped in the package; CLIP's
        vision tower is taken out of a full CLIPModel)."""
        from transformers import AutoConfig, AutoModel

        if str(name_or_path).startswith(BUNDLED_PREFIX):
            name_or_path = bundled_teacher_path(str(name_or_path))
        where = f"there is no folder {name_or_path} here (relative paths start at {os.getcwd()})"
        missing = (
            f"{where}; the Fashion-MNIST configs name the teacher shipped in the package, "
            "bundled:fmnist-vit-teacher-p4 (examples/train_fmnist_teacher.py makes others), a Hub teacher comes with "
            "`hf download ID`; or train without one: --teachers none"
        )
        if not os.path.isdir(name_or_path) and not is_hub_id(name_or_path):
            raise FileNotFoundError(f"could not load the teacher: {missing}")
        try:
            config = AutoConfig.from_pretrained(name_or_path, **kwargs)
        except OSError as err:
            hint = "the folder holds no transformers config.json" if os.path.isdir(name_or_path) else missing
            raise OSError(f"could not load the teacher {name_or_path!r}: {hint}") from err
        projection = None
        if hasattr(config, "vision_config"):  # CLIP/SigLIP: keep the vision tower (and CLIP's projection)
            full = AutoModel.from_pretrained(name_or_path, **kwargs)
            model, projection = full.vision_model, getattr(full, "visual_projection", None)
        else:
            model = AutoModel.from_pretrained(name_or_path, **kwargs)
        processing = image_processor_config(name_or_path, **kwargs)
        if processing is None:
            logger.warning("the teacher %s has no preprocessor_config.json: its inputs are normalised with CLIP's "
                           "mean and std (0.5 for a grayscale teacher)", name_or_path)
            processing = {}
        mean = tuple(processing.get("image_mean", _OPENAI_CLIP_MEAN))
        std = tuple(processing.get("image_std", _OPENAI_CLIP_STD))
        size = model.config.image_size
        channels = getattr(model.config, "num_channels", 3)
        if len(mean) != channels:  # e.g. a grayscale ViT saved without a preprocessor config
            mean, std = (0.5,) * channels, (0.5,) * channels
        return cls(model, image_size=size if isinstance(size, int) else size[0], image_mean=mean, image_std=std,
                   num_channels=channels, projection=projection)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """A teacher stays in eval mode (no dropout, frozen norms) whatever the caller asks."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, hidden_size) CLS feature."""
        # FQGAN resizes with F.interpolate's default (nearest) mode.
        out = self.model(pixel_values=self._teacher_input(pixel_values, "nearest"))
        return out.last_hidden_state[:, 0].float()

    def _teacher_input(self, pixel_values: torch.Tensor, mode: str) -> torch.Tensor:
        """[-1, 1] images -> the teacher's input: RGB where it wants RGB, its size (`mode` resize), its statistics."""
        x = (pixel_values.float() + 1) / 2
        if x.shape[1] == 1 and self.num_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        resize = {} if mode == "nearest" else {"mode": mode, "align_corners": False}
        x = F.interpolate(x, size=(self.image_size, self.image_size), **resize)
        return ((x - self.mean) / self.std).to(next(self.model.parameters()).dtype)

    @property
    def patch_dim(self) -> int:
        """Width of the patch features (CLIP: its projection's)."""
        return self.projection.out_features if self.projection is not None else self.model.config.hidden_size

    @torch.no_grad()
    def patch_features(self, pixel_values: torch.Tensor, grid_size: int) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, grid_size**2, patch_dim): the final-layer patch tokens (VQ-KD's targets).

        The image is resized bicubically to the teacher's size and normalised with its statistics; the token grid
        is resized bicubically to `grid_size`. CLIP's tokens go through `post_layernorm` and `visual_projection`;
        DINOv2's register tokens are skipped; MAE is run unmasked in the identity patch order.
        """
        x = self._teacher_input(pixel_values, "bicubic")
        config = self.model.config
        kwargs = {}
        if config.model_type == "vit_mae":
            # ViTMAEModel shuffles patches by argsort(noise) even with nothing masked: arange keeps their order.
            if config.mask_ratio != 0:
                raise ValueError(f"an MAE teacher must keep every patch: set its config.mask_ratio to 0 "
                                 f"(got {config.mask_ratio})")
            num = (self.image_size // config.patch_size) ** 2
            kwargs["noise"] = torch.arange(num, device=x.device, dtype=torch.float32).expand(x.shape[0], -1)
        tokens = self.model(pixel_values=x, **kwargs).last_hidden_state
        registers = config.num_register_tokens if config.model_type == "dinov2_with_registers" else 0
        tokens = tokens[:, 1 + registers:]  # the CLS token, then DINOv2's registers
        if self.projection is not None:
            tokens = self.projection(self.model.post_layernorm(tokens))
        side = math.isqrt(tokens.shape[1])
        if tokens.shape[1] == 0 or side * side != tokens.shape[1]:
            raise ValueError(
                f"the teacher gives {tokens.shape[1]} patch tokens, not a square grid of patches: VQ-KD needs a ViT "
                "teacher whose final layer has one token per patch after the CLS token"
            )
        if side != grid_size:
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side).float()
            grid = F.interpolate(grid, size=(grid_size, grid_size), mode="bicubic", align_corners=False)
            tokens = grid.flatten(2).transpose(1, 2)
        return tokens.float()
