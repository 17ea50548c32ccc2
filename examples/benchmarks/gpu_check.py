"""The GPU check's numbers: FAR-Base and GPT-B sampling at 256 px and FAR-Base training steps, as one JSON.

Sampling: batch 64 with classifier-free guidance 2.0 (128 rows), bf16 weights, random weights (output heads std
0.02), eager and compiled, side by side with the official FQGAN (FAR) and LlamaGen (GPT) samplers when their
checkouts are given (they get the same weights: the state-dict keys are the same). For each: images per second
(median of the timed calls after a warm-up call, which is reported apart because it includes compilation), peak
GPU memory above the weights, and the bytes of the KV caches the sampler allocated (measured for hf_vq by watching
its cache allocations; computed for the official samplers from their cache shapes). Training: 30 steps of
FAR-Base, bf16 autocast over fp32 weights, fused AdamW, batch 32 of random 16x16x2 token grids: median step time
and peak memory. Without CUDA it prints the computed KV-cache sizes (FAR-Large included) and stops.

    python examples/benchmarks/gpu_check.py --out gpu_check.json \\
        --official-fqgan path/to/FQGAN --official-llamagen path/to/LlamaGen
    python examples/benchmarks/gpu_check.py --tiny --device cpu --out dry.json   # every code path, tiny, any device

`--tiny` runs the same steps on tiny models, so that the script can be checked (as the tests do, on CPU) before a
GPU's time is spent on it; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampling import import_official  # noqa: E402

from hf_vq import FARConfig, FARForClassConditionalGeneration  # noqa: E402
from hf_vq.benchmark.runner import versions  # noqa: E402
from hf_vq.generators import modeling_far  # noqa: E402

CFG = 2.0


@dataclass(frozen=True)
class Scale:
    """What the check runs at: the token grid, vocabulary and classes, the batch, and overrides of the presets."""

    size: dict = field(default_factory=lambda: dict(grid_size=16, vocab_size=16384, num_classes=1000))  # 256 px, /16
    batch: int = 64
    overrides: dict = field(default_factory=dict)
    train_batch: int = 32

    def config(self, preset: str) -> FARConfig:
        return FARConfig.from_preset(preset, **self.size, **self.overrides)


FULL = Scale()
TINY = Scale(size=dict(grid_size=4, vocab_size=64, num_classes=10), batch=4, train_batch=4,
             overrides=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                            num_head_layers=1))


class Device:
    """Synchronisation and peak memory on CUDA; on other devices no sync is needed and memory is not measured."""

    def __init__(self, name: str):
        self.name = name
        self.cuda = torch.device(name).type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.name)

    def start_peak(self) -> int:
        """Reset the peak and return the memory allocated now."""
        if not self.cuda:
            return 0
        torch.cuda.reset_peak_memory_stats(self.name)
        return torch.cuda.memory_allocated(self.name)

    def peak_gib(self, base: int = 0) -> float | None:
        return (torch.cuda.max_memory_allocated(self.name) - base) / 2**30 if self.cuda else None


def kv_cache_bytes(config: FARConfig, rows: int, dtype: torch.dtype) -> int:
    """Bytes of the static KV caches `sample` allocates for `rows` rows (the batch, doubled with CFG): the backbone's
    over every image position, and for k > 1 the AR head's over the k sub-token positions."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_position = 2 * rows * config.hidden_size * itemsize  # keys and values
    total = config.num_hidden_layers * config.num_image_tokens * per_position
    if config.num_codebooks > 1:
        total += config.num_head_layers * config.num_codebooks * per_position
    return total


def random_model(scale: Scale, preset: str, device: str) -> FARForClassConditionalGeneration:
    torch.manual_seed(0)
    model = FARForClassConditionalGeneration(scale.config(preset))
    for head in model.output_heads:
        torch.nn.init.normal_(head.weight, std=0.02)
    return model.to(device, torch.bfloat16).eval()


