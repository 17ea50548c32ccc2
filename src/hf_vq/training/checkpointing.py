"""Run-folder bookkeeping shared by the training scripts: atomic checkpoints, resume, run identity."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
RUN_FILE = "run_config.json"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete `checkpoint-<step>` folders, oldest first (temp folders of interrupted saves are ignored)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step encoded in a checkpoint folder name."""
    match = _CHECKPOINT.match(Path(path).name)
    if not match:
        raise ValueError(f"{path} is not a checkpoint-<step> folder")
    return int(match.group(1))


def prepare_run_dir(output_dir: str | os.PathLike, run_identity: dict, resume: str | None) -> Path | None:
    """Check the output folder belongs to this run and resolve `resume` ("latest" or a path) to a checkpoint.

    Raises before any work when the folder holds a different run, when it holds checkpoints but no resume was
    asked for, or when the resume path does not exist. Writes the run identity on a fresh folder.
    """
    root = Path(output_dir)
    run_file = root / RUN_FILE
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        diff = sorted(k for k in set(previous) | set(run_identity) if previous.get(k) != run_identity.get(k))
        if diff:
            raise ValueError(
                f"{root} holds a different run (differs in: {', '.join(diff)}). Choose another --output_dir, "
                "or delete the folder to start over."
            )
    checkpoint = None
    if resume is not None:
        if resume == "latest":
            checkpoints = list_checkpoints(root)
            checkpoint = checkpoints[-1] if checkpoints else None  # nothing yet: a fresh start
        else:
            checkpoint = Path(resume)
            if not checkpoint.is_dir():
                raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
    elif list_checkpoints(root):
        raise ValueError(
            f"{root} already holds checkpoints of this run; pass --resume_from_checkpoint latest to continue it, "
            "or choose another --output_dir."
        )
    return checkpoint


def write_run_identity(output_dir: str | os.PathLike, run_identity: dict) -> None:
    """Record what defines this run, atomically."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(run_identity, indent=2, sort_keys=True))
    os.replace(tmp, root / RUN_FILE)


def save_checkpoint(accelerator: Accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None) -> Path:
    """`accelerator.save_state` into a temp folder renamed to `checkpoint-<step>`; prune beyond `total_limit`.

    A kill at any moment leaves either the previous checkpoints or the new complete one, never a partial one
    under a checkpoint name.
    """
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit is not None:
            for old in list_checkpoints(root)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final

