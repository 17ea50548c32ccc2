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
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampling import import_official  # noqa: E402

from hf_vq import FARConfig, FARForClassConditionalGeneration  # noqa: E402
from hf_vq.generators import modeling_far  # noqa: E402

SIZE = dict(grid_size=16, vocab_size=16384, num_classes=1000)  # 256 px through a 16x-downsampling tokenizer
BATCH, CFG = 64, 2.0


def kv_cache_bytes(config: FARConfig, rows: int, dtype: torch.dtype) -> int:
    """Bytes of the static KV caches `sample` allocates for `rows` rows (the batch, doubled with CFG): the backbone's
    over every image position, and for k > 1 the AR head's over the k sub-token positions."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_position = 2 * rows * config.hidden_size * itemsize  # keys and values
    total = config.num_hidden_layers * config.num_image_tokens * per_position
    if config.num_codebooks > 1:
        total += config.num_head_layers * config.num_codebooks * per_position
    return total


def random_model(preset: str, device: str) -> FARForClassConditionalGeneration:
    torch.manual_seed(0)
    model = FARForClassConditionalGeneration(FARConfig.from_preset(preset, **SIZE))
    for head in model.output_heads:
        torch.nn.init.normal_(head.weight, std=0.02)
    return model.to(device, torch.bfloat16).eval()


def measure(sample: Callable[[], torch.Tensor], runs: int) -> dict:
    """A warm-up call, then `runs` timed calls: img/s (median), warm-up seconds, peak GPU memory above the start."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    sample()
    torch.cuda.synchronize()
    warmup = time.perf_counter() - start
    seconds, peaks = [], []
    for _ in range(runs):
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        sample()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        peaks.append(torch.cuda.max_memory_allocated() - base)
    median = statistics.median(seconds)
    return {"img_per_s": BATCH / median, "seconds": median, "warmup_seconds": warmup,
            "peak_memory_gib": max(peaks) / 2**30}


def ours(model: FARForClassConditionalGeneration, labels: torch.Tensor, compile: bool, runs: int) -> dict:
    allocated = []
    caches = (modeling_far.StaticKVCache, modeling_far.FixedShapeKVCache)
    inits = [cls.__init__ for cls in caches]

    def watch(init):
        def wrapped(self, *args, **kwargs):
            init(self, *args, **kwargs)
            allocated.append(sum(t.numel() * t.element_size() for t in (*self.keys, *self.values)))
        return wrapped

    for cls, init in zip(caches, inits):
        cls.__init__ = watch(init)
    try:
        def sample():
            allocated.clear()
            return model.sample(labels, guidance_scale=CFG, generator=torch.manual_seed(0), compile=compile)

        result = measure(sample, runs)
    finally:
        for cls, init in zip(caches, inits):
            cls.__init__ = init
    return {**result, "kv_cache_bytes": sum(allocated)}


def official(root: Path, model: FARForClassConditionalGeneration, labels: torch.Tensor, compile: bool,
             runs: int) -> dict:
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
    result = measure(lambda: (torch.manual_seed(0), run(net)), runs)
    return {**result, "kv_cache_bytes": kv_cache_bytes(c, 2 * BATCH, torch.bfloat16)}


def train_steps(device: str, steps: int = 30, batch: int = 32) -> dict:
    torch.manual_seed(0)
    model = FARForClassConditionalGeneration(FARConfig.from_preset("FAR-Base", **SIZE)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    n = model.config.num_image_tokens
    seconds = []
    torch.cuda.reset_peak_memory_stats()
    for step in range(steps):
        ids = torch.randint(0, SIZE["vocab_size"], (batch, 2, n), device=device)
        labels = torch.randint(0, SIZE["num_classes"], (batch,), device=device)
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, labels, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= 5:  # the first steps warm up the allocator and cuBLAS
            seconds.append(time.perf_counter() - start)
    return {"steps": steps, "batch": batch, "step_seconds": statistics.median(seconds),
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "final_loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--official-fqgan", type=Path, help="local checkout of showlab/FQGAN (FAR sampler)")
    parser.add_argument("--official-llamagen", type=Path, help="local checkout of FoundationVision/LlamaGen")
    parser.add_argument("--runs", type=int, default=2, help="timed calls per contender, after the warm-up")
    parser.add_argument("--no-compile", action="store_true", help="eager samplers only")
    args = parser.parse_args()

    computed = {preset: {dtype: kv_cache_bytes(FARConfig.from_preset(preset, **SIZE), 2 * BATCH, getattr(torch, dtype))
                         for dtype in ("float32", "bfloat16")} for preset in ("GPT-B", "FAR-Base", "FAR-Large")}
    report: dict = {"batch": BATCH, "guidance_scale": CFG, "kv_cache_bytes_computed": computed}
    for preset, sizes in computed.items():
        print(f"{preset} KV cache, batch {BATCH} with CFG: fp32 {sizes['float32'] / 1e9:.2f} GB, "
              f"bf16 {sizes['bfloat16'] / 1e9:.2f} GB")
    if not torch.cuda.is_available():
        print("no CUDA device: nothing else to measure")
        return
    report |= {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    labels = torch.arange(BATCH, device="cuda") % SIZE["num_classes"]
    modes = [False] if args.no_compile else [False, True]
    for preset, root in (("GPT-B", args.official_llamagen), ("FAR-Base", args.official_fqgan)):
        model = random_model(preset, "cuda")
        rows = report.setdefault("sampling", {}).setdefault(preset, {})
        for compile in modes:
            mode = "compiled" if compile else "eager"
            rows[f"hf_vq {mode}"] = ours(model, labels, compile, args.runs)
            print(preset, f"hf_vq {mode}", rows[f"hf_vq {mode}"], flush=True)
            if root is not None:
                try:
                    rows[f"official {mode}"] = official(root, model, labels, compile, args.runs)
                except Exception as error:  # the official code's failure is a finding, not the end of the check
                    rows[f"official {mode}"] = {"error": f"{type(error).__name__}: {error}"[:500]}
                print(preset, f"official {mode}", rows[f"official {mode}"], flush=True)
        del model
        torch.cuda.empty_cache()
    report["training"] = {"FAR-Base": train_steps("cuda")}
    print("training", report["training"], flush=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
