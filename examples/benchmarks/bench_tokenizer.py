"""Tokenizer throughput on CPU: hf_vq's FQGANTokenizer vs the official LlamaGen VQ code vs diffusers' VQModel.

Times `tokenize` (images -> indices) and `detokenize` (indices -> images) for the ds16 preset at 256 px and a
small VQ model at 32 px, in fp32 and under bf16 autocast, and prints images/s and peak memory per contender.
The official model gets our random weights (renamed to its keys), so both compute the same function and their
indices are compared; diffusers' VQModel has the same widths and depth (its attention layout differs, so its
indices are not comparable). Every run times each contender once, in an order that rotates from run to run,
and the table shows medians, so load from other processes hits all contenders alike.

    python examples/benchmarks/bench_tokenizer.py --official-root /path/to/FoundationVision+LlamaGen
    python examples/benchmarks/bench_tokenizer.py --sizes 32 --batch 32 --runs 5 --dtype fp32
    python examples/benchmarks/bench_tokenizer.py --sizes 32 --trained path/to/tokenizer --images fashion-mnist

The official code is imported from --official-root at run time (never part of hf_vq); without it those rows are
skipped. Peak memory is measured after the timed runs, one call per contender: the process's peak RSS during
the call minus its RSS before it (Linux /proc/self/clear_refs, after glibc's malloc_trim), i.e. the activations
and temporaries on top of the loaded weights.
--trained additionally reports how many indices bf16 autocast keeps on a trained tokenizer and real images.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import VQModel
from torch import nn

from hf_vq import FQGANTokenizer

# A small single-codebook VQ for 32 px images (8x8 tokens).
SMALL = {
    "base_channels": 64, "channel_multipliers": (1, 2, 2), "z_channels": 64,
    "quantizer": {"kind": "vq", "codebook_size": 1024, "dim": 8},
}
# size -> (model, its config (None: the preset of that name), default batch)
CONFIGS = {256: ("vq-ds16", None, 4), 32: ("small", SMALL, 32)}
STAGES = ("encode", "decode")
# ours -> official LlamaGen key prefixes (single codebook, no adapters).
OFFICIAL_RENAMES = (
    ("encoder.trunk.", "encoder."),
    ("encoder.heads.0.", "encoder."),
    ("quant_convs.0.", "quant_conv."),
    ("quantize.codebooks.0.", "quantize."),
)


@dataclass
class Contender:
    """One implementation at one precision: images -> (B, 1, h, w) indices, and back."""

    name: str
    encode: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    bf16: bool = False
    seconds: dict[str, list[float]] = field(default_factory=lambda: {stage: [] for stage in STAGES})
    peak_mib: dict[str, float] = field(default_factory=dict)

    def __call__(self, stage: str, x: torch.Tensor) -> torch.Tensor:
        fn = self.encode if stage == "encode" else self.decode
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16) if self.bf16 else nullcontext():
            return fn(x)

    def timed(self, stage: str, x: torch.Tensor) -> None:
        start = time.perf_counter()
        self(stage, x)
        self.seconds[stage].append(time.perf_counter() - start)

    def measure_peak(self, stage: str, x: torch.Tensor) -> None:
        release_free_memory()
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak) to the current RSS
        start = _status_kib("VmRSS")
        self(stage, x)
        self.peak_mib[stage] = (_status_kib("VmHWM") - start) / 1024

    def images_per_second(self, stage: str, batch: int) -> float:
        return batch / statistics.median(self.seconds[stage])


def _status_kib(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{name} missing from /proc/self/status")


def release_free_memory() -> None:
    """Hand glibc's free heap pages back to the OS, so that the next RSS peak counts only memory put to use."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def official_model(root: Path, ours: FQGANTokenizer) -> nn.Module:
    """The official LlamaGen VQModel with `ours`'s architecture and weights, in eval mode."""
    sys.path.insert(0, str(root))
    try:
        from tokenizer.tokenizer_image.vq_model import Decoder, Encoder, ModelArgs
        from tokenizer.tokenizer_image.vq_model import VQModel as OfficialVQModel
    except ImportError as e:
        raise SystemExit(f"cannot import the official LlamaGen tokenizer from --official-root {root}: {e}") from e
    cfg = ours.config
    mult = list(cfg.channel_multipliers)
    model = OfficialVQModel(
        ModelArgs(
            codebook_size=cfg.quantizer["codebook_size"], codebook_embed_dim=cfg.quantizer["dim"], encoder_ch_mult=mult,
            decoder_ch_mult=mult, z_channels=cfg.z_channels,
        )
    )
    # VQModel fixes the base width at 128 and two blocks per level; rebuild the trunk for other sizes.
    trunk = {
        "ch": cfg.base_channels, "ch_mult": mult, "num_res_blocks": cfg.num_res_blocks, "z_channels": cfg.z_channels,
    }
    model.encoder, model.decoder = Encoder(**trunk), Decoder(**trunk)
    state = {}
    for key, value in ours.state_dict().items():
        for old, new in OFFICIAL_RENAMES:
            if key.startswith(old):
                key = new + key.removeprefix(old)
                break
        state[key] = value
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"quantize.codebook_used"}:
        raise SystemExit(f"weight mapping to the official model failed: missing {missing}, unexpected {unexpected}")
    return model.eval()


