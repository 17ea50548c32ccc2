"""The Fashion-MNIST pipeline that ships inside the package: what the README's first command runs."""

import json

import torch
from PIL import Image

from hf_vq import FQGANPipeline, FQGANTokenizer, bundled_model_path
from hf_vq.cli import main


def test_bundled_pipeline_is_complete_and_small():
    root = bundled_model_path()
    index = json.loads((root / "model_index.json").read_text())
    assert index["vqvae"] == ["hf_vq", "FQGANTokenizer"]
    assert index["transformer"] == ["hf_vq", "FARForClassConditionalGeneration"]
    assert sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) <= 25 * 2**20
    assert (root / "README.md").exists()


def test_readme_command_generates_from_the_bundled_model(tmp_path):
    out = tmp_path / "grid.png"
    main(["generate", "--labels", "Sneaker", "Bag", "-n", "2", "--out", str(out)])
    assert Image.open(out).size == (2 * 28, 2 * 28)


def test_bundled_pipeline_samples_deterministically_and_round_trips_codes():
    pipe = FQGANPipeline.from_pretrained(bundled_model_path())
    pipe.set_progress_bar_config(disable=True)
    a = pipe(["Trouser", "ankle boot"], output_type="pt", generator=torch.manual_seed(0)).images
    b = pipe([1, 9], output_type="pt", generator=torch.manual_seed(0)).images
    assert a.shape == (2, 1, 28, 28) and torch.equal(a, b)
    vqvae: FQGANTokenizer = pipe.vqvae
    codes = vqvae.tokenize(a * 2 - 1)
    assert codes.shape == (2, 2, 7, 7)


def test_bundled_pipeline_module_is_the_one_save_pretrained_writes():
    """The bundled folder carries a copy of the custom-pipeline module; it must not drift from the packaged one."""
    from hf_vq.pipelines.pipeline_fqgan import PIPELINE_MODULE, pipeline_module_source

    assert (bundled_model_path() / f"{PIPELINE_MODULE}.py").read_text() == pipeline_module_source()
