"""What this machine's kernels deliver: GFLOP/s of GEMMs and 3x3 convolutions in fp32, bf16 and fp16.

The tokenizer and sampler speed-ups available from reduced precision are bounded by these numbers: if a bf16
convolution is not faster than an fp32 one here, bf16 autocast cannot make the tokenizer faster either.
Shapes are those of the hot paths: 16-row GEMMs (token-by-token sampling: batch 8 doubled for guidance),
large GEMMs (training), and 3x3 convolutions at the widths of the VQ-16 decoder. A last table streams 16 rows
through a model's worth of distinct weights, as decoding does, and compares torch's GEMMs with hf_vq's
`half_linear` kernel on packed half-precision weights.

    python examples/benchmarks/bench_kernels.py --threads 2
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hf_vq.generators.half_linear import half_linear, kernel_available, pack_weight

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def seconds_per_call(fn: Callable[[], torch.Tensor], min_seconds: float) -> float:
    """Mean seconds per call over at least `min_seconds`, after two warm-up calls."""
    fn(), fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds:
        fn()
        calls += 1
    return elapsed / calls


def gemm_cases() -> list[tuple[str, int, int, int, bool]]:
    """(name, rows, in, out, input-major weight): sampling-time and training-time matrix products.

    The input-major rows store the (out, in) weight transposed in memory, as the AR sampler does for few rows.
    """
    cases = []
    for rows, fan_in, fan_out in ((16, 512, 1536), (16, 1024, 4096), (2048, 1024, 1024)):
        cases.append((f"linear {rows} x {fan_in} -> {fan_out}", rows, fan_in, fan_out, False))
        if rows < 128:
            cases.append((f"linear {rows} x {fan_in} -> {fan_out}, in-major", rows, fan_in, fan_out, True))
    return cases


def conv_cases() -> list[tuple[str, int, int, int]]:
    """(name, batch, channels, size): 3x3 convolutions at the widths of the VQ-16 decoder's stages."""
    return [(f"conv 3x3, {c} ch, {size} px", batch, c, size) for batch, c, size in ((2, 128, 128), (4, 256, 32),
                                                                                     (4, 512, 16))]


def gflops(op: Callable[..., torch.Tensor], x: torch.Tensor, w: torch.Tensor, flops: int, seconds: float) -> float:
    """GFLOP/s of op(x, w)."""
    return flops / seconds_per_call(lambda: op(x, w), seconds) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min_seconds", type=float, default=1.0, help="time spent per measurement")
    args = parser.parse_args()
    if args.threads < 1 or args.min_seconds <= 0:
        parser.error("--threads must be >= 1 and --min_seconds > 0")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads; GFLOP/s (higher is better)")
    header = f"{'kernel':<34}" + "".join(f"{name:>8}" for name in DTYPES)
    print(header + "\n" + "-" * len(header))
    torch.manual_seed(0)
    conv = functools.partial(F.conv2d, padding=1)
    with torch.inference_mode():
        for name, rows, fan_in, fan_out, input_major in gemm_cases():
            x, w = torch.randn(rows, fan_in), torch.randn(fan_out, fan_in)
            if input_major:
                w = w.t().contiguous().t()
            flops = 2 * rows * fan_in * fan_out
            # .to() keeps w's strides, so the input-major layout carries over to every dtype
            cells = [gflops(F.linear, x.to(d), w.to(d), flops, args.min_seconds) for d in DTYPES.values()]
            print(f"{name:<34}" + "".join(f"{c:>8.0f}" for c in cells))
        for name, batch, channels, size in conv_cases():
            x, w = torch.randn(batch, channels, size, size), torch.randn(channels, channels, 3, 3)
            flops = 2 * batch * channels * channels * 9 * size * size
            cells = [gflops(conv, x.to(d), w.to(d), flops, args.min_seconds) for d in DTYPES.values()]
            print(f"{name:<34}" + "".join(f"{c:>8.0f}" for c in cells))
        streamed_gemms(args.min_seconds)


def streamed_gemms(min_seconds: float, megabytes: int = 96) -> None:
    """GFLOP/s of 16-row GEMMs 512 -> 1536 cycling through `megabytes` of distinct fp16 weights (cache-cold reads)."""
    rows, fan_in, fan_out = 16, 512, 1536
    count = megabytes * 2**20 // (2 * fan_in * fan_out)
    weights = [torch.randn(fan_out, fan_in).half() for _ in range(count)]
    x = torch.randn(rows, fan_in)
    flops = 2 * rows * fan_in * fan_out * count
    contenders = {
        "torch fp32, in-major": (x, [w.float().t().contiguous().t() for w in weights], F.linear),
        "torch fp16, in-major": (x.half(), [w.t().contiguous().t() for w in weights], F.linear),
        "torch bf16": (x.bfloat16(), [w.bfloat16() for w in weights], F.linear),
    }
    if kernel_available():
        contenders["half_linear fp16, packed"] = (x, [pack_weight(w) for w in weights], half_linear)
        contenders["half_linear bf16, packed"] = (x, [pack_weight(w.bfloat16()) for w in weights], half_linear)
    print(f"\n16 x {fan_in} -> {fan_out} over {count} distinct weights ({megabytes} MB as fp16), GFLOP/s")
    for name, (inputs, stack, op) in contenders.items():
        run = functools.partial(lambda op, inputs, stack: [op(inputs, w) for w in stack], op, inputs, stack)
        seconds = seconds_per_call(run, min_seconds)
        print(f"{name:<34}{flops / seconds / 1e9:>8.0f}")


if __name__ == "__main__":
    main()
