"""The GAN tokenizer recipe: VQGAN, FQGAN-Dual/Triple, FSQ and LFQ tokenizers on images.

Losses (FQGAN `vq_loss.py`, LlamaGen `vq_loss.py`): pixel (L2/L1) + LPIPS + hinge GAN from --disc_start, plus the
tokenizer's own losses (quantizer, entropy, disentanglement, InfoNCE to frozen teachers). Adam as FQGAN, no
adaptive weight. The final tokenizer is saved to <output_dir>/tokenizer.
"""

from __future__ import annotations

import argparse
import inspect
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import make_image_grid
from torch import nn
from torch.func import functional_call
from torch.utils.data import Dataset

from ...quantizers import Quantizer
from ...tokenizers import AutoImageTokenizer, FrozenTeacher, ImageTokenizerMixin, TokenizerOutput, tokenizer_class
from ...utils import save_image, save_pretrained_atomic
from ..data import ImageTransform, collate, load_image_dataset, with_image_transform
from ..loop import Phase, TrainingRecipe, unwrapped
from ..losses import LPIPS_DOWNLOAD_HINT, PatchGANDiscriminator, PerceptualLoss, hinge_d_loss, hinge_g_loss
from ..pretrained import add_model_source_arguments, pretrained_source, read_model_config

# A config file without `_class_name` describes the CNN tokenizer every earlier config was written for.
DEFAULT_TOKENIZER_CLASS = "FQGANTokenizer"
logger = logging.getLogger(__name__)
PREVIEW_IMAGES = 8


def pixel_loss(kind: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L2 or L1 reconstruction loss."""
    return F.mse_loss(y, x) if kind == "l2" else F.l1_loss(y, x)


def load_teachers(names: list[str | None] | None, model_config: dict[str, Any]) -> list[FrozenTeacher | None]:
    """One frozen teacher (or None) per sub-codebook, from `--teachers` or the config's `teacher_models`."""
    k = model_config.get("num_codebooks", 1)
    names = names if names is not None else (model_config.get("teacher_models") or [None] * k)
    names = [None if n in (None, "none", "None", "") else n for n in names]
    dims = model_config.get("teacher_dims") or [None] * k
    if len(names) != k:
        raise ValueError(f"--teachers needs one entry per sub-codebook ({k}); use 'none' where there is no teacher")
    for i, (name, dim) in enumerate(zip(names, dims)):
        if name is not None and dim is None:
            raise ValueError(f"sub-codebook {i}: teacher {name!r} but no feature head (teacher_dims[{i}] is unset)")
        if name is None and dim is not None:
            logger.warning("sub-codebook %d has a feature head but no teacher: it trains without the "
                           "representation loss", i)
    teachers = [FrozenTeacher.from_pretrained(n) if n else None for n in names]
    for i, (teacher, dim) in enumerate(zip(teachers, dims)):
        if teacher is not None and teacher.hidden_size != dim:
            raise ValueError(f"teacher {names[i]!r} has width {teacher.hidden_size}, config teacher_dims[{i}]={dim}")
    return teachers


def add_image_data_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of an image training set: any recipe that trains on images takes these."""
    p.add_argument("--dataset", "--dataset_name", "--train_data_dir", dest="dataset", default="fashion-mnist",
                   help="'fashion-mnist', an imagefolder path or a Hub id (diffusers' flag names work too)")
    p.add_argument("--dataset_config_name", default=None, help="the Hub dataset's configuration, if it has several")
    p.add_argument("--max_train_samples", type=int, default=None,
                   help="train on this many images, drawn by a seeded shuffle (quick runs, debugging)")
    p.add_argument("--split", default="train")
    p.add_argument("--image_column", default=None)
    p.add_argument("--label_column", default=None)
    p.add_argument("--skip_corrupt", action="store_true", help="drop unreadable images instead of stopping")
    p.add_argument("--resolution", type=int, default=None,
                   help="side of the square training images; default: the tokenizer's sample_size")
    p.add_argument("--random_flip", action="store_true", help="flip each training image left-right with p=0.5")


def load_training_images(args: argparse.Namespace, channels: int) -> Dataset:
    """The training images of `add_image_data_arguments`' flags, as {"pixel_values"} rows in [-1, 1]."""
    dataset = load_image_dataset(args.dataset, args.split, args.image_column, args.label_column, args.skip_corrupt,
                                 args.dataset_config_name)
    if args.max_train_samples is not None:  # as diffusers' scripts: a seeded shuffle, then the first N
        dataset = dataset.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(dataset))))
    if channels == 1 and len(dataset) and dataset[0]["image"].mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
        # A config copied from a grayscale one would otherwise train a grayscale tokenizer on colour data unnoticed.
        logger.warning("the tokenizer takes 1-channel images: the dataset's %s images are converted to grayscale "
                       "(set in_channels and out_channels to 3 in the config to keep their colour)",
                       dataset[0]["image"].mode)
    return with_image_transform(dataset, ImageTransform(args.resolution, channels=channels))


