import json

import pytest
import torch
from conftest import ROOT, load_script

from hf_vq import FQGANTokenizer
from hf_vq.training.checkpointing import RUN_FILE, RunMeter, list_checkpoints

train_fqgan = load_script("train_fqgan")

# The flat quantizer fields (codebook_size, codebook_embed_dim, entropy_loss_ratio) are the format of configs written
# before the quantizer spec, kept here on purpose: old config files must keep training.
TINY = dict(
    in_channels=1, out_channels=1, base_channels=32, channel_multipliers=[1, 2], num_res_blocks=1, z_channels=32,
    num_codebooks=2, codebook_size=32, codebook_embed_dim=4, sample_size=8, adapter_layers=1, adapter_heads=2,
    entropy_loss_ratio=0.03,
)


def run(tmp_path, data, *extra, config=TINY, resolution=8):
    cfg = tmp_path / "tok.json"
    cfg.write_text(json.dumps(config))
    size = [] if resolution is None else ["--resolution", str(resolution)]
    args = ["--tokenizer_config", str(cfg), "--dataset", str(data), *size, "--output_dir",
            str(tmp_path / "out"), "--perceptual_weight", "0", "--train_batch_size", "4", "--report_to", "none",
            "--disc_start", "2", "--disc_channels", "8", "--disc_layers", "1", "--logging_steps", "1", *extra]
    train_fqgan.main(args)
    return tmp_path / "out"


def test_trains_saves_and_resumes(tmp_path, imagefolder):
    out = run(tmp_path, imagefolder, "--max_train_steps", "3", "--checkpointing_steps", "2", "--validation_steps",
              "2", "--use_ema", "--gradient_accumulation_steps", "2")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    assert (out / "samples" / "step-0000002.png").exists()
    model = FQGANTokenizer.from_pretrained(out / "tokenizer")
    assert model.tokenize(torch.zeros(1, 1, 8, 8)).shape == (1, 2, 4, 4)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 3 and summary["peak_memory_mib"] > 0
    assert {"reconstruction_loss", "loss", "0/usage"} <= set(summary["last_logs"])
    # a finished run resumes to the same final step without training further
    run(tmp_path, imagefolder, "--max_train_steps", "5", "--checkpointing_steps", "2", "--validation_steps", "100",
        "--use_ema", "--gradient_accumulation_steps", "2", "--resume_from_checkpoint", "latest",
        "--checkpoints_total_limit", "2")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-5"]


def test_resuming_a_finished_run_keeps_its_summary_and_one_past_max_train_steps_is_refused(tmp_path, imagefolder):
    out = run(tmp_path, imagefolder, "--max_train_steps", "2", "--checkpointing_steps", "2")
    before = json.loads((out / "train_summary.json").read_text())["last_logs"]
    run(tmp_path, imagefolder, "--max_train_steps", "2", "--resume_from_checkpoint", "latest")
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 2 and summary["session_steps"] == 0 and summary["last_logs"] == before
    with pytest.raises(ValueError, match=r"checkpoint-2 is at step 2, past --max_train_steps 1"):
        run(tmp_path, imagefolder, "--max_train_steps", "1", "--resume_from_checkpoint", "latest")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]


def test_a_preset_name_is_a_tokenizer_config_and_its_run_resumes(tmp_path, imagefolder):
    out = tmp_path / "out"
    args = ["--dataset", str(imagefolder), "--output_dir", str(out), "--perceptual_weight", "0", "--train_batch_size",
            "4", "--report_to", "none", "--disc_channels", "8", "--disc_layers", "1", "--checkpointing_steps", "1"]
    with pytest.raises(FileNotFoundError, match=r"--tokenizer_config tinyy: no such config file, nor one of the "
                                                r"presets: fqgan-dual-ds16, .*tiny-lfq, tiny-vq"):
        train_fqgan.main(["--tokenizer_config", "tinyy", *args])
    assert not out.exists()
    train_fqgan.main(["--tokenizer_config", "tiny-fsq", *args, "--max_train_steps", "1"])
    assert FQGANTokenizer.from_pretrained(out / "tokenizer").config.quantizer["kind"] == "fsq"
    # the preset's tuples were recorded as the JSON lists a resumed run compares them with
    train_fqgan.main(["--tokenizer_config", "tiny-fsq", *args, "--max_train_steps", "2",
                      "--resume_from_checkpoint", "latest"])
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]


