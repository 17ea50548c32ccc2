"""The training scripts run unchanged as 2 CPU processes; both ranks end with identical weights."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT, free_port
from test_pipeline import tokenizer
from test_train_fqgan import TINY

FSDP_CONFIG = ROOT / "examples" / "accelerate" / "fsdp_gpt_xl.yaml"

# Accelerate runs FSDP on accelerators only: on a machine without one, each process of an FSDP launch gets a state of
# its own, not distributed (and with ACCELERATE_USE_CPU it trains DDP instead, silently). Under FSDP_ON_CPU the wrapper
# has it take the CPU as the device, with gloo, so that the FSDP path of `accelerator.prepare` runs as on GPUs.
WRAPPER = textwrap.dedent(
    """
    import os, sys, torch
    if os.environ.get("FSDP_ON_CPU"):
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType

        _prepare_backend = PartialState._prepare_backend

        def prepare_backend(self, *args, **kwargs):
            backend, kind = _prepare_backend(self, *args, **kwargs)
            if kind == DistributedType.NO and "LOCAL_RANK" in os.environ:
                return "gloo", DistributedType.MULTI_GPU
            return backend, kind

        def set_device(self):
            self.device = self.device or torch.device("cpu")

        PartialState._prepare_backend, PartialState.set_device = prepare_backend, set_device
    if os.environ.get("OUT_OF_TIME_RANK") == os.environ["RANK"]:  # this process alone runs out of --max_minutes
        from hf_vq.training.checkpointing import RunMeter

        RunMeter.timed_out = lambda self: self.steps >= 1
    sys.path.insert(0, {examples!r})
    kind, out, *argv = sys.argv[1:]
    import importlib
    script = importlib.import_module("train_fqgan" if kind == "tokenizer" else "train_" + kind)
    model = script.main(argv)
    from accelerate import PartialState
    rank = PartialState().process_index
    torch.save({{k: v.cpu() for k, v in model.state_dict().items()}}, f"{{out}}/rank{{rank}}.pt")
    """
)


def launch(tmp_path, kind: str, *argv: str, fsdp: bool | list[str] = False, env: dict | None = None) -> list[dict]:
    """Run a training script on 2 CPU processes (DDP, or with `fsdp` the shipped FSDP config, `accelerate launch`
    flags in a list overriding it), with `env` added; each rank's weights."""
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER.format(examples=str(ROOT / "examples")))
    dumps = tmp_path / f"dumps-{kind}"
    dumps.mkdir()
    port = free_port()
    if fsdp:
        # the 8-GPU bf16 config as it ships, overridden to 2 processes in fp32 (as its header says)
        base = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
        base.update(OMP_NUM_THREADS="1", FSDP_ON_CPU="1")
        cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", str(FSDP_CONFIG),
               "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(port)]
        cmd += fsdp if isinstance(fsdp, list) else []
    else:
        # accelerate's MULTI_CPU launcher expects MPI; on one machine torchrun + ACCELERATE_USE_CPU gives gloo DDP.
        base = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    cmd += [str(script), kind, str(dumps), *argv]
    result = subprocess.run(cmd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=600,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(dumps / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_tokenizer_script_on_two_processes(tmp_path, imagefolder):
    """DDP on two processes; the generators train on two processes in the FSDP test below and in the benchmark's
    two-process test (tests/test_benchmark.py)."""
    config = tmp_path / "tok.json"
    config.write_text(json.dumps({**TINY, "kmeans_init": True}))
    out = tmp_path / "tok-run"
    ranks = launch(tmp_path, "tokenizer", "--tokenizer_config", str(config), "--dataset", str(imagefolder),
                   "--resolution", "8", "--output_dir", str(out), "--perceptual_weight", "0",
                   "--train_batch_size", "2", "--max_train_steps", "3", "--disc_start", "1", "--disc_channels", "8",
                   "--disc_layers", "1", "--checkpointing_steps", "2", "--use_ema", "--logging_steps", "1")
    assert_same(*ranks)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2", "checkpoint-3"]
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]
    # only the main process logs: every event file (run + hparams) carries the same writer pid
    writers = {p.name.split(".")[-2] for p in (out / "train_fqgan").rglob("events.out.tfevents*")}
    assert len(writers) == 1



def vqkd_flags(tmp_path, imagefolder) -> list[str]:
    """Stage-1 VQ-KD flags for a tiny tokenizer config and a tiny random ViT teacher, written in `tmp_path`."""
    from transformers import ViTConfig, ViTModel

    from hf_vq import VQKDTokenizer

    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=8, patch_size=2, num_channels=1)).save_pretrained(tmp_path / "teacher")
    config = tmp_path / "vqkd.json"
    config.write_text(json.dumps(VQKDTokenizer.presets["tiny-no-pixel-decoder"]))
    return ["--tokenizer_config", str(config), "--teacher", str(tmp_path / "teacher"), "--dataset", str(imagefolder),
            "--resolution", "8", "--train_batch_size", "2", "--max_train_steps", "3", "--report_to", "none"]


