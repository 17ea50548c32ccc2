"""Train a small ViT on Fashion-MNIST and save its backbone as a representation teacher for FQGAN.

    python examples/train_fmnist_teacher.py --output_dir outputs/fmnist-teacher --max_minutes 11

The output folder loads with `transformers.AutoModel` (a `ViTModel`; the teacher feature is the CLS token,
`last_hidden_state[:, 0]`) and `AutoImageProcessor` (preprocessor_config.json). The ViT takes 3-channel 32 px
input, like CLIP/DINOv2 take RGB: gray images are repeated to RGB and resized from 28 px. The defaults (patch 8,
width 128, 4 layers) are sized to train in about ten minutes on a small CPU; pass --patch_size 4 --hidden_size 192
--num_layers 6 --num_heads 3 for a DeiT-Tiny-like teacher where compute allows. Runs on one CPU,
several processes, or GPUs through Accelerate. The learning rate follows a cosine over the larger of step and
wall-clock progress, so a run stopped by --max_minutes still ends annealed.
"""

import argparse
import math
import time

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, ViTModel

from hf_vq.training import ImageTransform, collate, id2label_from_dataset, load_image_dataset, with_image_transform

# Fashion-MNIST pixel statistics in [0, 1], repeated over the three channels of the RGB input.
IMAGE_MEAN = [0.2860] * 3
IMAGE_STD = [0.3530] * 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/fmnist-teacher")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--warmup_steps", type=int, default=200)
    parser.add_argument("--max_minutes", type=float, default=None, help="stop (annealed) after this wall time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_shift", type=int, default=0, help="random translation in pixels (augmentation)")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--patch_size", type=int, default=8)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--num_heads", type=int, default=4)
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

    # data: [-1, 1] RGB tensors at the ViT's input size
    train_ds = load_image_dataset("fashion-mnist", split="train")
    test_ds = load_image_dataset("fashion-mnist", split="test")
    id2label = id2label_from_dataset(train_ds)
    train_tf = ImageTransform(args.image_size, channels=3, random_flip=True, seed=args.seed + accelerator.process_index)
    test_tf = ImageTransform(args.image_size, channels=3)
    train_loader = DataLoader(with_image_transform(train_ds, train_tf), batch_size=args.batch_size, shuffle=True,
                              drop_last=True, collate_fn=collate)
    test_loader = DataLoader(with_image_transform(test_ds, test_tf), batch_size=512, collate_fn=collate)
    shift_generator = torch.Generator().manual_seed(args.seed + accelerator.process_index)

    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)

    def normalize(pixel_values: torch.Tensor) -> torch.Tensor:
        # the teacher sees [0, 1] pixels standardised with the processor's mean/std
        return ((pixel_values + 1) / 2 - mean.to(pixel_values.device)) / std.to(pixel_values.device)

    # model
    config = ViTConfig(
        image_size=args.image_size,
        patch_size=args.patch_size,
        num_channels=3,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        intermediate_size=4 * args.hidden_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
    )
    model = ViTForImageClassification(config)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.999),
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

            pixel_values = batch["pixel_values"]
            if args.max_shift:
                pixel_values = random_shift(pixel_values, args.max_shift, shift_generator)
            logits = model(pixel_values=normalize(pixel_values)).logits
            loss = F.cross_entropy(logits, batch["class_labels"], label_smoothing=0.1)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % 100 == 0:
                accelerator.print(f"step {step} epoch {step / len(train_loader):.2f} loss {loss.item():.4f} "
                                  f"lr {lr:.2e} {elapsed / 60:.1f} min")

    # evaluation
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in test_loader:
            predictions = model(pixel_values=normalize(batch["pixel_values"])).logits.argmax(-1)
            predictions, labels = accelerator.gather_for_metrics((predictions, batch["class_labels"]))
            correct += (predictions == labels).sum().item()
            total += labels.numel()
    accelerator.print(f"test accuracy {correct / total:.4f} ({total} images), {step} steps, "
                      f"{(time.time() - start) / 60:.1f} min")

    # save the backbone as a plain ViTModel; its pooler is created (random, unused) only so that
    # AutoModel.from_pretrained finds every weight it expects
    if accelerator.is_main_process:
        vit = accelerator.unwrap_model(model).vit
        backbone = ViTModel(vit.config)
        state = vit.state_dict() | {f"pooler.{k}": v for k, v in backbone.pooler.state_dict().items()}
        backbone.load_state_dict(state)
        backbone.save_pretrained(args.output_dir)
        ViTImageProcessor(
            do_resize=True,
            size={"height": args.image_size, "width": args.image_size},
            image_mean=IMAGE_MEAN,
            image_std=IMAGE_STD,
            do_convert_rgb=True,
        ).save_pretrained(args.output_dir)
        accelerator.print(f"saved teacher to {args.output_dir}")


if __name__ == "__main__":
    main()
