"""Check hf_vq's converted models against the official LlamaGen / FQGAN / BEiT-v2 VQ-KD code, on random weights.

The official code is imported from a local checkout given on the command line (it is never part of hf_vq):
the script builds the official model with random weights, saves it the way the official training scripts do
({"model": state_dict}), converts the file with `hf_vq.convert_checkpoint`, reloads the converted folder and
compares outputs: code indices, reconstructions and the feature heads for tokenizers (official model in eval
mode: its quantizer fails in train mode on CPU), teacher-forced logits and loss for GPT / FAR.

    python upload/check_parity.py --official-root /path/to/FoundationVision+LlamaGen --kind vq
    python upload/check_parity.py --official-root /path/to/FoundationVision+LlamaGen --kind gpt --small
    python upload/check_parity.py --official-root /path/to/showlab+FQGAN --kind fqgan-dual
    python upload/check_parity.py --official-root /path/to/showlab+FQGAN --kind far
    python upload/check_parity.py --official-root /path/to/unilm/beit2 --kind beitv2-vqkd

For beitv2-vqkd the root is a folder holding microsoft/unilm's `beit2/modeling_vqkd.py`, `modeling_finetune.py`
(its ViT) and `norm_ema_quantizer.py`, which are loaded by file path and run as they are (`einops` must be
importable). Their imports that carry no numerics are stand-ins defined here (see `install_vqkd_stand_ins`): timm's
`trunc_normal_` (initialisation only: every weight is then randomised), `to_2tuple`, `drop_path` (unused at drop
rate 0; raises if called), `register_model` and `IMAGENET_DEFAULT_MEAN/STD` (only for process_type
"imagenet_norm"), BEiT-v2's `utils` (unused by the model), and the teacher loaders `vqkd_teacher.clip.load` /
`get_dino_vit_base`, which return a small random stand-in teacher, so that the saved file carries `teacher_model.*`
keys for the converter to drop. The three released configurations (decoder 1x / 3x, CLIP / DINO) are checked:
indices from the official `get_codebook_indices` on [0, 1] images against ours on the same images in [-1, 1],
and the feature decoder's teacher-feature predictions from the same codes.

--small uses reduced widths and depths where the official code allows it (the FQGAN tokenizers hard-code
their 512-wide adapters and 256 px grid, so for them it only drops the ds8 model and uses one image).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from torch import nn

from hf_vq import AutoImageTokenizer, FQGANTokenizer
from hf_vq.conversion import convert_checkpoint
from hf_vq.generators.modeling_far import FARForClassConditionalGeneration

KINDS = ("vq", "fqgan-dual", "fqgan-triple", "gpt", "far", "beitv2-vqkd")


def import_official(root: Path, module: str):
    """Import a module of the official checkout (its files import `utils.*` etc. from the repository root)."""
    if not root.is_dir():
        raise SystemExit(f"--official-root {root} is not a folder")
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise SystemExit(f"cannot import {module} from {root} ({e}); is it the right checkout for this --kind?") from e


@torch.no_grad()
def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere, norms included: default inits leave norms at 1/0 and GPT's output head at 0."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if "norm" in name or ".ln_" in name or name.startswith("ln_"):
            p.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
        elif p.dim() >= 2 and "embedding" not in name:
            p.copy_(noise * (p.shape[1] if p.dim() == 2 else p[0].numel()) ** -0.5)
        else:
            p.add_(0.02 * noise)
    return model.eval()


def convert(official: nn.Module, workdir: Path, name: str, **kwargs) -> tuple[Path, float]:
    """Save an official state dict as the official scripts do, convert it, and time the conversion."""
    checkpoint = workdir / f"{name}.pt"
    state = official.state_dict()
    if hasattr(official, "freqs_cis"):
        # Some released GPT files carry the precomputed RoPE table; the converter must drop it.
        state["freqs_cis"] = official.freqs_cis
    torch.save({"model": state, "steps": 0}, checkpoint)
    start = time.perf_counter()
    out = convert_checkpoint(checkpoint, workdir / name, **kwargs)
    return out, time.perf_counter() - start


def params(model: nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M"


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"{(a.float() - b.float()).abs().max().item():.2e} (max |ref| {a.abs().max().item():.3g})"


# ---------------------------------------------------------------------------------------------- tokenizers
def tokenizer_cases(kind: str, root: Path, small: bool) -> list[tuple[str, nn.Module, int, list]]:
    """(name, official model, image size, per-codebook official names) for each model to check."""
    if kind == "vq":
        vq = import_official(root, "tokenizer.tokenizer_image.vq_model")
        if small:
            args = vq.ModelArgs(encoder_ch_mult=[1, 2], decoder_ch_mult=[1, 2], codebook_size=1024)
            return [("VQ (ch_mult 1,2)", vq.VQModel(args), 32, [""])]
        return [("VQ-16", vq.VQ_16(), 256, [""]), ("VQ-8", vq.VQ_8(), 256, [""])]
    variant = kind.split("-")[1]
    fq = import_official(root, f"tokenizer.vq_model_{variant}")
    names = ["vis", "sem"] if variant == "dual" else ["vis", "sem_mid", "sem_high"]
    builders = [("ds16", fq.VQ_16)] + ([] if small else [("ds8", fq.VQ_8)])
    return [(f"FQGAN-{variant}-{ds}", build(with_clip_supervision=True), 256, names) for ds, build in builders]


@torch.no_grad()
def official_encode(model: nn.Module, x: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, list]:
    """(B, k, h, w) official indices in FAR order, and the official quantized maps in the same order."""
    heads = model.encoder(x)
    # Official encoders return their heads in their own order: Dual (sem, vis), Triple (vis, mid, high).
    order = {1: [""], 2: ["sem", "vis"], 3: ["vis", "sem_mid", "sem_high"]}[len(names)]
    heads = dict(zip(order, [heads] if len(names) == 1 else heads))
    quantized, indices = [], []
    for name in names:
        suffix = f"_{name}" if name else ""
        q, _, info = getattr(model, f"quantize{suffix}")(getattr(model, f"quant_conv{suffix}")(heads[name]))
        quantized.append(q)
        indices.append(info[2].view(q.shape[0], *q.shape[2:]))
    return torch.stack(indices, dim=1), quantized


@torch.no_grad()
def official_decode_code(model: nn.Module, indices: torch.Tensor, names: list[str], dim: int) -> torch.Tensor:
    """The official decode_code, with its own argument order (Dual takes sem first)."""
    b, k, h, w = indices.shape
    codes = {name: indices[:, i].flatten() for i, name in enumerate(names)}
    shape = (b, dim, h, w)
    if k == 1:
        return model.decode_code(codes[""], shape)
    if k == 2:
        return model.decode_code(codes["sem"], codes["vis"], shape, shape)
    return model.decode_code(codes["vis"], codes["sem_mid"], codes["sem_high"], shape, shape, shape)


@torch.no_grad()
def check_tokenizer(name: str, official: nn.Module, size: int, names: list[str], workdir: Path, batch: int) -> list:
    randomize(official, seed=0)
    out, seconds = convert(official, workdir, name.replace(" ", "_").replace(",", ""))
    ours = FQGANTokenizer.from_pretrained(out).eval()
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1

    ref_indices, ref_codes = official_encode(official, x, names)
    ours_indices = ours.tokenize(x)
    rows = [
        (name, params(ours), "conversion time", f"{seconds:.1f} s"),
        (name, "", "indices equal", f"{(ref_indices == ours_indices).float().mean().item():.2%}"),
        (name, "", "max |Δ reconstruction| (forward)", maxdiff(official(x)[0], ours(x).sample)),
        (
            name,
            "",
            "max |Δ decode_code| (same indices)",
            maxdiff(official_decode_code(official, ref_indices, names, ours.config.quantizer["dim"]),
                    ours.detokenize(ref_indices)),
        ),
    ]
    heads = {"sem": "feat_pred_head", "sem_mid": "mid_sem_feat_pred", "sem_high": "high_sem_feat_pred"}
    for i, branch in enumerate(names):
        if branch in heads and hasattr(official, heads[branch]):
            ref = getattr(official, heads[branch])(ref_codes[i])[:, 0]
            ours_feature = ours.feature_heads[str(i)](ref_codes[i])
            rows.append((name, "", f"max |Δ feature head {branch}|", maxdiff(ref, ours_feature)))
    return rows


# ---------------------------------------------------------------------------------------------- BEiT-v2 VQ-KD
VQKD_FILES = ("modeling_finetune", "norm_ema_quantizer", "modeling_vqkd")  # in import order


def install_vqkd_stand_ins() -> None:
    """Modules that BEiT-v2's VQ-KD files import for things other than numerics (see the module docstring)."""

    def module(name: str, **attrs) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    def drop_path(x, drop_prob=0.0, training=False):
        if drop_prob and training:
            raise NotImplementedError("drop_path stand-in: stochastic depth is not expected in this check")
        return x

    def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
        return nn.init.trunc_normal_(tensor, mean, std, a, b)

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    class StandInTeacher(nn.Module):
        """A few parameters under CLIP / DINO-like names; never run (teacher targets are not checked)."""

        def __init__(self):
            super().__init__()
            self.visual = nn.Module()
            self.visual.conv1 = nn.Conv2d(3, 8, 16, 16, bias=False)
            self.visual.proj = nn.Parameter(torch.zeros(8, 4))
            self.positional_embedding = nn.Parameter(torch.zeros(5, 8))

    module("timm", models=module("timm.models", layers=module("timm.models.layers", drop_path=drop_path,
                                                             to_2tuple=to_2tuple, trunc_normal_=trunc_normal_),
                                 registry=module("timm.models.registry", register_model=lambda f: f)),
           data=module("timm.data", constants=module("timm.data.constants",
                                                     IMAGENET_DEFAULT_MEAN=(0.485, 0.456, 0.406),
                                                     IMAGENET_DEFAULT_STD=(0.229, 0.224, 0.225))))
    module("utils")
    module("vqkd_teacher", clip=module("vqkd_teacher.clip", load=lambda *a, **k: (StandInTeacher(), None)),
           get_dino_vit_base=StandInTeacher)