def measure(sample: Callable[[], object], images: int, runs: int, device: Device) -> dict:
    """A warm-up call, then `runs` timed calls of `sample` (which draws `images` images): img/s (median), warm-up
    seconds, peak GPU memory of the timed calls above the memory before the warm-up (so what the warm-up keeps, such
    as a CUDA graph's memory pool, counts)."""
    device.sync()
    base = device.start_peak()
    start = time.perf_counter()
    sample()
    device.sync()
    warmup = time.perf_counter() - start
    seconds, peaks = [], []
    for _ in range(runs):
        device.start_peak()
        start = time.perf_counter()
        sample()
        device.sync()
        seconds.append(time.perf_counter() - start)
        peaks.append(device.peak_gib(base))
    median = statistics.median(seconds)
    return {"img_per_s": images / median, "seconds": median, "warmup_seconds": warmup,
            "peak_memory_gib": None if None in peaks else max(peaks)}


def ours(model: FARForClassConditionalGeneration, labels: torch.Tensor, compile: bool, runs: int,
         device: Device) -> dict:
    allocated = []
    init = modeling_far.StaticKVCache.__init__  # every cache allocates here (FixedShapeKVCache through super())

    def watched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        allocated.append(sum(t.numel() * t.element_size() for t in (*self.keys, *self.values)))

    modeling_far.StaticKVCache.__init__ = watched
    try:
        def sample():
            allocated.clear()
            return model.sample(labels, guidance_scale=CFG, generator=torch.manual_seed(0), compile=compile)

        result = measure(sample, len(labels), runs, device)
    finally:
        modeling_far.StaticKVCache.__init__ = init
    return {**result, "kv_cache_bytes": sum(allocated)}


def official(root: Path, model: FARForClassConditionalGeneration, labels: torch.Tensor, compile: bool,
             runs: int, device: Device) -> dict:
    """The official sampler with `model`'s weights, bf16, on the same device."""
    c = model.config
    n = c.num_image_tokens
    args = dict(dim=c.hidden_size, n_layer=c.num_hidden_layers, n_head=c.num_attention_heads,
                vocab_size=c.vocab_size, block_size=n, num_classes=c.num_classes)
    if c.num_codebooks == 1:
        gpt, generate = import_official(root, ["autoregressive.models.gpt", "autoregressive.models.generate"])
        net = gpt.Transformer(gpt.ModelArgs(**args))

        def run(m):
            return generate.generate(m, labels, n, cfg_scale=CFG)
    else:
        far, generate = import_official(root, ["autoregressive.models.far_dual", "autoregressive.models.generate_dual"])
        net = far.Transformer(far.ModelArgs(ar_n_layer=c.num_head_layers, **args))
        knobs = dict(cfg_scale=[CFG] * 2, temperature=[1.0] * 2, top_k=[0] * 2, top_p=[1.0] * 2)

        def run(m):
            return generate.generate_fq(m, labels, n, **knobs)

    net.load_state_dict(model.state_dict())  # same key names
    net = net.to(labels.device, torch.bfloat16).eval()
    if compile:  # as LlamaGen's sample_c2i.py does
        net = torch.compile(net, mode="reduce-overhead", fullgraph=True)
    result = measure(lambda: (torch.manual_seed(0), run(net)), len(labels), runs, device)
    return {**result, "kv_cache_bytes": kv_cache_bytes(c, 2 * len(labels), torch.bfloat16)}


