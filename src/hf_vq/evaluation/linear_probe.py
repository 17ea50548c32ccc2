"""Linear probe of frozen features: a generator's blocks, or a tokenizer's encoder (VIM, Yu et al., ICLR 2022).

VIM judges how much a token generator has learnt about images by the linear separability of its block features:
average one block's token features over the sequence, train a linear classifier on them, report its top-1. Here
every block is probed from one forward pass, and the block and the classifier's weight decay are chosen on a
validation split of the training images, so the test split is used once, for the number reported.

    python examples/linear_probe.py --blocks all --output runs/probe/far.json          # the bundled FAR
    python examples/linear_probe.py --target encoder --output runs/probe/encoder.json  # its tokenizer's encoder

The generators are class-conditional, so they run on the null class: a true label would sit in the condition
token that every position attends to, and the probe would read the label instead of the image.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..generators.sampling import eval_mode
from ..utils import DefaultsHelpFormatter, add_overwrite_argument, device_arg, error_line, weights_digest
from .images import from_uint8

DEFAULT_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
DEFAULT_MAX_ITERATIONS = 1000


# ---------------------------------------------------------------- features


def num_feature_blocks(model: nn.Module) -> int:
    """How many feature blocks `model` offers: num_hidden_layers + 1 hidden states for a generator, 1 for an encoder."""
    config = getattr(model, "config", None)
    if hasattr(config, "num_hidden_layers"):
        return config.num_hidden_layers + 1
    return 1


def resolve_blocks(blocks: str | Sequence[int], num_blocks: int) -> list[int]:
    """Hidden-state indices from "all" or a list of ints, checked against `num_blocks` (0 is the embeddings)."""
    if isinstance(blocks, str):
        if blocks != "all":
            raise ValueError(f"blocks must be 'all' or a list of indices, got {blocks!r}")
        return list(range(num_blocks))
    blocks = list(blocks)
    if not blocks:
        raise ValueError("no blocks to probe: give 'all' or at least one index")
    bad = [b for b in blocks if not 0 <= b < num_blocks]
    if bad:
        what = "an encoder has one feature map (index 0)" if num_blocks == 1 else (
            f"the generator has {num_blocks - 1} blocks: hidden-state index 0 is the embeddings, i the output of "
            f"block i, so 0 to {num_blocks - 1}"
        )
        raise ValueError(f"block index {bad[0]} is out of range: {what}")
    if len(set(blocks)) != len(blocks):
        raise ValueError(f"blocks repeat an index: {blocks}")
    return blocks


def _pixel_batches(images: np.ndarray, batch_size: int, device: torch.device):
    """(B, C, H, W) float batches in [-1, 1] of (N, H, W, C) uint8 images."""
    for start in range(0, len(images), batch_size):
        yield from_uint8(images[start : start + batch_size]).to(device)


@torch.no_grad()
def tokenize_images(tokenizer: nn.Module, images: np.ndarray, batch_size: int = 256) -> torch.LongTensor:
    """(N, k, h, w) tokens of (N, H, W, C) uint8 images, the tokenizer in eval mode (no codebook updates)."""
    with eval_mode(tokenizer):
        return torch.cat([tokenizer.tokenize(x).cpu() for x in _pixel_batches(images, batch_size, tokenizer.device)])


@torch.no_grad()
def generator_features(
    model: nn.Module,
    input_ids: torch.LongTensor,
    blocks: str | Sequence[int] = "all",
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """(len(blocks), B, D) float32 features of B token grids: each block's states averaged over the image tokens.

    All blocks come from one forward pass per batch. The generator runs teacher-forced on the null class (class id
    config.num_classes), in eval mode, so no image label reaches it (none is taken here). MaskGIT sees every token
    (nothing masked). Position 0, the null class token, is left out of the average (for FAR/GPT it attends only to
    itself, so it is the same for every image); for FAR/GPT the average is over image tokens 0 .. N-2, since the
    inputs are shifted right and the last token is never an input (see `FAROutput.hidden_states`).
    """
    blocks = resolve_blocks(blocks, num_feature_blocks(model))
    device, null = model.device, model.config.num_classes
    input_ids = input_ids.flatten(2)
    features = []
    with eval_mode(model):
        for start in tqdm(range(0, len(input_ids), batch_size), desc="generator features", disable=not progress):
            ids = input_ids[start : start + batch_size].to(device)
            kwargs = {}
            if not model.is_autoregressive:
                kwargs["masked_positions"] = torch.zeros(ids.shape[0], ids.shape[2], dtype=torch.bool, device=device)
            class_labels = torch.full((ids.shape[0],), null, device=device)
            states = model(input_ids=ids, class_labels=class_labels, output_hidden_states=True, **kwargs).hidden_states
            features.append(torch.stack([states[b][:, 1:].float().mean(1) for b in blocks]).cpu())
    return torch.cat(features, dim=1)


@torch.no_grad()
def encoder_features(
    tokenizer: nn.Module, images: np.ndarray, batch_size: int = 256, progress: bool = False
) -> torch.Tensor:
    """(1, N, C) float32 features of (N, H, W, C) uint8 images: the encoder's quantized latents averaged over h, w."""
    features = []
    batches = _pixel_batches(images, batch_size, tokenizer.device)
    with eval_mode(tokenizer):
        for x in tqdm(batches, total=-(-len(images) // batch_size), desc="encoder features", disable=not progress):
            features.append(tokenizer.encode(x).latents.float().mean((2, 3)).cpu())
    return torch.cat(features)[None]


# ---------------------------------------------------------------- classifier


@dataclass
class LinearClassifier:
    """softmax(W (x - mean) / std + b): multinomial logistic regression on standardised features."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    iterations: int
    converged: bool

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, num_classes) logits of (N, D) features."""
        return F.linear((features.float() - self.mean) / self.std, self.weight, self.bias)

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy on (N, D) features with (N,) labels."""
        return (self.logits(features).argmax(1) == labels).double().mean().item()

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Mean cross-entropy (nats) on (N, D) features with (N,) labels."""
        return F.cross_entropy(self.logits(features), labels).item()


def fit_linear_classifier(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> LinearClassifier:
    """Fit a linear softmax classifier full-batch with L-BFGS until its tolerances are met (or max_iterations).

    Features are standardised with their own mean and std; the loss is the mean cross-entropy plus
    weight_decay / 2 * ||W||^2 (the bias is not decayed), which is convex: L-BFGS reaches its optimum, with no
    learning-rate schedule to tune. `converged` is False when L-BFGS stopped on its iteration or evaluation cap.
    """
    features = features.float()
    mean, std = features.mean(0), features.std(0)
    # a feature constant on the training images is only centred: dividing by ~0 would blow up its test values
    std = torch.where(std > 1e-6 * std.max(), std, torch.ones_like(std))
    x = (features - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=max_iterations, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(F.linear(x, weight, bias), labels) + weight_decay / 2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)  # one step is the whole L-BFGS run, up to max_iter iterations
    state = optimizer.state[weight]
    # L-BFGS stops on its tolerances, or on max_iter iterations or max_eval (default max_iter * 5 // 4) evaluations
    converged = state["n_iter"] < max_iterations and state["func_evals"] < max_iterations * 5 // 4
    return LinearClassifier(mean, std, weight.detach(), bias.detach(), state["n_iter"], converged)


def validation_split(num_images: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, validation) indices: a random `fraction` of range(num_images) held out, the rest to fit on."""
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must lie in (0, 1), got {fraction}")
    num_val = round(fraction * num_images)
    if num_val < 1 or num_val >= num_images:
        raise ValueError(
            f"{num_images} training images cannot be split into fitting and validation images at fraction {fraction}"
        )
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    return order[num_val:], order[:num_val]


@dataclass
class BlockProbe:
    """One block's probe: the weight decay chosen on validation, top-1 on validation and test, validation loss."""

    block: int
    weight_decay: float
    val_top1: float
    test_top1: float
    val_loss: float
    iterations: int
    converged: bool


@dataclass
class LinearProbeResult:
    """Every probed block, and the one chosen on validation top-1 (`chosen`), whose test_top1 is the result."""

    blocks: list[BlockProbe]
    chosen: BlockProbe
    num_fit: int
    num_val: int
    num_test: int
    num_classes: int
    weight_decays: list[float]

    def to_dict(self) -> dict:
        """A JSON-ready dict: the chosen block's numbers first, then the whole curve as `per_block`."""
        return {"chosen_block": self.chosen.block, "weight_decay": self.chosen.weight_decay,
                "val_top1": self.chosen.val_top1, "test_top1": self.chosen.test_top1,
                "per_block": [asdict(probe) for probe in self.blocks], "num_fit": self.num_fit,
                "num_val": self.num_val, "num_test": self.num_test, "num_classes": self.num_classes,
                "weight_decays": self.weight_decays}


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    blocks: Sequence[int] | None = None,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> LinearProbeResult:
    """Probe (S, N, D) features of S blocks: weight decay and block chosen on validation, top-1 on the test split.

    A random `val_fraction` of the training images is held out; each (block, weight decay) classifier is fitted
    on the rest and scored on it by top-1, ties broken by the lower cross-entropy (a few hundred validation images
    often tie on top-1). Each block keeps its best weight decay, the best block is chosen, and only then are the
    test features classified, by the classifiers fitted without the validation images (no refit on all of them,
    so validation and test numbers come from the same classifier).
    """
    blocks = list(range(len(train_features))) if blocks is None else list(blocks)
    if len(blocks) != len(train_features) or len(test_features) != len(train_features):
        raise ValueError(
            f"{len(blocks)} block ids for {len(train_features)} training and {len(test_features)} test feature sets"
        )
    if not weight_decays or not all(math.isfinite(decay) and decay >= 0 for decay in weight_decays):
        raise ValueError(f"weight_decays must be a non-empty list of finite values >= 0, got {list(weight_decays)}")
    train_labels, test_labels = torch.as_tensor(train_labels).long(), torch.as_tensor(test_labels).long()
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    fit, val = validation_split(len(train_labels), val_fraction, seed)

    candidates = []  # per block: (validation top-1, -validation loss), classifier, weight decay
    for features in train_features:
        best = None
        for weight_decay in weight_decays:
            classifier = fit_linear_classifier(
                features[fit], train_labels[fit], num_classes, weight_decay, max_iterations
            )
            val_features, val_labels = features[val], train_labels[val]
            score = (classifier.accuracy(val_features, val_labels), -classifier.loss(val_features, val_labels))
            if best is None or score > best[0]:
                best = (score, classifier, weight_decay)
        candidates.append(best)
    chosen = max(range(len(blocks)), key=lambda s: candidates[s][0])

    # every choice is made: the test split is classified now, once per block for the curve
    probes = [
        BlockProbe(block, weight_decay, val_top1, classifier.accuracy(features, test_labels), round(-neg_loss, 4),
                   classifier.iterations, classifier.converged)
        for block, features, ((val_top1, neg_loss), classifier, weight_decay) in zip(blocks, test_features, candidates)
    ]
    return LinearProbeResult(probes, probes[chosen], len(fit), len(val), len(test_labels), num_classes,
                             list(weight_decays))


# ---------------------------------------------------------------- command line


def plot_probe(result: LinearProbeResult, path: Path, title: str) -> bool:
    """Validation and test top-1 per block as a PNG; False (with a message) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed, so no plot at {path} (pip install matplotlib)", file=sys.stderr)
        return False
    from ..utils import software_tag, write_file_atomic

    blocks = [p.block for p in result.blocks]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(blocks, [100 * p.test_top1 for p in result.blocks], "o-", label="test")
    ax.plot(blocks, [100 * p.val_top1 for p in result.blocks], "s--", label="validation")
    ax.axvline(result.chosen.block, color="gray", linewidth=0.8, label="chosen on validation")
    ax.set(xlabel="block (0 = embeddings)", ylabel="linear-probe top-1 (%)", title=title, xticks=blocks)
    ax.legend()
    fig.tight_layout()
    write_file_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, metadata={"Software": software_tag()}))
    plt.close(fig)
    return True


def _parse_blocks(values: list[str]) -> str | list[int]:
    if values == ["all"]:
        return "all"
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ValueError(f"--blocks takes 'all' or block indices, got {' '.join(values)}") from None


def _load(model: str | None, target: str | None) -> tuple[str, str, nn.Module, nn.Module | None]:
    """(model path, target, tokenizer, generator or None) of a pipeline or tokenizer folder (or Hub repo)."""
    from ..pipelines import bundled_model_path
    from ..tokenizers import AutoImageTokenizer
    from ..utils import is_hub_id

    path = model or str(bundled_model_path())
    local = Path(path).exists()
    if not local and not is_hub_id(path):
        raise FileNotFoundError(f"{path}: no such folder (and not a Hub id such as org/name)")
    is_pipeline = (Path(path) / "model_index.json").is_file() if local else True
    target = target or ("generator" if is_pipeline else "encoder")
    if target == "generator" and not is_pipeline:
        raise ValueError(f"{path} is a tokenizer folder, which has no generator; probe it with --target encoder")
    try:
        if target == "encoder":
            tokenizer = AutoImageTokenizer.from_pretrained(path)  # a pipeline's too
            return path, target, tokenizer, None
        from ..pipelines import FQGANPipeline

        pipe = FQGANPipeline.from_pretrained(path)
    except OSError as err:
        if local:
            raise
        first = error_line(err)
        raise FileNotFoundError(f"{path}: no such folder, and loading it as a Hub repo failed ({first})") from err
    return path, target, pipe.vqvae, pipe.transformer


def build_parser() -> argparse.ArgumentParser:
    """The linear probe's command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("model", nargs="?", default=None,
                   help="pipeline or tokenizer folder, or Hub id (default: the bundled Fashion-MNIST pipeline)")
    p.add_argument("--target", choices=["generator", "encoder"], default=None,
                   help="what to probe (default: the generator of a pipeline, the encoder of a tokenizer)")
    p.add_argument("--blocks", nargs="+", default=["all"],
                   help="hidden-state indices to choose from (0 = embeddings, i = block i), or 'all'")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset name, Hub id or image folder, with labels")
    p.add_argument("--train_split", default="train")
    p.add_argument("--test_split", default="test")
    p.add_argument("--max_train_images", type=int, default=None, help="the first N training images")
    p.add_argument("--max_test_images", type=int, default=None, help="the first N test images")
    p.add_argument("--skip_corrupt", action="store_true",
                   help="drop the dataset's unreadable images instead of stopping")
    p.add_argument("--val_fraction", type=float, default=0.1, help="training images held out to choose on")
    p.add_argument("--weight_decays", type=float, nargs="+", default=list(DEFAULT_WEIGHT_DECAYS))
    p.add_argument("--max_iterations", type=int, default=DEFAULT_MAX_ITERATIONS, help="L-BFGS iterations at most")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--device", default=None, type=device_arg, help="default: cuda when available, else cpu")
    p.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--output", default=None, help="write the JSON result here (.json)")
    p.add_argument("--plot", default=None,
                   help="PNG of top-1 per block (default: beside --output when several blocks; needs matplotlib)")
    add_overwrite_argument(p)
    return p


def run_probe(args: argparse.Namespace) -> dict:
    """The probe the parsed options describe, as a JSON-ready dict (written to --output when given)."""
    from .. import __version__
    from ..training.data import check_labelled
    from ..utils import check_output_file, default_device, write_file_atomic
    from .feature_sets import dataset_images

    args.device = args.device or default_device()

    started = time.perf_counter()
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    for name in ("max_train_images", "max_test_images", "batch_size", "max_iterations"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    # checked again where they are used, after feature extraction: here, before minutes of it
    if not 0 < args.val_fraction < 1:
        raise ValueError(f"--val_fraction must lie in (0, 1), got {args.val_fraction}")
    if not all(math.isfinite(decay) and decay >= 0 for decay in args.weight_decays):
        raise ValueError(f"--weight_decays must be finite values >= 0, got {args.weight_decays}")
    if args.max_train_images is not None:
        validation_split(args.max_train_images, args.val_fraction, args.seed)  # too few images to split
    output = check_output_file(args.output, (".json",), "--output", args.overwrite) if args.output else None
    plot = check_output_file(args.plot, (".png",), "--plot", args.overwrite) if args.plot else None
    blocks = _parse_blocks(args.blocks)
    path, target, tokenizer, generator = _load(args.model, args.target)
    probed = generator if target == "generator" else tokenizer
    blocks = resolve_blocks(blocks, num_feature_blocks(probed))
    if output is not None and plot is None and len(blocks) > 1:  # the default plot, beside the JSON
        plot = check_output_file(output.with_suffix(".png"), (".png",), "--plot (default)", args.overwrite)
    for split in (args.train_split, args.test_split):
        check_labelled(args.dataset, split, "a linear probe is trained and scored on them", args.skip_corrupt)
    if target == "generator":
        features_kind = "hidden_states[block] averaged over the image-token positions (the class token left out), "
        features_kind += "teacher-forced on the null class" + ("" if generator.is_autoregressive else ", unmasked")
    else:
        features_kind = "the encoder's quantized latents averaged over the token grid"

    tokenizer = tokenizer.to(args.device)
    probed = probed.to(args.device)
    digest = weights_digest(probed)
    size = generator.config.grid_size * tokenizer.downsample_factor if generator is not None else tokenizer.sample_size
    loaded = time.perf_counter()
    features, labels = [], []
    for split, limit in ((args.train_split, args.max_train_images), (args.test_split, args.max_test_images)):
        images, split_labels = dataset_images(args.dataset, split, size, tokenizer.in_channels, limit,
                                              args.skip_corrupt)
        if target == "generator":
            tokens = tokenize_images(tokenizer, images, args.batch_size)
            features.append(generator_features(generator, tokens, blocks, args.batch_size, progress=True))
        else:
            features.append(encoder_features(tokenizer, images, args.batch_size, progress=True))
        labels.append(torch.from_numpy(split_labels))
    featured = time.perf_counter()
    result = linear_probe(features[0], labels[0], features[1], labels[1], blocks, args.weight_decays,
                          args.val_fraction, args.seed, args.max_iterations)
    probed_at = time.perf_counter()

    summary = {
        "hf_vq_version": __version__,
        "model": path,
        "target": target,
        "model_class": type(probed).__name__,
        "dataset": args.dataset,
        "train_split": args.train_split,
        "test_split": args.test_split,
        "image_size": size,
        "features": features_kind,
        **result.to_dict(),
        "weights_unchanged": weights_digest(probed) == digest,
        "seconds": {"load": round(loaded - started, 1), "features": round(featured - loaded, 1),
                    "probe": round(probed_at - featured, 1), "total": round(probed_at - started, 1)},
        "settings": {"val_fraction": args.val_fraction, "seed": args.seed, "max_iterations": args.max_iterations,
                     "max_train_images": args.max_train_images, "max_test_images": args.max_test_images,
                     "batch_size": args.batch_size, "num_threads": torch.get_num_threads(), "device": args.device},
    }
    text = json.dumps(summary, indent=2)
    if output is not None:
        write_file_atomic(output, lambda p: p.write_text(text + "\n"))
    if plot is not None:
        plot_probe(result, plot, f"{summary['model_class']} on {args.dataset}")
    print(text)
    return summary


def main(argv: list[str] | None = None) -> dict:
    """Entry point of `examples/linear_probe.py`: parse, probe, and turn bad input into a one-line exit message."""
    args = build_parser().parse_args(argv)
    try:
        return run_probe(args)
    except (ValueError, OSError, TypeError) as err:  # OSError: missing folders, Hub and network failures
        raise SystemExit(f"linear probe: {error_line(err)}") from err


if __name__ == "__main__":  # `python -m hf_vq.evaluation.linear_probe`, from an install without examples/
    main()
