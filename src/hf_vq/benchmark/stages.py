"""Stages of a benchmark run, each cached in its own folder under a hash of what defines it.

A stage's identity is everything its output depends on: its resolved config, the identities (hashes) of the
stages it reads, and the hf_vq version. A finished stage has a `stage.json` record, written last and atomically,
and is never recomputed; an unfinished one is run again in the same folder, where its work resumes (training
from its last checkpoint, sampling from its last batch). A changed config makes a new hash, hence a new folder:
nothing stale is ever read.
"""

from __future__ import annotations

import functools
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
ATTEMPTS = "attempts.json"  # start times of the runs of an unfinished stage


def _attempts(folder: Path) -> list[float]:
    path = folder / ATTEMPTS
    return json.loads(path.read_text()) if path.is_file() else []


def _mtime(path: Path) -> float | None:
    """A file's modification time; None for a folder, or for a file gone since it was listed (another process's
    temp file, renamed into place)."""
    try:
        return path.stat().st_mtime if path.is_file() else None
    except FileNotFoundError:
        return None


def spent_seconds(folder: Path) -> float:
    """Seconds the earlier, killed attempts at a stage worked: each from its start to the last file it wrote."""
    starts = _attempts(folder)
    if not starts:
        return 0.0
    written = sorted(t for p in folder.rglob("*") if p.name != ATTEMPTS and (t := _mtime(p)) is not None)
    total = 0.0
    for start, end in zip(starts, starts[1:] + [float("inf")]):
        last = [t for t in written if start <= t < end]
        total += (last[-1] - start) if last else 0.0
    return total


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The hf_vq version and a hash of the package's source files: any code change makes new stages."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(__version__.encode())
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".c") and p.is_file()):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def identity_hash(identity: dict[str, Any]) -> str:
    """A short hash of a stage identity and the code version."""
    text = json.dumps({"identity": identity, "hf_vq": code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Stage:
    """A finished stage: its folder, its identity hash, what it returned, and how long it took."""

    name: str
    key: str
    folder: Path
    result: dict[str, Any]
    seconds: float  # over every attempt, a killed one's up to its last write
    cached: bool


class StageCache:
    """The stages of one benchmark work folder.

    Run by several processes (`accelerate launch`, `torchrun`; on one machine, or with a work folder every process
    sees), every process goes through the same stages: training and sampling stages (`every_process`) are computed
    by all of them together, any other stage by the main process alone, and only the main process writes a stage's
    records. The others wait for its record, polling the folder rather than waiting in a collective, which would
    time out during a long evaluation; the launcher stops them if the main process fails. `Stage.cached` and
    `computed` describe the main process's view: another process reports a stage it waited for as cached.
    """

    def __init__(self, root: str | Path, log: Callable[[str], None] = print, is_main_process: bool = True,
                 poll_seconds: float = 1.0):
        self.root = Path(root)
        self.is_main_process = is_main_process
        self.log = log if is_main_process else (lambda _: None)
        self.poll_seconds = poll_seconds
        self.computed: list[str] = []  # names of the stages the main process ran (not read from the cache)

    def run(self, name: str, identity: dict[str, Any], compute: Callable[[Path], dict[str, Any]],
            every_process: bool = False) -> Stage:
        """The stage's record if it finished before, else `compute(folder)` (resumable work inside `folder`), run
        by every process with `every_process`, else by the main process only."""
        key = identity_hash(identity)
        folder = self.root / "stages" / f"{name}-{key}"
        record = folder / RECORD
        if record.is_file():
            saved = json.loads(record.read_text())
            self.log(f"{name}: done before ({folder.name})")
            return Stage(name, key, folder, saved["result"], saved["seconds"], cached=True)
        folder.mkdir(parents=True, exist_ok=True)
        if not self.is_main_process:
            if every_process:
                compute(folder)
            while not record.is_file():  # written atomically, so it is complete once it exists
                time.sleep(self.poll_seconds)
            saved = json.loads(record.read_text())
            return Stage(name, key, folder, saved["result"], saved["seconds"], cached=not every_process)
        self.log(f"{name}: running in {folder}")
        earlier = spent_seconds(folder)
        attempts = _attempts(folder) + [time.time()]
        write_file_atomic(folder / ATTEMPTS, lambda p: p.write_text(json.dumps(attempts)))
        start = time.monotonic()
        result = compute(folder)
        seconds = round(earlier + time.monotonic() - start, 1)
        saved = {"stage": name, "key": key, "hf_vq_version": code_version(), "identity": identity, "result": result,
                 "seconds": seconds, "attempts": len(attempts), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_file_atomic(record, lambda p: p.write_text(json.dumps(saved, indent=2, default=str) + "\n"))
        self.computed.append(name)
        return Stage(name, key, folder, result, seconds, cached=False)
