"""`convert_checkpoint`: an official `.pt` file -> a `save_pretrained` folder, and the `hf-vq convert` helpers."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from torch import nn

from ..utils import check_output_dir, save_pretrained_atomic
from .checkpoint import ConversionReport, load_official_state_dict, preview
from .generator import GENERATOR_KINDS, convert_generator_state_dict
from .tokenizer import TOKENIZER_KINDS, convert_tokenizer_state_dict
from .vqkd import KIND as VQKD_KIND
from .vqkd import convert_vqkd_state_dict

logger = logging.getLogger(__name__)

CHECKPOINT_KINDS = TOKENIZER_KINDS + GENERATOR_KINDS
# A kind may also be given as a family, leaving the member to detection.
KIND_FAMILIES = {"tokenizer": TOKENIZER_KINDS, "generator": GENERATOR_KINDS}
# A key that only this kind's checkpoints have.
_SIGNATURE_KEYS = {
    "llamagen-vq": "quantize.embedding.weight",
    "fqgan-dual": "quantize_sem.embedding.weight",
    "fqgan-triple": "quantize_sem_mid.embedding.weight",
    "llamagen-gpt": "tok_embeddings.weight",
    "far": "tok_embeddings_1.weight",
    VQKD_KIND: "encode_task_layer.0.weight",
}
# A kind whose signature key another kind's checkpoints also hold: it is not found when that kind's key is there
# (BEiT-v2 VQ-KD files also have `quantize.embedding.weight`).
_SHADOWED_BY = {"llamagen-vq": VQKD_KIND}


def detect_kind(keys: Collection[str], kind: str | None = None) -> str:
    """The checkpoint kind its keys show; `kind` may name it (then it is checked) or a family to choose from."""
    if kind is not None and kind not in CHECKPOINT_KINDS and kind not in KIND_FAMILIES:
        raise ValueError(f"unknown kind {kind!r}; choose one of {CHECKPOINT_KINDS + tuple(KIND_FAMILIES)}")
    found = [
        k
        for k, key in _SIGNATURE_KEYS.items()
        if key in keys and not (k in _SHADOWED_BY and _SIGNATURE_KEYS[_SHADOWED_BY[k]] in keys)
    ]
    allowed = KIND_FAMILIES.get(kind, (kind,) if kind else CHECKPOINT_KINDS)
    candidates = [k for k in found if k in allowed]
    if len(candidates) == 1:
        return candidates[0]
    wanted = ", ".join(f"{_SIGNATURE_KEYS[k]} ({k})" for k in allowed)
    looks_like = f"its keys look like a {' / '.join(found)} checkpoint" if found else "its keys match no known kind"
    shadowed = [k for k in allowed if k in _SHADOWED_BY and _SIGNATURE_KEYS[k] in keys and k not in found]
    if not candidates and shadowed:
        raise ValueError(
            f"not a {kind} checkpoint: it has {_SIGNATURE_KEYS[shadowed[0]]}, but also "
            f"{_SIGNATURE_KEYS[_SHADOWED_BY[shadowed[0]]]}, so {looks_like} (keys: {preview(keys, 6)}). "
            "Pass the right --kind, or check the file."
        )
    if not candidates:
        raise ValueError(
            f"not a {kind or 'known'} checkpoint: none of the keys {wanted} is present (missing keys); {looks_like} "
            f"(keys: {preview(keys, 6)}). Pass the right --kind, or check the file."
        )
    raise ValueError(f"ambiguous checkpoint: it has the keys of {', '.join(candidates)}; pass --kind")


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    kind: str | None = None,
    image_size: int | None = None,
    num_heads: int | None = None,
    checkpoint_name: str | None = None,
) -> tuple[nn.Module, ConversionReport]:
    """An official state dict -> (our model in eval mode, report). `checkpoint_name` gives the image-size hint."""
    kind = detect_kind(state_dict.keys(), kind)
    if kind == VQKD_KIND:
        return convert_vqkd_state_dict(state_dict, image_size, num_heads)
    if kind in TOKENIZER_KINDS:
        if num_heads is not None:
            raise ValueError(f"--num-heads applies to generators; a {kind} tokenizer's head counts are fixed (8)")
        return convert_tokenizer_state_dict(state_dict, kind, image_size)
    return convert_generator_state_dict(state_dict, kind, image_size, num_heads, checkpoint_name)


def _convert(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    kind: str | None,
    image_size: int | None,
    num_heads: int | None,
    overwrite: bool,
) -> tuple[Path, ConversionReport]:
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite)
    state_dict, source = load_official_state_dict(checkpoint)
    model, report = convert_state_dict(
        state_dict, kind=kind, image_size=image_size, num_heads=num_heads, checkpoint_name=Path(checkpoint).name
    )
    report.source = source
    return save_pretrained_atomic(model, output_dir, "hf-vq convert", overwrite), report


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    kind: str | None = None,
    image_size: int | None = None,
    num_heads: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an official LlamaGen / FQGAN `.pt` checkpoint into a `save_pretrained` folder (safetensors).

    Args:
        checkpoint: the official file (LlamaGen VQ or GPT, FQGAN tokenizer, FAR, BEiT-v2 VQ-KD).
        output_dir: folder to create; written atomically, and refused when not empty unless `overwrite`.
        kind: one of CHECKPOINT_KINDS, "tokenizer" or "generator"; detected from the keys when None.
        image_size: generators: image size of the model (default from a `_256`/`_384` file-name hint, else the
            preset's released size, else 256); tokenizers: checked against the adapters' (VQ-KD: the position
            embeddings') fixed grid.
        num_heads: generators off the preset table: attention head count; VQ-KD: the ViTs' head count (default
            12, as in the official code).

    Every official key is mapped or dropped on purpose; the dropped keys and the settings that come from presets
    or flags are logged (logger `hf_vq.conversion`). Any unexpected, missing or mis-shaped key raises before
    anything is written.
    """
    path, report = _convert(checkpoint, output_dir, kind, image_size, num_heads, overwrite)
    logger.info("%s\nsaved to %s", report, path)
    return path


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `hf-vq convert` arguments to a (sub)parser."""
    parser.add_argument(
        "checkpoint", type=Path, help="official .pt file (LlamaGen VQ/GPT, FQGAN tokenizer, FAR, BEiT-v2 VQ-KD)"
    )
    parser.add_argument("output_dir", type=Path, help="folder to write the save_pretrained files to")
    parser.add_argument(
        "--kind",
        choices=CHECKPOINT_KINDS + tuple(KIND_FAMILIES),
        default=None,
        help="checkpoint kind (default: detected from the keys)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="generators: image size (default: from a _256/_384 file-name hint, else the preset's, else 256)",
    )
    parser.add_argument(
        "--num-heads",
        type=int,
        default=None,
        help="generators off the preset table: head count; beitv2-vqkd: the ViTs' head count (default 12)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def run_convert(args: argparse.Namespace) -> int:
    """Run `hf-vq convert` from parsed arguments; print the report. Returns the exit status."""
    path, report = _convert(
        args.checkpoint, args.output_dir, args.kind, args.image_size, args.num_heads, args.overwrite
    )
    print(report)
    print(f"saved to {path}")
    return 0
