"""A run killed with SIGKILL resumes with --resume_from_checkpoint latest and ends exactly where an
uninterrupted run ends (optimizer, scheduler, EMA, RNG, random flips and data position all restored)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import torch
from conftest import ROOT
from safetensors.torch import load_file
from test_train_fqgan import TINY

from hf_vq.training.checkpointing import list_checkpoints


def command(tmp_path, data, out, steps: int) -> list[str]:
    config = tmp_path / "tok.json"
    config.write_text(json.dumps(TINY))
    return [sys.executable, str(ROOT / "examples" / "train_fqgan.py"), "--tokenizer_config", str(config),
            "--dataset", str(data), "--resolution", "8", "--output_dir", str(out), "--perceptual_weight", "0",
            "--train_batch_size", "4", "--report_to", "none", "--disc_start", "3", "--disc_channels", "8",
            "--disc_layers", "1", "--use_ema", "--checkpointing_steps", "2", "--checkpoints_total_limit", "100",
            "--validation_steps", "1000", "--random_flip", "--max_train_steps", str(steps)]


def final_weights(out) -> dict:
    return load_file(out / "tokenizer" / "diffusion_pytorch_model.safetensors")


def run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_sigkill_after_a_checkpoint_and_mid_write_resume_exactly(tmp_path, imagefolder):
    reference = tmp_path / "reference"
    run(command(tmp_path, imagefolder, reference, steps=8))  # 16 images / batch 4: 2 epochs, crosses an epoch

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command(tmp_path, imagefolder, killed, steps=1000), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list_checkpoints(killed) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoints = list_checkpoints(killed)
    assert checkpoints, "the run was killed before its first checkpoint"
    latest = checkpoints[-1]

    # A kill while a checkpoint is being written leaves only a temp folder, which resume must ignore.
    partial = killed / f".tmp-checkpoint-{int(latest.name.split('-')[1]) + 2}"
    shutil.copytree(latest, partial)
    (partial / "model.safetensors").write_bytes(b"truncated")
    assert list_checkpoints(killed)[-1] == latest

    run(command(tmp_path, imagefolder, killed, steps=8) + ["--resume_from_checkpoint", "latest"])
    expected, got = final_weights(reference), final_weights(killed)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
