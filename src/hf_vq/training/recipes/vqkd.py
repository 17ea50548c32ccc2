"""VQ-KD's two tokenizer stages on the shared loop (the VQ-KD benchmark, magic-research/vector_quantization).

Stage 1 (`VQKDRecipe`): a frozen teacher; the encoder and the feature decoder learn to predict the teacher's
patch features from the codes (1 - cosine + commitment); the cosine codebook learns by EMA. AdamW with betas
(0.9, 0.99), weight decay 1e-4 except on norms, biases, position embeddings and the CLS token.

Stage 2 (`VQKDPixelDecoderRecipe`): a pixel decoder learns to draw images from the frozen codes of a stage-1
tokenizer, with the pixel, perceptual and hinge GAN losses of the CNN tokenizers; the encoder, the quantizer and so
the codes stay bit-identical.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ...tokenizers import VQKD_PRESETS, FrozenTeacher, TokenizerOutput, VQKDTokenizer
from ...tokenizers.teachers import BUNDLED_PREFIX, BUNDLED_TEACHERS
from ...utils import save_pretrained_atomic
from ..data import collate
from ..loop import Phase, TrainingRecipe, unwrapped
from ..losses import LPIPS_DOWNLOAD_HINT, PatchGANDiscriminator, PerceptualLoss
from ..pretrained import (
    add_model_source_arguments,
    describe_source,
    pretrained_source,
    read_json_file,
    read_model_config,
)
from .tokenizer_gan import (
    TokenizerGANRecipe,
    add_gan_arguments,
    add_image_data_arguments,
    default_resolution,
    fine_tuning_identity,
    init_codebooks,
    load_training_images,
    preview_images,
    random_flips,
    saved_tokenizer_config,
)


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim < 2 or name.endswith(("pos_embed", "cls_token"))


class VQKDRecipe(TrainingRecipe):
    """Stage 1 of VQ-KD: distil a frozen teacher's patch features into a cosine codebook (examples/train_vqkd.py)."""

    name = "train_vqkd"
    # Stage 1 trains each preset's encoder and feature decoder; its pixel decoder is stage 2's.
    config_presets = {name: {k: v for k, v in preset.items() if k != "pixel_decoder"}
                      for name, preset in VQKD_PRESETS.items() if name != "tiny-no-pixel-decoder"}
    default_checkpointing_steps = 500

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_model_source_arguments(parser, "tokenizer_config", "JSON of VQKDTokenizer config kwargs",
                                   cls.config_presets)
        parser.add_argument("--teacher", default=None,
                            help="Hub id, folder or bundled:NAME; default: the config's teacher_model")
        add_image_data_arguments(parser)
        parser.add_argument("--learning_rate", type=float, default=2e-4)
        parser.add_argument("--adam_beta1", type=float, default=0.9)
        parser.add_argument("--adam_beta2", type=float, default=0.99)
        parser.add_argument("--weight_decay", type=float, default=1e-4)

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.model_config = read_model_config(args, "tokenizer_config", saved_tokenizer_config,
                                              self.config_presets)
        if self.model_config.get("pixel_decoder") is not None:
            raise ValueError(
                "stage 1 trains the encoder and the feature decoder only: drop `pixel_decoder` from "
                f"{describe_source(args, 'tokenizer_config')} and give it to stage 2 "
                "(examples/train_vqkd_pixel_decoder.py)"
            )
        VQKDTokenizer.extract_init_dict(dict(self.model_config))  # field types checked before any work
        default_resolution(args, self.model_config, VQKDTokenizer)
        self.teacher_name = args.teacher or self.model_config.get("teacher_model")
        if not self.teacher_name:
            raise ValueError("stage 1 needs a teacher: pass --teacher (a Hub id, a folder, or bundled:NAME for a "
                             f"teacher shipped in the package: {', '.join(sorted(BUNDLED_TEACHERS))}) or set "
                             "teacher_model")

    def run_identity(self) -> dict[str, Any]:
        args = self.args
        identity = {"tokenizer_config": self.model_config, "teacher": str(self.teacher_name), "dataset": args.dataset,
                    "resolution": args.resolution}
        name = str(self.teacher_name)
        if name.startswith(BUNDLED_PREFIX):  # the name alone does not say which weights: record them
            identity["teacher_sha256"] = BUNDLED_TEACHERS.get(name.removeprefix(BUNDLED_PREFIX))
        return fine_tuning_identity(identity, args)

    def setup(self) -> None:
        self.teacher = FrozenTeacher.from_pretrained(self.teacher_name)
        expected = self.model_config.get("teacher_dim", 768)
        if self.teacher.patch_dim != expected:
            raise ValueError(f"teacher {self.teacher_name!r} gives {self.teacher.patch_dim}-wide patch features, "
                             f"the config's teacher_dim is {expected}: set teacher_dim to {self.teacher.patch_dim} "
                             "for this teacher")
        self.dataset = load_training_images(self.args, self.model_config.get("in_channels", 3))

    def build(self) -> None:
        source = pretrained_source(self.args)
        if source is not None:
            self.model = VQKDTokenizer.from_pretrained(source[0], subfolder=source[1])
        else:
            self.model = VQKDTokenizer.from_config(self.model_config)
        self.preview = preview_images(self.dataset)

    def make_optimizer(self, name: str, module: nn.Module) -> torch.optim.Optimizer:
        args = self.args
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in params if not _no_decay(n, p)], "weight_decay": args.weight_decay},
            {"params": [p for n, p in params if _no_decay(n, p)], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2))

    def train_dataset(self) -> tuple[Dataset, Callable]:
        return self.dataset, collate

    def before_prepare(self) -> None:
        init_codebooks(self.model, self.preview)

    def to_device(self, device: torch.device) -> None:
        self.teacher.to(device)

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> Iterator[Phase]:
        x = random_flips(batch["pixel_values"]) if self.args.random_flip else batch["pixel_values"]
        targets = self.teacher.patch_features(x, unwrapped(self.accelerator, self.model).grid_size)
        out = self.model(x, teacher_features=targets)
        loss = sum(out.losses.values())
        logs = {name: value.detach() for name, value in out.losses.items()}
        yield "model", loss, {**logs, "loss": loss.detach()}

    def save_final(self, model: nn.Module, output_dir: Path) -> Path:
        return save_pretrained_atomic(model, output_dir / "tokenizer", self.name, overwrite=True)


