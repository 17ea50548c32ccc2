"""ViT-VQGAN's training recipe on the shared loop ("Vector-quantized Image Modeling with Improved VQGAN", Yu et al.,
ICLR 2022, section 3 and appendix).

Loss: 1.0 x L2 + 0.1 x LPIPS (when its weights are given) + 0.1 x the non-saturating GAN loss against a StyleGAN2
discriminator (logistic loss, lazy R1 with gamma 10 every 16 steps) + optionally a logit-Laplace term + the
quantizer's codebook and commitment losses. Adam with betas (0.9, 0.99), learning rate 1e-4 with a linear warmup and
cosine decay; a constant rate (the unofficial thuanz123/enhancing-transformers code) is what its users found
unstable. The final tokenizer is saved to <output_dir>/tokenizer.
"""

from __future__ import annotations

import argparse
import logging

import torch

from ...tokenizers import VITVQGAN_PRESETS, TokenizerOutput, ViTVQGANTokenizer, tokenizer_class
from ..data import collate
from ..loop import TrainingRecipe
from ..losses import LPIPS_DOWNLOAD_HINT, PerceptualLoss
from ..pretrained import add_model_source_arguments, describe_source, pretrained_source, read_model_config
from ..stylegan_discriminator import StyleGAN2Discriminator, d_logistic_loss, g_nonsaturating_loss, r1_penalty
from .tokenizer_gan import (
    TokenizerGANRecipe,
    add_gan_arguments,
    add_image_data_arguments,
    check_resolution,
    default_resolution,
    load_training_images,
    preview_images,
    saved_tokenizer_config,
)

logger = logging.getLogger(__name__)
DEFAULT_PERCEPTUAL_WEIGHT = 0.1


