"""The training scripts run unchanged as 2 CPU processes; both ranks end with identical weights."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import torch
from conftest import ROOT
from test_pipeline import tokenizer
from test_train_fqgan import TINY

WRAPPER = textwrap.dedent(
    """
    import sys, torch
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


def launch(tmp_path, kind: str, *argv: str) -> list[dict]:
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER.format(examples=str(ROOT / "examples")))
    dumps = tmp_path / f"dumps-{kind}"
    dumps.mkdir()
    # accelerate's MULTI_CPU launcher expects MPI; on one machine torchrun + ACCELERATE_USE_CPU gives gloo DDP.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(script), kind, str(dumps), *argv]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(dumps / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_tokenizer_and_generator_scripts_on_two_processes(tmp_path, imagefolder):
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

    tokenizer().save_pretrained(tmp_path / "tok")
    from conftest import load_script

    load_script("extract_codes").main(["--tokenizer", str(tmp_path / "tok"), "--dataset", str(imagefolder),
                                       "--resolution", "8", "--output_dir", str(tmp_path / "codes")])
    model_config = tmp_path / "far.json"
    model_config.write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                        "num_head_layers": 1}))
    ranks = launch(tmp_path, "far", "--codes_dir", str(tmp_path / "codes"), "--tokenizer", str(tmp_path / "tok"),
                   "--model_config", str(model_config), "--output_dir", str(tmp_path / "far-run"),
                   "--train_batch_size", "2", "--max_train_steps", "2", "--use_ema", "--report_to", "none",
                   "--validation_steps", "100")
    assert_same(*ranks)
    assert (tmp_path / "far-run" / "pipeline" / "model_index.json").exists()


def test_vqkd_codebooks_stay_identical_across_two_processes(tmp_path, imagefolder):
    from transformers import ViTConfig, ViTModel

    from hf_vq import VQKDTokenizer

    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=8, patch_size=2, num_channels=1)).save_pretrained(tmp_path / "teacher")
    config = tmp_path / "vqkd.json"
    config.write_text(json.dumps(VQKDTokenizer.presets["tiny-no-pixel-decoder"]))
    ranks = launch(tmp_path, "vqkd", "--tokenizer_config", str(config), "--teacher", str(tmp_path / "teacher"),
                   "--dataset", str(imagefolder), "--resolution", "8", "--output_dir", str(tmp_path / "run"),
                   "--train_batch_size", "2", "--max_train_steps", "3", "--report_to", "none")
    assert_same(*ranks)  # the EMA codebook (a buffer) included: counts and sums are all-reduced
    assert "quantize.codebook" in ranks[0]