def test_colour_images_for_a_grayscale_tokenizer_are_converted_with_a_warning(tmp_path, imagefolder, caplog):
    from PIL import Image

    for path in imagefolder.rglob("*.png"):
        Image.open(path).convert("RGB").save(path)
    run(tmp_path, imagefolder, "--max_train_steps", "1")
    assert "the dataset's RGB images are converted to grayscale" in caplog.text


def test_bad_runs_fail_before_training(tmp_path, imagefolder):
    with pytest.raises(SystemExit, match="LPIPS"):
        run(tmp_path, imagefolder, "--perceptual_weight", "1.0")
    run(tmp_path, imagefolder, "--max_train_steps", "1", "--checkpointing_steps", "1")
    with pytest.raises(ValueError, match="already holds checkpoints"):
        run(tmp_path, imagefolder, "--max_train_steps", "1")
    with pytest.raises(ValueError, match="holds a different run"):
        run(tmp_path, imagefolder, "--max_train_steps", "1", config={**TINY, "codebook_size": 16})
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        run(tmp_path, imagefolder, "--resume_from_checkpoint", str(tmp_path / "nope"))
    (imagefolder / "a" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="broken.png"):
        run(tmp_path / "x", imagefolder, "--max_train_steps", "1")
    # that run saved nothing, so the corrected one (here: other settings too) may take its folder
    (imagefolder / "a" / "broken.png").unlink()
    run(tmp_path / "x", imagefolder, "--max_train_steps", "1", "--logging_steps", "50",
        config={**TINY, "codebook_size": 16})
    summary = json.loads((tmp_path / "x" / "out" / "train_summary.json").read_text())
    assert "loss" in summary["last_logs"]  # the last step is logged, also in a run shorter than --logging_steps
    with pytest.raises(SystemExit):  # refused by the parser, before any folder
        run(tmp_path, imagefolder, "--output_dir", str(tmp_path / "y"), "--lr_scheduler", "cosinee")
    assert not (tmp_path / "y").exists()


def test_resuming_checks_the_checkpoint_before_loading_it(tmp_path, imagefolder):
    out = run(tmp_path, imagefolder, "--max_train_steps", "4", "--checkpointing_steps", "2", "--use_ema")
    with pytest.raises(ValueError, match="is not a checkpoint-<step> folder"):
        run(tmp_path, imagefolder, "--max_train_steps", "5", "--use_ema", "--resume_from_checkpoint", str(out))
    # kept, checkpoint-4 would outlive the branch's own checkpoints and be taken as "latest" next time
    with pytest.raises(ValueError, match=r"holds later checkpoints \(checkpoint-4\) of the run being branched"):
        run(tmp_path, imagefolder, "--max_train_steps", "5", "--use_ema", "--resume_from_checkpoint",
            str(out / "checkpoint-2"))
    with pytest.raises(ValueError, match="was saved with --use_ema: resume it with --use_ema"):
        run(tmp_path, imagefolder, "--max_train_steps", "5", "--resume_from_checkpoint", "latest")
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ValueError, match=r"checkpoint-4 belongs to another run \(differs in: tokenizer_config\)"):
        run(other, imagefolder, "--max_train_steps", "5", "--use_ema", "--resume_from_checkpoint",
            str(out / "checkpoint-4"), config={**TINY, "codebook_size": 16})
    assert not (other / "out").exists()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    run(tmp_path, imagefolder, "--max_train_steps", "5", "--use_ema", "--resume_from_checkpoint", "latest")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-5"]


