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


def require_hub_token() -> None:
    """Fail fast (before any training) when a run asks to push to the Hub but no token is configured."""
    from huggingface_hub import get_token

    if get_token() is None:
        raise ValueError(
            "--push_to_hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN, "
            "or drop --push_to_hub and upload later with `hf-vq push FOLDER REPO_ID`."
        )


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False,
                message: str = "Upload with hf-vq") -> str:
    """Create `repo_id` if needed and upload a saved folder (model card included) as one commit; returns its URL."""
    from huggingface_hub import create_repo, upload_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    repo_id = create_repo(repo_id, private=private, exist_ok=True).repo_id
    return str(upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message))