def train_steps(scale: Scale, device: Device, steps: int = 30) -> dict:
    """`steps` bf16-autocast AdamW steps of FAR-Base on random token grids: median step time and peak memory (above
    what was allocated before the model, so that what the sampling runs left behind does not count)."""
    torch.manual_seed(0)
    base = device.start_peak()
    model = FARForClassConditionalGeneration(scale.config("FAR-Base")).to(device.name).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.cuda)
    n, batch = model.config.num_image_tokens, scale.train_batch
    seconds = []
    for step in range(steps):
        ids = torch.randint(0, scale.size["vocab_size"], (batch, 2, n), device=device.name)
        labels = torch.randint(0, scale.size["num_classes"], (batch,), device=device.name)
        device.sync()
        start = time.perf_counter()
        with torch.autocast(torch.device(device.name).type, dtype=torch.bfloat16):
            loss = model(ids, labels, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        device.sync()
        if step >= 5:  # the first steps warm up the allocator and cuBLAS
            seconds.append(time.perf_counter() - start)
    return {"steps": steps, "batch": batch, "step_seconds": statistics.median(seconds),
            "peak_memory_gib": device.peak_gib(base), "final_loss": loss.item()}


def main(argv: list[str] | None = None) -> dict | None:
    """Run the check; returns the report (None when there is no device to measure on)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--official-fqgan", type=Path, help="local checkout of showlab/FQGAN (FAR sampler)")
    parser.add_argument("--official-llamagen", type=Path, help="local checkout of FoundationVision/LlamaGen")
    parser.add_argument("--runs", type=int, default=2, help="timed calls per contender, after the warm-up")
    parser.add_argument("--no-compile", action="store_true", help="eager samplers only")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models: check the script, not the device")
    parser.add_argument("--train-steps", type=int, default=30, help="at least 6: the first 5 are not timed")
    args = parser.parse_args(argv)
    if args.train_steps < 6:
        parser.error(f"--train-steps must be at least 6 (the first 5 warm up, untimed), got {args.train_steps}")
    scale = TINY if args.tiny else FULL

    computed = {preset: {dtype: kv_cache_bytes(FULL.config(preset), 2 * FULL.batch, getattr(torch, dtype))
                         for dtype in ("float32", "bfloat16")} for preset in ("GPT-B", "FAR-Base", "FAR-Large")}
    report: dict = {"batch": scale.batch, "guidance_scale": CFG, "tiny": args.tiny,
                    "kv_cache_bytes_computed": computed}
    for preset, sizes in computed.items():
        print(f"{preset} KV cache, batch {FULL.batch} with CFG: fp32 {sizes['float32'] / 1e9:.2f} GB, "
              f"bf16 {sizes['bfloat16'] / 1e9:.2f} GB")
    device = Device(args.device)
    if device.cuda and not torch.cuda.is_available():
        print("no CUDA device: nothing else to measure")
        return None
    report |= {"device": torch.cuda.get_device_name(args.device) if device.cuda else args.device,
               "versions": versions()}
    labels = torch.arange(scale.batch, device=args.device) % scale.size["num_classes"]
    modes = [False] if args.no_compile else [False, True]
    for preset, root in (("GPT-B", args.official_llamagen), ("FAR-Base", args.official_fqgan)):
        model = random_model(scale, preset, args.device)
        rows = report.setdefault("sampling", {}).setdefault(preset, {})
        for compile in modes:
            mode = "compiled" if compile else "eager"
            rows[f"hf_vq {mode}"] = ours(model, labels, compile, args.runs, device)
            print(preset, f"hf_vq {mode}", rows[f"hf_vq {mode}"], flush=True)
            if root is not None:
                try:
                    rows[f"official {mode}"] = official(root, model, labels, compile, args.runs, device)
                    if compile and model.config.num_codebooks > 1:
                        rows[f"official {mode}"]["note"] = (
                            "FQGAN's generate_fq calls generate_context and decode_subtoken, not forward, so the "
                            "compiled module runs eagerly: this row measures the eager sampler")
                except (Exception, SystemExit) as error:  # the official code's failure is a finding, not the end
                    rows[f"official {mode}"] = {"error": f"{type(error).__name__}: {error}"[:500]}
                print(preset, f"official {mode}", rows[f"official {mode}"], flush=True)
        del model
        if device.cuda:
            torch.cuda.empty_cache()
    report["training"] = {"FAR-Base": train_steps(scale, device, args.train_steps)}
    print("training", report["training"], flush=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