def test_a_resumed_run_trains_at_the_learning_rate_it_is_given(tmp_path, imagefolder):
    out = run(tmp_path, imagefolder, "--max_train_steps", "2", "--checkpointing_steps", "2", "--learning_rate", "1e-4")
    assert json.loads((out / "train_summary.json").read_text())["last_logs"]["lr"] == pytest.approx(1e-4)
    run(tmp_path, imagefolder, "--max_train_steps", "3", "--learning_rate", "1e-2", "--resume_from_checkpoint",
        "latest")
    assert json.loads((out / "train_summary.json").read_text())["last_logs"]["lr"] == pytest.approx(1e-2)


def test_resolution_defaults_to_the_tokenizers_and_one_it_cannot_take_is_refused_before_training(tmp_path,
                                                                                               imagefolder):
    out = run(tmp_path, imagefolder, "--max_train_steps", "1", resolution=None)  # not 256: the 8 px it is built for
    assert json.loads((out / RUN_FILE).read_text())["resolution"] == 8
    for folder in ("odd", "fp16"):
        (tmp_path / folder).mkdir()
    with pytest.raises(ValueError, match="image size 7x7 must be divisible by the downsampling factor 2"):
        run(tmp_path / "odd", imagefolder, "--max_train_steps", "1", resolution=7)
    with pytest.raises(ValueError, match="--mixed_precision fp16 is not run on a CPU"):
        run(tmp_path / "fp16", imagefolder, "--max_train_steps", "1", "--mixed_precision", "fp16")
    for folder in ("odd", "fp16"):
        assert not list((tmp_path / folder).rglob("checkpoint-*")) and not list((tmp_path / folder).rglob("*.png"))


def test_push_to_hub_uploads_the_final_tokenizer(tmp_path, imagefolder, fake_hub):
    run(tmp_path, imagefolder, "--max_train_steps", "1", "--push_to_hub", "--hub_model_id", "me/tiny-fqgan")
    assert fake_hub[0] == ("create", "me/tiny-fqgan", False)
    kind, repo, files = fake_hub[1]
    assert (kind, repo) == ("upload", "me/tiny-fqgan")
    assert {"config.json", "diffusion_pytorch_model.safetensors"} <= set(files)


def test_push_to_hub_without_a_token_fails_before_training(tmp_path, imagefolder, no_hub_token):
    with pytest.raises(ValueError, match="needs a Hugging Face token"):
        run(tmp_path, imagefolder, "--max_train_steps", "1", "--push_to_hub")
    assert not (tmp_path / "out").exists()


