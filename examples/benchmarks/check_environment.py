"""Name every requirement that this environment does not meet: hf_vq's (pyproject.toml) and, given folders of
installed wheels (`pip install --target DIR`), each of their distributions' own.

    python examples/benchmarks/check_environment.py [DIR ...]

Prints one line per gap and exits 1 when there is any: the GPU check runs it first, so that a library the GPU
machine holds at another version shows as such, and not as an error deep inside a test.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import tomllib  # Python >= 3.11, as where the GPU check runs
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def unmet(requirements: Iterable[str], needed_by: str) -> Iterator[str]:
    """A line for each requirement (PEP 508 text) that no installed distribution satisfies; extras are skipped."""
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            yield f"{needed_by} needs {requirement}: not installed"
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            yield f"{needed_by} needs {requirement}: {version} is installed"


def main(argv: list[str]) -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gaps = list(unmet(project["dependencies"], "hf_vq"))
    for folder in argv:
        for dist in metadata.distributions(path=[folder]):
            gaps += unmet(dist.requires or [], f"{dist.metadata['Name']} {dist.version}")
    print("\n".join(gaps) if gaps else "every requirement is met")
    return 1 if gaps else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
