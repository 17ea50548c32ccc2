"""Sampling throughput on CPU: hf_vq's FAR / GPT samplers vs the official FQGAN / LlamaGen samplers.

Models: a small FAR (width 512, 8 layers, 8 heads, 2 AR-head layers, k=2, vocab 1024, 8x8 grid) and a plain
LlamaGen GPT of the same width (k=1); batch 8 with classifier-free guidance 2.0, in fp32 and with half-precision
(bf16 or fp16) weights. The official models get our random weights (the state-dict keys are the same), so both
sample the same distribution and, fed the same global seed, give the same tokens. Contenders run in turn inside every
run (the order rotates) and the table shows medians, so load from other processes hits all of them alike;
CPU seconds (process time) are shown next to wall seconds because the machine may be shared.

    python examples/benchmarks/bench_sampling.py
    python examples/benchmarks/bench_sampling.py --models 2 --dtype fp32 --generator --vocab-size 16384
    python examples/benchmarks/bench_sampling.py --models --trained src/hf_vq/assets/fmnist-fqgan-dual-far --batch 100
    python examples/benchmarks/bench_sampling.py --official-fqgan /path/to/showlab+FQGAN \\
        --official-llamagen /path/to/FoundationVision+LlamaGen --runs 5 --profile

It also checks: fp32 cached sampling == full recompute (same seed), and half precision vs fp32 teacher-forced
logits (top-1 agreement and mean KL). Peak memory is the process's peak RSS during one call minus its RSS before it
(Linux /proc/self/clear_refs). The official code is imported from the given paths at run time only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from hf_vq import FARConfig, FARForClassConditionalGeneration
from hf_vq.generators import cpu_decoding

SMALL = dict(
    vocab_size=1024,
    num_classes=1000,
    hidden_size=512,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_head_layers=2,
    grid_size=8,
)


@dataclass
class Contender:
    name: str
    dtype: str
    sample: Callable[[], torch.Tensor]
    first_call: float = 0.0  # the warm-up call's wall seconds: includes compilation for compiled contenders
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    memory: list[float] = field(default_factory=list)


def _status_kib(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{name} missing from /proc/self/status")


def timed(contender: Contender, seed: int) -> torch.Tensor:
    """One sampling call: wall and CPU seconds, and peak RSS above the RSS it started from."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak) to the current RSS
    start_rss = _status_kib("VmRSS")
    torch.manual_seed(seed)  # the official samplers draw from the global generator
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = contender.sample()
    contender.wall.append(time.perf_counter() - wall)
    contender.cpu.append(time.process_time() - cpu)
    contender.memory.append((_status_kib("VmHWM") - start_rss) / 1024)
    return tokens


def random_model(k: int, seed: int, vocab_size: int = SMALL["vocab_size"]) -> FARForClassConditionalGeneration:
    """The small model with random weights; output heads get std 0.05 (not zero) so logits are peaked."""
    torch.manual_seed(seed)
    model = FARForClassConditionalGeneration(FARConfig(num_codebooks=k, **{**SMALL, "vocab_size": vocab_size})).eval()
    for head in model.output_heads:
        torch.nn.init.normal_(head.weight, std=0.05)
    return model


def import_official(root: Path, modules: list[str]) -> list[ModuleType]:
    """Import modules from an official checkout; both repositories name their packages `autoregressive`/`utils`."""
    for name in list(sys.modules):
        if name.split(".")[0] in ("autoregressive", "utils"):
            del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        return [__import__(name, fromlist=["_"]) for name in modules]
    except ImportError as e:
        raise SystemExit(f"cannot import {modules} from {root}: {e}") from e
    finally:
        sys.path.remove(str(root))


def official_sampler(
    root: Path, ours: FARForClassConditionalGeneration, labels: torch.Tensor, scale: float
) -> Callable[[], torch.Tensor]:
    """The official FAR (k=2) or GPT (k=1) with `ours`'s weights, as a () -> (B, k, N) sampler."""
    c = ours.config
    n = c.num_image_tokens
    args = dict(
        dim=c.hidden_size,
        n_layer=c.num_hidden_layers,
        n_head=c.num_attention_heads,
        vocab_size=c.vocab_size,
        block_size=n,
        num_classes=c.num_classes,
    )
    if c.num_codebooks == 1:
        gpt, generate = import_official(root, ["autoregressive.models.gpt", "autoregressive.models.generate"])
        model = gpt.Transformer(gpt.ModelArgs(**args))

        def sample() -> torch.Tensor:
            return generate.generate(model, labels, n, cfg_scale=scale)[:, None]

    else:
        far, generate = import_official(root, ["autoregressive.models.far_dual", "autoregressive.models.generate_dual"])
        model = far.Transformer(far.ModelArgs(ar_n_layer=c.num_head_layers, **args))
        knobs = dict(cfg_scale=[scale] * 2, temperature=[1.0] * 2, top_k=[0] * 2, top_p=[1.0] * 2)

        def sample() -> torch.Tensor:
            return torch.stack(generate.generate_fq(model, labels, n, **knobs), dim=1)

    model.load_state_dict(ours.state_dict())  # same key names
    model.to(ours.dtype).eval()
    return sample


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_as(model: FARForClassConditionalGeneration, dtype: str) -> FARForClassConditionalGeneration:
    """The model as a user gets it with `from_pretrained(..., dtype=...)` (fp32 logits whatever the dtype)."""
    if dtype == "fp32":
        return model
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return FARForClassConditionalGeneration.from_pretrained(tmp, dtype=DTYPES[dtype]).eval()