def test_vqkd_stage_one_trains_under_fsdp_with_its_block_class_and_buffers(tmp_path, imagefolder):
    from hf_vq import VQKDTokenizer

    out = tmp_path / "run"
    # the shipped config wraps the generators' blocks and loads by broadcasting parameters only: a ViT tokenizer
    # with an EMA codebook (buffers) overrides both, as the README says
    ranks = launch(tmp_path, "vqkd", *vqkd_flags(tmp_path, imagefolder), "--output_dir", str(out), "--use_ema",
                   "--checkpointing_steps", "3",
                   fsdp=["--fsdp_transformer_layer_cls_to_wrap", "Block", "--fsdp_cpu_ram_efficient_loading", "false"])
    assert (out / "checkpoint-3" / "pytorch_model_fsdp_0").is_dir()  # sharded: FSDP ran
    # the EMA codebook (a buffer) included: FSDP, unlike DDP, does not broadcast buffers, so only the all-reduced
    # counts and sums keep the ranks' codebooks equal
    assert_same(*ranks)
    assert "quantize.embedding.weight" in ranks[0]
    saved = VQKDTokenizer.from_pretrained(out / "tokenizer").state_dict()
    assert_same(saved, ranks[0])
    assert bool(saved["quantize.initted"])  # k-means of the first batch set the codebook, the same on both ranks


def test_a_process_out_of_time_stops_every_process_at_the_same_step(tmp_path, imagefolder):
    config = tmp_path / "tok.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "tok-run"
    # Had only rank 1 stopped, rank 0 would wait for it in the next step's gradient all-reduce until the timeout.
    ranks = launch(tmp_path, "tokenizer", "--tokenizer_config", str(config), "--dataset", str(imagefolder),
                   "--resolution", "8", "--output_dir", str(out), "--perceptual_weight", "0", "--train_batch_size",
                   "2", "--max_train_steps", "4", "--max_minutes", "60", "--logging_steps", "1", "--disc_start", "100",
                   "--report_to", "none", env={"OUT_OF_TIME_RANK": "1"})
    assert_same(*ranks)
    assert json.loads((out / "train_summary.json").read_text())["global_step"] == 1


def test_gan_tokenizer_under_fsdp_is_refused_before_training(tmp_path, imagefolder, monkeypatch):
    from conftest import load_script

    # what `accelerate launch` with the shipped FSDP config sets in each process's environment
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    config = tmp_path / "tok.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "tok-run"
    with pytest.raises(ValueError, match=r"train_fqgan trains 2 modules \(model, discriminator\).*ddp_multi_gpu"):
        load_script("train_fqgan").main(["--tokenizer_config", str(config), "--dataset", str(imagefolder),
                                         "--resolution", "8", "--output_dir", str(out), "--perceptual_weight", "0",
                                         "--train_batch_size", "2", "--max_train_steps", "1", "--report_to", "none"])
    assert not out.exists()  # refused before the run folder is made


def test_generator_script_under_fsdp_previews_and_saves_the_full_model(tmp_path, imagefolder, k=2):
    """FAR with two sub-codebooks: a GPT's modules (k=1) and FAR's AR head and aggregation, sharded together."""
    from conftest import load_script

    from hf_vq import FARConfig, FARForClassConditionalGeneration, FQGANPipeline

    tokenizer(k=k).save_pretrained(tmp_path / "tok")
    load_script("extract_codes").main(["--tokenizer", str(tmp_path / "tok"), "--dataset", str(imagefolder),
                                       "--resolution", "8", "--output_dir", str(tmp_path / "codes")])
    model_config = tmp_path / "gpt.json"  # two blocks: two FSDP units besides the root
    model_config.write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}))
    out = tmp_path / "run"
    ranks = launch(tmp_path, "far", "--codes_dir", str(tmp_path / "codes"), "--tokenizer", str(tmp_path / "tok"),
                   "--model_config", str(model_config), "--output_dir", str(out), "--train_batch_size", "2",
                   "--max_train_steps", "2", "--use_ema", "--report_to", "none", "--validation_steps", "2",
                   "--checkpointing_steps", "2", fsdp=True)
    assert (out / "checkpoint-2" / "pytorch_model_fsdp_0").is_dir()  # sharded: FSDP ran, not a DDP fallback
    assert_same(*ranks)  # both ranks return the full (gathered) EMA weights
    transformer = FQGANPipeline.from_pretrained(out / "pipeline").transformer
    saved = transformer.state_dict()
    unsharded = FARForClassConditionalGeneration(FARConfig.from_pretrained(out / "pipeline" / "transformer"))
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in unsharded.state_dict().items()}
    assert_same(saved, ranks[0])
    # the EMA checkpoint holds the full averages (those the final model was saved with), not rank 0's shards
    ema = torch.load(out / "checkpoint-2" / "custom_checkpoint_0.pkl", weights_only=False)["shadow_params"]
    assert_same(dict(enumerate(ema)), dict(enumerate(p.detach() for p in transformer.parameters())))
    assert (out / "samples" / "step-0000002.png").is_file()


def test_the_full_model_of_a_one_process_fsdp_run_holds_the_ema_weights():
    """On one rank the gathered state shares memory with the parameters, which get the training weights back when
    the EMA weights are swapped out again: for the final save and for previews (gathered to the CPU)."""
    from conftest import run_in_own_process_group

    out = run_in_own_process_group(
        """
        from torch import nn
        from torch.distributed.fsdp import fully_shard
        from hf_vq.training.loop import ShardAwareEMA, _full_model, _meta_copy

        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        frame = _meta_copy(model)
        fully_shard(model)
        ema = ShardAwareEMA(model.parameters(), decay=0.5)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(10.0)  # training moves the weights away from their average
        average = [p.full_tensor().clone() for p in ema.shadow_params]
        for every_rank in (True, False):
            full = _full_model(model, frame, ema, every_rank=every_rank)
            assert all(torch.equal(a, b) for a, b in zip(full.parameters(), average, strict=True)), every_rank
            assert not torch.equal(model[0].weight.full_tensor(), average[0])  # the training weights are back
        print("ema")
        """
    )
    assert "ema" in out
