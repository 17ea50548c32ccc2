"""Ship a trained Fashion-MNIST pipeline inside the package (package data) with its model card.

    python upload/package_fmnist_model.py --pipeline runs/fmnist-far/pipeline \
        --evaluation runs/eval.json --training "exact commands..."
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from hf_vq import FQGANPipeline
from hf_vq.cli import bundled_model_path
from hf_vq.cli import main as cli_main
from hf_vq.utils import atomic_directory

CARD = Path(__file__).resolve().parents[1] / "model_cards" / "pipeline_card_template.md"
MAX_BYTES = 25 * 1024 * 1024


def render_card(pipe: FQGANPipeline, repo_id: str, training: str, evaluation: dict, limitations: str) -> str:
    """Fill the pipeline card template."""
    names = [pipe.config.id2label[i] for i in sorted(pipe.config.id2label)][7:9]
    return CARD.read_text().format(
        dataset="fashion_mnist", model_name=repo_id.split("/")[-1], repo_id=repo_id,
        tokenizer_kind=f"{type(pipe.vqvae).__name__}, {pipe.vqvae.num_codebooks} sub-codebooks of "
                       f"{pipe.vqvae.codebook_sizes[0]}",
        num_codebooks=pipe.vqvae.num_codebooks, grid=pipe.transformer.config.grid_size,
        generator_class=type(pipe.transformer).__name__, guidance_scale=2.0,
        example_labels=", ".join(repr(n) for n in names), example_labels_cli=" ".join(names),
        training=training, evaluation="```json\n" + json.dumps(evaluation, indent=2) + "\n```", limitations=limitations,
    )


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True)
    p.add_argument("--evaluation", required=True, help="JSON file of measured numbers")
    p.add_argument("--training", required=True, help="text (markdown) saying how it was trained")
    p.add_argument("--limitations", default="Trained for minutes on a 2-core CPU: a demonstration model, 28x28 gray.")
    p.add_argument("--repo_id", default="hf-vq/fmnist-fqgan-dual-far")
    p.add_argument("--output_dir", default=None, help="default: the package's bundled-model folder")
    args = p.parse_args(argv)

    pipe = FQGANPipeline.from_pretrained(args.pipeline)
    evaluation = json.loads(Path(args.evaluation).read_text())
    target = Path(args.output_dir) if args.output_dir else bundled_model_path()
    with atomic_directory(target, "package_fmnist_model", overwrite=True) as tmp:
        pipe.save_pretrained(tmp)
        (tmp / "README.md").write_text(render_card(pipe, args.repo_id, args.training, evaluation, args.limitations))
        # the README's picture: exactly the quickstart command's grid, shown at 2x
        samples = tmp / "samples.png"
        cli_main(["generate", "--model", str(tmp), "--labels", "Sneaker", "Bag", "-n", "8", "--out", str(samples)])
        grid = Image.open(samples)
        grid.resize((2 * grid.width, 2 * grid.height), Image.NEAREST).save(samples)
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        if size > MAX_BYTES:
            raise SystemExit(f"the pipeline is {size / 2**20:.1f} MiB; package data is limited to 25 MiB")
    print(f"bundled {args.pipeline} -> {target} ({size / 2**20:.1f} MiB)")
    return target


if __name__ == "__main__":
    main()