def logit_laplace_loss(x: torch.Tensor, y: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """DALL-E's logit-Laplace loss (Ramesh et al. 2021, section A.3) with a unit scale: mean |logit(x') - logit(y')|
    where images in [-1, 1] are squashed into (eps, 1 - eps) by v' = eps + (1 - 2 eps)(v + 1) / 2."""
    def squashed_logit(v: torch.Tensor) -> torch.Tensor:
        # A reconstruction far outside [-1, 1] would leave (0, 1); the clamp keeps the logit finite there.
        return torch.logit((eps + (1 - 2 * eps) * (v.float() + 1) / 2).clamp(1e-4, 1 - 1e-4))

    return (squashed_logit(x) - squashed_logit(y)).abs().mean()


class ViTVQGANRecipe(TokenizerGANRecipe):
    """Train a ViT-VQGAN tokenizer (examples/train_vitvqgan.py).

        accelerate launch examples/train_vitvqgan.py --tokenizer_config examples/configs/fmnist_vitvqgan.json \\
            --dataset fashion-mnist --resolution 28 --output_dir runs/fmnist-vitvqgan
    """

    name = "train_vitvqgan"
    config_presets = VITVQGAN_PRESETS

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_model_source_arguments(parser, "tokenizer_config", "JSON of ViTVQGANTokenizer config kwargs",
                                   cls.config_presets)
        add_image_data_arguments(parser)
        add_gan_arguments(parser)
        parser.add_argument("--logit_laplace_weight", type=float, default=0.0,
                            help="weight of the logit-Laplace loss (off by default; 0.1 turns it on)")
        parser.add_argument("--r1_gamma", type=float, default=10.0)
        parser.add_argument("--r1_interval", type=int, default=16,
                            help="lazy R1: applied every N steps, scaled by N (StyleGAN2); 0 turns it off")
        parser.add_argument("--disc_max_channels", type=int, default=512)
        # The paper's objective and schedule; --perceptual_weight None means 0.1 when LPIPS weights are given.
        parser.set_defaults(learning_rate=1e-4, adam_beta2=0.99, perceptual_weight=None, disc_weight=0.1,
                            disc_start=0, disc_layers=None, lr_scheduler="cosine", lr_warmup_steps=5000)

    def __init__(self, args: argparse.Namespace):
        TrainingRecipe.__init__(self, args)
        self.model_config = read_model_config(args, "tokenizer_config", saved_tokenizer_config,
                                              self.config_presets)
        name = self.model_config.setdefault("_class_name", ViTVQGANTokenizer.__name__)
        if tokenizer_class(name) is not ViTVQGANTokenizer:
            raise ValueError(f"{describe_source(args, 'tokenizer_config')} describes a {name}; this recipe trains "
                             "ViTVQGANTokenizer "
                             "(train the CNN tokenizers with examples/train_fqgan.py)")
        init = ViTVQGANTokenizer.extract_init_dict(dict(self.model_config))[0]  # field types, before any work
        default_resolution(args, self.model_config, ViTVQGANTokenizer)
        if init.get("position_embedding", "learned") == "learned" and init.get("sample_size", 256) != args.resolution:
            raise ValueError(f"the tokenizer's learned positions fix its size to {init.get('sample_size', 256)} px; "
                             f"train it at --resolution {init.get('sample_size', 256)}, not {args.resolution}")
        if args.disc_layers is not None:
            raise ValueError("--disc_layers is the PatchGAN's; the StyleGAN2 discriminator's depth follows "
                             "--resolution (use --disc_channels and --disc_max_channels for its width)")
        if args.r1_interval < 0:
            raise ValueError(f"--r1_interval must be >= 0, got {args.r1_interval}")
        has_lpips = bool(args.vgg16_path and args.lpips_path)
        if args.perceptual_weight is None:
            args.perceptual_weight = DEFAULT_PERCEPTUAL_WEIGHT if has_lpips else 0.0
            if not has_lpips:
                logger.warning("no LPIPS weights (--vgg16_path, --lpips_path): training without the perceptual "
                               "loss. %s", LPIPS_DOWNLOAD_HINT)
        elif args.perceptual_weight > 0 and not has_lpips:
            raise SystemExit(f"--perceptual_weight {args.perceptual_weight} needs LPIPS weights. {LPIPS_DOWNLOAD_HINT}")
        self.teachers = []  # ViT-VQGAN learns from pixels only

    def setup(self) -> None:
        args = self.args
        self.lpips = PerceptualLoss.from_files(args.vgg16_path, args.lpips_path) if args.perceptual_weight > 0 else None
        self.dataset = load_training_images(args, self.model_config.get("in_channels", 3))

    def build(self) -> None:
        args = self.args
        source = pretrained_source(args)
        if source is not None:
            self.model = ViTVQGANTokenizer.from_pretrained(source[0], subfolder=source[1])
        else:
            self.model = ViTVQGANTokenizer.from_config(self.model_config)
        check_resolution(self.model, args.resolution)
        self.preview = preview_images(self.dataset)
        self.discriminator = StyleGAN2Discriminator(self.model.in_channels, args.resolution, args.disc_channels,
                                                    args.disc_max_channels)

    def train_dataset(self):
        return self.dataset, collate

    def reconstruction_objective(self, x: torch.Tensor, out: TokenizerOutput) -> tuple[torch.Tensor, dict]:
        loss, logs = super().reconstruction_objective(x, out)
        if self.args.logit_laplace_weight > 0:
            logs["logit_laplace_loss"] = logit_laplace_loss(x, out.sample)
            loss = loss + self.args.logit_laplace_weight * logs["logit_laplace_loss"]
        return loss, logs

    def generator_adversarial_loss(self, logits_fake: torch.Tensor) -> torch.Tensor:
        return g_nonsaturating_loss(logits_fake)

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        """StyleGAN2's logistic loss plus lazy R1; --disc_weight weighs only the generator's adversarial term."""
        args = self.args
        regularise = bool(args.r1_interval) and step % args.r1_interval == 0
        real = real.detach().requires_grad_(regularise)
        # one call for every pass: see TokenizerGANRecipe.discriminator_loss
        logits_real, logits_fake = self.discriminator(real, fake)
        d_loss = d_logistic_loss(logits_real, logits_fake)
        logs = {"discriminator_loss": d_loss.detach()}
        if regularise:
            r1 = r1_penalty(logits_real, real, args.r1_gamma, self.accelerator.scaler)
            d_loss = d_loss + args.r1_interval * r1
            logs["r1_penalty"] = r1.detach()
        return d_loss, logs