def diffusers_model(ours: FQGANTokenizer) -> VQModel:
    """diffusers' VQModel with the same widths, depth, latent and codebook sizes (its own random weights)."""
    cfg = ours.config
    levels = len(cfg.channel_multipliers)
    return VQModel(
        block_out_channels=tuple(cfg.base_channels * m for m in cfg.channel_multipliers),
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=cfg.num_res_blocks,
        latent_channels=cfg.z_channels,
        num_vq_embeddings=cfg.quantizer["codebook_size"],
        vq_embed_dim=cfg.quantizer["dim"],
        norm_num_groups=32,
    ).eval()


def build_contenders(ours: FQGANTokenizer, official: nn.Module | None, dtypes: list[str]) -> list[Contender]:
    factor, dim = ours.downsample_factor, ours.config.quantizer["dim"]

    def grid(indices: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return indices.view(images.shape[0], 1, images.shape[2] // factor, images.shape[3] // factor)

    contenders = [Contender(f"hf_vq {d}", ours.tokenize, ours.detokenize, bf16=d == "bf16") for d in dtypes]
    if official is not None:

        def official_encode(x: torch.Tensor) -> torch.Tensor:
            return grid(official.encode(x)[2][2], x)

        def official_decode(indices: torch.Tensor) -> torch.Tensor:
            b, _, h, w = indices.shape
            return official.decode_code(indices.flatten(), shape=(b, dim, h, w))

        contenders += [Contender(f"official {d}", official_encode, official_decode, bf16=d == "bf16") for d in dtypes]
    vq = diffusers_model(ours)

    def diffusers_encode(x: torch.Tensor) -> torch.Tensor:
        return grid(vq.quantize(vq.encode(x).latents)[2][2], x)

    def diffusers_decode(indices: torch.Tensor) -> torch.Tensor:
        b, _, h, w = indices.shape
        codes = vq.quantize.get_codebook_entry(indices.flatten(), (b, h, w, dim))
        return vq.decode(codes, force_not_quantize=True).sample

    return contenders + [Contender("diffusers fp32", diffusers_encode, diffusers_decode)]


def agreement(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"{100 * (a == b).float().mean().item():.2f}%"


@dataclass
class SizeBench:
    """Every contender on one model size, with the inputs they share and their first outputs."""

    name: str
    params: float
    images: torch.Tensor
    contenders: list[Contender]
    indices: dict[str, torch.Tensor] = field(default_factory=dict)
    recon: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.indices[self.contenders[0].name]


def setup_size(size: int, batch: int, args: argparse.Namespace) -> SizeBench:
    name, config, _ = CONFIGS[size]
    torch.manual_seed(args.seed)
    ours = (FQGANTokenizer.from_preset(name) if config is None else FQGANTokenizer(**config)).eval()
    official = official_model(args.official_root, ours) if args.official_root else None
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(args.seed)) * 2 - 1
    bench = SizeBench(name, sum(p.numel() for p in ours.parameters()) / 1e6, images,
                      build_contenders(ours, official, args.dtype))
    # The warm-up call of each contender also gives the indices and images compared in the report.
    bench.indices = {c.name: c("encode", images) for c in bench.contenders}
    bench.recon = {c.name: c("decode", bench.inputs[1]) for c in bench.contenders}
    return bench


def time_runs(bench: SizeBench, runs: int) -> None:
    contenders = bench.contenders
    for run in range(runs):
        for c in contenders[run % len(contenders):] + contenders[: run % len(contenders)]:
            for stage, x in zip(STAGES, bench.inputs):
                c.timed(stage, x)


def report(bench: SizeBench, args: argparse.Namespace) -> None:
    batch, size = bench.images.shape[0], bench.images.shape[-1]
    print(f"\n{bench.name} ({bench.params:.1f}M params) at {size} px, batch {batch}, median of {args.runs} runs, "
          f"{torch.get_num_threads()} threads")
    reference = next((c for c in bench.contenders if c.name == "official fp32"), None)
    header = f"{'contender':<16}{'encode img/s':>14}{'decode img/s':>14}{'enc peak MiB':>14}{'dec peak MiB':>14}"
    header += f"{'x official fp32 (enc, dec)':>29}" if reference else ""
    print(header + "\n" + "-" * len(header))
    for c in bench.contenders:
        enc, dec = (c.images_per_second(stage, batch) for stage in STAGES)
        row = f"{c.name:<16}{enc:>14.3f}{dec:>14.3f}{c.peak_mib['encode']:>14.0f}{c.peak_mib['decode']:>14.0f}"
        if reference:
            speedups = (c.images_per_second(s, batch) / reference.images_per_second(s, batch) for s in STAGES)
            row += "{:>22.2f}{:>7.2f}".format(*speedups)
        print(row)
    indices, recon = bench.indices, bench.recon
    if reference and "hf_vq fp32" in indices:
        diff = (recon["official fp32"] - recon["hf_vq fp32"]).abs().max().item()
        print(f"hf_vq fp32 vs official fp32 (same weights): indices equal "
              f"{agreement(indices['hf_vq fp32'], indices['official fp32'])}, max |reconstruction diff| {diff:.2e}")
    if len(args.dtype) == 2:
        line = f"bf16 indices equal to fp32: hf_vq {agreement(indices['hf_vq bf16'], indices['hf_vq fp32'])}"
        if reference:
            line += f", official {agreement(indices['official bf16'], indices['official fp32'])}"
        print(line)


def trained_agreement(path: Path, source: str, num_images: int) -> None:
    """bf16-vs-fp32 index agreement of a trained tokenizer on the first test images of `source`."""
    from hf_vq.training.data import ImageTransform, load_image_dataset

    model = FQGANTokenizer.from_pretrained(path).eval()
    cfg = model.config
    dataset = load_image_dataset(source, split="test").select(range(num_images))
    transform = ImageTransform(cfg.sample_size, channels=cfg.in_channels)
    images = torch.stack([transform(image) for image in dataset["image"]])
    indices = model.tokenize(images)
    with torch.autocast("cpu", torch.bfloat16):
        indices_bf16 = model.tokenize(images)
    per_codebook = ", ".join(agreement(indices_bf16[:, i], indices[:, i]) for i in range(cfg.num_codebooks))
    print(f"\ntrained tokenizer {path} on {num_images} {source} test images at {cfg.sample_size} px: "
          f"bf16 indices equal to fp32 {agreement(indices_bf16, indices)} (per codebook: {per_codebook})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-root", type=Path, help="local checkout of FoundationVision/LlamaGen")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 32], choices=sorted(CONFIGS))
    parser.add_argument(
        "--batch", type=int, nargs="+", help="one per size, or one for all (default: 4 at 256 px, 32 at 32 px)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trained", type=Path, help="a save_pretrained FQGANTokenizer folder")
    parser.add_argument(
        "--images", default="fashion-mnist", help="image source for --trained, its test split (see load_image_dataset)"
    )
    parser.add_argument("--num-images", type=int, default=256)
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs must be at least 3 (the table reports medians)")
    if args.batch is not None and len(args.batch) not in (1, len(args.sizes)):
        parser.error(f"--batch takes one value or one per size ({len(args.sizes)}), got {len(args.batch)}")
    if args.official_root is not None and not args.official_root.is_dir():
        parser.error(f"--official-root {args.official_root} is not a folder")
    if args.num_images < 1:
        parser.error(f"--num-images must be positive, got {args.num_images}")
    if args.trained is not None and not (args.trained / "config.json").is_file():
        parser.error(f"--trained {args.trained} has no config.json; pass a folder written by save_pretrained")
    args.dtype = sorted(set(args.dtype), key=["fp32", "bf16"].index)

    torch.set_num_threads(args.threads)
    if args.batch is None:
        batches = [CONFIGS[size][2] for size in args.sizes]
    else:
        batches = args.batch * len(args.sizes) if len(args.batch) == 1 else args.batch
    for size, batch in zip(args.sizes, batches):
        bench = setup_size(size, batch, args)
        time_runs(bench, args.runs)
        for c in bench.contenders:
            for stage, x in zip(STAGES, bench.inputs):
                c.measure_peak(stage, x)
        report(bench, args)
    if args.trained is not None:
        trained_agreement(args.trained, args.images, args.num_images)


if __name__ == "__main__":
    main()
