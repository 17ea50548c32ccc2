"""Ship a trained Fashion-MNIST pipeline inside the package (package data) with its model card.

    python upload/package_fmnist_model.py --pipeline runs/fmnist-far/pipeline \
        --evaluation runs/eval-tokenizer.json runs/eval-pipeline.json --training "exact commands..."
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from hf_vq import FQGANPipeline, bundled_model_path
from hf_vq.cli import main as cli_main
from hf_vq.model_card import FASHION_MNIST, pipeline_model_card, write_model_card
from hf_vq.utils import atomic_directory

MAX_BYTES = 25 * 1024 * 1024
EXAMPLE_LABELS = ["Sneaker", "Bag"]  # the quickstart's labels, also those of the README's picture


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True)
    p.add_argument("--evaluation", required=True, nargs="+",
                   help="JSON file(s) `hf-vq evaluate ... --output` wrote (tokenizer and pipeline)")
    p.add_argument("--training", required=True, help="text (markdown) saying how it was trained")
    p.add_argument("--limitations", default="Trained for minutes on a 2-core CPU: a demonstration model, 28x28 gray.")
    p.add_argument("--repo_id", default="hf-vq/fmnist-fqgan-dual-far")
    p.add_argument("--output_dir", default=None, help="default: the package's bundled-model folder")
    args = p.parse_args(argv)

    pipe = FQGANPipeline.from_pretrained(args.pipeline)
    evaluation = [json.loads(Path(path).read_text()) for path in args.evaluation]
    target = Path(args.output_dir) if args.output_dir else bundled_model_path()
    with atomic_directory(target, "package_fmnist_model", overwrite=True) as tmp:
        pipe.save_pretrained(tmp)
        # the README's picture: exactly the quickstart command's grid, shown at 2x
        samples = tmp / "samples.png"
        cli_main(["generate", "--model", str(tmp), "--labels", *EXAMPLE_LABELS, "-n", "8", "--out", str(samples)])
        grid = Image.open(samples)
        grid.resize((2 * grid.width, 2 * grid.height), Image.NEAREST).save(samples)
        # from the saved folder, after the picture: the card shows samples.png when the folder has one
        card = pipeline_model_card(tmp, args.repo_id, evaluation, dataset=FASHION_MNIST, training=args.training,
                                   limitations=args.limitations, example_labels=EXAMPLE_LABELS)
        write_model_card(card, tmp)
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        if size > MAX_BYTES:
            raise SystemExit(f"the pipeline is {size / 2**20:.1f} MiB; package data is limited to 25 MiB")
    print(f"bundled {args.pipeline} -> {target} ({size / 2**20:.1f} MiB)")
    return target


if __name__ == "__main__":
    main()
