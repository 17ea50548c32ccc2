"""Class accuracy of generated samples: N per class from a pipeline, judged by a separately trained classifier.

    python examples/evaluate_generation.py --classifier outputs/fmnist-classifier --per_class 100
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hf_vq import FQGANPipeline
from hf_vq.cli import bundled_model_path
from hf_vq.evaluation import ClassifierAccuracy


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", default=None, help="pipeline folder or Hub id (default: the bundled model)")
    p.add_argument("--classifier", required=True, help="classifier folder (examples/train_fmnist_classifier.py)")
    p.add_argument("--per_class", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=100)
    p.add_argument("--guidance_scale", type=float, default=None, help="default: the pipeline's default")
    p.add_argument("--num_inference_steps", type=int, default=None, help="MaskGIT only; default: the pipeline's")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    pipe = FQGANPipeline.from_pretrained(args.pipeline or bundled_model_path())
    pipe.set_progress_bar_config(disable=True)
    judge = ClassifierAccuracy.from_pretrained(args.classifier)
    num_classes = pipe.transformer.config.num_classes
    knobs = {k: v for k, v in (("guidance_scale", args.guidance_scale),
                               ("num_inference_steps", args.num_inference_steps)) if v is not None}
    generator = torch.Generator().manual_seed(args.seed)
    labels = torch.arange(num_classes).repeat_interleave(args.per_class)
    predictions = []
    start = time.perf_counter()
    for chunk in labels.split(args.batch_size):
        images = pipe(chunk.tolist(), output_type="pt", generator=generator, **knobs).images
        predictions.append(judge.classify(images))
    seconds = time.perf_counter() - start
    correct = torch.cat(predictions) == labels
    names = pipe.config.id2label
    per_class = {names.get(c, str(c)): round(float(correct[labels == c].float().mean()), 3) for c in range(num_classes)}
    result = {"samples": len(labels), "class_accuracy": round(float(correct.float().mean()), 4),
              "per_class": per_class, "images_per_second": round(len(labels) / seconds, 2), **knobs}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