def default_resolution(args: argparse.Namespace, model_config: dict[str, Any], model_class: type) -> None:
    """Fill in a left-out --resolution: the tokenizer's `sample_size`, the size it is built for (and the one
    `hf-vq evaluate tokenizer` takes), not a fixed 256 that would upscale small images."""
    if args.resolution is None:
        default = inspect.signature(model_class).parameters["sample_size"].default
        args.resolution = int(model_config.get("sample_size", default))


def check_resolution(model: ImageTokenizerMixin, resolution: int) -> None:
    """Refuse, before the first step, a --resolution the tokenizer cannot take (`check_pixels`' own message)."""
    model.check_pixels(torch.empty(1, model.in_channels, resolution, resolution, device="meta"))


def saved_tokenizer_config(name: str, subfolder: str | None) -> dict[str, Any]:
    """The config.json of a saved tokenizer (any class), from a folder or the Hub."""
    return dict(AutoImageTokenizer.load_config(name, subfolder=subfolder))


def fine_tuning_identity(identity: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """A run's identity, plus the model it fine-tunes when it does."""
    source = pretrained_source(args)
    return identity if source is None else {**identity, "pretrained": list(source)}


def preview_images(dataset: Dataset) -> torch.Tensor:
    """The first PREVIEW_IMAGES training images (fewer for a smaller set): preview grids and codebook init."""
    return collate([dataset[i] for i in range(min(PREVIEW_IMAGES, len(dataset)))])["pixel_values"]


@torch.no_grad()
def init_codebooks(model: ImageTokenizerMixin, images: torch.Tensor) -> None:
    """Run the data-dependent codebook init (k-means) of any quantizer that waits for one, on `images`.

    Called before `accelerator.prepare` with the same seed and images on every rank, so every rank gets the same
    codebook.
    """
    if any(isinstance(m, Quantizer) and m.needs_data_init for m in model.modules()):
        model.train().encode(images)


def random_flips(x: torch.Tensor) -> torch.Tensor:
    """Flip each image left-right with p=0.5, drawing from the step's seeded stream (see the loop).

    Drawn here, not in the data pipeline: the loader reads a batch ahead, so draws made there would fall on the
    other side of a checkpoint and replay differently on resume.
    """
    flip = (torch.rand(x.shape[0]) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def add_gan_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of pixel + perceptual + adversarial training (Adam, as FQGAN and the VQ-KD pixel decoder)."""
    p.add_argument("--learning_rate", type=float, default=2e-4)
    p.add_argument("--disc_learning_rate", type=float, default=None, help="defaults to --learning_rate")
    p.add_argument("--adam_beta1", type=float, default=0.9)
    p.add_argument("--adam_beta2", type=float, default=0.95)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--reconstruction_loss", choices=["l2", "l1"], default="l2")
    p.add_argument("--reconstruction_weight", type=float, default=1.0)
    p.add_argument("--perceptual_weight", type=float, default=1.0)
    p.add_argument("--vgg16_path", default=None, help="torchvision vgg16-397923af.pth")
    p.add_argument("--lpips_path", default=None, help="lpips weights v0.1/vgg.pth")
    p.add_argument("--disc_weight", type=float, default=0.5)
    p.add_argument("--disc_start", type=int, default=20000)
    p.add_argument("--disc_channels", type=int, default=64)
    p.add_argument("--disc_layers", type=int, default=3)


class TokenizerGANRecipe(TrainingRecipe):
    """Train an image tokenizer (VQGAN, FQGAN-Dual/Triple, FSQ, LFQ) with pixel, perceptual and GAN losses.

        accelerate launch examples/train_fqgan.py --tokenizer_config examples/configs/fmnist_fqgan_dual.json \\
            --dataset fashion-mnist --resolution 28 --output_dir runs/fmnist-tokenizer --perceptual_weight 0
    """

    name = "train_fqgan"
    trainable = ("model", "discriminator")
    config_presets: dict[str, dict] = tokenizer_class(DEFAULT_TOKENIZER_CLASS).presets
    default_checkpointing_steps = 500

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_model_source_arguments(
            parser, "tokenizer_config", "JSON of tokenizer config kwargs (`_class_name` picks the class; default "
            "FQGANTokenizer)", cls.config_presets)
        parser.add_argument(
            "--teachers", nargs="*", default=None,
            help="one teacher (Hub id or local path, or 'none') per sub-codebook; default: the config's teacher_models",
        )
        add_image_data_arguments(parser)
        add_gan_arguments(parser)

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.model_config = read_model_config(args, "tokenizer_config", saved_tokenizer_config,
                                              self.config_presets)
        model_class = tokenizer_class(self.model_config.get("_class_name", DEFAULT_TOKENIZER_CLASS))
        model_class.extract_init_dict(dict(self.model_config))  # field types and old fields, checked before any work
        default_resolution(args, self.model_config, model_class)
        if args.perceptual_weight > 0 and not (args.vgg16_path and args.lpips_path):
            raise SystemExit(f"--perceptual_weight {args.perceptual_weight} needs LPIPS weights. {LPIPS_DOWNLOAD_HINT}")

    def run_identity(self) -> dict[str, Any]:
        args = self.args
        identity = {"tokenizer_config": self.model_config, "dataset": args.dataset, "resolution": args.resolution}
        return fine_tuning_identity(identity, args)

    def setup(self) -> None:
        args = self.args
        self.teachers = load_teachers(args.teachers, self.model_config)
        self.lpips = PerceptualLoss.from_files(args.vgg16_path, args.lpips_path) if args.perceptual_weight > 0 else None
        self.dataset = load_training_images(args, self.model_config.get("in_channels", 3))

    def build(self) -> None:
        args = self.args
        source = pretrained_source(args)
        if source is not None:
            self.model: ImageTokenizerMixin = AutoImageTokenizer.from_pretrained(source[0], subfolder=source[1])
        else:
            self.model = AutoImageTokenizer.from_config(self.model_config, DEFAULT_TOKENIZER_CLASS)
        check_resolution(self.model, args.resolution)
        self.preview = preview_images(self.dataset)
        self.discriminator = PatchGANDiscriminator(self.model.in_channels, args.disc_channels, args.disc_layers)

    def make_optimizer(self, name: str, module: nn.Module) -> torch.optim.Optimizer:
        args = self.args
        lr = args.learning_rate if name == "model" else (args.disc_learning_rate or args.learning_rate)
        params = [p for p in module.parameters() if p.requires_grad]  # frozen parts (VQ-KD stage 2) stay out
        return torch.optim.Adam(params, lr=lr, betas=(args.adam_beta1, args.adam_beta2),
                                weight_decay=args.weight_decay)

    def train_dataset(self) -> tuple[Dataset, Callable]:
        return self.dataset, collate

    def before_prepare(self) -> None:
        init_codebooks(self.model, self.preview)

    def to_device(self, device: torch.device) -> None:
        for helper in (*self.teachers, self.lpips):
            if helper is not None:
                helper.to(device)
        self.preview = self.preview.to(device)

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> Iterator[Phase]:
        args = self.args
        x = random_flips(batch["pixel_values"]) if args.random_flip else batch["pixel_values"]
        use_gan = step >= args.disc_start and args.disc_weight > 0
        out = self.reconstruct(x)
        loss, logs = self.reconstruction_objective(x, out)
        if use_gan:
            # Detached discriminator weights: the generator's loss must not train the discriminator.
            disc = unwrapped(self.accelerator, self.discriminator)
            params = {n: p.detach() for n, p in disc.named_parameters()}
            logits_fake = functional_call(disc, (params, dict(disc.named_buffers())), (out.sample,))
            logs["generator_adv_loss"] = self.generator_adversarial_loss(logits_fake)
            loss = loss + args.disc_weight * logs["generator_adv_loss"]
        for i, usage in enumerate(out.usage or []):
            if usage is not None:
                logs[f"{i}/usage"] = usage.detach()
        logs["loss"] = loss.detach()
        yield "model", loss, {k: v.detach() for k, v in logs.items()}

        if use_gan:
            yield "discriminator", *self.discriminator_loss(x, out.sample.detach(), step)

    def reconstruction_objective(self, x: torch.Tensor, out: TokenizerOutput) -> tuple[torch.Tensor, dict]:
        """The tokenizer's loss before the adversarial term: pixels, its own (quantizer, semantic) losses, LPIPS."""
        args = self.args
        logs = {name: v.detach() for name, v in out.losses.items()}
        logs["reconstruction_loss"] = pixel_loss(args.reconstruction_loss, x, out.sample)
        loss = args.reconstruction_weight * logs["reconstruction_loss"] + sum(out.losses.values())
        if self.lpips is not None:
            logs["perceptual_loss"] = self.lpips(x, out.sample)
            loss = loss + args.perceptual_weight * logs["perceptual_loss"]
        return loss, logs

    def generator_adversarial_loss(self, logits_fake: torch.Tensor) -> torch.Tensor:
        """The tokenizer's adversarial term (LlamaGen: hinge)."""
        return hinge_g_loss(logits_fake)

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        """The discriminator's loss and logs (LlamaGen: hinge, scaled by --disc_weight)."""
        # Both passes in one call, as in LlamaGen's train_vq.py, whose one DDP module is the whole VQLoss: under DDP
        # each call broadcasts the discriminator's buffers in place, and torch before 2.12 then fails the backward
        # of an earlier call that saved them.
        d_loss = self.args.disc_weight * hinge_d_loss(*self.discriminator(real, fake))
        return d_loss, {"discriminator_loss": d_loss.detach()}

    def reconstruct(self, x: torch.Tensor) -> TokenizerOutput:
        """The trained model's reconstruction of `x` and its own losses (with teacher features where configured)."""
        feats = [t(x) if t is not None else None for t in self.teachers]
        return self.model(x, teacher_features=feats) if any(f is not None for f in feats) else self.model(x)

    @torch.no_grad()
    def save_preview(self, model: nn.Module, path: Path) -> None:
        """Originals on the top row, reconstructions below."""
        recon = model(self.preview).sample.clamp(-1, 1)
        pil = VaeImageProcessor().postprocess(torch.cat([self.preview, recon]).float().cpu(), output_type="pil")
        save_image(make_image_grid(pil, rows=2, cols=len(self.preview)), path)

    def save_final(self, model: nn.Module, output_dir: Path) -> Path:
        return save_pretrained_atomic(model, output_dir / "tokenizer", self.name, overwrite=True)
