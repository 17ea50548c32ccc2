"""A CPU kernel for decoding with half-precision weights: fp32 activations times fp16/bf16 weights, fp32 out.

Token-by-token decoding multiplies a few rows by every weight matrix, so it is bound by how fast the weights
stream from memory. oneDNN's fp16/bf16 GEMMs read a (out, in) weight a few dozen bytes per row at a time; packed
in 32-column tiles (`pack_weight`), each tile is one contiguous run and `half_linear.c` reads it at close to
memory bandwidth, about twice as fast for the benchmark FAR's weights on the 2-core dev CPU. The activations
stay fp32, so only the weights are rounded.

The C file is compiled on first use with the system C compiler (as torch.compile's CPU backend does) into a
cache folder, and called through ctypes as the op `hf_vq::half_linear`, which `torch.compile` keeps in its
graphs. Without an x86 AVX-512 CPU or a C compiler, or with HF_VQ_DISABLE_KERNELS=1, `kernel_available()` is
False and `blocks.Linear` multiplies by the upcast weight instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import logging
import math
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("half_linear.c")
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC"]
FEW_ROWS = 64  # GEMMs with fewer rows are decoding-shaped: the kernel's, and input-major for torch's (sampling.py)
COLUMN_TILE = 32


def _library_path() -> Path:
    """Where the built kernel lives: a private cache folder, the file named by a hash of the source and flags."""
    root = os.environ.get("HF_VQ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hf_vq"
    )
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    return Path(root) / "kernels" / f"half_linear-{digest}.so"


_LOADS = itertools.count()


def _check_private(st: os.stat_result, what: str) -> None:
    """Refuse a cache entry another user owns or can write: what it holds would run in this process."""
    if st.st_uid != os.getuid():
        raise PermissionError(f"{what} belongs to another user (uid {st.st_uid})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")


def _load_checked(path: Path) -> ctypes.CDLL:
    """dlopen the kernel library at `path` only if it is a regular file of ours that nobody else can write.

    The file is opened without following links, checked through that open descriptor, and loaded through the same
    descriptor (/proc/self/fd), so it cannot be swapped between the check and the load.
    """
    folder = os.stat(path.parent, follow_symlinks=False)
    if not stat.S_ISDIR(folder.st_mode):
        raise PermissionError(f"the kernel cache folder {path.parent} is a link, not a folder")
    _check_private(folder, f"the kernel cache folder {path.parent}")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermissionError(f"{path} is not a regular file")
        _check_private(st, str(path))
        # dlopen reuses an already loaded object whose name matches, and fd numbers are reused: a distinct name
        # per load ("/proc/self//fd/N", ...) makes sure this file, not an earlier one, is what gets loaded.
        library = ctypes.CDLL("/proc/self/" + "/" * next(_LOADS) + f"fd/{fd}")
    finally:
        os.close(fd)
    function = library.hf_vq_half_linear  # AttributeError for a library without the kernel
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int] * 2
    return library


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use and cached by source hash; None where it cannot run here."""
    if os.environ.get("HF_VQ_DISABLE_KERNELS", "0") not in ("", "0"):
        return None
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return None
    compiler = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc")]
    if compiler[0] is None:
        logger.warning("hf_vq: no C compiler found; half-precision decoding uses torch's GEMMs")
        return None
    path = _library_path()
    try:
        path.parent.parent.mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(mode=0o700, exist_ok=True)  # private: the library in it runs in every sampling process
        if not os.path.lexists(path):
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                built = Path(tmp) / path.name
                command = [*compiler, *FLAGS, str(SOURCE), "-o", str(built)]
                result = subprocess.run(command, capture_output=True, text=True, timeout=300)
                if result.returncode != 0:
                    raise OSError(f"{' '.join(command)} failed:\n{result.stderr}")
                os.replace(built, path)  # atomic: a concurrent process sees no library or the whole one
        library = _load_checked(path)
    except (OSError, subprocess.TimeoutExpired, AttributeError) as error:
        # No cache folder, a failed build, a library that is not ours or not private, or one without the symbol.
        logger.warning("hf_vq: the half_linear kernel is unavailable (%s); using torch's GEMMs", error)
        return None
    return library


@torch.compiler.assume_constant_result
def kernel_available() -> bool:
    """Whether the kernel is built and loadable here (a constant for torch.compile, which never traces the build)."""
    return _library() is not None


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """An (out, in) weight, out a multiple of 32, as the kernel reads it: (out / 32, in, 32) 32-column tiles."""
    out_features, in_features = weight.shape
    return weight.detach().reshape(out_features // COLUMN_TILE, COLUMN_TILE, in_features).transpose(1, 2).contiguous()


def half_linear_supports(x: torch.Tensor, packed: torch.Tensor) -> bool:
    """Whether `half_linear(x, packed)` applies: fewer than FEW_ROWS fp32 CPU rows, no autograd (the kernel has no
    backward), an fp16/bf16 packed weight."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and packed.dtype in (torch.float16, torch.bfloat16)
        and math.prod(x.shape[:-1]) < FEW_ROWS
        and not torch.is_grad_enabled()
    )


# Registered with the low-level Library API rather than @torch.library.custom_op: the decorator's Python
# dispatch costs about 15 us a call, and decoding the benchmark FAR makes 60 of these calls per position.
_OPS = torch.library.Library("hf_vq", "DEF")
_OPS.define("half_linear(Tensor x, Tensor packed) -> Tensor")


def _half_linear_cpu(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    # The C code trusts its pointers and sizes, so everything it relies on is checked here.
    if x.dtype != torch.float32 or packed.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"hf_vq::half_linear takes fp32 x and fp16/bf16 packed weights, got {x.dtype}, {packed.dtype}")
    if packed.dim() != 3 or packed.shape[2] != COLUMN_TILE or not packed.is_contiguous():
        raise ValueError(
            f"hf_vq::half_linear takes a contiguous (out / {COLUMN_TILE}, in, {COLUMN_TILE}) weight from pack_weight, "
            f"got shape {tuple(packed.shape)} with strides {packed.stride()}"
        )
    tiles, in_features, _ = packed.shape
    if x.shape[-1] != in_features:
        raise ValueError(f"x has {x.shape[-1]} features, the packed weight takes {in_features}")
    out_features = tiles * COLUMN_TILE
    rows = x.reshape(math.prod(x.shape[:-1]), in_features).contiguous()
    out = torch.empty(rows.shape[0], out_features, dtype=torch.float32)
    if rows.numel() and out.numel():
        status = _library().hf_vq_half_linear(
            rows.data_ptr(),
            packed.data_ptr(),
            out.data_ptr(),
            rows.shape[0],
            in_features,
            out_features,
            int(packed.dtype == torch.bfloat16),
            torch.get_num_threads(),
        )
        if status != 0:
            raise MemoryError("hf_vq::half_linear could not allocate its scratch buffer")
    elif out.numel():
        out.zero_()  # no input features: an empty sum
    return out.view(*x.shape[:-1], out_features)


_OPS.impl("half_linear", _half_linear_cpu, "CPU")


@torch.library.register_fake("hf_vq::half_linear")
def _(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], packed.shape[0] * COLUMN_TILE, dtype=torch.float32)


half_linear = torch.ops.hf_vq.half_linear
"""x (..., in) fp32 @ W.T for the fp16/bf16 weight W packed by `pack_weight`: (..., out) fp32 (the op
`hf_vq::half_linear`; check `half_linear_supports` first)."""
