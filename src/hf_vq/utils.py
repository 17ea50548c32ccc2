"""Small shared helpers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def save_pretrained_atomic(obj, path: str | os.PathLike) -> Path:
    """`obj.save_pretrained` into a temp folder beside `path`, then swap it in (never a half-written folder)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    obj.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path
