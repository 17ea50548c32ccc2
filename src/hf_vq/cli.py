"""`hf-vq`: generate, reconstruct, evaluate, convert, assemble and push from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .pipelines.loading import GENERATOR_DTYPES, bundled_model_path, load_pipeline
from .utils import (
    DefaultsHelpFormatter,
    add_overwrite_argument,
    device_arg,
    error_line,
    launched_processes,
    save_image,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def generate(args: argparse.Namespace) -> None:
    """Sample a grid: one row per label, `-n` images per row."""
    import torch
    from diffusers.utils import make_image_grid

    from .utils import check_output_file, default_device

    if args.n < 1:
        raise SystemExit(f"-n must be >= 1, got {args.n}")
    check_output_file(args.out, IMAGE_SUFFIXES, "--out", args.overwrite)
    if args.model is not None:
        _check_model_path(args.model, "--model")
    model = args.model or bundled_model_path()
    if args.model is None and not Path(model).is_dir():
        raise SystemExit(f"the bundled model is missing from this install ({model}); pass --model")
    pipe = load_pipeline(model, args.dtype, args.device or default_device())
    labels = [int(x) if x.isdigit() else x for x in args.labels]
    pipe.get_label_ids(labels)  # fail on a bad label before any sampling
    images = pipe(labels, num_images_per_label=args.n, guidance_scale=args.guidance_scale,
                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                  # drawn on the CPU and moved (diffusers' convention): a seed gives the same draws on every device
                  num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed),
                  compile=args.compile).images
    grid = make_image_grid(images, rows=len(labels), cols=args.n)
    save_image(grid, args.out)
    print(f"wrote {args.out} ({len(labels)} labels x {args.n} images)")


def reconstruct(args: argparse.Namespace) -> None:
    """Tokenize an image and decode it back; prints the token grid shape and PSNR."""
    import numpy as np
    import torch
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image

    from .evaluation.metrics import psnr
    from .tokenizers import AutoImageTokenizer
    from .training.data import to_8bit
    from .utils import check_output_file

    check_output_file(args.out, IMAGE_SUFFIXES, "--out", args.overwrite)
    if not Path(args.image).is_file():
        raise SystemExit(f"no such image: {args.image}")
    _check_model_path(args.tokenizer, "--tokenizer")
    try:  # read whole before the model loads: a broken file fails first
        with Image.open(args.image) as opened:
            image = to_8bit(opened)
            image.load()
    except (OSError, ValueError) as err:
        raise ValueError(f"--image {args.image} is not a readable image ({err})") from err
    tokenizer = AutoImageTokenizer.from_pretrained(args.tokenizer).eval()  # a pipeline's too
    image = image.convert("L" if tokenizer.in_channels == 1 else "RGB")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).reshape(image.height, image.width, -1)
    x = x.permute(2, 0, 1)[None]
    indices = tokenizer.tokenize(x)
    recon = tokenizer.detokenize(indices).clamp(-1, 1)
    save_image(VaeImageProcessor().postprocess(recon, output_type="pil")[0], args.out)
    print(f"tokens {tuple(indices.shape)}, PSNR {float(psnr(recon, x)):.2f} dB, wrote {args.out}")


def convert(args: argparse.Namespace) -> None:
    """Official .pt checkpoint -> save_pretrained folder."""
    from .conversion import run_convert

    sys.exit(run_convert(args))


def assemble(args: argparse.Namespace) -> None:
    """Tokenizer + generator + labels -> one FQGANPipeline folder."""
    from .pipelines import assemble_pipeline

    assemble_pipeline(args.tokenizer, args.transformer, args.output_dir, id2label=args.labels, overwrite=args.overwrite)
    print(f"wrote pipeline folder {args.output_dir}")


def push(args: argparse.Namespace) -> None:
    """Upload a saved folder (pipeline, tokenizer or generator) to the Hub: `hf-vq push REPO_ID FOLDER`.

    The folder's README.md is written first when it has none, and rewritten from `--evaluation` JSONs.
    """

    from .model_card import card_writer_for_push
    from .training.pretrained import read_json_file
    from .utils import push_folder, require_hub_token, write_file_atomic

    repo_id, folder = args.repo_id, args.folder
    if Path(repo_id).is_dir() and not Path(folder).is_dir():  # the order of early versions: FOLDER REPO_ID
        print(f"warning: reading `hf-vq push {repo_id} {folder}` as FOLDER REPO_ID; the order is now "
              f"`hf-vq push {folder} {repo_id}` (REPO_ID first, as `hf upload`)", file=sys.stderr)
        repo_id, folder = folder, repo_id
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    require_hub_token(f"uploading to {repo_id}", instead=None)
    evaluation = [read_json_file(path, "--evaluation") for path in args.evaluation or []]
    write_card = card_writer_for_push(folder, repo_id, evaluation, args.dataset, args.overwrite_card)
    readme = Path(folder) / "README.md"
    card_before = readme.read_bytes() if readme.is_file() else None
    try:
        url = push_folder(folder, repo_id, private=args.private, message=args.message, before_upload=write_card)
    except Exception as err:
        if write_card is not None:  # a failed push leaves the folder as it was, without the card written for it
            if card_before is None:
                readme.unlink(missing_ok=True)
            else:
                write_file_atomic(readme, lambda tmp: Path(tmp).write_bytes(card_before))
        # Everything local was checked above: what fails here is the Hub or the way to it (network, permissions).
        raise OSError(f"pushing {folder} to {repo_id} failed ({type(err).__name__}: {err}); the folder is unchanged"
                      ) from err
    print(f"pushed {folder} to {url}")


def _check_model_path(name: str, flag: str) -> None:
    """A model argument is a folder or a Hub id; anything else that does not exist is named in one line."""
    from .utils import is_hub_id

    if not Path(name).exists() and not is_hub_id(name):
        raise SystemExit(f"{flag} {name}: no such folder (and not a Hub id such as org/name)")


def _bundled_labels() -> str:
    """The class names of the bundled model, for help texts."""
    import json

    index = bundled_model_path() / "model_index.json"
    labels = json.loads(index.read_text()).get("id2label", {}) if index.is_file() else {}
    return ", ".join(labels.values())


def build_parser() -> argparse.ArgumentParser:
    """The `hf-vq` argument parser."""
    from . import __version__
    from .benchmark.command import add_benchmark_arguments
    from .conversion import add_convert_arguments
    from .evaluation.command import add_evaluate_arguments

    parser = argparse.ArgumentParser(prog="hf-vq", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hf-vq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = DefaultsHelpFormatter

    g = sub.add_parser("generate", help="class-conditional samples as an image grid", formatter_class=defaults)
    g.add_argument("--model", default=None, help="pipeline folder or Hub id (default: the bundled Fashion-MNIST model)")
    g.add_argument("--labels", nargs="+", required=True,
                   help=f"class names or ids; the bundled model's: {_bundled_labels()}")
    g.add_argument("-n", type=int, default=4, help="images per label")
    g.add_argument("--out", default="grid.png", help="the grid: a .png, .jpg or .webp file")
    g.add_argument("--guidance-scale", type=float, default=2.0, help="classifier-free guidance (1 turns it off)")
    g.add_argument("--temperature", type=float, default=1.0, help="of the token distributions")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0 turns it off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (1 turns it off)")
    g.add_argument("--steps", type=int, default=None, help="parallel decoding steps (MaskGIT; default 12)")
    g.add_argument("--compile", action="store_true", help="torch.compile the AR sampler (pays off for many images)")
    g.add_argument("--dtype", choices=list(GENERATOR_DTYPES), default="fp32",
                   help="generator weights (logits stay fp32; on a CPU the activations too): half precision samples "
                   "faster on GPUs and on CPUs with fast half GEMMs, and keeps nearly all of fp32's tokens (README)")
    g.add_argument("--seed", type=int, default=0, help="drawn on the CPU: the same draws on any device")
    add_overwrite_argument(g)
    g.add_argument("--device", default=None, type=device_arg, help="default: cuda when available, else cpu")
    g.set_defaults(func=generate)

    r = sub.add_parser("reconstruct", help="tokenize and decode an image", formatter_class=defaults)
    r.add_argument("--tokenizer", required=True, help="a tokenizer or pipeline folder, or a Hub id")
    r.add_argument("--image", required=True, help="an image of the tokenizer's channels, its size divisible by the "
                   "tokenizer's downsampling")
    r.add_argument("--out", default="reconstruction.png", help="a .png, .jpg or .webp file")
    add_overwrite_argument(r)
    r.set_defaults(func=reconstruct)

    c = sub.add_parser("convert", help="official checkpoint -> save_pretrained folder")
    add_convert_arguments(c)
    c.set_defaults(func=convert)

    a = sub.add_parser("assemble", help="tokenizer + generator -> pipeline folder", formatter_class=defaults)
    a.add_argument("--tokenizer", required=True)
    a.add_argument("--transformer", required=True)
    a.add_argument("--labels", default=None,
                   help='class names: a JSON file or JSON text of id -> name, such as \'{"0": "T-shirt/top"}\' '
                        "(default: the generator's own, else ImageNet's from the Hub for 1000 classes, else none)")
    a.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty output folder (one hf_vq did not write is moved aside, not deleted)")
    a.add_argument("output_dir")
    a.set_defaults(func=assemble)

    p = sub.add_parser("push", help="upload a folder to the Hub (as `hf upload REPO_ID FOLDER`)",
                       formatter_class=defaults)
    p.add_argument("repo_id", help="org/name")
    p.add_argument("folder", help="a saved pipeline, tokenizer or generator folder")
    p.add_argument("--private", action="store_true")
    p.add_argument("--message", default="Upload with hf-vq")
    p.add_argument("--evaluation", action="append", default=None, metavar="EVAL.json",
                   help="a JSON `hf-vq evaluate ... --output` wrote (repeatable): (re)writes the README.md model card "
                        "with its numbers; without it, a card is written only when the folder has none")
    p.add_argument("--dataset", default=None,
                   help="Hub id of the dataset the model was trained on, for the card (fashion-mnist: "
                        "zalando-datasets/fashion_mnist); default: the evaluations' datasets")
    p.add_argument("--overwrite_card", action="store_true",
                   help="replace a README.md that hf_vq did not write (otherwise --evaluation refuses it)")
    p.set_defaults(func=push)

    add_evaluate_arguments(sub, defaults)
    add_benchmark_arguments(sub, defaults)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of `hf-vq`."""
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "target", None))))
    if launched_processes() > 1 and not getattr(args, "multi_process", False):
        # Every process would do the whole job and write the same outputs.
        raise SystemExit(f"hf-vq {command}: runs in one process, but {launched_processes()} were launched; run it "
                         "without accelerate launch / torchrun (only `evaluate pipeline` and `benchmark` share work "
                         "over processes)")
    try:
        args.func(args)
    except (ValueError, OSError, TypeError) as err:  # OSError: missing files, Hub and network failures
        raise SystemExit(f"hf-vq {args.command}: {error_line(err)}") from err


if __name__ == "__main__":
    main()
