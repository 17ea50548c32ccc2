"""The `hf-vq benchmark` command line."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_benchmark_arguments(sub: argparse._SubParsersAction, formatter: type) -> None:
    """Register `hf-vq benchmark SPEC`."""
    from ..utils import device_arg

    b = sub.add_parser("benchmark", formatter_class=formatter,
                       help="train, sample and evaluate every tokenizer of a spec; write one JSON per row and a table")
    b.add_argument("spec", help="benchmark spec JSON (see hf_vq/benchmark/spec.py; examples/benchmarks/*.json)")
    b.add_argument("--output_dir", default=None,
                   help="row JSONs, sample grids, TABLE.md, plot.svg (default: a folder named after the spec file, "
                        "beside it)")
    b.add_argument("--work_dir", default=None,
                   help="cached stages: checkpoints, codes, samples (default: runs/benchmark-<spec name>)")
    b.add_argument("--rows", nargs="+", default=None, help="run only these rows (by name)")
    b.add_argument("--skip_noise", action="store_true", help="leave the noise reruns (spec key `noise`) for later")
    b.add_argument("--table_only", action="store_true", help="only regenerate TABLE.md and plot.svg from the JSONs")
    b.add_argument("--device", default=None, type=device_arg,
                   help="sampling and evaluation device (default: cuda when available)")
    b.set_defaults(func=benchmark_command, multi_process=True)


def benchmark_command(args: argparse.Namespace) -> None:
    """`hf-vq benchmark`."""
    from .runner import MARKER, BenchmarkRun
    from .spec import load_spec
    from .table import write_table

    spec = load_spec(args.spec)
    output_dir = Path(args.output_dir) if args.output_dir else spec.path.with_suffix("")
    if args.table_only:
        if not (output_dir / MARKER).is_file():
            raise FileNotFoundError(f"{output_dir} holds no benchmark results (no {MARKER}): run the benchmark first")
        for path in write_table(output_dir):
            print(f"wrote {path}")
        return
    work_dir = Path(args.work_dir) if args.work_dir else Path("runs") / f"benchmark-{spec.name}"
    run = BenchmarkRun(spec, output_dir, work_dir, args.device, args.rows)
    run.run(noise=not args.skip_noise)
    if run.is_main_process:
        print(f"wrote {output_dir / 'TABLE.md'}")
