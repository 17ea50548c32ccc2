import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


@pytest.fixture
def imagefolder(tmp_path):
    """16 random 8x8 grayscale PNGs in two class folders, 'a' and 'b'."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / "data" / label / f"{i}.png")
    return tmp_path / "data"
