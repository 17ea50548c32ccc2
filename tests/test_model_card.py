"""Model cards: metadata read back by huggingface_hub, a usage snippet that runs, and the push paths that write them."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import ModelCard
from test_pipeline import LABELS, far, tokenizer

from hf_vq import FQGANPipeline, bundled_model_path
from hf_vq.cli import main
from hf_vq.model_card import (
    CARD_MARKER,
    FASHION_MNIST,
    model_card_for_folder,
    pipeline_model_card,
    write_model_card,
)

SHA = "0f" * 32
NETWORK = {"name": "fmnist-classifier-v1", "sha256": SHA, "fd_metric": "fd_fmnist", "is_metric": "is_fmnist"}

# As `hf-vq evaluate pipeline --output` writes it (evaluation/command.py), with the bundled classifier's features.
GENERATION = {
    "hf_vq_version": "0.1.0", "pipeline": "runs/fmnist-far/pipeline", "samples": "runs/samples/samples.npz",
    "dataset": "fashion-mnist", "reference": "fashion-mnist:test", "seed": 0, "per_class": 50, "guidance_scale": 1.5,
    "num_samples": 150, "num_reference": 10000, "image_size": [8, 8], "feature_network": NETWORK,
    "fd_fmnist": 12.345678901234567, "is_fmnist": 7.25, "precision": 0.6133, "recall": 0.4211,
    "class_accuracy": 0.9, "ar_validation_perplexity": {"perplexity": 30.5, "per_codebook": [20.125, 40.25],
                                                        "per_position": [1.5] * 16, "num_tokens": 1600},
    "protocol": {"frechet": "Fréchet distance of Gaussians fitted to the feature network's pooled features",
                 "score": "ADM's Inception Score", "precision_recall": "Kynkäänniemi et al.: k = 3"},
}
# As `hf-vq evaluate tokenizer --output` writes it.
RECONSTRUCTION = {
    "hf_vq_version": "0.1.0", "tokenizer": "runs/fmnist-far/pipeline", "dataset": "fashion-mnist", "split": "test",
    "num_images": 10000, "image_size": [8, 8], "psnr_db": 24.0912, "ssim": 0.8123, "lpips": None,
    "codebook_usage": [1.0, 0.96875], "codebook_entropy": [3.4, 3.2], "codebook_perplexity": [29.96, 24.53],
    "feature_network": NETWORK, "rfd_fmnist": 1.625,
    "protocol": {"psnr_db": "mean per-image PSNR of uint8-rounded images scaled to [0, 1]"},
}
GENERATION_NUMBERS = [("fd_fmnist", 12.345678901234567), ("is_fmnist", 7.25), ("precision", 0.6133),
                      ("recall", 0.4211), ("class_accuracy", 0.9), ("ar_validation_perplexity", 30.5),
                      ("ar_validation_perplexity", 20.125), ("ar_validation_perplexity", 40.25)]
RECONSTRUCTION_NUMBERS = [("psnr_db", 24.0912), ("ssim", 0.8123), ("codebook_usage", 1.0),
                          ("codebook_usage", 0.96875), ("codebook_entropy", 3.4), ("codebook_entropy", 3.2),
                          ("codebook_perplexity", 29.96), ("codebook_perplexity", 24.53), ("rfd_fmnist", 1.625)]


@pytest.fixture(scope="module")
def pipe():
    return FQGANPipeline(vqvae=tokenizer(), transformer=far(), id2label=LABELS)


@pytest.fixture
def pipe_dir(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


@pytest.fixture
def hub(monkeypatch):
    """Stand-in for the Hub that records, at upload time, the files and the README.md being uploaded."""
    import huggingface_hub

    uploads = []

    def create_repo(repo_id, private=False, exist_ok=False, **kwargs):
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"me/{repo_id}")  # as the Hub: user namespace

    def upload_folder(repo_id, folder_path, commit_message=None, **kwargs):
        readme = Path(folder_path) / "README.md"
        uploads.append({"repo_id": repo_id, "files": sorted(p.name for p in Path(folder_path).iterdir()),
                        "readme": readme.read_text() if readme.is_file() else None})
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    return uploads


def numbers(card: ModelCard, task: str | None = None) -> list[tuple[str, float]]:
    return sorted((r.metric_type, r.metric_value) for r in card.data.eval_results if task in (None, r.task_type))


def python_block(card: ModelCard) -> str:
    return re.search(r"```python\n(.*?)```", card.content, re.DOTALL).group(1)


def test_card_metadata_reads_back(pipe_dir):
    card = pipeline_model_card(pipe_dir, "hf-vq/tiny-far", evaluation=[GENERATION, RECONSTRUCTION],
                               dataset="fashion-mnist", training="Two steps.", limitations="A test model.")
    loaded = ModelCard.load(write_model_card(card, pipe_dir))
    data = loaded.data
    assert data.library_name == "hf_vq" and data.license == "apache-2.0"
    assert data.pipeline_tag == "unconditional-image-generation"
    assert {"hf_vq", "class-conditional-image-generation", "image-tokenizer", "fqgan", "llamagen"} <= set(data.tags)
    assert data.datasets == [FASHION_MNIST]
    assert data.model_name == "tiny-far"
    # every number of the JSONs, exactly, under its own key: a classifier's Fréchet distance is never "fid"
    assert numbers(loaded, "unconditional-image-generation") == sorted(GENERATION_NUMBERS)
    assert numbers(loaded, "image-to-image") == sorted(RECONSTRUCTION_NUMBERS)
    for result in data.eval_results:
        assert (result.dataset_type, result.dataset_name, result.dataset_split) == (FASHION_MNIST, "Fashion-MNIST",
                                                                                    "test")
        assert result.metric_name
        if result.metric_type.startswith(("fd_", "rfd_", "is_")) or result.metric_type == "precision":
            assert result.metric_config == NETWORK["name"]
            assert result.metric_args["feature_network_sha256"] == SHA
    fd = next(r for r in data.eval_results if r.metric_type == "fd_fmnist")
    assert "FID" not in fd.metric_name.replace("not FID", "") and fd.metric_args["guidance_scale"] == 1.5

    text = loaded.text
    assert CARD_MARKER in text
    assert "Two steps." in text and "A test model." in text
    assert "How it was evaluated" in text and SHA in text and NETWORK["name"] in text
    assert all(v in text for v in (*GENERATION["protocol"].values(), *RECONSTRUCTION["protocol"].values()))
    assert "2411.16681" in text and "2406.06525" in text  # FQGAN, LlamaGen: this pipeline's parts
    assert "2411.04406" not in text and "2110.04627" not in text  # VQ-KD, ViT-VQGAN: not its parts


def test_the_ar_perplexity_is_filed_under_its_own_split(pipe_dir):
    held_out = {**GENERATION, "ppl_split": "validation"}
    data = pipeline_model_card(pipe_dir, "me/tiny-far", [held_out], dataset=FASHION_MNIST).data
    splits = {(r.metric_type, r.dataset_split) for r in data.eval_results}
    assert ("ar_validation_perplexity", "validation") in splits and ("fd_fmnist", "test") in splits
    assert {split for key, split in splits if key != "ar_validation_perplexity"} == {"test"}


def test_a_card_shows_no_local_folders(pipe_dir, tmp_path):
    local = {**GENERATION, "pipeline": "/home/me/venv/lib/python3.11/site-packages/hf_vq/assets/fmnist-fqgan-dual-far",
             "samples": "/tmp/runs/eval/samples/samples.npz", "dataset": str(tmp_path / "my-images")}
    local["reference"] = "/Users/Alice Smith/ref batch.npz"
    tokenizer_eval = {**RECONSTRUCTION, "tokenizer": "~/run/tokenizer", "dataset": "file:///scratch/me/images"}
    text = pipeline_model_card(pipe_dir, "me/tiny-far", [local, tokenizer_eval], dataset=FASHION_MNIST).text
    assert "/tmp/" not in text and "/home/" not in text and "/scratch/" not in text and str(tmp_path) not in text
    assert "Alice" not in text and "~/" not in text and '"reference": "(local) ref batch.npz"' in text
    assert '"pipeline": "hf_vq/assets/fmnist-fqgan-dual-far"' in text
    assert '"samples": "(local) samples.npz"' in text and '"tokenizer": "(local) tokenizer"' in text
    assert '"samples": "runs/samples/samples.npz"' in pipeline_model_card(pipe_dir, "me/x", GENERATION).text


def test_card_of_the_pipeline_object_equals_the_folders(pipe, pipe_dir):
    assert pipeline_model_card(pipe, "me/x", GENERATION).content == pipeline_model_card(pipe_dir, "me/x",
                                                                                        GENERATION).content


def test_pipeline_usage_snippet_runs(pipe_dir, tmp_path, monkeypatch):
    card = pipeline_model_card(pipe_dir, "hf-vq/tiny-far", evaluation=GENERATION)
    code = python_block(card)
    assert 'FQGANPipeline.from_pretrained("hf-vq/tiny-far")' in code and "guidance_scale=1.5" in code
    monkeypatch.chdir(tmp_path)
    exec(code.replace("hf-vq/tiny-far", str(pipe_dir)).replace("num_images_per_label=4", "num_images_per_label=1"),
         {})
    assert (tmp_path / "sample.png").is_file()


@pytest.mark.parametrize("kind", ["tokenizer", "generator"])
def test_lone_tokenizer_and_generator_cards(kind, tmp_path):
    folder = tmp_path / kind
    (tokenizer() if kind == "tokenizer" else far()).save_pretrained(folder)
    card = model_card_for_folder(folder, "me/part", evaluation=RECONSTRUCTION if kind == "tokenizer" else None)
    data = ModelCard(card.content).data
    assert data.library_name == "hf_vq" and data.pipeline_tag is None  # a part alone makes no images
    if kind == "tokenizer":
        assert "image-tokenizer" in data.tags and "class-conditional-image-generation" not in data.tags
        assert numbers(card) == sorted(RECONSTRUCTION_NUMBERS) and data.datasets == [FASHION_MNIST]
    else:
        assert "class-conditional-image-generation" in data.tags and data.eval_results is None
    namespace = {}
    exec(python_block(card).replace("me/part", str(folder)), namespace)
    if kind == "tokenizer":
        assert tuple(namespace["indices"].shape) == (2, 2, 4, 4)
        assert tuple(namespace["reconstructions"].shape) == (2, 1, 8, 8)
    else:
        assert tuple(namespace["tokens"].shape) == (2, 2, 16)


def test_bundled_model_card_from_its_folder():
    """The bundled folder (configs of an older format, a samples.png) through the same function as the package."""
    card = pipeline_model_card(bundled_model_path(), "hf-vq/fmnist-fqgan-dual-far", dataset="fashion-mnist",
                               example_labels=["Sneaker", "Bag"])
    assert "![samples](samples.png)" in card.content
    assert "class_labels=['Sneaker', 'Bag']" in card.content and "--labels Sneaker Bag" in card.content
    assert "28x28 gray images into 2 grids of 7x7 tokens" in card.content


def test_hand_written_evaluation_sections_and_real_data_floor(pipe_dir):
    handwritten = {"tokenizer_test_set": {"images": 10000, "psnr_db": 24.09, "codebook_usage": [1.0, 1.0]},
                   "generation": {"samples": 1000, "class_accuracy": 0.924}, "judge_accuracy": 0.9059}
    card = pipeline_model_card(pipe_dir, "me/x", handwritten, dataset=FASHION_MNIST)
    assert numbers(card) == sorted([("psnr_db", 24.09), ("codebook_usage", 1.0), ("codebook_usage", 1.0),
                                    ("class_accuracy", 0.924)])
    floor = {"samples": "fashion-mnist:train", "reference": "fashion-mnist:test", "fd_fmnist": 0.5}
    with pytest.raises(ValueError, match="real images"):
        pipeline_model_card(pipe_dir, "me/x", floor)


def test_push_writes_the_card_before_the_upload(pipe_dir, tmp_path, hub, capsys):
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps(GENERATION))
    main(["push", "tiny-far", str(pipe_dir), "--evaluation", str(evaluation), "--dataset", FASHION_MNIST])
    [upload] = hub
    assert upload["repo_id"] == "me/tiny-far" and "README.md" in upload["files"]
    card = ModelCard(upload["readme"])
    assert numbers(card) == sorted(GENERATION_NUMBERS) and card.data.datasets == [FASHION_MNIST]
    assert 'from_pretrained("me/tiny-far")' in card.content  # the repo as created, with its namespace
    assert (pipe_dir / "README.md").read_text() == upload["readme"]
    assert "pushed" in capsys.readouterr().out


def test_a_failed_push_leaves_the_folder_as_it_was(pipe_dir, tmp_path, hub, monkeypatch, no_hub_token):
    import huggingface_hub

    before = sorted(p.name for p in pipe_dir.iterdir())
    with pytest.raises(SystemExit, match="hf-vq push: uploading to me/tiny-far needs a Hugging Face token"):
        main(["push", "me/tiny-far", str(pipe_dir)])
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")

    def unreachable(**kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")  # what a machine offline gets

    monkeypatch.setattr(huggingface_hub, "upload_folder", unreachable)
    with pytest.raises(SystemExit, match=r"pushing .* to me/tiny-far failed \(ConnectionError: .*folder is unchanged"):
        main(["push", "me/tiny-far", str(pipe_dir)])
    assert sorted(p.name for p in pipe_dir.iterdir()) == before  # the card written for the push is gone again
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps(GENERATION))
    (pipe_dir / "README.md").write_text(pipeline_model_card(pipe_dir, "me/tiny-far").content)
    card = (pipe_dir / "README.md").read_bytes()
    with pytest.raises(SystemExit, match="failed"):
        main(["push", "me/tiny-far", str(pipe_dir), "--evaluation", str(evaluation)])
    assert (pipe_dir / "README.md").read_bytes() == card  # an earlier card, not the one with the evaluation


def test_push_writes_a_card_only_when_missing_or_asked(pipe_dir, tmp_path, hub):
    main(["push", "me/tiny-far", str(pipe_dir)])
    first = ModelCard(hub[0]["readme"])
    assert first.data.library_name == "hf_vq" and first.data.eval_results is None
    assert "Not evaluated yet" in first.text
    (pipe_dir / "README.md").write_text(hub[0]["readme"] + "\nan edit kept by a push without --evaluation\n")
    main(["push", "me/tiny-far", str(pipe_dir)])
    assert hub[1]["readme"].endswith("an edit kept by a push without --evaluation\n")


def test_push_refuses_a_hand_written_card(pipe_dir, tmp_path, hub):
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps(GENERATION))
    (pipe_dir / "README.md").write_text("# My own card\n")
    with pytest.raises(SystemExit, match="--overwrite_card"):
        main(["push", "me/tiny-far", str(pipe_dir), "--evaluation", str(evaluation)])
    assert hub == [] and (pipe_dir / "README.md").read_text() == "# My own card\n"
    main(["push", "me/tiny-far", str(pipe_dir)])  # without --evaluation it is uploaded as it is
    assert hub[0]["readme"] == "# My own card\n"
    main(["push", "me/tiny-far", str(pipe_dir), "--evaluation", str(evaluation), "--overwrite_card"])
    assert numbers(ModelCard(hub[1]["readme"])) == sorted(GENERATION_NUMBERS)


def test_training_push_writes_a_card(tmp_path, imagefolder, hub):
    from test_train_fqgan import run

    run(tmp_path, imagefolder, "--max_train_steps", "1", "--push_to_hub", "--hub_model_id", "me/tiny-fqgan")
    [upload] = hub
    card = ModelCard(upload["readme"])
    assert card.data.library_name == "hf_vq" and "image-tokenizer" in card.data.tags
    assert card.data.datasets is None  # trained on a local image folder: no Hub id to name
    assert "`train_fqgan` recipe for 1 steps" in card.text and 'from_pretrained("me/tiny-fqgan")' in card.text
