"""`hf-vq benchmark`: a quick spec end to end, resume at a stage boundary, and bad specs refused before any work."""

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from PIL import Image

from hf_vq.benchmark import BenchmarkRun, load_spec, render_table, write_table
from hf_vq.benchmark.stages import StageCache
from hf_vq.benchmark.table import load_rows
from hf_vq.cli import main as cli_main
from hf_vq.training.data import FASHION_MNIST_DIR

FMNIST_PRESENT = FASHION_MNIST_DIR.is_dir()
needs_fmnist = pytest.mark.skipif(not FMNIST_PRESENT,
                                  reason="Fashion-MNIST files not installed (apt package dataset-fashion-mnist)")

CNN = {"in_channels": 1, "out_channels": 1, "base_channels": 32, "channel_multipliers": [1, 1, 2],
       "num_res_blocks": 1, "z_channels": 8, "sample_size": 28, "num_codebooks": 1}
CONFIGS = {
    "vqgan.json": {**CNN, "quantizer": {"kind": "vq", "codebook_size": 64, "dim": 4}},
    "fsq.json": {**CNN, "quantizer": {"kind": "fsq", "codebook_size": 64, "dim": 3, "levels": [4, 4, 4]}},
    "ar.json": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_head_layers": 1},
    "nar.json": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
}
QUICK = {
    "name": "quick",
    # 140 samples and 200 test images: more than the classifier's 128 feature dimensions, as the distance needs
    "dataset": {"name": "fashion-mnist", "resolution": 28, "train_split": "train[:128]", "test_split": "test[:200]"},
    "seed": 0,
    "features": "fmnist",
    "num_samples": 140,
    "budget": {"tokenizer": {"samples": 32, "batch_size": 16}, "ar": {"samples": 32, "batch_size": 16},
               "nar": {"samples": 32, "batch_size": 16}, "max_minutes": None},
    "ar": {"config": "ar.json", "sampling": {"guidance_scale": 1.5}},
    "nar": {"config": "nar.json", "sampling": {"guidance_scale": 1.5, "num_inference_steps": 2}},
    "train_args": {"tokenizer": {"perceptual_weight": 0, "disc_start": 1000, "report_to": "none"},
                   "ar": {"report_to": "none"}, "nar": {"report_to": "none"}},
    "rows": [{"name": "VQGAN", "kind": "vqgan", "config": "vqgan.json"},
             {"name": "FSQ", "kind": "fsq", "config": "fsq.json"}],
}


def write_spec(folder: Path, **changes) -> Path:
    """The quick spec and its configs in `folder`, with top-level keys replaced by `changes`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, config in CONFIGS.items():
        (folder / name).write_text(json.dumps(config))
    spec = {**copy.deepcopy(QUICK), **changes}
    path = folder / "quick.json"
    path.write_text(json.dumps(spec))
    return path


class Killed(Exception):
    pass


def run(spec_path: Path, root: Path, kill_after: int | None = None) -> BenchmarkRun:
    """One benchmark run; with `kill_after`, it dies right after that many newly computed stages."""
    bench = BenchmarkRun(load_spec(spec_path), root / "results", root / "work", device="cpu", log=lambda _: None)
    if kill_after is not None:
        original = StageCache.run

        def dying(self, *args, **kwargs):
            if len(self.computed) >= kill_after:
                raise Killed
            return original(self, *args, **kwargs)

        bench.cache.run = dying.__get__(bench.cache)
    try:
        bench.run()
    except Killed:
        pass
    return bench


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The quick spec killed at a stage boundary, then restarted to the end."""
    root = tmp_path_factory.mktemp("bench")
    spec = write_spec(root / "spec")
    first = run(spec, root, kill_after=5)
    first.rows_written = sorted(p.name for p in (root / "results").glob("row-*.json"))
    second = run(spec, root)
    return root, first, second


