"""The diffusers way in: `DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)` on a repo hf_vq wrote.

`FQGANPipeline.save_pretrained` writes diffusers' custom-pipeline layout: model_index.json's `_class_name` is
["hf_vq_pipeline", "FQGANPipeline"] and `hf_vq_pipeline.py` beside it re-exports hf_vq's class. diffusers runs that
file only with trust_remote_code=True; `FQGANPipeline.from_pretrained` loads the same repo without running it, and
keeps loading folders with the plain `_class_name` of earlier hf_vq versions. The Hub is stood in for by a Hub cache
in a temp dir, read offline.
"""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import torch
from test_pipeline import LABELS, far, tokenizer

from hf_vq import FQGANPipeline
from hf_vq.model_card import folder_kind
from hf_vq.pipelines.pipeline_fqgan import PIPELINE_MODULE, pipeline_module_source

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CALL = dict(class_labels=["Trouser", 0], num_images_per_label=2, output_type="pt")


@pytest.fixture(scope="module")
def pipe():
    pipe = FQGANPipeline(vqvae=tokenizer(), transformer=far(), id2label=LABELS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def expected(pipe):
    return pipe(**CALL, generator=torch.manual_seed(0)).images


def hub_cache(pipe: FQGANPipeline, cache: Path, repo_id: str, listing: bool = False) -> Path:
    """Save `pipe` where the Hub cache keeps a downloaded `repo_id`; returns the snapshot folder.

    With `listing`, also the file listing huggingface_hub caches on download (trees/<commit>.json): diffusers then
    knows the repo's files offline as it does online, and takes its Hub code path, not the plain-folder one.
    """
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    pipe.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    if listing:
        files = {p.relative_to(snapshot).as_posix(): {"size": p.stat().st_size, "blob_id": "0" * 40}
                 for p in snapshot.rglob("*") if p.is_file()}
        (repo / "trees").mkdir()
        (repo / "trees" / f"{COMMIT}.json").write_text(json.dumps({"format_version": 1, "files": files}))
        if hasattr(huggingface_hub, "get_cached_repo_tree"):  # the listing is read back, so this path is exercised
            listed = huggingface_hub.get_cached_repo_tree(repo_id, cache_dir=cache)
            assert f"{PIPELINE_MODULE}.py" in {f.path for f in listed}
    return snapshot


def make_plain(folder: Path) -> None:
    """Turn a saved folder into the layout of earlier hf_vq versions: plain `_class_name`, no module file."""
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "FQGANPipeline"
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    (folder / f"{PIPELINE_MODULE}.py").unlink()


def booby_trap(folder: Path) -> Path:
    """Replace the module file with one that leaves a mark and fails: loading must not run it. Returns the mark."""
    mark = folder.parent / f"{folder.name}.executed"
    (folder / f"{PIPELINE_MODULE}.py").write_text(f"open({str(mark)!r}, 'w').close()\nraise RuntimeError('ran')\n")
    return mark


def test_save_pretrained_writes_the_custom_pipeline_layout(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == [PIPELINE_MODULE, "FQGANPipeline"]
    assert index["vqvae"] == ["hf_vq", "FQGANTokenizer"]  # the components' entries are unchanged
    assert index["transformer"] == ["hf_vq", "FARForClassConditionalGeneration"]
    source = (tmp_path / "pipe" / f"{PIPELINE_MODULE}.py").read_text()
    assert source == pipeline_module_source()
    # The file the repo carries holds no code of its own: a docstring, an import of hf_vq, and __all__.
    body = ast.parse(source).body
    assert isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    imports = [node for node in body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert [(node.module, [a.name for a in node.names]) for node in imports] == [("hf_vq", ["FQGANPipeline"])]
    assert all(isinstance(node, (ast.Expr, ast.ImportFrom, ast.Assign)) for node in body)
    assert folder_kind(tmp_path / "pipe") == "pipeline"  # push still writes the pipeline's model card

    class MyPipeline(FQGANPipeline):  # the module exports FQGANPipeline only: a subclass keeps diffusers' plain name
        pass

    MyPipeline(vqvae=pipe.vqvae, transformer=pipe.transformer, id2label=LABELS).save_pretrained(tmp_path / "mine")
    assert json.loads((tmp_path / "mine" / "model_index.json").read_text())["_class_name"] == "MyPipeline"
    assert not (tmp_path / "mine" / f"{PIPELINE_MODULE}.py").exists()


@pytest.mark.parametrize("layout", ["hf_vq", "plain"])
@pytest.mark.parametrize("source", ["folder", "hub", "hub-listed"])
def test_fqgan_pipeline_loads_either_layout_without_running_the_module(pipe, expected, tmp_path, layout, source):
    """FQGANPipeline.from_pretrained needs no flag, and never runs the repo's file, even when given the flag."""
    if source == "folder":
        folder = tmp_path / "pipe"
        pipe.save_pretrained(folder)
        name, kwargs = folder, {}
    else:
        folder = hub_cache(pipe, tmp_path / "hub", "org/fqgan-tiny", listing=source == "hub-listed")
        name, kwargs = "org/fqgan-tiny", dict(cache_dir=tmp_path / "hub", local_files_only=True)
    mark = None
    if layout == "plain":
        make_plain(folder)
        assert folder_kind(folder) == "pipeline"
    else:
        mark = booby_trap(folder)
    for flag in ({}, {"trust_remote_code": True}):
        loaded = FQGANPipeline.from_pretrained(name, **kwargs, **flag)
        assert type(loaded) is FQGANPipeline
        loaded.set_progress_bar_config(disable=True)
        torch.testing.assert_close(loaded(**CALL, generator=torch.manual_seed(0)).images, expected)
    assert mark is None or not mark.exists()


# One fresh interpreter for every DiffusionPipeline case: it imports only diffusers and torch, as a diffusers user's
# script does, so hf_vq comes in through the repo's module file or not at all. Refusals run first: afterwards the
# trusted loads have imported hf_vq.
DIFFUSERS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from diffusers import DiffusionPipeline

    torch.set_num_threads(1)
    folder, repo_id, out = sys.argv[1:4]
    call = json.loads(sys.argv[4])
    report = {}
    for key, name in (("folder", folder), ("hub", repo_id)):
        try:
            DiffusionPipeline.from_pretrained(name)
            report[key + "_refused"] = None
        except Exception as e:
            report[key + "_refused"] = f"{type(e).__name__}: {e}"
        report[key + "_imported_hf_vq"] = "hf_vq" in sys.modules
    images = {}
    for key, name in (("folder", folder), ("hub", repo_id)):
        loaded = DiffusionPipeline.from_pretrained(name, trust_remote_code=True)
        loaded.set_progress_bar_config(disable=True)
        report[key + "_class"] = f"{type(loaded).__module__}.{type(loaded).__qualname__}"
        images[key] = loaded(**call, generator=torch.manual_seed(0)).images
    torch.save(images, out)
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def diffusers_run(pipe, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diffusers")
    pipe.save_pretrained(tmp / "pipe")
    hub_cache(pipe, tmp / "hf" / "hub", "org/fqgan-tiny")
    env = {**os.environ, "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp / "modules")}
    for name in ("HF_HUB_CACHE", "DIFFUSERS_DISABLE_REMOTE_CODE"):
        env.pop(name, None)
    args = [str(tmp / "pipe"), "org/fqgan-tiny", str(tmp / "images.pt"), json.dumps(CALL)]
    result = subprocess.run([sys.executable, "-c", DIFFUSERS_SCRIPT, *args], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), torch.load(tmp / "images.pt"), tmp


@pytest.mark.parametrize("source", ["folder", "hub"])
def test_diffusion_pipeline_without_the_flag_refuses_before_running_the_module(diffusers_run, source):
    report, _, tmp = diffusers_run
    refused = report[f"{source}_refused"]
    assert refused is not None and refused.startswith("ValueError") and "trust_remote_code=True" in refused
    assert f"{PIPELINE_MODULE}.py" in refused  # diffusers names the file to inspect
    assert not report[f"{source}_imported_hf_vq"]  # the file, hf_vq's only way into that process, never ran


@pytest.mark.parametrize("source", ["folder", "hub"])
def test_diffusion_pipeline_with_the_flag_loads_hf_vq_pipeline(diffusers_run, expected, source):
    report, images, tmp = diffusers_run
    assert report[f"{source}_class"] == "hf_vq.pipelines.pipeline_fqgan.FQGANPipeline"  # hf_vq's class, re-exported
    torch.testing.assert_close(images[source], expected)
    cached = list((tmp / "modules").rglob(f"{PIPELINE_MODULE}.py"))  # diffusers ran its copy, not the repo's file
    assert cached and all(path.read_text() == pipeline_module_source() for path in cached)