def check_half(
    model: FARForClassConditionalGeneration, tokens: torch.Tensor, labels: torch.Tensor, dtype: str
) -> str:
    """Teacher-forced logits of half-precision weights vs fp32 on sampled tokens: top-1 agreement and mean KL, under
    the CPU's rule (fp32 activations) and, emulated on the CPU, the GPU's (GEMMs and attention in the half dtype)."""
    half = load_as(model, dtype)
    lines = []
    with torch.no_grad():
        ref = model(tokens, labels).logits.log_softmax(-1)
        rules = {"CPU rule": cpu_decoding.activation_dtype, "GPU rule": lambda weight_dtype, device: weight_dtype}
        for rule, activation_dtype in rules.items():
            real, cpu_decoding.activation_dtype = cpu_decoding.activation_dtype, activation_dtype
            try:
                low = half(tokens, labels).logits.log_softmax(-1)
            finally:
                cpu_decoding.activation_dtype = real
            flipped = ref.argmax(-1) != low.argmax(-1)
            top1 = 1 - flipped.float().mean().item()
            kl = F.kl_div(low, ref, log_target=True, reduction="none").sum(-1).mean().item()
            verdict = "ok" if top1 >= 0.99 and kl <= 1e-3 else "FAILS (>= 99% and <= 1e-3 wanted)"
            line = (f"{dtype} vs fp32 teacher-forced logits, {rule}: top-1 agreement {100 * top1:.2f}%, mean KL "
                    f"{kl:.2e} -> {verdict}")
            if flipped.any():
                top2 = ref.topk(2, dim=-1).values
                gap = (top2[..., 0] - top2[..., 1])[flipped].max().item()
                line += f"\n  (disagreements are near-ties: fp32 top-2 log-prob gap <= {gap:.3f} where they differ)"
            lines.append(line)
    return "\n".join(lines)


def check_trained(path: Path, batch: int, cfg: float) -> None:
    """Half-precision agreement on a trained generator, teacher-forced on its own fp32 samples (every class in turn)."""
    folder = path / "transformer" if (path / "transformer").is_dir() else path
    model = FARForClassConditionalGeneration.from_pretrained(folder).eval()
    labels = torch.arange(batch) % model.config.num_classes
    tokens = model.sample(labels, guidance_scale=cfg, generator=torch.Generator().manual_seed(0))
    print(f"\ntrained {folder} ({model.num_parameters() / 1e6:.2f}M params), {batch} samples:")
    for dtype in ("bf16", "fp16"):
        print(check_half(model, tokens, labels, dtype))


