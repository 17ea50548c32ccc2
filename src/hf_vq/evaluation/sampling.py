"""Samples for generation metrics at scale: sharded over processes, resumable, saved in ADM's `.npz` layout.

Sample i is class i // per_class and draws from its own generator seeded from (seed, i), so the set depends
on neither the number of processes nor the batch size. Batches of `batch_size` consecutive indices are the
unit of work and of resumption: process r of P takes the batches j with j % P == r, writes each as its own
file (temp file, then rename), and skips the batches already on disk, so a run killed at any point resumes
with no duplicate and no gap. The last step gathers them into `samples.npz` with `arr_0` (N, H, W, C) uint8
images and `arr_1` (N,) labels, the layout OpenAI's ADM evaluator (guided-diffusion
`evaluations/evaluator.py`) reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..generators.sampling import SEEDED_DRAWS
from ..utils import write_file_atomic
from .images import to_uint8

MANIFEST_NAME = "samples.json"
SAMPLES_NAME = "samples.npz"
_SEED_LIMIT = 2**31  # seeds and indices share one 64-bit generator seed: seed * 2**32 + index


def process_state():
    """Accelerate's process state, set up as `Accelerator()` would: CPU processes (ACCELERATE_USE_CPU, as
    `accelerate launch --cpu` sets it) join a gloo group instead of each running alone."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def sample_seed(seed: int, index: int) -> int:
    """The generator seed of sample `index` in a set drawn with `seed` (distinct for every pair)."""
    if not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2**31), got {seed}")
    if not 0 <= index < 2**32:
        raise ValueError(f"sample index must be in [0, 2**32), got {index}")
    return seed * 2**32 + index


def _batch_path(folder: Path, batch: int) -> Path:
    return folder / "batches" / f"batch-{batch:06d}.npz"


def _check_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Start a new sample folder, or resume one whose manifest matches; refuse anything else."""
    path = folder / MANIFEST_NAME
    if path.is_file():
        existing = json.loads(path.read_text())
        differs = {k: (existing.get(k), v) for k, v in manifest.items() if existing.get(k) != v}
        if differs:
            detail = ", ".join(f"{k}: {old!r} on disk, {new!r} now" for k, (old, new) in differs.items())
            raise ValueError(
                f"{folder} holds samples drawn with other settings ({detail}); resume with the same settings, or "
                "choose another folder"
            )
    elif folder.exists() and not folder.is_dir():
        raise FileExistsError(f"sample folder {folder} exists and is not a folder; choose another path")
    elif folder.is_dir() and any(folder.iterdir()):
        raise FileExistsError(
            f"{folder} is not empty and holds no {MANIFEST_NAME}, so it is not a sample folder hf_vq started; "
            "choose another folder"
        )


def generate_samples(
    sample_fn: Callable[[list[int], list[torch.Generator]], torch.Tensor],
    folder: str | os.PathLike,
    num_classes: int,
    per_class: int,
    seed: int = 0,
    batch_size: int = 50,
    settings: dict[str, Any] | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> Path | None:
    """Draw `per_class` samples of each class into `folder`, on every process of the current Accelerate state.

    Args:
        sample_fn: (class ids, one generator per sample) -> (B, C, H, W) images in [0, 1], e.g. a pipeline with
            `output_type="pt"` (see `pipeline_sample_fn`).
        settings: what else defines the samples (model, guidance scale, ...); recorded in the manifest, and a
            resumed run must repeat it.
        max_batches: stop after this many new batches on this process (a time-boxed job); run again to go on.

    Returns:
        `folder / samples.npz` once every sample exists (on every process), else None.
    """
    from tqdm.auto import tqdm

    for name, value in (("num_classes", num_classes), ("per_class", per_class), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    total = num_classes * per_class
    sample_seed(seed, total - 1)  # refuses a bad seed before any work
    folder = Path(folder)
    manifest = {"num_classes": num_classes, "per_class": per_class, "seed": seed, "batch_size": batch_size,
                "layout": "ADM npz: arr_0 (N, H, W, C) uint8, arr_1 (N,) labels; sample i is class i // per_class",
                # how a seed becomes tokens: a folder begun under another scheme is not resumed (its set would mix)
                "draws": SEEDED_DRAWS,
                "settings": json.loads(json.dumps(settings or {}))}
    state = process_state()
    _check_manifest(folder, manifest)
    state.wait_for_everyone()  # every rank checked the old manifest before rank 0 writes a new one
    if state.is_main_process and not (folder / MANIFEST_NAME).is_file():
        write_file_atomic(folder / MANIFEST_NAME, lambda p: p.write_text(json.dumps(manifest, indent=2) + "\n"))

    num_batches = -(-total // batch_size)
    mine = [j for j in range(state.process_index, num_batches, state.num_processes)]
    todo = [j for j in mine if not _batch_path(folder, j).is_file()]
    if max_batches is not None:
        todo = todo[:max_batches]
    bar = tqdm(todo, desc=f"sampling (process {state.process_index})", disable=not progress)
    for j in bar:
        indices = list(range(j * batch_size, min((j + 1) * batch_size, total)))
        labels = [i // per_class for i in indices]
        generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]
        images = sample_fn(labels, generators)
        if images.dim() != 4 or images.shape[0] != len(indices):
            raise ValueError(f"sample_fn must return ({len(indices)}, C, H, W) images, got {tuple(images.shape)}")
        pixels = to_uint8(images, value_range=(0.0, 1.0))

        def write(path: Path, pixels=pixels, labels=labels, indices=indices) -> None:
            with open(path, "wb") as f:
                np.savez(f, images=pixels, labels=np.asarray(labels, np.int64), indices=np.asarray(indices, np.int64))

        write_file_atomic(_batch_path(folder, j), write)
    state.wait_for_everyone()
    if not all(_batch_path(folder, j).is_file() for j in range(num_batches)):
        return None
    out = folder / SAMPLES_NAME
    if state.is_main_process and not out.is_file():
        write_file_atomic(out, lambda p: _gather(folder, num_batches, total, p))
    state.wait_for_everyone()
    return out


def _gather(folder: Path, num_batches: int, total: int, path: Path) -> None:
    images, labels, indices = [], [], []
    for j in range(num_batches):
        with np.load(_batch_path(folder, j)) as batch:
            images.append(batch["images"])
            labels.append(batch["labels"])
            indices.append(batch["indices"])
    indices = np.concatenate(indices)
    if not np.array_equal(indices, np.arange(total)):
        raise RuntimeError(f"the batch files of {folder} do not hold samples 0..{total - 1} once each")
    with open(path, "wb") as f:
        np.savez(f, arr_0=np.concatenate(images), arr_1=np.concatenate(labels))


def pipeline_sample_fn(pipeline, **knobs) -> Callable[[list[int], list[torch.Generator]], torch.Tensor]:
    """Wrap an `FQGANPipeline` (or any class-conditional pipeline with the same call) as a `sample_fn`."""

    def sample(labels: list[int], generators: list[torch.Generator]) -> torch.Tensor:
        return pipeline(labels, generator=generators, output_type="pt", **knobs).images

    return sample


def load_samples(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, H, W, C) uint8 images and (N,) labels (None when absent) from an ADM-layout `.npz`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sample file at {path}")
    with np.load(path) as data:
        if "arr_0" not in data:
            raise ValueError(f"{path} is not in ADM's layout: it has no arr_0 image array (keys {list(data.keys())})")
        images, labels = data["arr_0"], data["arr_1"] if "arr_1" in data else None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: arr_0 must be (N, H, W, 1 or 3) uint8 images, got {images.dtype} {images.shape}")
    return images, labels
