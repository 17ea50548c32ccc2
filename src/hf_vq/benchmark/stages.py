"""Stages of a benchmark run, each cached in its own folder under a hash of what defines it.

A stage's identity is everything its output depends on: its resolved config, the identities (hashes) of the
stages it reads, and the hf_vq version. A finished stage has a `stage.json` record, written last and atomically,
and is never recomputed; an unfinished one is run again in the same folder, where its work resumes (training
from its last checkpoint, sampling from its last batch). A changed config makes a new hash, hence a new folder:
nothing stale is ever read.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..utils import write_file_atomic

RECORD = "stage.json"


def identity_hash(identity: dict[str, Any]) -> str:
    """A short hash of a stage identity and the code version."""
    text = json.dumps({"identity": identity, "hf_vq": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Stage:
    """A finished stage: its folder, its identity hash, what it returned, and how long it took."""

    name: str
    key: str
    folder: Path
    result: dict[str, Any]
    seconds: float
    cached: bool


class StageCache:
    """The stages of one benchmark work folder."""

    def __init__(self, root: str | Path, log: Callable[[str], None] = print):
        self.root = Path(root)
        self.log = log
        self.computed: list[str] = []  # names of the stages this process ran (not read from the cache)

    def run(self, name: str, identity: dict[str, Any], compute: Callable[[Path], dict[str, Any]]) -> Stage:
        """The stage's record if it finished before, else `compute(folder)` (resumable work inside `folder`)."""
        key = identity_hash(identity)
        folder = self.root / "stages" / f"{name}-{key}"
        record = folder / RECORD
        if record.is_file():
            saved = json.loads(record.read_text())
            self.log(f"{name}: done before ({folder.name})")
            return Stage(name, key, folder, saved["result"], saved["seconds"], cached=True)
        folder.mkdir(parents=True, exist_ok=True)
        self.log(f"{name}: running in {folder}")
        start = time.monotonic()
        result = compute(folder)
        seconds = round(time.monotonic() - start, 1)
        saved = {"stage": name, "key": key, "hf_vq_version": __version__, "identity": identity, "result": result,
                 "seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_file_atomic(record, lambda p: p.write_text(json.dumps(saved, indent=2, default=str) + "\n"))
        self.computed.append(name)
        return Stage(name, key, folder, result, seconds, cached=False)
