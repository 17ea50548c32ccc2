"""Training throughput and peak memory of the Fashion-MNIST configurations.

Each configuration trains for a few steps in a fresh process (so peak memory is its own) through the real
training script; the figures come from the `train_summary.json` that script writes (throughput skips the first
5 steps). Generators need extracted codes and their tokenizer:

    python examples/benchmarks/bench_training.py --steps 40 --threads 2 \\
        --codes_dir runs/fmnist-codes --tokenizer runs/fmnist-tokenizer/tokenizer
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "examples" / "configs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", default=None,
                   help="config names (default: every examples/configs/fmnist_*.json)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--tokenizer_batch_size", type=int, default=32)
    p.add_argument("--generator_batch_size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each training process")
    p.add_argument("--teacher", default="bundled:fmnist-vit-teacher-p4", help="teacher for the semantic sub-codebooks")
    p.add_argument("--codes_dir", default=None, help="extracted codes; generators are skipped without them")
    p.add_argument("--tokenizer", default=None, help="the tokenizer the codes came from")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args(argv)


def command(name: str, config: dict, args: argparse.Namespace, out: Path) -> list[str] | None:
    """The training command for one config, or None when it cannot run here."""
    common = ["--output_dir", str(out), "--max_train_steps", str(args.steps), "--report_to", "none",
              "--checkpointing_steps", str(10 * args.steps), "--validation_steps", str(10 * args.steps)]
    if "hidden_size" not in config and not {"z_channels", "num_codebooks"} <= set(config):
        return None  # VQ-KD stages have their own scripts
    if "z_channels" in config:
        teachers = ["none" if t is None else args.teacher
                    for t in config.get("teacher_models") or [None] * config["num_codebooks"]]
        if args.teacher in teachers and not Path(args.teacher).is_dir():
            raise SystemExit(f"{name} needs a teacher: train one with examples/train_fmnist_teacher.py "
                             f"or pass --teacher (missing: {args.teacher})")
        return [sys.executable, str(ROOT / "examples" / "train_fqgan.py"), "--tokenizer_config",
                str(CONFIGS / f"{name}.json"), "--dataset", "fashion-mnist", "--resolution", str(config["sample_size"]),
                "--perceptual_weight", "0", "--train_batch_size", str(args.tokenizer_batch_size), "--teachers",
                *teachers, *common]
    if args.codes_dir is None or args.tokenizer is None:
        return None
    kind = "far" if "num_head_layers" in config else "maskgit"
    return [sys.executable, str(ROOT / "examples" / f"train_{kind}.py"), "--model_config",
            str(CONFIGS / f"{name}.json"), "--codes_dir", args.codes_dir, "--tokenizer", args.tokenizer,
            "--train_batch_size", str(args.generator_batch_size), *common]


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    names = args.configs or sorted(p.stem for p in CONFIGS.glob("fmnist_*.json"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    results = []
    print(f"{'config':<22} {'batch':>5} {'samples/s':>10} {'s/step':>7} {'peak MiB':>9}")
    for name in names:
        config = json.loads((CONFIGS / f"{name}.json").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            cmd = command(name, config, args, Path(tmp) / "run")
            if cmd is None:
                print(f"{name:<22} skipped (generators need --codes_dir and --tokenizer; VQ-KD has its own scripts)")
                continue
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            summary = json.loads((Path(tmp) / "run" / "train_summary.json").read_text())
        batch = args.tokenizer_batch_size if "z_channels" in config else args.generator_batch_size
        rate = summary["samples_per_second"]
        row = {"config": name, "batch_size": batch, "samples_per_second": rate,
               "seconds_per_step": batch / rate, "peak_memory_mib": summary["peak_memory_mib"]}
        results.append(row)
        print(f"{name:<22} {batch:>5} {rate:>10.1f} {batch / rate:>7.3f} {row['peak_memory_mib']:>9.0f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "steps": args.steps, "results": results},
                                              indent=2))
    return results


if __name__ == "__main__":
    main()
