import json

import pytest
import torch
from conftest import load_script
from datasets import load_from_disk
from test_pipeline import tokenizer

from hf_vq import FQGANPipeline
from hf_vq.training.checkpointing import list_checkpoints

extract_codes = load_script("extract_codes")
train_script = {"far": load_script("train_far"), "maskgit": load_script("train_maskgit")}


@pytest.fixture
def codes(tmp_path, imagefolder):
    tokenizer().save_pretrained(tmp_path / "tok")
    extract_codes.main(["--tokenizer", str(tmp_path / "tok"), "--dataset", str(imagefolder), "--resolution", "8",
                        "--output_dir", str(tmp_path / "codes"), "--batch_size", "5"])
    return tmp_path


def test_extract_codes_writes_flipped_codes(codes):
    table = load_from_disk(str(codes / "codes"))
    assert len(table) == 32 and table.features["label"].names == ["a", "b"]
    assert sum(table["flipped"]) == 16
    grids = torch.tensor(table["codes"])
    assert grids.shape == (32, 2, 16) and int(grids.max()) < 32
    with pytest.raises(FileExistsError, match="not empty"):
        extract_codes.main(["--tokenizer", str(codes / "tok"), "--dataset", str(codes / "data"), "--output_dir",
                            str(codes / "codes")])


@pytest.mark.parametrize("kind", ["far", "maskgit"])
def test_generator_training_ends_with_a_pipeline(codes, kind):
    config = codes / "model.json"
    extra = {"num_head_layers": 1} if kind == "far" else {}
    config.write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, **extra}))
    args = ["--codes_dir", str(codes / "codes"), "--tokenizer", str(codes / "tok"), "--model_config", str(config),
            "--output_dir", str(codes / kind), "--train_batch_size", "4", "--max_train_steps", "3",
            "--checkpointing_steps", "2", "--validation_steps", "2", "--use_ema", "--report_to", "none",
            "--learning_rate", "1e-3"]
    train_script[kind].main(args)
    pipe_dir = codes / kind / "pipeline"
    assert [p.name for p in list_checkpoints(codes / kind)] == ["checkpoint-2", "checkpoint-3"]
    assert (codes / kind / "samples" / "step-0000002.png").exists()
    assert json.loads((codes / kind / "train_summary.json").read_text())["global_step"] == 3
    pipe = FQGANPipeline.from_pretrained(pipe_dir)
    assert pipe.get_label_ids(["b"]) == [1]
    steps = {"num_inference_steps": 2} if kind == "maskgit" else {}
    images = pipe(["a"], num_images_per_label=2, output_type="pt", **steps).images
    assert images.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="codes/tokenizer give"):
        config.write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                      "vocab_size": 99}))
        train_script[kind].main(args[:-2] + ["--output_dir", str(codes / "other")])


def test_a_far_preset_takes_the_codes_sub_codebooks_and_a_gpt_one_refuses_them(codes, monkeypatch):
    from hf_vq.training.loop import parse_recipe_args
    from hf_vq.training.recipes.generators import ARGeneratorRecipe

    def recipe(name):
        args = ["--codes_dir", str(codes / "codes"), "--tokenizer", str(codes / "tok"), "--model_config", name,
                "--output_dir", str(codes / "far")]
        return ARGeneratorRecipe(parse_recipe_args(ARGeneratorRecipe, args))

    config = recipe("FAR-Base").config  # only its config: the model is built when training starts
    assert (config.hidden_size, config.num_hidden_layers, config.num_codebooks, config.vocab_size) == (1024, 24, 2, 32)
    monkeypatch.setitem(ARGeneratorRecipe.config_presets, "FAR-3", {**ARGeneratorRecipe.config_presets["FAR-Base"],
                                                                      "num_codebooks": 3})
    assert recipe("FAR-3").config.num_codebooks == 2  # FQGAN builds one size for two and three sub-codebooks
    with pytest.raises(ValueError, match="GPT-B sets num_codebooks=1 but the codes/tokenizer give 2"):
        recipe("GPT-B")
    with pytest.raises(FileNotFoundError, match="nor one of the presets: .*FAR-Base, FAR-Large, GPT-3B, GPT-B"):
        recipe("FAR-Huge")
    typo = codes / "typo.json"  # transformers would keep the key as an attribute and build the default width
    typo.write_text(json.dumps({"hidden_sise": 32, "num_hidden_layers": 1}))
    with pytest.raises(ValueError, match=r"sets \['hidden_sise'\], which a FARConfig does not have"):
        recipe(str(typo))


def far_args(codes, *extra: str) -> list[str]:
    config = codes / "model.json"
    config.write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}))
    return ["--codes_dir", str(codes / "codes"), "--tokenizer", str(codes / "tok"), "--model_config", str(config),
            "--output_dir", str(codes / "far"), "--train_batch_size", "4", "--max_train_steps", "1", *extra]


def test_push_to_hub_uploads_the_pipeline(codes, fake_hub):
    train_script["far"].main(far_args(codes, "--report_to", "none", "--push_to_hub"))
    assert fake_hub == [("create", "far", False), ("upload", "far", fake_hub[1][2])]
    assert {"model_index.json", "vqvae", "transformer"} <= set(fake_hub[1][2])


def test_hub_repo_is_created_before_training(codes, fake_hub, monkeypatch):
    import huggingface_hub

    def forbidden(repo_id, **kwargs):
        raise PermissionError(f"403 Forbidden: you cannot create {repo_id}")

    monkeypatch.setattr(huggingface_hub, "create_repo", forbidden)
    with pytest.raises(PermissionError, match="403"):
        train_script["far"].main(far_args(codes, "--report_to", "none", "--push_to_hub", "--hub_model_id", "org/x"))
    assert not list_checkpoints(codes / "far") and not (codes / "far" / "pipeline").exists()


def test_preview_grids_go_to_the_tracker(codes):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_script["far"].main(far_args(codes, "--report_to", "tensorboard"))
    images = []
    for events in {p.parent for p in (codes / "far").rglob("events.out.tfevents.*")}:  # run and hparams logs
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0}).Reload()
        images += [image for tag in accumulator.Tags()["images"] for image in accumulator.Images(tag)]
    assert [(image.step, image.width > 0) for image in images] == [(1, True)]