class PixelDecoderStage(nn.Module):
    """A stage-1 VQ-KD tokenizer whose only trainable part is its pixel decoder; the codes come from the frozen
    encoder and quantizer, which stay in eval mode whatever mode this module is put in."""

    def __init__(self, tokenizer: VQKDTokenizer):
        super().__init__()
        self.tokenizer = tokenizer.requires_grad_(False)
        tokenizer.post_quant_conv.requires_grad_(True)
        tokenizer.image_decoder.requires_grad_(True)

    def train(self, mode: bool = True) -> PixelDecoderStage:
        super().train(False)
        self.tokenizer.post_quant_conv.train(mode)
        self.tokenizer.image_decoder.train(mode)
        self.training = mode
        return self

    def forward(self, pixel_values: torch.Tensor) -> TokenizerOutput:
        with torch.no_grad():
            enc = self.tokenizer.encode(pixel_values)
        sample = self.tokenizer.decode(enc.latents).sample
        return TokenizerOutput(sample=sample, indices=enc.indices)


class VQKDPixelDecoderRecipe(TokenizerGANRecipe):
    """Stage 2 of VQ-KD: a pixel decoder on the frozen codes (examples/train_vqkd_pixel_decoder.py)."""

    name = "train_vqkd_pixel_decoder"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--tokenizer", required=True, help="the stage-1 tokenizer folder (examples/train_vqkd.py)")
        parser.add_argument("--pixel_decoder", default=None,
                            help="JSON of the CNN decoder's kwargs (base_channels, channel_multipliers, "
                                 "num_res_blocks, z_channels); default: LlamaGen's, with one level per factor 2 of "
                                 "the patch size")
        add_image_data_arguments(parser)
        add_gan_arguments(parser)

    def __init__(self, args: argparse.Namespace):
        TrainingRecipe.__init__(self, args)
        if not (Path(args.tokenizer) / "config.json").is_file():
            raise FileNotFoundError(f"--tokenizer {args.tokenizer} holds no saved tokenizer (no config.json): "
                                    "train stage 1 first with examples/train_vqkd.py")
        self.stage1 = VQKDTokenizer.load_config(args.tokenizer)
        if self.stage1.get("_class_name") != VQKDTokenizer.__name__:
            raise ValueError(f"--tokenizer {args.tokenizer} holds a {self.stage1.get('_class_name')}; stage 2 adds a "
                             "pixel decoder to a VQ-KD tokenizer trained by examples/train_vqkd.py")
        default_resolution(args, self.stage1, VQKDTokenizer)
        levels = self.stage1["patch_size"].bit_length()
        default = dict(base_channels=128, channel_multipliers=[1, 1, 2, 2, 4, 4][:levels], num_res_blocks=2,
                       z_channels=256)
        self.pixel_decoder = read_json_file(args.pixel_decoder, "--pixel_decoder") if args.pixel_decoder else default
        self.model_config = {**self.stage1, "pixel_decoder": self.pixel_decoder}
        with torch.device("meta"):  # the sizes checked before any work, at no memory cost
            VQKDTokenizer.from_config(self.model_config)
        self.teachers = []  # the teacher's job ended with stage 1
        if args.perceptual_weight > 0 and not (args.vgg16_path and args.lpips_path):
            raise SystemExit(f"--perceptual_weight {args.perceptual_weight} needs LPIPS weights. {LPIPS_DOWNLOAD_HINT}")

    def run_identity(self) -> dict[str, Any]:
        args = self.args
        return {"stage1_tokenizer": str(Path(args.tokenizer).resolve()), "pixel_decoder": self.pixel_decoder,
                "dataset": args.dataset, "resolution": args.resolution}

    def setup(self) -> None:
        args = self.args
        self.lpips = PerceptualLoss.from_files(args.vgg16_path, args.lpips_path) if args.perceptual_weight > 0 else None
        self.dataset = load_training_images(args, self.stage1.get("in_channels", 3))

    def build(self) -> None:
        stage1 = VQKDTokenizer.from_pretrained(self.args.tokenizer)
        tokenizer = VQKDTokenizer.from_config({**dict(stage1.config), "pixel_decoder": self.pixel_decoder})
        missing, unexpected = tokenizer.load_state_dict(stage1.state_dict(), strict=False)
        if unexpected or any(not k.startswith(("post_quant_conv.", "image_decoder.")) for k in missing):
            raise ValueError(f"{self.args.tokenizer} does not match its own config: {missing + unexpected}")
        self.model = PixelDecoderStage(tokenizer)
        self.preview = preview_images(self.dataset)
        self.discriminator = PatchGANDiscriminator(tokenizer.in_channels, self.args.disc_channels,
                                                   self.args.disc_layers)

    def reconstruct(self, x: torch.Tensor) -> TokenizerOutput:
        return self.model(x)

    @torch.no_grad()
    def save_preview(self, model: nn.Module, path: Path) -> None:
        super().save_preview(model.tokenizer, path)

    def save_final(self, model: nn.Module, output_dir: Path) -> Path:
        return save_pretrained_atomic(model.tokenizer, output_dir / "tokenizer", self.name, overwrite=True)
