"""Small shared helpers."""

from __future__ import annotations

import argparse
import collections.abc
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: this module serves light commands too
    import torch

logger = logging.getLogger(__name__)


# Every folder hf_vq writes carries this file: what wrote it and when. A folder without it is not hf_vq's to delete.
OUTPUT_MARKER = ".hf_vq-output.json"


_HUB_ID = re.compile(r"^\w[\w.-]*(/\w[\w.-]*)?$")


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer, names included: equal digests mean bit-identical weights."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_device() -> str:
    """"cuda" when a CUDA device is available, else "cpu": every command's default --device."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def may_read_values(device, training: bool = False) -> bool:
    """Whether an input check may read the values of a tensor on `device` (ids in range, labels in range).

    Not while compiling (a read splits the graph, and torch.export refuses it), not on `meta`, and not in a training
    step off the CPU, where a read makes the host wait for the device at every step; the training recipes check
    their whole dataset before the first step instead.
    """
    import torch

    device = torch.device(device)
    if torch.compiler.is_compiling() or device.type == "meta":
        return False
    return not training or device.type == "cpu"


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's formatter that shows defaults, except where a flag's help already states its own or there is none
    to show (None, an off switch)."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


def positive_int(value: str) -> int:
    """argparse type of a count or size flag: an integer >= 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {number}")
    return number


def device_arg(value: str) -> str:
    """argparse type of the commands' --device: a torch device this machine has ("cpu", "cuda", "cuda:1", ...)."""
    import torch

    try:
        device = torch.device(value)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cpu":
        return value
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if accelerator is None or accelerator.type != device.type:
        raise argparse.ArgumentTypeError(f"{value}: this machine (this torch build) has no {device.type} device; "
                                         f"it has {accelerator.type if accelerator else 'only the cpu'}")
    if device.index is not None and device.index >= torch.accelerator.device_count():
        raise argparse.ArgumentTypeError(f"{value}: there are {torch.accelerator.device_count()} {device.type} "
                                         "devices, numbered from 0")
    return value


def error_line(err: BaseException) -> str:
    """An exception's first line (its type when it has no message): what a command prints instead of a traceback."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def launched_processes() -> int:
    """How many processes the launcher (`accelerate launch`, `torchrun`) started; 1 outside a launch."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_device_flag(device: str | None) -> None:
    """Refuse a --device under a multi-process launch, where each process works on the device its launcher gave it."""
    if device is not None and launched_processes() > 1:
        raise ValueError(f"--device {device}: under a launch of {launched_processes()} processes each process works "
                         "on its own device, the one the launcher gave it; drop --device")


_HUB_FILE_ARGUMENTS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


def image_processor_config(name_or_path: str | os.PathLike, **kwargs) -> dict[str, Any] | None:
    """A checkpoint's preprocessor_config.json (normalisation, size) as a dict, without building the processor; None
    when the checkpoint has no such file (offline: none in the Hub cache).

    Only the statistics are needed, and some transformers 5 releases build every image processor on torchvision.
    `kwargs` may be all of a from_pretrained call's: the Hub ones (revision, subfolder, token, ...) are used. A file
    that cannot be fetched or parsed raises OSError, a file that holds no JSON object ValueError.
    """
    from transformers.image_processing_base import ImageProcessingMixin
    from transformers.utils import IMAGE_PROCESSOR_NAME, cached_file

    hub = {key: value for key, value in kwargs.items() if key in _HUB_FILE_ARGUMENTS}
    # transformers' Auto classes ask the same way whether an optional file is there
    if cached_file(name_or_path, IMAGE_PROCESSOR_NAME, _raise_exceptions_for_missing_entries=False, **hub) is None:
        return None
    config, _ = ImageProcessingMixin.get_image_processor_dict(name_or_path, **hub)
    if not isinstance(config, dict):
        raise ValueError(f"{name_or_path!r}: {IMAGE_PROCESSOR_NAME} holds a {type(config).__name__}, not a JSON object")
    return config


def is_hub_id(name: str | os.PathLike) -> bool:
    """Whether `name` has the form of a Hub repo id ("org/name" or "name"); anything else can only be a folder."""
    return bool(_HUB_ID.match(str(name)))


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse, before any work, an output that is a file, or a non-empty folder (unless `overwrite`)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"output {path} exists and is not a folder; choose another output folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output folder {path} is not empty; choose another folder, or pass --overwrite (overwrite=True): "
            "a folder hf_vq wrote is then replaced, any other is moved aside, never deleted"
        )


