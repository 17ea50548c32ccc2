"""Samples for FID at scale: sharded over processes, killed and resumed, identical to one uninterrupted run."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import free_port
from test_pipeline import LABELS, far, tokenizer

from hf_vq import FQGANPipeline
from hf_vq.evaluation.sampling import generate_samples, load_samples, pipeline_sample_fn, sample_seed

# Each rank dies (os._exit, as a kill would leave it) in the middle of its `die_at`-th batch when asked to.
WRAPPER = textwrap.dedent(
    """
    import os, sys
    from hf_vq import FQGANPipeline
    from hf_vq.evaluation.sampling import generate_samples, pipeline_sample_fn
    pipe_dir, out, die_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pipe = FQGANPipeline.from_pretrained(pipe_dir)
    pipe.set_progress_bar_config(disable=True)
    inner, calls = pipeline_sample_fn(pipe, guidance_scale=2.0), []
    rank = int(os.environ["RANK"])
    def sample(labels, generators):
        calls.append(1)
        with open(f"{out}.rank{rank}.log", "a") as log:  # which batch each rank drew (sample seed -> batch)
            log.write(f"{(generators[0].initial_seed() % 2**32) // 2}\\n")
        if len(calls) == die_at and rank == 1:
            os._exit(9)
        return inner(labels, generators)
    generate_samples(sample, out, num_classes=3, per_class=5, seed=4, batch_size=2, settings={"cfg": 2.0},
                     progress=False)
    """
)


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe")
    FQGANPipeline(vqvae=tokenizer(), transformer=far(), id2label=LABELS).save_pretrained(path)
    return path


def run_sharded(tmp_path, pipe_dir, out, die_at: int) -> subprocess.CompletedProcess:
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(script), str(pipe_dir), str(out), str(die_at)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_two_processes_killed_and_resumed_match_one_uninterrupted_process(tmp_path, pipe_dir):
    pipe = FQGANPipeline.from_pretrained(pipe_dir)
    pipe.set_progress_bar_config(disable=True)
    single = generate_samples(pipeline_sample_fn(pipe, guidance_scale=2.0), tmp_path / "single", num_classes=3,
                              per_class=5, seed=4, batch_size=2, settings={"cfg": 2.0}, progress=False)

    out = tmp_path / "sharded"
    killed = run_sharded(tmp_path, pipe_dir, out, die_at=2)
    assert killed.returncode != 0 and not (out / "samples.npz").exists()
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / "batches").glob("batch-*.npz")}
    assert 0 < len(done_before) < 8  # some batches written, not all
    resumed = run_sharded(tmp_path, pipe_dir, out, die_at=0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the batches finished before the kill were kept, not redrawn
    assert {name: (out / "batches" / name).stat().st_mtime_ns for name in done_before} == done_before
    # the work was sharded: rank r drew only batches j = r mod 2, and no batch was drawn by both ranks
    drawn = {r: [int(line) for line in open(f"{out}.rank{r}.log")] for r in (0, 1)}
    assert all(j % 2 == r for r in (0, 1) for j in drawn[r]), drawn
    assert sorted(set(drawn[0]) | set(drawn[1])) == list(range(8))

    images, labels = load_samples(single)
    assert images.shape == (15, 8, 8, 1) and images.dtype == np.uint8
    assert labels.tolist() == [i // 5 for i in range(15)]
    sharded_images, sharded_labels = load_samples(out / "samples.npz")
    assert np.array_equal(sharded_images, images) and np.array_equal(sharded_labels, labels)
    assert (out / "samples.npz").read_bytes() == single.read_bytes()


def test_resume_fills_gaps_only_and_refuses_other_settings(tmp_path, pipe_dir):
    pipe = FQGANPipeline.from_pretrained(pipe_dir)
    pipe.set_progress_bar_config(disable=True)
    drawn = []
    inner = pipeline_sample_fn(pipe)

    def sample(labels, generators):
        drawn.extend(labels)
        return inner(labels, generators)

    kwargs = dict(num_classes=3, per_class=2, seed=0, batch_size=4, progress=False)
    assert generate_samples(sample, tmp_path / "s", max_batches=1, **kwargs) is None
    assert drawn == [0, 0, 1, 1]
    (tmp_path / "s" / "batches" / ".tmp-batch-000001-x.npz").write_bytes(b"half written")  # a killed write
    path = generate_samples(sample, tmp_path / "s", **kwargs)
    assert drawn == [0, 0, 1, 1, 2, 2] and path.name == "samples.npz"
    # sample i comes from its own seed: drawing it alone gives the same image
    image = inner([2], [torch.Generator().manual_seed(sample_seed(0, 5))])
    expected = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(load_samples(path)[0][5:6], expected)

    with pytest.raises(ValueError, match="seed: 0 on disk, 1 now"):
        generate_samples(sample, tmp_path / "s", **{**kwargs, "seed": 1})
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a sample folder"):
        generate_samples(sample, tmp_path / "foreign", **kwargs)
    with pytest.raises(ValueError, match="per_class"):
        generate_samples(sample, tmp_path / "t", **{**kwargs, "per_class": 0})
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["seed"] == 0
    # a folder begun before seeded draws were one number per token is not finished with them (its set would mix)
    (tmp_path / "s" / "batches" / "batch-000001.npz").unlink()
    manifest = json.loads((tmp_path / "s" / "samples.json").read_text())
    del manifest["draws"]
    (tmp_path / "s" / "samples.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="draws: None on disk, 'one U"):
        generate_samples(sample, tmp_path / "s", **kwargs)


def test_load_samples_refuses_other_layouts(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="no arr_0"):
        load_samples(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", arr_0=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_samples(tmp_path / "b.npz")
    with pytest.raises(ValueError, match="2\\*\\*31"):
        sample_seed(-1, 0)