@needs_fmnist
def test_quick_spec_writes_rows_table_and_plot(resumed):
    root, _, _ = resumed
    results = root / "results"
    rows, noise = load_rows(results)
    assert [r["row"] for r in rows] == ["VQGAN", "FSQ"] and noise is None
    for row in rows:
        assert row["codebooks"] == "1 x 64"
        assert 0 < row["tokenizer"]["codebook_usage"][0] <= 1 and row["tokenizer"]["psnr_db"] > 0
        assert row["tokenizer"]["rfd_fmnist"] > 0
        for kind in ("ar", "nar"):
            assert row[kind]["num_samples"] == 140 and row[kind]["fd_fmnist"] > 0
            assert 0 <= row[kind]["class_accuracy"] <= 1
            assert (results / f"row-{row['slug']}-{kind}.png").is_file()
        ppl = row["ar"]["validation_perplexity"]
        assert 1 < ppl["perplexity"] < 64 and len(ppl["per_position"]) == 49  # a 7x7 grid of 64 codes
        assert "validation_perplexity" not in row["nar"]  # MaskGIT is not autoregressive
        assert row["matched"] and row["training"]["tokenizer"]["steps"] == 2
        assert row["feature_network"]["sha256"] and row["versions"]["hf_vq"] and row["seed"] == 0
        assert row["total_minutes"] > 0 and set(row["minutes"]) >= {"tokenizer", "codes", "ar", "nar_eval"}
    with Image.open(results / "row-vqgan-ar.png") as grid:
        assert grid.size == (8 * 28, 10 * 28)  # 8 samples of each of the 10 classes
    # the table is a function of the JSONs: regenerating it gives the same bytes
    table = (results / "TABLE.md").read_text()
    assert table == render_table(rows, noise)
    assert "| VQGAN | 1 x 64 |" in table and "[AR](row-vqgan-ar.png)" in table
    assert "hf_vq commit: `" in table and "(every row)" in table  # which code measured the rows
    mixed = [{**rows[0], "git_commit": "a" * 40 + "-dirty"}, {**rows[1], "git_commit": "b" * 40}]
    assert "`aaaaaaaaaaaa-dirty` (VQGAN); `bbbbbbbbbbbb` (FSQ)" in render_table(mixed, noise)
    plot = (results / "plot.svg").read_text()
    write_table(results)
    assert (results / "TABLE.md").read_text() == table and (results / "plot.svg").read_text() == plot
    assert plot.startswith("<svg") and "VQGAN" in plot


@needs_fmnist
def test_killed_run_resumes_without_recomputing_a_stage(resumed):
    root, first, second = resumed
    assert len(first.cache.computed) == 5 and first.rows_written == []
    assert not set(first.cache.computed) & set(second.cache.computed)
    # every stage ran exactly once over the two processes: the first row's tokenizer, codes, evaluations, ...
    assert len(first.cache.computed) + len(second.cache.computed) == 2 * 9 + 1  # 9 per row + the test reference
    # a third run finds everything done, recomputes nothing and writes the same rows
    before = {p.name: json.loads(p.read_text()) for p in (root / "results").glob("row-*.json")}
    third = run(root / "spec" / "quick.json", root)
    assert third.cache.computed == []
    after = {p.name: json.loads(p.read_text()) for p in (root / "results").glob("row-*.json")}
    volatile = ("finished", "command")
    assert {k: {f: v for f, v in r.items() if f not in volatile} for k, r in after.items()} == \
        {k: {f: v for f, v in r.items() if f not in volatile} for k, r in before.items()}


# ---- bad input: refused before any work


def refuse(spec_path: Path, root: Path, match: str, error=ValueError) -> None:
    with pytest.raises(error, match=match):
        BenchmarkRun(load_spec(spec_path), root / "results", root / "work", device="cpu", log=lambda _: None).run()
    assert not (root / "work" / "stages").exists()


def test_unknown_tokenizer_kind(tmp_path):
    path = write_spec(tmp_path, rows=[{"name": "X", "kind": "vqvae2", "config": "vqgan.json"}])
    with pytest.raises(ValueError, match="unknown tokenizer kind 'vqvae2'; known kinds: fqgan, fsq, lfq, vitvqgan"):
        load_spec(path)


def test_missing_config(tmp_path):
    path = write_spec(tmp_path, rows=[{"name": "X", "kind": "vqgan", "config": "nowhere.json"}])
    with pytest.raises(FileNotFoundError, match=r"tokenizer config .*nowhere.json does not exist"):
        load_spec(path)


def test_config_of_another_kind(tmp_path):
    path = write_spec(tmp_path, rows=[{"name": "X", "kind": "vqgan", "config": "fsq.json"}])
    with pytest.raises(ValueError, match="quantizer is 'fsq', not 'vq'"):
        load_spec(path)


