"""The GPU check script runs every step at tiny size on CPU, so that a lent GPU's time is not spent finding its
bugs; its KV-cache measurement counts each cache once."""

import importlib.metadata
import json

import pytest
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


def test_the_environment_check_names_each_unmet_requirement(tmp_path, capsys):
    pytest.importorskip("tomllib", reason="the check reads pyproject.toml with Python 3.11's tomllib")
    check = load_script("benchmarks/check_environment")
    installed = importlib.metadata.version("torch")  # the distribution's version, without a local tag like +cu130
    gaps = list(check.unmet(["torch>=999", "no-such-package-hf-vq", "numpy; extra == 'docs'", "numpy>=1"], "x"))
    assert gaps == [f"x needs torch>=999: {installed} is installed",
                    "x needs no-such-package-hf-vq: not installed"]
    # a carried wheel's own requirements are checked too: a distribution installed in a folder of its own
    info = tmp_path / "carried-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: carried\nVersion: 1.0\nRequires-Dist: torch<1\n")
    assert check.main([str(tmp_path)]) == 1
    assert f"carried 1.0 needs torch<1: {installed} is installed" in capsys.readouterr().out
    assert check.main([]) == 0  # this environment meets hf_vq's own requirements
