"""Judge generated images with a trained image classifier: predicted classes, accuracy, penultimate features."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import image_processor_config

# ITU-R 601 luma, the weights PIL's convert("L") uses
_LUMA = (0.299, 0.587, 0.114)


def _check_images(images: torch.Tensor, value_range: tuple[float, float]) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 1 or 3, H, W) tensor, got {shape}")
    if tuple(value_range) not in ((0.0, 1.0), (-1.0, 1.0)):
        raise ValueError(f"value_range must be (0, 1) or (-1, 1), got {value_range}")
    if value_range[0] == 0 and images.numel() and images.min() < -0.5:
        raise ValueError(
            f"images have values down to {images.min().item():.2f}, so they look like [-1, 1] images: "
            "pass value_range=(-1, 1)"
        )


class ClassifierAccuracy:
    """A frozen image classifier applied to image tensors (B, C, H, W) with values in [0, 1] or [-1, 1].

    Images are mapped to [0, 1], converted to the classifier's channel count, resized (bilinear, antialiased)
    to its input size and standardised with its mean/std. The same `preprocess` is used while training the
    classifier (examples/train_fmnist_classifier.py), so generated images are judged exactly as it was trained.
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: int | tuple[int, int],
        image_mean: Sequence[float],
        image_std: Sequence[float],
        batch_size: int = 256,
    ):
        self.model = model
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.num_channels = model.config.num_channels
        if len(image_mean) != self.num_channels or len(image_std) != self.num_channels:
            raise ValueError(
                f"image_mean/image_std need {self.num_channels} values (the classifier's channels), "
                f"got {len(image_mean)} and {len(image_std)}"
            )
        self.mean = torch.tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1)
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", batch_size: int = 256
    ) -> ClassifierAccuracy:
        """Load a classifier saved with save_pretrained (an AutoModelForImageClassification and its image processor)."""
        from transformers import AutoModelForImageClassification

        unloadable = (f"Could not load an image classifier from {path!r}: it needs config.json, weights and "
                      "preprocessor_config.json (train one with examples/train_fmnist_classifier.py).")
        try:
            model = AutoModelForImageClassification.from_pretrained(path)
            processing = image_processor_config(path)
        except OSError as error:
            raise OSError(unloadable) from error
        if processing is None:
            raise OSError(unloadable)
        lacking = [key for key in ("size", "image_mean", "image_std") if key not in processing]
        if lacking:
            raise ValueError(f"{path!r}: preprocessor_config.json lacks {', '.join(lacking)}, which the classifier "
                             "needs: save the classifier's image processor with save_pretrained")
        size = processing["size"]  # an int in older configs, else {"height", "width"} or {"shortest_edge"}
        if isinstance(size, dict):
            if "height" in size and "width" in size:
                size = (size["height"], size["width"])
            elif "shortest_edge" in size:
                size = size["shortest_edge"]
            else:
                raise ValueError(f"{path!r}: the classifier's input size must be height and width or shortest_edge, "
                                 f"got {size}")
        model = model.to(device).eval().requires_grad_(False)
        return cls(model, size, processing["image_mean"], processing["image_std"], batch_size=batch_size)

    @property
    def id2label(self) -> dict[int, str]:
        """Class id -> name, from the classifier's config."""
        return {int(i): name for i, name in self.model.config.id2label.items()}

    def preprocess(self, images: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """(B, 1|3, H, W) images in `value_range` -> the classifier's standardised input."""
        _check_images(images, value_range)
        return self._standardise(images, value_range)

    def _standardise(self, images: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
        low, high = value_range
        x = ((images.float() - low) / (high - low)).clamp(0, 1)
        if x.shape[1] == 3 and self.num_channels == 1:
            x = (x * torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        elif x.shape[1] == 1 and self.num_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def _batches(self, images: torch.Tensor, value_range: tuple[float, float]) -> Iterator[torch.Tensor]:
        _check_images(images, value_range)
        device = next(self.model.parameters()).device
        for start in range(0, len(images), self.batch_size):
            yield self._standardise(images[start : start + self.batch_size].to(device), value_range)

    @torch.no_grad()
    def logits(self, images: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """(B, num_classes) classifier logits."""
        return torch.cat([self.model(pixel_values=x).logits.float().cpu() for x in self._batches(images, value_range)])

    def classify(self, images: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """(B,) predicted class ids."""
        return self.logits(images, value_range).argmax(dim=-1)

    def accuracy(
        self, images: torch.Tensor, labels: torch.Tensor | Sequence[int], value_range: tuple[float, float] = (0.0, 1.0)
    ) -> float:
        """Fraction of images classified as the label they were generated for."""
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if len(labels) != len(images):
            raise ValueError(f"got {len(images)} images but {len(labels)} labels")
        return (self.classify(images, value_range) == labels).float().mean().item()

    @torch.no_grad()
    def features(self, images: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """(B, D) penultimate features: the backbone's pooled output (or CLS token) that feeds the classifier head."""
        return self.features_and_logits(images, value_range)[0]

    @torch.no_grad()
    def features_and_logits(
        self, images: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) penultimate features and (B, num_classes) logits from one pass of the network."""
        feats, logits = [], []
        for x in self._batches(images, value_range):
            out = self.model.base_model(pixel_values=x)
            pooled = getattr(out, "pooler_output", None)
            pooled = pooled if pooled is not None else out.last_hidden_state[:, 0]
            feats.append(pooled.flatten(1).float().cpu())
            logits.append(self.model.classifier(pooled).float().cpu())
        return torch.cat(feats), torch.cat(logits)