@contextmanager
def atomic_directory(path: str | os.PathLike, writer: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a new temp folder beside `path`; on success it becomes `path` (with its marker), on error it is removed.

    Readers never see a half-written folder. A non-empty `path` is refused unless `overwrite`; it is then replaced
    when hf_vq wrote it (it has the marker) and otherwise moved aside to `<name>.replaced-<time>`: this helper only
    ever deletes folders hf_vq made.
    """
    path = Path(os.path.abspath(path))  # "..", "." and "out/" get a real name to put the temp folder beside
    check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
    tmp.mkdir()  # fails if it exists: the folder removed on error is always the one made here
    try:
        yield tmp
        marker = {"writer": writer, "hf_vq_version": _version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / OUTPUT_MARKER).write_text(json.dumps(marker, indent=2))
        check_output_dir(path, overwrite)  # again: the work may have taken a while
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    previous = None
    if path.is_dir() and any(path.iterdir()):
        ours = (path / OUTPUT_MARKER).is_file()
        stamp = secrets.token_hex(4) if ours else time.strftime("%Y%m%d-%H%M%S")
        previous = path.with_name(f".old-{path.name}-{stamp}" if ours else f"{path.name}.replaced-{stamp}")
        os.replace(path, previous)
        if not ours:
            logger.warning("%s was not written by hf_vq: moved it to %s instead of deleting it", path, previous)
    os.replace(tmp, path)  # onto a missing or empty folder
    if previous is not None and (previous / OUTPUT_MARKER).is_file():
        shutil.rmtree(previous)


def save_pretrained_atomic(obj, path: str | os.PathLike, writer: str, overwrite: bool = False) -> Path:
    """`obj.save_pretrained(path)` through `atomic_directory`."""
    with atomic_directory(path, writer, overwrite) as tmp:
        obj.save_pretrained(tmp)
    return Path(path)


EXIF_SOFTWARE = 0x0131  # the EXIF "Software" tag, where `save_image` marks an image as hf_vq's


def software_tag() -> str:
    """What hf_vq writes into the images it saves (EXIF / PNG "Software"), so that a rerun knows them as its own."""
    from . import __version__

    return f"hf-vq {__version__}"


def written_by_hf_vq(path: str | os.PathLike) -> bool:
    """Whether the file at `path` is one hf_vq wrote (a rerun may replace it): a JSON result carrying
    "hf_vq_version", or an image whose Software tag names hf-vq."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(result, dict) and "hf_vq_version" in result
    from PIL import Image

    try:
        with Image.open(path) as image:
            software = image.info.get("Software") or image.getexif().get(EXIF_SOFTWARE) or ""
    except (OSError, ValueError):
        return False
    return str(software).startswith("hf-vq")


def save_image(image, path: str | os.PathLike) -> Path:
    """Write a PIL image atomically (temp file beside it, then rename) in the format of its suffix, tagged as hf_vq's
    (so a rerun may replace it, see `check_output_file`)."""
    from PIL import Image

    exif = Image.Exif()
    exif[EXIF_SOFTWARE] = software_tag()
    image_format = Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG")
    return write_file_atomic(path, lambda tmp: image.save(tmp, format=image_format, exif=exif))


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """The --overwrite flag of commands that write files, passed on to `check_output_file`."""
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file hf-vq did not "
                        "write (its own outputs are replaced anyway)")


def check_output_file(path: str | os.PathLike, suffixes: tuple[str, ...], flag: str = "output",
                      overwrite: bool = False) -> Path:
    """Refuse, before any work, an output file path that is a folder, has another extension, or cannot be written,
    and, unless `overwrite`, an existing file hf_vq did not write (one it wrote, a rerun replaces)."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} must end in {', '.join(suffixes)}, got {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a folder; give a file name such as {path / ('out' + suffixes[0])}")
    if path.exists() and not overwrite and not written_by_hf_vq(path):
        raise FileExistsError(f"{flag} {path} exists and hf-vq did not write it (or one from before hf-vq tagged its "
                              "outputs); choose another name, or pass --overwrite to replace it")
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: {existing} is not a writable folder")
    return path


def write_file_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temp file beside `path`, then rename it to `path`; on error the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # mkstemp makes the file private; the result gets the usual permissions
    try:
        write(Path(name))
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return path


def _version() -> str:
    from . import __version__

    return __version__


def require_hub_token(flag: str = "--push_to_hub",
                      instead: str | None = "drop --push_to_hub and upload later with `hf-vq push REPO_ID FOLDER`",
                      ) -> None:
    """Fail fast (before any work) when a command asks to push to the Hub but no token is configured."""
    from huggingface_hub import get_token

    if get_token() is None:
        tail = f", or {instead}" if instead else ""
        raise ValueError(f"{flag} needs a Hugging Face token: run `hf auth login` or set HF_TOKEN{tail}.")


def create_hub_repo(repo_id: str, private: bool = False) -> str:
    """Create `repo_id` on the Hub unless it exists; returns its full id ("name" becomes "user/name")."""
    from huggingface_hub import create_repo

    return create_repo(repo_id, private=private, exist_ok=True).repo_id


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False, message: str = "Upload with hf-vq",
                before_upload: Callable[[str], Any] | None = None, create: bool = True) -> str:
    """Create `repo_id` if needed (unless `create=False`: made before) and upload a saved folder (model card
    included) as one commit; returns its URL.

    `before_upload(repo_id)` runs between the two with the id as created (e.g. to write the model card).
    """
    from huggingface_hub import upload_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    if create:
        repo_id = create_hub_repo(repo_id, private)
    if before_upload is not None:
        before_upload(repo_id)  # after create_repo: "name" is now "user/name", the id a card must show
    return str(upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message))


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` fits a simple type hint (unions, None, bool, int, float, str, dicts, sequences)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if origin in (list, tuple, collections.abc.Sequence):
        element = args[0] if args else Any
        return isinstance(value, (list, tuple)) and (element is Any or all(_matches(v, element) for v in value))
    return True  # richer hints are left to the class itself


def check_config_types(values: dict[str, Any], hints: dict[str, Any], owner: str) -> None:
    """Raise a TypeError naming the field and the expected type for a config value of the wrong type."""
    for name, value in values.items():
        hint = hints.get(name)
        if hint is not None and not _matches(value, hint):
            expected = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            expected = expected.replace("collections.abc.", "")
            raise TypeError(
                f"{owner} config field {name!r} must be {expected}, got {value!r} ({type(value).__name__})"
            )