TOKENIZER_CONFIGS = sorted(p for p in (ROOT / "examples" / "configs").glob("fmnist_*.json")
                           if {"z_channels", "num_codebooks"} <= set(json.loads(p.read_text())))


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A random ViT as wide as the Fashion-MNIST teacher (128), standing in for the bundled one."""
    from transformers import ViTConfig, ViTModel

    path = tmp_path_factory.mktemp("teacher")
    ViTModel(ViTConfig(hidden_size=128, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=28, patch_size=7, num_channels=1)).save_pretrained(path)
    return path


def test_every_tokenizer_kind_has_a_fashion_mnist_config():
    kinds = set()
    for path in TOKENIZER_CONFIGS:
        config = json.loads(path.read_text())
        kinds.add((config["quantizer"]["kind"], config["num_codebooks"]))
    assert {("vq", 1), ("vq", 2), ("vq", 3), ("fsq", 1), ("lfq", 1)} <= kinds


@pytest.mark.parametrize("config_path", TOKENIZER_CONFIGS, ids=lambda p: p.stem)
def test_fashion_mnist_configs_train(tmp_path, imagefolder, tiny_teacher, config_path):
    config = json.loads(config_path.read_text())
    teachers = ["none" if t is None else str(tiny_teacher)
                for t in config.get("teacher_models") or [None] * config["num_codebooks"]]
    out = run(tmp_path, imagefolder, "--max_train_steps", "2", "--teachers", *teachers, config=config, resolution=28)
    model = FQGANTokenizer.from_pretrained(out / "tokenizer")
    assert model.tokenize(torch.zeros(1, 1, 28, 28)).shape == (1, config["num_codebooks"], 7, 7)


def test_run_meter_counts_samples_after_warmup():
    meter = RunMeter(max_minutes=None, samples_per_step=8, warmup_steps=2)
    for _ in range(2):
        meter.step()
    assert meter.samples_per_second() is None
    meter.step()
    assert meter.samples_per_second() > 0 and not meter.timed_out()
    assert RunMeter(max_minutes=0, samples_per_step=1).timed_out()
    assert meter.log({"loss": 1.0})["samples_per_second"] > 0 and meter.last_logs == {"loss": 1.0}


def test_teachers_none_and_a_missing_teacher_folder(tmp_path, imagefolder, caplog):
    config = {**json.loads((ROOT / "examples" / "configs" / "fmnist_fqgan_dual.json").read_text()),
              "sample_size": 8, "channel_multipliers": [1, 2]}
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError, match="the teacher shipped in the package, bundled:fmnist-vit-teacher-p4"):
        run(tmp_path / "a", imagefolder, "--max_train_steps", "1", "--teachers", "none", "./no-teacher",
            config=config)
    run(tmp_path, imagefolder, "--max_train_steps", "1", "--teachers", "none", "none", config=config)
    assert "feature head but no teacher" in caplog.text


def test_tensorboard_logging_without_tensorboard_is_refused_up_front(tmp_path, imagefolder, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "tensorboard" else find_spec(name, *args))
    with pytest.raises(ValueError, match="needs the tensorboard package"):
        run(tmp_path, imagefolder, "--max_train_steps", "1", "--report_to", "tensorboard")
    # accelerate would drop a tracker that is not installed, and the run would log nothing
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "wandb" else find_spec(name, *args))
    with pytest.raises(ValueError, match="--report_to wandb needs the wandb package: pip install wandb"):
        run(tmp_path, imagefolder, "--max_train_steps", "1", "--report_to", "wandb")
    with pytest.raises(ValueError, match="--report_to tensorbored: not a tracker accelerate knows"):
        run(tmp_path, imagefolder, "--max_train_steps", "1", "--report_to", "tensorbored")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--max_grad_norm", "-1", "--max_grad_norm must be >= 0"),  # a negative norm would turn descent into ascent
    ("--learning_rate", "-1", "--learning_rate must be >= 0"),
    ("--disc_learning_rate", "-0.5", "--disc_learning_rate must be >= 0"),
])
def test_a_negative_clipping_norm_or_learning_rate_is_refused_before_training(tmp_path, imagefolder, flag, value,
                                                                             message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, imagefolder, "--max_train_steps", "1", flag, value)
    assert not (tmp_path / "out").exists()


def test_from_the_command_line_bad_input_ends_in_one_line_and_training_errors_keep_their_traceback(
        tmp_path, imagefolder, monkeypatch):
    import sys

    from hf_vq.training.recipes import TokenizerGANRecipe

    missing = ["train_fqgan.py", "--tokenizer_config", str(tmp_path / "missing.json"), "--dataset", str(imagefolder),
               "--output_dir", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", missing)
    with pytest.raises(SystemExit, match=r"^train_fqgan: .*missing\.json"):
        train_fqgan.main()

    def broken_step(self, batch, step):
        raise ValueError("a bug in the middle of training")

    monkeypatch.setattr(TokenizerGANRecipe, "training_step", broken_step)
    (tmp_path / "tok.json").write_text(json.dumps(TINY))
    monkeypatch.setattr(sys, "argv", ["train_fqgan.py", "--tokenizer_config", str(tmp_path / "tok.json"), "--dataset",
                                      str(imagefolder), "--resolution", "8", "--output_dir", str(tmp_path / "run"),
                                      "--perceptual_weight", "0", "--train_batch_size", "4", "--report_to", "none"])
    with pytest.raises(ValueError, match="a bug in the middle of training"):
        train_fqgan.main()