def test_budgets_that_differ_between_rows(tmp_path):
    other = copy.deepcopy(QUICK["budget"])
    other["ar"]["samples"] = 64
    rows = [{"name": "VQGAN", "kind": "vqgan", "config": "vqgan.json"},
            {"name": "FSQ", "kind": "fsq", "config": "fsq.json", "budget": other}]
    with pytest.raises(ValueError, match="differs from the spec's .* every row must get the same budget"):
        load_spec(write_spec(tmp_path, rows=rows))


def test_flags_the_recipe_does_not_take(tmp_path):
    path = write_spec(tmp_path, train_args={"ar": {"learning_rat": 1e-3}})
    with pytest.raises(ValueError, match="stage ar: unrecognized arguments: --learning_rat"):
        load_spec(path)
    path = write_spec(tmp_path, train_args={"ar": {"max_train_steps": 5}})
    with pytest.raises(ValueError, match=r"sets \['max_train_steps'\], which the benchmark sets"):
        load_spec(path)


def test_dataset_without_labels(tmp_path):
    unlabelled = tmp_path / "images"
    unlabelled.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(unlabelled / f"{i}.png")
    dataset = {"name": str(unlabelled), "resolution": 28, "train_split": "train", "test_split": "train"}
    refuse(write_spec(tmp_path / "spec", dataset=dataset), tmp_path, "has no class labels")


def test_rows_scored_by_another_feature_network(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "benchmark.json").write_text(json.dumps({"spec": "quick"}))
    spec = load_spec(write_spec(tmp_path / "spec"))
    row = {"row": "old", "index": 0, "spec_fingerprint": spec.fingerprint(),
           "feature_network": {"name": "inception", "sha256": "0" * 64}}
    (results / "row-old.json").write_text(json.dumps(row))
    refuse(spec.path, tmp_path, "different feature networks")
    # a row measured under another version of the spec (here: another seed) does not join the table either
    (results / "row-old.json").write_text(json.dumps({**row, "spec_fingerprint": load_spec(
        write_spec(tmp_path / "other", seed=1)).fingerprint()}))
    refuse(spec.path, tmp_path, "measured under another version of this spec")


def test_names_keys_and_flags_the_spec_cannot_take(tmp_path):
    rows = [{"name": "VQ GAN", "kind": "vqgan", "config": "vqgan.json"},
            {"name": "vq-gan", "kind": "fsq", "config": "fsq.json"}]
    with pytest.raises(ValueError, match="file name row-vq-gan.json, as row 'VQ GAN' does"):
        load_spec(write_spec(tmp_path, rows=rows))
    with pytest.raises(ValueError, match=r"the spec has unknown keys \['feature'\]"):
        load_spec(write_spec(tmp_path, feature="inception"))
    with pytest.raises(ValueError, match=r"sets \['gradient_accumulation_steps'\]"):
        load_spec(write_spec(tmp_path, train_args={"ar": {"gradient_accumulation_steps": 4}}))
    with pytest.raises(ValueError, match="seed must be an integer"):
        load_spec(write_spec(tmp_path, seed=-3))
    with pytest.raises(ValueError, match="noise seeds .* distinct"):
        load_spec(write_spec(tmp_path, noise={"row": "VQGAN", "seeds": [1, 1]}))



