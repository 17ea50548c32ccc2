"""The shared training loop: every recipe resumes from its own checkpoint to bit-identical weights, and a new
recipe runs on the loop without any change to it."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from hf_vq import FARForClassConditionalGeneration, FQGANTokenizer, ViTVQGANTokenizer
from hf_vq.training import TrainingRecipe, run
from hf_vq.training.checkpointing import list_checkpoints
from hf_vq.training.recipes import ARGeneratorRecipe, NARGeneratorRecipe, TokenizerGANRecipe, ViTVQGANRecipe

COMMON = ["--train_batch_size", "4", "--report_to", "none", "--use_ema", "--ema_decay", "0.9",
          "--checkpointing_steps", "2", "--validation_steps", "2", "--logging_steps", "1"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny tokenizer, its codes of 16 random 8x8 images, and the model configs of every recipe."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("loop")
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / "data" / label).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / "data" / label / f"{i}.png")
    torch.manual_seed(0)
    FQGANTokenizer.from_preset("tiny").save_pretrained(root / "tok")
    load_script("extract_codes").main(["--tokenizer", str(root / "tok"), "--dataset", str(root / "data"),
                                       "--resolution", "8", "--output_dir", str(root / "codes")])
    (root / "tok.json").write_text(json.dumps(FQGANTokenizer.presets["tiny"]))
    (root / "vitvqgan.json").write_text(json.dumps(ViTVQGANTokenizer.presets["tiny"]))
    (root / "far.json").write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                               "num_head_layers": 1}))
    (root / "maskgit.json").write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 1,
                                                   "num_attention_heads": 2}))
    return root


def recipe_args(recipe, root: Path) -> list[str]:
    if recipe is TokenizerGANRecipe:
        return ["--tokenizer_config", str(root / "tok.json"), "--dataset", str(root / "data"), "--resolution", "8",
                "--perceptual_weight", "0", "--disc_start", "1", "--disc_channels", "8", "--disc_layers", "1",
                "--gradient_accumulation_steps", "2", "--random_flip"]
    if recipe is ViTVQGANRecipe:  # R1 every 2 steps, so resumed runs cross lazy-R1 steps; warmup then cosine
        return ["--tokenizer_config", str(root / "vitvqgan.json"), "--dataset", str(root / "data"), "--resolution",
                "8", "--perceptual_weight", "0", "--disc_start", "1", "--disc_channels", "8", "--disc_max_channels",
                "16", "--r1_interval", "2", "--lr_warmup_steps", "2", "--gradient_accumulation_steps", "2",
                "--random_flip"]
    config = root / ("far.json" if recipe is ARGeneratorRecipe else "maskgit.json")
    return ["--codes_dir", str(root / "codes"), "--tokenizer", str(root / "tok"), "--model_config", str(config)]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    files = list(out.glob("tokenizer/*.safetensors")) + list(out.glob("pipeline/transformer/*.safetensors"))
    assert len(files) == 1, files
    return load_file(files[0])


@pytest.mark.parametrize("recipe", [TokenizerGANRecipe, ViTVQGANRecipe, ARGeneratorRecipe, NARGeneratorRecipe],
                         ids=lambda r: r.__name__)
def test_every_recipe_resumes_to_the_same_weights(workspace, tmp_path, recipe):
    # Resumed mid-epoch, then across an epoch boundary (2 optimizer steps per tokenizer epoch, 8 per code epoch),
    # with random draws in every step: dropout, label dropout, masks, flips.
    args = recipe_args(recipe, workspace) + COMMON
    run(recipe, args + ["--output_dir", str(tmp_path / "straight"), "--max_train_steps", "10"])
    run(recipe, args + ["--output_dir", str(tmp_path / "stopped"), "--max_train_steps", "3"])
    assert [p.name for p in list_checkpoints(tmp_path / "stopped")] == ["checkpoint-2", "checkpoint-3"]
    run(recipe, args + ["--output_dir", str(tmp_path / "stopped"), "--max_train_steps", "10",
                        "--resume_from_checkpoint", "latest"])
    expected, got = final_weights(tmp_path / "straight"), final_weights(tmp_path / "stopped")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    assert (tmp_path / "stopped" / "samples" / "step-0000004.png").exists()
    summary = json.loads((tmp_path / "stopped" / "train_summary.json").read_text())
    assert summary["global_step"] == 10 and "loss" in summary["last_logs"]


@pytest.mark.parametrize("recipe", [TokenizerGANRecipe, ARGeneratorRecipe], ids=lambda r: r.__name__)
def test_models_compiled_by_accelerate_train_and_save_as_the_plain_models(workspace, tmp_path, recipe, monkeypatch):
    # `accelerate launch --dynamo_backend ...` sets this: `prepare` wraps each model in torch.compile
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "EAGER")
    args = recipe_args(recipe, workspace) + COMMON + ["--max_train_steps", "2"]
    model = run(recipe, args + ["--output_dir", str(tmp_path / "compiled")])
    assert type(model) is (FQGANTokenizer if recipe is TokenizerGANRecipe else FARForClassConditionalGeneration)
    assert (tmp_path / "compiled" / "samples" / "step-0000002.png").exists()
    checkpoint = load_file(tmp_path / "compiled" / "checkpoint-2" / "model.safetensors")
    assert not any(key.startswith("_orig_mod.") for key in checkpoint)  # resumable with or without compiling
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND")
    plain = run(recipe, args + ["--output_dir", str(tmp_path / "plain")])
    expected, got = final_weights(tmp_path / "plain"), final_weights(tmp_path / "compiled")
    for key in expected:  # the eager backend computes exactly what the plain model does
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    assert type(plain) is type(model)


@pytest.mark.parametrize("recipe", [ARGeneratorRecipe, NARGeneratorRecipe], ids=lambda r: r.__name__)
def test_gradient_checkpointing_trains_the_same_weights(workspace, tmp_path, recipe):
    args = recipe_args(recipe, workspace) + COMMON + ["--max_train_steps", "2"]
    model = run(recipe, args + ["--output_dir", str(tmp_path / "checkpointed"), "--gradient_checkpointing"])
    run(recipe, args + ["--output_dir", str(tmp_path / "plain")])
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    expected, got = final_weights(tmp_path / "plain"), final_weights(tmp_path / "checkpointed")
    for key in expected:  # the recomputation replays dropout's draws: the same numbers, less memory
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


class LineFit(TrainingRecipe):
    """A recipe written in a test: fit y = 3x - 1 with two trained modules, to show the loop needs no change."""

    name = "line_fit"
    trainable = ("model", "offset")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--learning_rate", type=float, default=0.1)

    def run_identity(self) -> dict:
        return {"recipe": self.name}

    def build(self) -> None:
        self.model = nn.Linear(1, 1, bias=False)  # the slope
        self.offset = nn.Linear(1, 1, bias=False)  # the intercept, applied to ones

    def make_optimizer(self, name: str, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(module.parameters(), lr=self.args.learning_rate)

    def train_dataset(self):
        x = torch.linspace(-1, 1, 64).unsqueeze(1)
        return TensorDataset(x, 3 * x - 1), lambda rows: torch.stack([torch.cat(r) for r in rows])

    def training_step(self, batch, step):
        x, y = batch[:, :1], batch[:, 1:]
        ones = torch.ones_like(x)
        slope_loss = (self.model(x) + self.offset(ones).detach() - y).pow(2).mean()
        yield "model", slope_loss, {"loss": slope_loss.detach()}
        offset_loss = (self.model(x).detach() + self.offset(ones) - y).pow(2).mean()
        yield "offset", offset_loss, {"offset_loss": offset_loss.detach()}

    def save_final(self, model: nn.Module, output_dir: Path) -> Path:
        folder = output_dir / "final"
        folder.mkdir()
        torch.save(model.state_dict(), folder / "model.pt")
        return folder


def test_a_new_recipe_runs_on_the_loop_unchanged(tmp_path):
    model = run(LineFit, ["--output_dir", str(tmp_path / "fit"), "--max_train_steps", "60", "--train_batch_size", "16",
                          "--report_to", "none", "--checkpointing_steps", "50", "--logging_steps", "10"])
    assert abs(float(model.weight.detach()) - 3) < 0.1
    assert (tmp_path / "fit" / "final" / "model.pt").exists()
    assert [p.name for p in list_checkpoints(tmp_path / "fit")] == ["checkpoint-50", "checkpoint-60"]
    summary = json.loads((tmp_path / "fit" / "train_summary.json").read_text())
    assert summary["global_step"] == 60 and {"loss", "offset_loss", "lr"} <= set(summary["last_logs"])
    # the loop's shared --gradient_checkpointing needs a model that can recompute: refused before any run folder
    with pytest.raises(ValueError, match="a Linear has no gradient checkpointing"):
        run(LineFit, ["--output_dir", str(tmp_path / "refused"), "--gradient_checkpointing", "--report_to", "none"])
    assert not (tmp_path / "refused").exists()


def test_fsdp_runs_the_loop_cannot_do_right_are_refused():
    from types import SimpleNamespace

    from hf_vq.training.loop import check_sharding

    single = SimpleNamespace(name="train_far", trainable=("model",))
    gan = SimpleNamespace(name="train_fqgan", trainable=("model", "discriminator"))
    check_sharding(single, fsdp=True, fsdp2=True)
    check_sharding(gan, fsdp=False, fsdp2=False)  # DDP trains any number of modules
    with pytest.raises(ValueError, match="fsdp_version: 2"):
        check_sharding(single, fsdp=True, fsdp2=False)
    with pytest.raises(ValueError, match=r"train_fqgan trains 2 modules \(model, discriminator\).*DDP"):
        check_sharding(gan, fsdp=True, fsdp2=False)  # the advice that holds under either version comes first
    check_sharding(single, fsdp=True, fsdp2=True, ram_efficient_loading=True)
    check_sharding(single, fsdp=True, fsdp2=True, ram_efficient_loading=False, buffers=["quantize.initted"])
    with pytest.raises(ValueError, match=r"buffers \(quantize.embedding.weight, quantize.initted\).*"
                                         "--fsdp_cpu_ram_efficient_loading false"):
        check_sharding(single, fsdp=True, fsdp2=True, ram_efficient_loading=True,
                       buffers=["quantize.embedding.weight", "quantize.initted"])


def test_saved_buffers_are_the_persistent_ones():
    from hf_vq import VQKDTokenizer
    from hf_vq.training.loop import saved_buffers

    assert sorted(saved_buffers(VQKDTokenizer.from_preset("tiny"))) == ["quantize.embedding.weight", "quantize.initted"]
    assert saved_buffers(nn.Linear(2, 2)) == []


def test_allow_tf32_puts_fp32_matmuls_on_tf32(tmp_path):
    from hf_vq.training.checkpointing import start_run
    from hf_vq.training.loop import parse_recipe_args

    # saved and restored by hand: monkeypatch's undo deletes this attribute under some torch releases
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        flags = ["--output_dir", str(tmp_path), "--report_to", "none"]
        start_run(parse_recipe_args(TrainingRecipe, flags), "tf32", {"kind": "test"})
        assert not torch.backends.cuda.matmul.allow_tf32  # off unless asked, as torch leaves it
        start_run(parse_recipe_args(TrainingRecipe, [*flags, "--allow_tf32"]), "tf32", {"kind": "test"})
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
