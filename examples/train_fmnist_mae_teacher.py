r"""Train a small masked autoencoder (MAE) on Fashion-MNIST and save its encoder as a self-supervised VQ-KD teacher.

    python examples/train_fmnist_mae_teacher.py --output_dir outputs/fmnist-mae-teacher-p4 --epochs 3 --seed 0 \
        --num_threads 1

The output folder loads with `transformers.AutoModel` (a `ViTMAEModel` whose config has mask_ratio 0, so every
patch is kept) and `AutoImageProcessor`, i.e. as `hf_vq.FrozenTeacher`. Like the supervised teacher
(examples/train_fmnist_teacher.py --image_size 28 --patch_size 4) it takes 3-channel 28 px input in patches of 4:
its 7x7 patch grid is the code grid of the Fashion-MNIST VQ-KD tokenizer. Labels are never used for training; the
end reports a k-NN (k=20, cosine) test accuracy of the mean-pooled patch features. The schedule runs a fixed number
of steps (no wall-clock stop), so the same seed makes the same network on every machine.
"""

import argparse
import time
from collections import deque

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

from hf_vq import FrozenTeacher
from hf_vq.training.classification import fashion_mnist_loaders, warmup_cosine_lr
from hf_vq.training.data import ImageTransform, collate, load_image_dataset, with_image_transform
from hf_vq.training.optim import param_groups

# Fashion-MNIST pixel statistics in [0, 1], repeated over the three channels (as the supervised teacher's).
IMAGE_MEAN = [0.2860] * 3
IMAGE_STD = [0.3530] * 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/fmnist-mae-teacher-p4")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max_steps", type=int, default=None, help="stop after this many steps (default: epochs)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--warmup_steps", type=int, default=200)
    parser.add_argument("--knn_bank", type=int, default=10000, help="train images in the k-NN memory (0: no k-NN)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


@torch.no_grad()
def knn_accuracy(teacher: FrozenTeacher, bank: DataLoader, queries: DataLoader, k: int = 20, grid: int = 7) -> float:
    """Accuracy on `queries` of a vote of the k nearest `bank` images by cosine of mean-pooled patch features."""

    def embed(loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [(F.normalize(teacher.patch_features(b["pixel_values"], grid).mean(1), dim=-1), b["class_labels"])
                 for b in loader]
        return torch.cat([f for f, _ in pairs]), torch.cat([y for _, y in pairs])

    bank_x, bank_y = embed(bank)
    x, y = embed(queries)
    correct = 0
    for i in range(0, len(x), 1024):
        neighbours = (x[i : i + 1024] @ bank_x.T).topk(k, dim=1).indices
        correct += (bank_y[neighbours].mode(dim=1).values == y[i : i + 1024]).sum().item()
    return correct / len(x)


def fashion_mnist_bank(size: int) -> DataLoader:
    """The first `size` train images, unflipped, as a k-NN memory."""
    train = load_image_dataset("fashion-mnist", split="train").select(range(size))
    return DataLoader(with_image_transform(train, ImageTransform(28, channels=1)), batch_size=512, collate_fn=collate)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    accelerator = Accelerator()
    set_seed(args.seed)
    start = time.time()

    # data: [-1, 1] RGB tensors at 28 px; the labels are only read by the k-NN test at the end
    train_loader, test_loader, _ = fashion_mnist_loaders(28, 3, args.batch_size, args.seed + accelerator.process_index)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1).to(accelerator.device)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1).to(accelerator.device)

    config = ViTMAEConfig(
        image_size=28, patch_size=4, num_channels=3,
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
        decoder_hidden_size=64, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
        decoder_intermediate_size=256, mask_ratio=0.75, norm_pix_loss=True,
    )
    model = ViTMAEForPreTraining(config)
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95))
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    total_steps = args.max_steps or args.epochs * len(train_loader)
    accelerator.print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {total_steps} steps")

    step = 0
    recent = deque(maxlen=100)  # one batch's loss is noisy: report the mean of the last 100
    model.train()
    while step < total_steps:
        for batch in train_loader:
            if step == total_steps:
                break
            lr = warmup_cosine_lr(args.lr, step, args.warmup_steps, step / total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # the MAE sees [0, 1] pixels standardised with the processor's mean/std; masking draws from torch's RNG
            loss = model(pixel_values=((batch["pixel_values"] + 1) / 2 - mean) / std).loss
            accelerator.backward(loss)
            recent.append(loss.item())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % 100 == 0 or step == total_steps:
                accelerator.print(f"step {step} epoch {step / len(train_loader):.2f} loss "
                                  f"{sum(recent) / len(recent):.4f} lr {lr:.2e} {(time.time() - start) / 60:.1f} min")

    if accelerator.is_main_process:
        # keep the encoder only, with nothing masked: FrozenTeacher wants one token per patch
        encoder = accelerator.unwrap_model(model).vit
        teacher_config = ViTMAEConfig.from_dict({**encoder.config.to_dict(), "mask_ratio": 0.0})
        backbone = ViTMAEModel(teacher_config)
        backbone.load_state_dict(encoder.state_dict())
        backbone.save_pretrained(args.output_dir)
        ViTImageProcessor(do_resize=True, size={"height": 28, "width": 28}, image_mean=IMAGE_MEAN,
                          image_std=IMAGE_STD, do_convert_rgb=True).save_pretrained(args.output_dir)
        accelerator.print(f"saved teacher to {args.output_dir}, final loss {sum(recent) / len(recent):.4f}, "
                          f"{step} steps, {(time.time() - start) / 60:.1f} min")
        if args.knn_bank:
            teacher = FrozenTeacher.from_pretrained(args.output_dir)
            accuracy = knn_accuracy(teacher, fashion_mnist_bank(args.knn_bank), test_loader)
            accelerator.print(f"k-NN (k=20, cosine) test accuracy {accuracy:.4f} with {args.knn_bank} train images, "
                              f"{(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
