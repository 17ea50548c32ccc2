"""Build the Hugging Face Space (gradio demo) folder, and optionally push it.

    python upload/build_space.py --out build/space [--overwrite] [--push user/hf-vq-demo]

hf_vq is not on PyPI, so the Space carries it as a wheel: the build copies `upload/space/` (app.py, README.md),
builds the hf_vq wheel (bundled model included) into the copy and writes its `requirements.txt`: the CPU torch
wheel of the running torch version, the hf_vq wheel, and the running gradio version (also set as the README's
`sdk_version`). The folder runs locally as the Space does: `cd build/space && pip install -r requirements.txt &&
python app.py`.

With `--push`, the pushed requirements name the wheel by its URL in the Space repo instead of by path, since the
Spaces build installs requirements.txt before it copies in the repo's other files; that URL needs a public Space.
Without a token, --push fails before anything is built.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from hf_vq.utils import OUTPUT_MARKER, atomic_directory, require_hub_token

ROOT = Path(__file__).resolve().parents[1]
SPACE_SOURCE = Path(__file__).resolve().parent / "space"
SPACE_FILES = ["app.py", "README.md"]  # requirements.txt is written; screenshot.png is the project README's
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def build_wheel(dest: Path, isolation: bool = True) -> Path:
    """`pip wheel` hf_vq from a clean copy of the sources, so that no stale `build/` folder leaks into it."""
    with tempfile.TemporaryDirectory(prefix="hf_vq-wheel-") as tmp:
        src = Path(tmp) / "hf_vq"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (ROOT / name).is_file():
                shutil.copy2(ROOT / name, src / name)
        shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(src), "-w", str(dest)]
        subprocess.run(cmd + ([] if isolation else ["--no-build-isolation"]), check=True)
    (wheel,) = dest.glob("hf_vq-*.whl")
    return wheel


def requirements(wheel: str, torch_version: str, gradio_version: str) -> str:
    index = [f"--extra-index-url {TORCH_CPU_INDEX}"] if torch_version.endswith("+cpu") else []
    lines = ["# Written by hf_vq's upload/build_space.py.", *index, f"torch=={torch_version}", wheel,
             f"gradio=={gradio_version}"]
    return "\n".join(lines) + "\n"


def push_space(folder: Path, repo_id: str) -> str:
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(repo_id, repo_type="space", space_sdk="gradio", exist_ok=True).repo_id
    return str(upload_folder(repo_id=repo_id, repo_type="space", folder_path=folder,
                             ignore_patterns=[OUTPUT_MARKER], commit_message="Upload with upload/build_space.py"))


def torch_version_arg(value: str) -> str:
    """argparse type of --torch: a version pip can pin (2.13.0, or 2.13.0+cpu for the CPU wheel)."""
    from packaging.version import InvalidVersion, Version

    try:
        Version(value)
    except InvalidVersion:
        raise argparse.ArgumentTypeError(f"{value!r} is not a torch version (e.g. 2.13.0+cpu, or 2.13.0 for PyPI's "
                                         "CUDA wheel)") from None
    return value


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "build" / "space"), help="the Space folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out (moved aside if hf_vq did not write it)")
    p.add_argument("--torch", default=None, type=torch_version_arg,
                   help="torch version to pin (default: the running one's CPU wheel, e.g. 2.13.0+cpu); "
                        "a version without +cpu (PyPI's CUDA wheel) for GPU hardware")
    p.add_argument("--push", metavar="OWNER/NAME", default=None, help="create or update this Space on the Hub")
    p.add_argument("--no-build-isolation", dest="isolation", action="store_false",
                   help="build the wheel with the running setuptools (faster; used by the tests)")
    args = p.parse_args(argv)
    if args.push:
        if args.push.count("/") != 1:
            p.error(f"--push takes the Space's full id, OWNER/NAME, got {args.push!r}")
        try:
            require_hub_token("--push", "build without --push and upload the folder later")  # before the build
        except ValueError as err:
            raise SystemExit(str(err)) from None

    torch_version = args.torch or version("torch").split("+")[0] + "+cpu"
    gradio_version = version("gradio")
    with atomic_directory(args.out, "upload/build_space.py", overwrite=args.overwrite) as tmp:
        for name in SPACE_FILES:
            shutil.copy2(SPACE_SOURCE / name, tmp / name)
        readme = tmp / "README.md"
        readme.write_text(re.sub(r"(?m)^sdk_version:.*$", f"sdk_version: {gradio_version}", readme.read_text()))
        wheel = build_wheel(tmp, args.isolation).name
        if args.push:
            wheel = f"hf_vq @ https://huggingface.co/spaces/{args.push}/resolve/main/{wheel}"
        else:
            wheel = f"./{wheel}"
        (tmp / "requirements.txt").write_text(requirements(wheel, torch_version, gradio_version))
    out = Path(args.out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB): torch=={torch_version}, gradio=={gradio_version}, {wheel}")
    if args.push:
        print(f"pushed: {push_space(out, args.push)}")
    return out


if __name__ == "__main__":
    main()
