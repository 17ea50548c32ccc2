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
import time

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, ViTModel

from hf_vq.training.classification import (
    add_classifier_arguments,
    fashion_mnist_loaders,
    test_accuracy,
    train_classifier,
)
from hf_vq.training.optim import param_groups

# Fashion-MNIST pixel statistics in [0, 1], repeated over the three channels of the RGB input.
IMAGE_MEAN = [0.2860] * 3
IMAGE_STD = [0.3530] * 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_classifier_arguments(parser, output_dir="outputs/fmnist-teacher", epochs=4, weight_decay=0.05,
                             warmup_steps=200)
    parser.add_argument("--max_shift", type=int, default=0, help="random translation in pixels (augmentation)")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--patch_size", type=int, default=8)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--num_heads", type=int, default=4)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    accelerator = Accelerator()
    set_seed(args.seed)
    start = time.time()

    # data: [-1, 1] RGB tensors at the ViT's input size
    train_loader, test_loader, id2label = fashion_mnist_loaders(args.image_size, 3, args.batch_size,
                                                                args.seed + accelerator.process_index)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1).to(accelerator.device)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1).to(accelerator.device)

    def normalize(pixel_values: torch.Tensor) -> torch.Tensor:
        # the teacher sees [0, 1] pixels standardised with the processor's mean/std
        return ((pixel_values + 1) / 2 - mean) / std

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
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.999))
    model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, train_loader, test_loader)
    accelerator.print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
                      f"{args.epochs * len(train_loader)} steps")

    steps = train_classifier(accelerator, model, optimizer, train_loader, normalize, args, max_shift=args.max_shift,
                             max_grad_norm=1.0)
    model.eval()
    accuracy, total = test_accuracy(
        accelerator, lambda x: model(pixel_values=normalize(x)).logits.argmax(-1), test_loader
    )
    accelerator.print(f"test accuracy {accuracy:.4f} ({total} images), {steps} steps, "
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