@pytest.mark.parametrize("changes, message", [
    # each would fail only after tokenizers and generators had trained, or be dropped without a word
    (dict(ar={"config": "ar.json", "sampling": {"guidance_scle": 2.0}}),
     r"ar.sampling has unknown keys \['guidance_scle'\]"),
    (dict(nar={"config": "nar.json", "sampling": {"output_type": "np"}}),
     r"nar.sampling has unknown keys \['output_type'\]"),
    (dict(ar={"config": "ar.json", "sampling": {"guidance_scale": "high"}}),
     "ar.sampling: guidance_scale must be a finite"),
    (dict(nar={"config": "nar.json", "sampling": {"num_inference_steps": 0}}), "num_inference_steps must be >= 1"),
    (dict(train_args={"tokeniser": {"learning_rate": 1e-3}}), r"train_args names unknown stages \['tokeniser'\]"),
    (dict(rows=[{"name": "VQGAN", "kind": "vqgan", "config": "vqgan.json", "train_args": {"AR": {}}}]),
     r"row VQGAN: train_args names stages \['AR'\] that a vqgan row does not train"),
    (dict(ar={"config": "vqgan.json"}), r"ar config sets \[.*'base_channels'.*\], which a FARConfig does not have"),
    (dict(dataset={**QUICK["dataset"], "resolution": 30}), r"row 0 \(VQGAN\): at dataset.resolution 30: image size "),
    (dict(rows=["VQGAN"]), r"row 0 must be an object with a \"name\""),
    (dict(rows=[{"name": "VQGAN", "kind": "vqgan", "config": 5}]), "config must be a path"),
    (dict(rows=[{"name": "VQGAN", "kind": "vqgan", "config": "vqgan.json", "stage_fraction": "half"}]),
     "stage_fraction must be a number"),
    (dict(noise={"row": "VQGAN", "seeds": "12"}), "noise must be"),
    (dict(noise=[1, 2]), "noise must be"),
])
def test_a_spec_entry_that_would_fail_later_is_refused_when_it_loads(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        load_spec(write_spec(tmp_path, **changes))


def test_table_only_needs_a_result_folder(tmp_path):
    (tmp_path / "results").mkdir()
    with pytest.raises(SystemExit, match="holds no benchmark results"):
        cli_main(["benchmark", str(write_spec(tmp_path / "spec")), "--output_dir", str(tmp_path / "results"),
                  "--table_only"])
    assert list((tmp_path / "results").iterdir()) == []


def test_result_folder_not_made_by_the_benchmark(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.txt").write_text("mine")
    refuse(write_spec(tmp_path / "spec"), tmp_path, "was not made by hf-vq benchmark", FileExistsError)
    assert (tmp_path / "results" / "notes.txt").read_text() == "mine"


def test_cli_reports_a_bad_spec_in_one_line(tmp_path, capsys):
    path = write_spec(tmp_path, rows=[{"name": "X", "kind": "vqvae2", "config": "vqgan.json"}])
    with pytest.raises(SystemExit, match="hf-vq benchmark: benchmark spec .* unknown tokenizer kind"):
        cli_main(["benchmark", str(path), "--output_dir", str(tmp_path / "out")])


def test_the_fashion_mnist_spec_loads():
    spec = load_spec(Path(__file__).parents[1] / "examples" / "benchmarks" / "fmnist_vqkd.json")
    assert [r.kind for r in spec.rows] == ["vqgan", "fsq", "vqkd", "vqkd", "fqgan"]
    assert spec.teachers(spec.row("VQ-KD (MAE teacher)")) == ["bundled:fmnist-mae-teacher-p4"]
    assert spec.teachers(spec.row("FQGAN-Dual")) == ["bundled:fmnist-vit-teacher-p4"]
    smoke = load_spec(Path(__file__).parents[1] / "examples" / "benchmarks" / "fmnist_vqkd_smoke.json")
    assert [r.kind for r in smoke.rows] == ["vqgan", "fsq", "vqkd"] and smoke.num_samples == 200


@needs_fmnist
def test_a_stage_killed_mid_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    import hf_vq.training.loop as loop

    train_args = {**QUICK["train_args"], "tokenizer": {**QUICK["train_args"]["tokenizer"], "checkpointing_steps": 1}}
    spec = write_spec(tmp_path / "spec", train_args=train_args)
    saved = loop.save_checkpoint

    def save_then_die(accelerator, output_dir, step, *args):
        saved(accelerator, output_dir, step, *args)
        raise Killed  # right after the first checkpoint: the process dies mid-stage

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    bench = BenchmarkRun(load_spec(spec), tmp_path / "results", tmp_path / "work", device="cpu", rows=["VQGAN"],
                         log=lambda _: None)
    with pytest.raises(Killed):
        bench.run()
    monkeypatch.setattr(loop, "save_checkpoint", saved)
    (stage,) = (tmp_path / "work" / "stages" / "vqgan").glob("tokenizer-*")
    assert [p.name for p in stage.joinpath("run").glob("checkpoint-*")] == ["checkpoint-1"]
    assert not (stage / "stage.json").exists()

    resumed_from = []
    resume = loop.resume_step
    monkeypatch.setattr(loop, "resume_step", lambda acc, checkpoint: resumed_from.append(checkpoint) or
                        resume(acc, checkpoint))
    BenchmarkRun(load_spec(spec), tmp_path / "results", tmp_path / "work", device="cpu", rows=["VQGAN"],
                 log=lambda _: None).run()
    assert resumed_from[0] is not None and resumed_from[0].name == "checkpoint-1"  # the tokenizer stage went on
    record = json.loads((stage / "stage.json").read_text())
    assert record["attempts"] == 2 and record["result"]["steps"] == 2 and record["seconds"] > 0
    row = json.loads((tmp_path / "results" / "row-vqgan.json").read_text())
    assert row["training"]["tokenizer"]["matched"]


@needs_fmnist
def test_two_processes_train_and_sample_together_and_the_main_process_writes(tmp_path):
    import subprocess
    import sys

    budget = {**QUICK["budget"], "max_minutes": 60}  # a cap: the main process's deadline goes to every process
    spec = write_spec(tmp_path / "spec", rows=[QUICK["rows"][0]], budget=budget)
    port = free_port()
    # accelerate's MULTI_CPU launcher expects MPI; on one machine torchrun + ACCELERATE_USE_CPU gives gloo processes
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "hf_vq.cli", "benchmark", str(spec), "--output_dir", str(tmp_path / "results"),
           "--work_dir", str(tmp_path / "work")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    runs = [subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path) for _ in "12"]
    for result in runs:
        assert result.returncode == 0, result.stderr[-4000:]
        assert result.stdout.count("wrote ") == 2  # the row, then the table: rank 0 alone writes
    row = json.loads((tmp_path / "results" / "row-vqgan.json").read_text())
    assert row["num_processes"] == 2 and row["matched"]
    assert row["command"].startswith("ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m hf_vq.cli benchmark ")
    assert (tmp_path / "results" / "TABLE.md").is_file()
    stages = tmp_path / "work" / "stages" / "vqgan"
    for name in ("tokenizer", "ar", "nar"):
        (record,) = stages.glob(f"{name}-*/stage.json")
        identity = json.loads(record.read_text())["identity"]
        # the spec's global batch of 16, split over the two processes: the row sees the samples the budget says
        assert identity["num_processes"] == 2 and identity["resolved_flags"]["train_batch_size"] == 8
        assert row["training"][name]["steps"] == 2 and row["training"][name]["batch_size"] == 16
    (samples,) = stages.glob("ar_samples-*/samples/samples.npz")
    assert len(np.load(samples)["arr_0"]) == 140
    # the second launch found every stage done
    assert "running in" not in runs[1].stdout and runs[1].stdout.count("done before") >= 9


def test_a_multi_process_run_refuses_an_uneven_batch_and_a_device_before_any_work(tmp_path, monkeypatch):
    spec = load_spec(write_spec(tmp_path / "spec"))
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="batch size 16 does not split evenly over 3 processes.*launch 1, 2, 4, 8 or "
                                         "16 processes"):
        BenchmarkRun(spec, tmp_path / "results", tmp_path / "work")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--device cpu: under a launch of 2 processes"):
        BenchmarkRun(spec, tmp_path / "results", tmp_path / "work", device="cpu")
    assert not (tmp_path / "results").exists() and not (tmp_path / "work").exists()