def load_official_vqkd(root: Path) -> types.ModuleType:
    """Load the official VQ-KD files from `root` by path (their own imports resolve to each other)."""
    missing = [f"{name}.py" for name in VQKD_FILES if not (root / f"{name}.py").is_file()]
    if missing:
        raise SystemExit(f"--official-root {root} lacks {', '.join(missing)} (copy them from microsoft/unilm beit2/)")
    install_vqkd_stand_ins()
    for name in VQKD_FILES:
        spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules["modeling_vqkd"]


@torch.no_grad()
def randomize_vqkd(official: nn.Module, seed: int) -> nn.Module:
    """Random weights, and a trained-like quantizer: unit-norm codes, k-means init flag set."""
    randomize(official, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    embedding = official.quantize.embedding
    embedding.weight.copy_(nn.functional.normalize(torch.randn(embedding.weight.shape, generator=gen), dim=-1))
    embedding.initted.fill_(1)
    return official


@torch.no_grad()
def check_vqkd(root: Path, workdir: Path, batch: int) -> list:
    vqkd = load_official_vqkd(root)
    names = ("vqkd_encoder_base_decoder_1x768x12_clip", "vqkd_encoder_base_decoder_3x768x12_clip",
             "vqkd_encoder_base_decoder_1x768x12_dino")
    rows = []
    for name in names:
        official = randomize_vqkd(getattr(vqkd, name)(), seed=0)  # with its (stand-in) teacher, as in training
        short = name.replace("vqkd_encoder_base_decoder_", "")
        out, seconds = convert(official, workdir, name)
        ours = AutoImageTokenizer.from_pretrained(out).eval()
        x01 = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))  # official input: [0, 1]

        ref_indices = official.get_codebook_indices(x01).view(batch, 1, 14, 14)
        ours_indices = ours.tokenize(x01 * 2 - 1)  # ours: [-1, 1]
        same_input = ours.tokenize(official.pre_process(x01))  # the official [-1, 1] tensor itself
        ref_codes, _, _ = official.encode(official.pre_process(x01))
        ours_codes = ours.encode(official.pre_process(x01)).latents
        ref_features = official.decode(ref_codes)
        ours_features = ours.predict_teacher_features(ours.indices_to_latents(ref_indices))
        try:
            ours.detokenize(ours_indices)
            decodes = "decodes (unexpected)"
        except ValueError as e:
            decodes = "refused: " + str(e).split(":")[0]
        rows += [
            (short, params(ours), "conversion time", f"{seconds:.1f} s"),
            (short, "", "indices equal ([0,1] official vs [-1,1] ours)",
             f"{(ref_indices == ours_indices).float().mean().item():.2%}"),
            (short, "", "distinct codes among the indices", f"{ref_indices.unique().numel()} of {ref_indices.numel()}"),
            (short, "", "indices equal (same [-1,1] tensor)",
             f"{(ref_indices == same_input).float().mean().item():.2%}"),
            (short, "", "max |Δ codes| (same input)", maxdiff(ref_codes, ours_codes)),
            (short, "", "max |Δ teacher features| (same codes)", maxdiff(ref_features, ours_features)),
            (short, "", "detokenize", decodes),
        ]
    return rows


