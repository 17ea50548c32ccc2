"""Training shared by the small Fashion-MNIST networks: the ViT and MAE teachers and the judge classifier."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader

from .data import ImageTransform, collate, id2label_from_dataset, load_image_dataset, with_image_transform


def add_classifier_arguments(parser: argparse.ArgumentParser, output_dir: str, epochs: int, weight_decay: float,
                             warmup_steps: int) -> None:
    """Flags both scripts share; the defaults differ per network."""
    parser.add_argument("--output_dir", default=output_dir)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight_decay", type=float, default=weight_decay)
    parser.add_argument("--warmup_steps", type=int, default=warmup_steps)
    parser.add_argument("--max_minutes", type=float, default=None, help="stop (annealed) after this wall time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def fashion_mnist_loaders(image_size: int, channels: int, batch_size: int, seed: int
                          ) -> tuple[DataLoader, DataLoader, dict[int, str]]:
    """Train (flipped) and test loaders of [-1, 1] tensors under keys pixel_values/class_labels, and the names."""
    train_ds = load_image_dataset("fashion-mnist", split="train")
    test_ds = load_image_dataset("fashion-mnist", split="test")
    train_tf = ImageTransform(image_size, channels=channels, random_flip=True, seed=seed)
    train = DataLoader(with_image_transform(train_ds, train_tf), batch_size=batch_size, shuffle=True,
                       drop_last=True, collate_fn=collate)
    test = DataLoader(with_image_transform(test_ds, ImageTransform(image_size, channels=channels)), batch_size=512,
                      collate_fn=collate)
    return train, test, id2label_from_dataset(train_ds)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to max_shift pixels, filling with the black (-1) background."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx, dy = torch.randint(2 * max_shift + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def warmup_cosine_lr(lr: float, step: int, warmup_steps: int, progress: float) -> float:
    """Learning rate at `step`: linear warm-up over warmup_steps times a cosine from lr to 0 as progress goes 0 -> 1."""
    # one expression, evaluated left to right as before, so retrained bundled networks keep their exact bits
    return lr * min(1.0, (step + 1) / warmup_steps) * 0.5 * (1 + math.cos(math.pi * progress))


def train_classifier(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    args: argparse.Namespace,
    max_shift: int = 0,
    max_grad_norm: float | None = None,
) -> int:
    """Cross-entropy (label smoothing 0.1) with warm-up and a cosine over the larger of step and wall-clock progress,
    so a run stopped by --max_minutes still ends annealed. Returns the number of steps taken."""
    total_steps = args.epochs * len(loader)
    max_seconds = args.max_minutes * 60 if args.max_minutes else math.inf
    shift_generator = torch.Generator().manual_seed(args.seed + accelerator.process_index)
    start = time.time()
    step = 0
    model.train()
    while True:
        for batch in loader:
            # every process must agree on the wall-clock progress, or they would stop at different steps
            elapsed = accelerator.reduce(torch.tensor(time.time() - start, device=accelerator.device), "max").item()
            progress = max(step / total_steps, elapsed / max_seconds)
            if progress >= 1:
                return step
            lr = warmup_cosine_lr(args.lr, step, args.warmup_steps, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr

            pixel_values = batch["pixel_values"]
            if max_shift:
                pixel_values = random_shift(pixel_values, max_shift, shift_generator)
            logits = model(pixel_values=preprocess(pixel_values)).logits
            loss = F.cross_entropy(logits, batch["class_labels"], label_smoothing=0.1)
            accelerator.backward(loss)
            if max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % 100 == 0:
                accelerator.print(f"step {step} epoch {step / len(loader):.2f} loss {loss.item():.4f} "
                                  f"lr {lr:.2e} {elapsed / 60:.1f} min")


@torch.no_grad()
def test_accuracy(accelerator: Accelerator, predict: Callable[[torch.Tensor], torch.Tensor],
                  loader: DataLoader) -> tuple[float, int]:
    """Top-1 accuracy of `predict` (pixel values -> class ids) over a prepared loader, gathered over processes."""
    correct = total = 0
    for batch in loader:
        predictions = predict(batch["pixel_values"]).to(accelerator.device)
        predictions, labels = accelerator.gather_for_metrics((predictions, batch["class_labels"]))
        correct += (predictions == labels).sum().item()
        total += labels.numel()
    return correct / total, total
