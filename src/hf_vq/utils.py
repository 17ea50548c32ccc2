"""Small shared helpers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path`, on error it is removed.

    Readers never see a half-written folder: `path` is either the old complete one or the new complete one.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def save_pretrained_atomic(obj, path: str | os.PathLike) -> Path:
    """`obj.save_pretrained(path)` through `atomic_directory`."""
    with atomic_directory(path) as tmp:
        obj.save_pretrained(tmp)
    return Path(path)