# ---------------------------------------------------------------------------------------------- generators
def generator_cases(kind: str, root: Path, small: bool) -> list[tuple[str, nn.Module, int, dict]]:
    """(name, official model, k, convert kwargs) for each model to check."""
    reduced = dict(n_layer=2, n_head=4, dim=256, vocab_size=4096)
    if kind == "gpt":
        gpt = import_official(root, "autoregressive.models.gpt")
        if small:
            return [("GPT (2 layers, 256 wide)", gpt.Transformer(gpt.ModelArgs(**reduced)), 1, dict(num_heads=4))]
        return [("GPT-B", gpt.GPT_B(), 1, {})]
    cases = []
    for k, variant in ((2, "dual"), (3, "triple")):
        far = import_official(root, f"autoregressive.models.far_{variant}")
        model = far.Transformer(far.ModelArgs(**reduced, ar_n_layer=2)) if small else far.FAR_B()
        cases.append((f"FAR-{variant}" + (" (2+2 layers, 256 wide)" if small else "-B"), model, k,
                      dict(num_heads=4) if small else {}))
    return cases


@torch.no_grad()
def check_generator(name: str, official: nn.Module, k: int, kwargs: dict, workdir: Path, batch: int) -> list:
    randomize(official, seed=0)
    out, seconds = convert(official, workdir, name.split(" ")[0] + "_256", **kwargs)
    ours = FARForClassConditionalGeneration.from_pretrained(out).eval()
    n, vocab = official.block_size, official.vocab_size
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(vocab, (batch, k, n), generator=gen)
    labels = torch.randint(official.num_classes, (batch,), generator=gen)
    positions = torch.arange(n)  # eval mode indexes the RoPE table by input_pos

    if k == 1:
        ref_logits, ref_loss = official(tokens[:, 0, :-1], labels, input_pos=positions, targets=tokens[:, 0])
        ref_logits = ref_logits[:, None]
    else:
        idx = {f"idx_{j + 1}": tokens[:, j].contiguous() for j in range(k)}
        targets = {f"targets_{j + 1}": tokens[:, j].contiguous() for j in range(k)}
        *ref_logits, ref_loss = official(**idx, cond_idx=labels, input_pos=positions, **targets)
        ref_logits = torch.stack(ref_logits, dim=1)
    result = ours(input_ids=tokens, class_labels=labels, labels=tokens)
    return [
        (name, params(ours), "conversion time", f"{seconds:.1f} s"),
        (name, "", "max |Δ logits| (teacher forcing)", maxdiff(ref_logits, result.logits)),
        (name, "", "|Δ loss|", f"{abs(ref_loss.item() - result.loss.item()):.2e} (loss {ref_loss.item():.4f})"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--official-root",
        type=Path,
        required=True,
        help="local checkout of LlamaGen (vq, gpt), FQGAN (fqgan-*, far), or unilm's beit2/ folder (beitv2-vqkd)",
    )
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--small", action="store_true", help="reduced sizes, for a quick run")
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.kind == "beitv2-vqkd":
            rows += check_vqkd(args.official_root, Path(tmp), args.batch_size)
        elif args.kind in ("gpt", "far"):
            for name, model, k, kwargs in generator_cases(args.kind, args.official_root, args.small):
                rows += check_generator(name, model, k, kwargs, Path(tmp), args.batch_size)
        else:
            batch = 1 if args.small and args.kind != "vq" else args.batch_size
            for name, model, size, names in tokenizer_cases(args.kind, args.official_root, args.small):
                rows += check_tokenizer(name, model, size, names, Path(tmp), batch)

    widths = [max(len(str(r[i])) for r in rows + [("model", "params", "check", "value")]) for i in range(4)]
    for row in [("model", "params", "check", "value"), tuple("-" * w for w in widths)] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