@needs_fmnist
def test_too_few_samples_for_the_frechet_distance_are_refused_before_any_stage(tmp_path):
    # 129 asked for, but 12 per class of the 10 classes are drawn
    spec = load_spec(write_spec(tmp_path / "spec", num_samples=129))
    with pytest.raises(ValueError, match="num_samples 129, drawn evenly over the classes, gives 120 images, but a "
                                         "Fréchet distance"):
        BenchmarkRun(spec, tmp_path / "results", tmp_path / "work").run()
    dataset = {**QUICK["dataset"], "test_split": "test[:100]"}
    spec = load_spec(write_spec(tmp_path / "spec", dataset=dataset))
    with pytest.raises(ValueError, match="the test split 'test\\[:100\\]' gives 100 images"):
        BenchmarkRun(spec, tmp_path / "results", tmp_path / "work").run()
    assert not (tmp_path / "work").exists()


def test_the_recorded_command_is_the_one_a_user_types_again(monkeypatch):
    from hf_vq.benchmark.runner import command_line

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)

    assert command_line(["/usr/bin/hf-vq", "benchmark", "s.json"], 1) == "hf-vq benchmark s.json"
    assert command_line(["/src/hf_vq/cli.py", "benchmark", "s.json", "--rows", "FSQ"], 1) == \
        "hf-vq benchmark s.json --rows FSQ"
    assert command_line(["/src/hf_vq/cli.py", "benchmark", "s.json"], 4) == \
        "accelerate launch --num_processes 4 -m hf_vq.cli benchmark s.json"
    assert command_line(["pytest", "-q"], 1) == "pytest -q"
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # CPU processes, as the README launches them
    assert command_line(["/src/hf_vq/cli.py", "benchmark", "s.json"], 2) == \
        "ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m hf_vq.cli benchmark s.json"
