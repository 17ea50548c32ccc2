"""Generator recipes: class-conditional AR (FAR / LlamaGen GPT) and NAR (MaskGIT) training on extracted codes.

Reads a codes dataset written by examples/extract_codes.py; AdamW with weight decay on matrices only (LlamaGen),
label dropout for CFG inside the models, and ends with a complete FQGANPipeline folder (tokenizer + generator +
class names) at <output_dir>/pipeline.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import load_from_disk
from diffusers.utils import make_image_grid
from torch import nn
from torch.utils.data import Dataset
from transformers import PreTrainedConfig, PreTrainedModel

from ...generators import (
    FAR_PRESETS,
    FARConfig,
    FARForClassConditionalGeneration,
    MaskGITConfig,
    MaskGITForClassConditionalGeneration,
)
from ...pipelines import FQGANPipeline, check_tokenizer_fits
from ...tokenizers import AutoImageTokenizer
from ...utils import save_image, save_pretrained_atomic, weights_digest
from ..codes import codes_tokenizer_digest
from ..loop import Phase, TrainingRecipe
from ..optim import param_groups
from ..pretrained import (
    add_model_source_arguments,
    describe_source,
    names_preset,
    pretrained_source,
    read_model_config,
)
from .tokenizer_gan import fine_tuning_identity


class GeneratorRecipe(TrainingRecipe):
    """Train a class-conditional token generator on extracted codes; subclasses name the model and its loss."""

    config_class: type[PreTrainedConfig]
    model_class: type[PreTrainedModel]
    kind: str
    config_presets: dict[str, dict] = {}
    default_checkpointing_steps = 1000

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        p = parser
        p.add_argument("--codes_dir", required=True, help="output of examples/extract_codes.py")
        p.add_argument("--tokenizer", required=True, help="the tokenizer the codes came from (folder or Hub id)")
        add_model_source_arguments(p, "model_config", "JSON of config kwargs; vocab_size, num_codebooks, grid_size "
                                   "and num_classes default to what the codes and tokenizer say", cls.config_presets)
        p.add_argument("--max_train_samples", type=int, default=None,
                       help="train on this many code grids, drawn by a seeded shuffle (quick runs, debugging)")
        p.add_argument("--learning_rate", type=float, default=1e-4)
        p.add_argument("--weight_decay", type=float, default=0.05)
        p.add_argument("--adam_beta1", type=float, default=0.9)
        p.add_argument("--adam_beta2", type=float, default=0.95)
        p.add_argument("--guidance_scale", type=float, default=2.0, help="for the sample grids")

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.codes = load_from_disk(args.codes_dir)
        for column in ("codes", "label"):
            if column not in self.codes.column_names:
                raise ValueError(f"{args.codes_dir} has no {column!r} column (columns: {self.codes.column_names}); "
                                 "write it with examples/extract_codes.py")
        self.id2label = dict(enumerate(self.codes.features["label"].names))
        self.tokenizer = AutoImageTokenizer.from_pretrained(args.tokenizer).eval()
        k, n = self.codes.features["codes"].shape
        if k != self.tokenizer.num_codebooks:
            raise ValueError(f"{args.codes_dir} holds codes of {k} sub-codebooks, but --tokenizer {args.tokenizer} "
                             f"has {self.tokenizer.num_codebooks}: extract the codes with the tokenizer you train for")
        self.model_kwargs = read_model_config(args, "model_config", self._saved_config, self.config_presets)
        unknown = self.config_class.unknown_keys(self.model_kwargs) if args.model_config is not None else []
        if unknown:
            raise ValueError(f"{describe_source(args, 'model_config')} sets {unknown}, which a "
                             f"{self.config_class.__name__} does not have (a typo, or another model's config?)")
        preset = names_preset(args.model_config, self.config_presets)
        if preset and self.model_kwargs.get("num_codebooks", 1) > 1 and k > 1:
            # A FAR preset names the sizes; its factorized head serves any k > 1 (FQGAN's far_dual.py and
            # far_triple.py build the same sizes for two and three sub-codebooks).
            self.model_kwargs["num_codebooks"] = k
        derived = dict(vocab_size=self.tokenizer.codebook_sizes[0], num_codebooks=k, grid_size=int(round(n**0.5)),
                       num_classes=len(self.id2label))
        for name, value in derived.items():
            if self.model_kwargs.setdefault(name, value) != value:
                raise ValueError(
                    f"{describe_source(args, 'model_config')} sets {name}={self.model_kwargs[name]} but the "
                    f"codes/tokenizer give {value}"
                )
        self.config = self.config_class(**self.model_kwargs)
        check_tokenizer_fits(self.tokenizer, self.config)
        # On the Arrow column (Array2D is stored as a list of lists), without copying the codes out of the file.
        chunks = [c.storage if isinstance(c, pa.ExtensionArray) else c for c in self.codes.data.column("codes").chunks]
        highest = pc.max(pc.list_flatten(pc.list_flatten(pa.chunked_array(chunks)))).as_py()
        highest = -1 if highest is None else highest
        if highest >= self.config.vocab_size:
            raise ValueError(
                f"{args.codes_dir} holds code {highest}, beyond the tokenizer's codebook of {self.config.vocab_size}; "
                "were the codes extracted with another tokenizer?"
            )
        made_by = codes_tokenizer_digest(self.codes)
        if made_by is not None and made_by != weights_digest(self.tokenizer):
            raise ValueError(f"{args.codes_dir} was extracted by a tokenizer with other weights than --tokenizer "
                             f"{args.tokenizer} (weights sha256 {made_by[:12]}..., not "
                             f"{weights_digest(self.tokenizer)[:12]}...): a generator trained on them would be decoded "
                             "by the wrong tokenizer; give the one they came from, or extract them again")

    def _saved_config(self, name: str, subfolder: str | None) -> dict[str, Any]:
        """The config kwargs of a saved generator, refused when it is another kind than this recipe trains."""
        config, _ = self.config_class.get_config_dict(name, subfolder=subfolder or "")
        if config.get("model_type") != self.config_class.model_type:
            raise ValueError(f"{name} holds a {config.get('model_type')!r} generator; this recipe trains "
                             f"{self.config_class.model_type!r} ({self.name})")
        return {k: v for k, v in config.items() if k not in ("model_type", "transformers_version", "architectures")}

    def run_identity(self) -> dict[str, Any]:
        identity = {"kind": self.kind, "model_config": self.model_kwargs, "codes_dir": str(self.args.codes_dir)}
        return fine_tuning_identity(identity, self.args)

    def build(self) -> None:
        source = pretrained_source(self.args)
        if source is None:
            self.model = self.model_class(self.config)
        else:
            self.model = self.model_class.from_pretrained(source[0], subfolder=source[1] or "", config=self.config)

    def make_optimizer(self, name: str, module: nn.Module) -> torch.optim.Optimizer:
        args = self.args
        return torch.optim.AdamW(param_groups(module, args.weight_decay), lr=args.learning_rate,
                                 betas=(args.adam_beta1, args.adam_beta2))

    def train_dataset(self) -> tuple[Dataset, None]:
        codes = self.codes
        if self.args.max_train_samples is not None:
            codes = codes.shuffle(seed=self.args.seed).select(range(min(self.args.max_train_samples, len(codes))))
        return codes.with_format("torch", columns=["codes", "label"]), None

    def to_device(self, device: torch.device) -> None:
        self.tokenizer.to(device)

    def loss(self, tokens: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """The objective on a batch of (B, k, N) token grids."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> Iterator[Phase]:
        loss = self.loss(batch["codes"].long(), batch["label"])
        yield "model", loss, {"loss": loss.detach()}

    def pipeline(self, model: nn.Module) -> FQGANPipeline:
        """The generator with the tokenizer and the class names."""
        return FQGANPipeline(vqvae=self.tokenizer, transformer=model, id2label=self.id2label)

    @torch.no_grad()
    def save_preview(self, model: nn.Module, path: Path) -> None:
        """One row per class (up to 10), 8 samples each."""
        pipe = self.pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        classes = list(range(min(self.config.num_classes, 10)))
        images = pipe(classes, num_images_per_label=8, guidance_scale=self.args.guidance_scale,
                      generator=torch.Generator(pipe.device).manual_seed(self.args.seed)).images
        save_image(make_image_grid(images, rows=len(classes), cols=8), path)

    def save_final(self, model: nn.Module, output_dir: Path) -> Path:
        return save_pretrained_atomic(self.pipeline(model), output_dir / "pipeline", self.name, overwrite=True)


class ARGeneratorRecipe(GeneratorRecipe):
    """Train a FAR (k > 1) or LlamaGen GPT (k = 1) AR generator (examples/train_far.py): next-token cross-entropy."""

    name = "train_far"
    kind = "far"
    config_class = FARConfig
    model_class = FARForClassConditionalGeneration
    config_presets = FAR_PRESETS

    def loss(self, tokens: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens, class_labels=class_labels, labels=tokens).loss


class NARGeneratorRecipe(GeneratorRecipe):
    """Train a MaskGIT NAR generator (examples/train_maskgit.py): cross-entropy on randomly masked positions."""

    name = "train_maskgit"
    kind = "maskgit"
    config_class = MaskGITConfig
    model_class = MaskGITForClassConditionalGeneration

    def loss(self, tokens: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens, class_labels=class_labels).loss
