"""Train a small ResNet on Fashion-MNIST to judge generated samples (class accuracy, classifier-feature FD).

    python examples/train_fmnist_classifier.py --output_dir outputs/fmnist-classifier --max_minutes 9

The output folder loads with `transformers.AutoModelForImageClassification` and `AutoImageProcessor`, and with
`hf_vq.evaluation.ClassifierAccuracy.from_pretrained`, whose `preprocess` (grayscale, resize to the input size,
standardise) is also what this script trains through, so generated images are judged as the classifier was
trained. It is deliberately a different network from the ViT teacher (examples/train_fmnist_teacher.py), so
that tokenizers distilled from the teacher are not graded by the same features. The learning rate follows a
cosine over the larger of step and wall-clock progress, so a run stopped by --max_minutes still ends annealed.
"""

import argparse
import math
import time

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

from hf_vq.evaluation import ClassifierAccuracy
from hf_vq.training import ImageTransform, collate, id2label_from_dataset, load_image_dataset, with_image_transform

# Fashion-MNIST pixel statistics in [0, 1]
IMAGE_MEAN = [0.2860]
IMAGE_STD = [0.3530]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/fmnist-classifier")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight_decay", type=float, default=5e-4)
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--max_minutes", type=float, default=None, help="stop (annealed) after this wall time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=40, help="input size; 28 px images are upsampled")
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args()


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to max_shift pixels, filling with the black (-1) background."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx, dy = torch.randint(2 * max_shift + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def main() -> None:
    args = parse_args()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    accelerator = Accelerator()
    set_seed(args.seed)
    start = time.time()

    # data: native 28 px grayscale in [-1, 1]; flips and small shifts as light augmentation
    train_ds = load_image_dataset("fashion-mnist", split="train")
    test_ds = load_image_dataset("fashion-mnist", split="test")
    id2label = id2label_from_dataset(train_ds)
    train_tf = ImageTransform(28, channels=1, random_flip=True, seed=args.seed + accelerator.process_index)
    train_loader = DataLoader(with_image_transform(train_ds, train_tf), batch_size=args.batch_size, shuffle=True,
                              drop_last=True, collate_fn=collate)
    test_loader = DataLoader(with_image_transform(test_ds, ImageTransform(28, channels=1)), batch_size=512,
                             collate_fn=collate)
    shift_generator = torch.Generator().manual_seed(args.seed + accelerator.process_index)

    # model: a ResNet whose stem (stride-2 conv + max-pool) leaves 10x10 maps at the default 40 px input
    config = ResNetConfig(
        num_channels=1,
        embedding_size=32,
        hidden_sizes=[32, 64, 128],
        depths=[1, 1, 1],
        layer_type="basic",
        downsample_in_first_stage=False,
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
    )
    model = ResNetForImageClassification(config)
    judge = ClassifierAccuracy(model, args.image_size, IMAGE_MEAN, IMAGE_STD)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, train_loader, test_loader)
    total_steps = args.epochs * len(train_loader)
    max_seconds = args.max_minutes * 60 if args.max_minutes else math.inf
    accelerator.print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {total_steps} steps")

    # training
    step, done = 0, False
    model.train()
    while not done:
        for batch in train_loader:
            # every process must agree on the wall-clock progress, or they would stop at different steps
            elapsed = accelerator.reduce(torch.tensor(time.time() - start, device=accelerator.device), "max").item()
            progress = max(step / total_steps, elapsed / max_seconds)
            if progress >= 1:
                done = True
                break
            lr = args.lr * min(1.0, (step + 1) / args.warmup_steps) * 0.5 * (1 + math.cos(math.pi * progress))
            for group in optimizer.param_groups:
                group["lr"] = lr

            pixel_values = random_shift(batch["pixel_values"], 2, shift_generator)
            logits = model(pixel_values=judge.preprocess(pixel_values, value_range=(-1, 1))).logits
            loss = F.cross_entropy(logits, batch["class_labels"], label_smoothing=0.1)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % 100 == 0:
                accelerator.print(f"step {step} epoch {step / len(train_loader):.2f} loss {loss.item():.4f} "
                                  f"lr {lr:.2e} {elapsed / 60:.1f} min")

    # evaluation, through the same preprocessing the saved classifier will use
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in test_loader:
            predictions = judge.classify(batch["pixel_values"], value_range=(-1, 1)).to(accelerator.device)
            predictions, labels = accelerator.gather_for_metrics((predictions, batch["class_labels"]))
            correct += (predictions == labels).sum().item()
            total += labels.numel()
    accelerator.print(f"test accuracy {correct / total:.4f} ({total} images), {step} steps, "
                      f"{(time.time() - start) / 60:.1f} min")

    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(args.output_dir)
        ViTImageProcessor(
            do_resize=True,
            size={"height": args.image_size, "width": args.image_size},
            image_mean=IMAGE_MEAN,
            image_std=IMAGE_STD,
        ).save_pretrained(args.output_dir)
        accelerator.print(f"saved classifier to {args.output_dir}")


if __name__ == "__main__":
    main()
