import importlib.util
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]

# Tiny models are faster on one thread, and the suite must not fight other work for the 2 cores.
torch.set_num_threads(1)


def load_script(name: str):
    """Import examples/<name>.py as a module (the example scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A free local TCP port, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Ops whose result the host must wait for on an accelerator: a value read (`.item()`, `int()`, `bool()`) or an
# output shape that depends on the values (a boolean mask).
HOST_READS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2"}


class HostReads(TorchDispatchMode):
    """Records the ops run inside it that make the host wait for the device (see HOST_READS)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name.split("::")[-1] in HOST_READS:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def run_in_own_process_group(script: str, backend: str = "gloo") -> str:
    """Run `script` in a fresh Python process that has joined a one-process group of `backend` (a process owns its
    group, so the suite's own process never joins one); its stdout. Fails the test on an error."""
    preamble = textwrap.dedent(
        f"""
        import os, torch, torch.distributed as dist
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="{free_port()}", RANK="0", WORLD_SIZE="1")
        if "nccl" in {backend!r}:
            torch.cuda.set_device(0)
        dist.init_process_group({backend!r})
        """
    )
    code = preamble + textwrap.dedent(script) + "\ndist.destroy_process_group()\n"
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture
def imagefolder(tmp_path):
    """16 random 8x8 grayscale PNGs in two class folders, 'a' and 'b'."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / "data" / label / f"{i}.png")
    return tmp_path / "data"


@pytest.fixture
def fake_hub(monkeypatch):
    """Stand-in for the Hub: a token is configured, and repo creation and uploads are recorded, not sent."""
    import huggingface_hub

    calls = []

    class Repo:
        def __init__(self, repo_id):
            self.repo_id = repo_id

    def create_repo(repo_id, private=False, exist_ok=False, **kwargs):
        calls.append(("create", repo_id, private))
        return Repo(repo_id)

    def upload_folder(repo_id, folder_path, commit_message=None, **kwargs):
        calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    return calls


@pytest.fixture
def no_hub_token(monkeypatch, tmp_path):
    """No token in the environment or on disk."""
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))


def r1_at(discriminator: torch.nn.Module, real: torch.Tensor, **kwargs) -> torch.Tensor:
    """The R1 penalty of `discriminator` at `real`, from a pass taken with the input's gradient on."""
    from hf_vq.training.stylegan_discriminator import r1_penalty

    real = real.detach().requires_grad_(True)
    return r1_penalty(discriminator(real), real, **kwargs)
