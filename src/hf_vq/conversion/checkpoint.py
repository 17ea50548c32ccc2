"""Safe reading of official `.pt` checkpoints, and the key accounting every conversion goes through."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Where official files keep their weights, in order of preference: the EMA copy first, as the official
# evaluation scripts do, then DDP ("model"), DeepSpeed ("module") and Lightning-style ("state_dict") files.
CONTAINER_KEYS = ("ema", "model", "module", "state_dict")
# Prefixes left by saving a wrapped module (DDP, torch.compile) instead of the module itself.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_ZIP_MAGIC = b"PK\x03\x04"
# Dropped keys sharing a reason are printed one by one up to this many, else as one summary line.
_LISTED_KEYS = 8


def preview(names: Iterable[str], limit: int = 8) -> str:
    """A short, sorted listing of key names for error messages."""
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def require_shape(shapes: Mapping[str, torch.Size], key: str, kind: str) -> torch.Size:
    """The shape of an official key the kind always has; a clear error when it is missing."""
    if key not in shapes:
        raise ValueError(
            f"the checkpoint has no {key}, which every {kind} checkpoint has (missing key); is it a {kind} "
            "checkpoint? Check --kind."
        )
    return shapes[key]


def count_indexed(shapes: Mapping[str, torch.Size], pattern: str, start: int = 0) -> int:
    """How many consecutive indices start, start+1, ... fill `pattern` ("layers.{}.attention_norm.weight")."""
    n = start
    while pattern.format(n) in shapes:
        n += 1
    return n - start


def _torch_load(path: Path) -> object:
    # mmap only works on the zip format; older (legacy) files are read into memory.
    with open(path, "rb") as f:
        mmap = f.read(4) == _ZIP_MAGIC
    # LlamaGen/FQGAN training files pickle their argparse.Namespace under "args".
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def load_official_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """Read an official checkpoint with weights-only unpickling; return (state dict, where it was found).

    Accepts {"ema": sd} (preferred when present), {"model": sd}, {"module": sd}, {"state_dict": sd} and bare
    state dicts, with or without training extras ("args", optimizer state, steps).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        obj = _torch_load(path)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for damaged files
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # torch's first line may advise weights_only=False, which would run whatever the file holds: never quoted.
        advice = ("weights_only", "file an issue", "Weights only load failed")
        detail = next((line for line in lines if not any(a in line for a in advice)), lines[0] if lines else "")
        detail = detail.split(" Please use")[0]  # torch's advice there is to allowlist the global
        if "GLOBAL" in detail or "global" in detail:
            raise ValueError(
                f"{path} was refused by weights-only loading: besides tensors it holds pickled Python objects or "
                f"code, which hf_vq never runs ({detail}). Only tensors, plain containers and argparse.Namespace are "
                "read. If the file comes from a source you trust, re-save just the weights: "
                "torch.save({'model': model.state_dict()}, ...)"
            ) from e
        raise ValueError(
            f"could not read checkpoint {path} ({type(e).__name__}: {detail or 'no details'}); the file looks "
            "truncated or corrupted, or is not a torch checkpoint: download it again"
        ) from e

    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict or a dict of them")
    source = next((name for name in CONTAINER_KEYS if isinstance(obj.get(name), Mapping)), None)
    state = obj[source] if source is not None else obj
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"{path}: no state dict found. Expected tensors, either at the top level or under one of "
            f"{', '.join(repr(c) for c in CONTAINER_KEYS)}; found non-tensor entries {preview(map(str, not_tensors))}"
        )
    state = _strip_wrapper_prefixes(dict(state))
    return _own_storage(state), source or "bare state dict"


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def _own_storage(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DeepSpeed's zero_to_fp32 saves views of one flat buffer; safetensors refuses tensors sharing memory.
    seen = set()
    for key, tensor in state.items():
        if tensor.device.type == "meta" or tensor.numel() == 0:
            continue
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen or not tensor.is_contiguous():
            state[key] = tensor.clone(memory_format=torch.contiguous_format)
        seen.add(ptr)
    return state


@dataclass
class ConversionReport:
    """What a conversion did with every official key, and where the settings it could not infer came from.

    Attributes:
        kind: the checkpoint kind ("llamagen-vq", "fqgan-dual", "fqgan-triple", "llamagen-gpt", "far").
        num_mapped: official tensors copied into the model.
        num_parameters: parameters of the converted model.
        dropped: official keys left out on purpose, with the reason.
        settings: values not readable from the weights, with their origin (preset, flag, file name, default).
        source: where the weights were found in the file ("model", "ema", ..., "bare state dict").
    """

    kind: str
    num_mapped: int
    num_parameters: int
    dropped: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    source: str | None = None

    def __str__(self) -> str:
        where = f' (weights under "{self.source}")' if self.source and self.source != "bare state dict" else ""
        lines = [
            f"{self.kind} checkpoint{where}: mapped {self.num_mapped} tensors, "
            f"{self.num_parameters / 1e6:.2f}M parameters"
        ]
        if self.dropped:
            lines.append(f"dropped on purpose ({len(self.dropped)}):")
            by_reason: dict[str, list[str]] = {}
            for key, reason in self.dropped.items():
                by_reason.setdefault(reason, []).append(key)
            for reason, keys in by_reason.items():
                # A whole sub-model (a teacher's hundreds of keys) is listed as one line.
                if len(keys) > _LISTED_KEYS:
                    lines.append(f"  {len(keys)} keys ({preview(keys, 3)}): {reason}")
                else:
                    lines += [f"  {key}: {reason}" for key in keys]
        if self.settings:
            lines.append("not stored in the weights:")
            lines += [f"  {name} = {origin}" for name, origin in self.settings.items()]
        return "\n".join(lines)


def map_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    to_hf: Callable[[str], str | None],
    to_official: Callable[[str], str],
    expected: Mapping[str, torch.Size],
    kind: str,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename official keys and check them against the model's; return (our state dict, dropped official keys).

    `to_hf` gives our key, None for a key dropped on purpose, or raises KeyError for a key it does not know.
    Any unknown, missing or wrongly shaped key is an error naming the keys (in the official naming).
    """
    mapped, dropped, unexpected = {}, [], []
    for key, tensor in state_dict.items():
        try:
            new = to_hf(key)
        except KeyError:
            unexpected.append(key)
            continue
        if new is None:
            dropped.append(key)
        elif new in expected:
            mapped[new] = tensor
        else:
            unexpected.append(key)
    missing = [to_official(k) for k in expected if k not in mapped]
    wrong_shape = [
        f"{to_official(k)} {tuple(t.shape)} (expected {tuple(expected[k])})"
        for k, t in mapped.items()
        if t.shape != expected[k]
    ]
    problems = []
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {preview(unexpected)}")
    if missing:
        problems.append(f"missing keys ({len(missing)}): {preview(missing)}")
    if wrong_shape:
        problems.append(f"keys with the wrong shape ({len(wrong_shape)}): {preview(wrong_shape, 4)}")
    if problems:
        raise ValueError(
            f"the checkpoint does not match a {kind} model: " + "; ".join(problems) + ". Check that the file is a "
            f"complete {kind} checkpoint, or pass the right kind (--kind)."
        )
    not_float = [f"{to_official(k)} ({t.dtype})" for k, t in mapped.items() if not t.is_floating_point()]
    if not_float:
        raise ValueError(
            f"weights must be floating point, but {preview(not_float)} are not: the file is not an fp32/bf16/fp16 "
            "release (quantized or damaged?); convert from the original release"
        )
    non_finite = [to_official(k) for k, t in mapped.items() if t.device.type != "meta" and not torch.isfinite(t).all()]
    if non_finite:
        raise ValueError(
            f"{preview(non_finite)} hold NaN or infinite values: the checkpoint is damaged (or its training diverged); "
            "refusing to convert it"
        )
    return mapped, dropped