def bench_model(k: int, args: argparse.Namespace) -> None:
    name = "FAR (k=2)" if k == 2 else "GPT (k=1)"
    root = args.official_fqgan if k == 2 else args.official_llamagen
    labels = torch.arange(args.batch) % SMALL["num_classes"]
    ours = random_model(k, args.seed, args.vocab_size)

    fp32_tokens = ours.sample(labels[:2], guidance_scale=args.cfg, generator=torch.Generator().manual_seed(0))
    full = ours.sample(labels[:2], guidance_scale=args.cfg, generator=torch.Generator().manual_seed(0), use_cache=False)
    print(f"\n{name}: fp32 cached tokens == full recompute: {torch.equal(fp32_tokens, full)}")
    sampled = ours.sample(labels, guidance_scale=args.cfg, generator=torch.Generator().manual_seed(1))
    for dtype in args.dtype:
        if dtype != "fp32":
            print(check_half(ours, sampled, labels, dtype))

    runners = []
    for dtype in args.dtype:
        model = load_as(ours, dtype)
        runners.append(Contender(f"hf_vq {dtype}", dtype, lambda m=model: m.sample(labels, guidance_scale=args.cfg)))
        if args.generator:  # a seed's draws: one number per sub-token instead of torch.multinomial's vocab-wide noise
            runners.append(Contender(f"hf_vq {dtype} generator", dtype, lambda m=model: m.sample(
                labels, guidance_scale=args.cfg, generator=torch.Generator().manual_seed(args.seed))))
        if args.compile:
            runners.append(
                Contender(
                    f"hf_vq {dtype} compiled", dtype,
                    lambda m=model: m.sample(labels, guidance_scale=args.cfg, compile=True),
                )
            )
        if root is not None:
            runners.append(Contender(f"official {dtype}", dtype, official_sampler(root, model, labels, args.cfg)))

    outputs = {c.name: timed(c, args.seed) for c in runners}  # warm-up; same seed -> comparable tokens
    for c in runners:  # the warm-up call (and any compilation) stays out of the medians
        c.first_call = c.wall.pop()
        c.cpu.pop()
        c.memory.pop()
    for run in range(args.runs):
        shift = run % len(runners)
        for c in runners[shift:] + runners[:shift]:
            timed(c, args.seed)

    n_tokens = args.batch * k * SMALL["grid_size"] ** 2
    params = ours.num_parameters() / 1e6
    print(
        f"{name}, {params:.1f}M params, batch {args.batch}, cfg {args.cfg}, median of {args.runs} runs, "
        f"{torch.get_num_threads()} threads"
    )
    reference = {
        dtype: statistics.median(c.wall) for c in runners for dtype in args.dtype if c.name == f"official {dtype}"
    }
    header = f"{'contender':<22}{'images/s':>10}{'tokens/s':>10}{'wall s':>9}{'cpu s':>8}{'peak MiB':>10}"
    header += f"{'1st call s':>12}"
    header += f"{'x official fp32':>17}{'x official same dtype':>22}" if reference else ""
    print(header + "\n" + "-" * len(header))
    for c in runners:
        wall = statistics.median(c.wall)
        row = f"{c.name:<22}{args.batch / wall:>10.2f}{n_tokens / wall:>10.0f}{wall:>9.2f}"
        row += f"{statistics.median(c.cpu):>8.2f}{statistics.median(c.memory):>10.0f}{c.first_call:>12.1f}"
        if "fp32" in reference:
            row += f"{reference['fp32'] / wall:>17.2f}"
            row += f"{reference[c.dtype] / wall:>22.2f}" if c.dtype in reference else f"{'':>22}"
        print(row)
    for dtype in args.dtype:
        if f"official {dtype}" in outputs:
            same = torch.equal(outputs[f"hf_vq {dtype}"], outputs[f"official {dtype}"].long())
            print(f"hf_vq {dtype} tokens == official {dtype} tokens (same weights, same seed): {same}")
        if f"hf_vq {dtype} compiled" in outputs:
            agree = (outputs[f"hf_vq {dtype} compiled"] == outputs[f"hf_vq {dtype}"]).float().mean()
            print(f"hf_vq {dtype} compiled tokens equal to eager (same seed): {agree:.2%}")
    if args.profile:
        profile(runners, args.seed)


def profile(runners: list[Contender], seed: int) -> None:
    """Where the time goes: the heaviest operators of one call per contender."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for c in runners:
        torch.manual_seed(seed)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            c.sample()
        print(f"\nprofile: {c.name}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-fqgan", type=Path, help="local checkout of showlab/FQGAN (FAR sampler)")
    parser.add_argument("--official-llamagen", type=Path, help="local checkout of FoundationVision/LlamaGen")
    parser.add_argument("--models", nargs="*", type=int, default=[2, 1], choices=[1, 2],
                        help="k: 2 = FAR, 1 = GPT; none with --trained to check only the trained model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16", "fp16"], choices=list(DTYPES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="add hf_vq contenders sampling with compile=True")
    parser.add_argument("--generator", action="store_true",
                        help="add hf_vq contenders drawing from a torch.Generator (the others draw from the global "
                        "seed, as the official samplers)")
    parser.add_argument("--vocab-size", type=int, default=SMALL["vocab_size"], help="of every sub-codebook")
    parser.add_argument("--profile", action="store_true",
                        help="print a torch.profiler table per contender (compiled kernels then carry profiler "
                        "hooks, in the timed runs too)")
    parser.add_argument("--trained", type=Path, default=None,
                        help="also check bf16/fp16 agreement on a trained generator (pipeline or transformer folder)")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs must be at least 3 (the table reports medians)")
    if args.cfg <= 1.0 and args.official_fqgan is not None:
        parser.error("the official FAR sampler needs --cfg > 1")
    for flag in ("official_fqgan", "official_llamagen"):
        path = getattr(args, flag)
        if path is not None and not path.is_dir():
            parser.error(f"--{flag.replace('_', '-')} {path} is not a folder")
    torch.set_num_threads(args.threads)
    if args.profile:  # name each generated kernel in the profile; without it a compiled call is one opaque row
        from torch._inductor import config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    for k in args.models:
        bench_model(k, args)
    if args.trained is not None:
        check_trained(args.trained, args.batch, args.cfg)


if __name__ == "__main__":
    main()
