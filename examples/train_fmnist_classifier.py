"""Train a small ResNet on Fashion-MNIST to judge generated samples (class accuracy, classifier-feature FD).

    python examples/train_fmnist_classifier.py --output_dir outputs/fmnist-classifier --epochs 4 --seed 0

The classifier shipped in the package (`hf_vq.evaluation.bundled_classifier_path()`, the `fd_fmnist` feature
network) was made by exactly that command: a fixed number of steps, so that a retrained copy differs only by the
machine's arithmetic, and its sha256 tells the two apart.

The output folder loads with `transformers.AutoModelForImageClassification` and `AutoImageProcessor`, and with
`hf_vq.evaluation.ClassifierAccuracy.from_pretrained`, whose `preprocess` (grayscale, resize to the input size,
standardise) is also what this script trains through, so generated images are judged as the classifier was
trained. It is deliberately a different network from the ViT teacher (examples/train_fmnist_teacher.py), so
that tokenizers distilled from the teacher are not graded by the same features. The learning rate follows a
cosine over the larger of step and wall-clock progress, so a run stopped by --max_minutes still ends annealed.
"""

import argparse
import time

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

from hf_vq.evaluation import ClassifierAccuracy
from hf_vq.training.classification import (
    add_classifier_arguments,
    fashion_mnist_loaders,
    test_accuracy,
    train_classifier,
)
from hf_vq.training.optim import param_groups

# Fashion-MNIST pixel statistics in [0, 1]
IMAGE_MEAN = [0.2860]
IMAGE_STD = [0.3530]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_classifier_arguments(parser, output_dir="outputs/fmnist-classifier", epochs=8, weight_decay=5e-4,
                             warmup_steps=100)
    parser.add_argument("--image_size", type=int, default=40, help="input size; 28 px images are upsampled")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    accelerator = Accelerator()
    set_seed(args.seed)
    start = time.time()

    # data: native 28 px grayscale in [-1, 1]; flips and small shifts (below) as light augmentation
    train_loader, test_loader, id2label = fashion_mnist_loaders(28, 1, args.batch_size,
                                                                args.seed + accelerator.process_index)

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
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr)
    model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, train_loader, test_loader)
    accelerator.print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
                      f"{args.epochs * len(train_loader)} steps")

    # trained through the same preprocessing the saved classifier will judge with
    steps = train_classifier(accelerator, model, optimizer, train_loader,
                             lambda x: judge.preprocess(x, value_range=(-1, 1)), args, max_shift=2)
    model.eval()
    accuracy, total = test_accuracy(accelerator, lambda x: judge.classify(x, value_range=(-1, 1)), test_loader)
    accelerator.print(f"test accuracy {accuracy:.4f} ({total} images), {steps} steps, "
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
