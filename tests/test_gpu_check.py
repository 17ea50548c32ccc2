"""The GPU check script runs every step at tiny size on CPU, so that a lent GPU's time is not spent finding its
bugs; its KV-cache measurement counts each cache once."""

import json

import torch
from conftest import load_script


def test_the_gpu_check_runs_every_step_at_tiny_size_and_measures_each_kv_cache_once(tmp_path):
    gpu_check = load_script("benchmarks/gpu_check")
    out = tmp_path / "check.json"
    report = gpu_check.main(["--tiny", "--device", "cpu", "--runs", "1", "--train-steps", "6", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    scale = gpu_check.TINY
    for preset in ("GPT-B", "FAR-Base"):
        rows = report["sampling"][preset]
        assert set(rows) == {"hf_vq eager", "hf_vq compiled"}
        # on a CPU the caches hold fp32 activations (the CPU rule), eager and compiled alike
        expected = gpu_check.kv_cache_bytes(scale.config(preset), 2 * scale.batch, torch.float32)
        for row in rows.values():
            assert row["kv_cache_bytes"] == expected and row["img_per_s"] > 0 and row["peak_memory_gib"] is None
    training = report["training"]["FAR-Base"]
    assert training["steps"] == 6 and training["step_seconds"] > 0 and training["final_loss"] > 0
    # the README's figure: 36 blocks x 256 positions + 4 head blocks x 2 sub-tokens, 128 rows, width 1280, bf16
    assert report["kv_cache_bytes_computed"]["FAR-Large"]["bfloat16"] == 6_045_040_640
