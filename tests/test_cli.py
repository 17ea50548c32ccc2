import numpy as np
import pytest
import torch
from PIL import Image
from test_pipeline import LABELS, far, tokenizer

from hf_vq import FQGANPipeline
from hf_vq.cli import main


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "pipe"
    FQGANPipeline(vqvae=tokenizer(), transformer=far(), id2label=LABELS).save_pretrained(path)
    return path


def test_generate_writes_a_grid(pipe_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    main(["generate", "--model", str(pipe_dir), "--labels", "Trouser", "2", "-n", "3", "--out", str(out)])
    assert Image.open(out).size == (3 * 8, 2 * 8)
    assert "2 labels x 3 images" in capsys.readouterr().out


def test_generate_with_a_half_precision_generator(pipe_dir, tmp_path, monkeypatch):
    loaded = []
    from_pretrained = FQGANPipeline.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        loaded.append(from_pretrained(cls, *args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(FQGANPipeline, "from_pretrained", classmethod(spy))
    out = tmp_path / "grid.png"
    main(["generate", "--model", str(pipe_dir), "--labels", "0", "-n", "2", "--dtype", "fp16", "--out", str(out)])
    transformer, vqvae = loaded[0].transformer, loaded[0].vqvae
    assert transformer.norm.weight.dtype == torch.float16
    assert all(head.weight.dtype == torch.float16 for head in transformer.output_heads)  # logits are fp32 anyway
    assert all(p.dtype == torch.float32 for p in vqvae.parameters())
    assert Image.open(out).size == (2 * 8, 8)


def test_generate_takes_the_gpu_when_there_is_one_and_draws_on_the_cpu(pipe_dir, tmp_path, monkeypatch):
    moved, generators = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(FQGANPipeline, "to", lambda self, device: moved.append(device) or self)
    call = FQGANPipeline.__call__
    monkeypatch.setattr(FQGANPipeline, "__call__",
                        lambda self, *a, generator=None, **kw: generators.append(generator) or call(self, *a, **kw))
    main(["generate", "--model", str(pipe_dir), "--labels", "0", "-n", "1", "--out", str(tmp_path / "g.png")])
    assert moved == ["cuda"] and generators[0].device.type == "cpu"  # the same seed, the same draws, any device
    main(["generate", "--model", str(pipe_dir), "--labels", "0", "-n", "1", "--out", str(tmp_path / "g.png"),
          "--device", "cpu"])
    assert moved == ["cuda"]  # on the CPU it stays where it was loaded


def test_generate_bad_input(pipe_dir, tmp_path):
    with pytest.raises(SystemExit, match="vqvae is not a pipeline folder .* `hf-vq assemble`"):
        main(["generate", "--model", str(pipe_dir / "vqvae"), "--labels", "0", "--out", str(tmp_path / "g.png")])
    with pytest.raises(SystemExit, match="Did you mean"):
        main(["generate", "--model", str(pipe_dir), "--labels", "Trousers", "--out", str(tmp_path / "g.png")])
    with pytest.raises(SystemExit, match="-n must be"):
        main(["generate", "--model", str(pipe_dir), "--labels", "0", "-n", "0"])
    with pytest.raises(SystemExit, match="--out must end"):
        main(["generate", "--model", str(pipe_dir), "--labels", "0", "--out", str(tmp_path / "g.txt")])
    assert not list(tmp_path.iterdir())


def test_reconstruct(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default --out would land
    tokenizer().save_pretrained(tmp_path / "tok")
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(tmp_path / "in.png")
    main(["reconstruct", "--tokenizer", str(tmp_path / "tok"), "--image", str(tmp_path / "in.png"), "--out",
          str(tmp_path / "out.png")])
    assert Image.open(tmp_path / "out.png").size == (8, 8)
    assert "tokens (1, 2, 4, 4)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such image"):
        main(["reconstruct", "--tokenizer", str(tmp_path / "tok"), "--image", str(tmp_path / "missing.png")])
    (tmp_path / "cut.png").write_bytes((tmp_path / "in.png").read_bytes()[:45])  # a cut download
    with pytest.raises(SystemExit, match="hf-vq reconstruct: --image .*cut.png is not a readable image"):
        main(["reconstruct", "--tokenizer", str(tmp_path / "tok"), "--image", str(tmp_path / "cut.png")])


def test_push_uploads_a_saved_folder(pipe_dir, tmp_path, fake_hub, capsys):
    main(["push", str(pipe_dir), "me/fmnist-pipe", "--private"])
    assert fake_hub[0] == ("create", "me/fmnist-pipe", True)
    assert {"model_index.json", "vqvae", "transformer"} <= set(fake_hub[1][2])
    assert "pushed" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such folder"):
        main(["push", str(tmp_path / "missing"), "me/x"])
    (tmp_path / "eval.json").write_text("{'fid': 3}")
    with pytest.raises(SystemExit, match=r"--evaluation .*eval.json is not valid JSON"):
        main(["push", str(pipe_dir), "me/x", "--evaluation", str(tmp_path / "eval.json")])


def test_push_takes_repo_id_then_folder(pipe_dir, fake_hub, capsys):
    main(["push", "me/fmnist-pipe", str(pipe_dir)])
    assert fake_hub[0] == ("create", "me/fmnist-pipe", False)
    assert "warning" not in capsys.readouterr().err
    main(["push", str(pipe_dir), "me/old-order"])  # the order of earlier versions still works, with a warning
    assert fake_hub[2] == ("create", "me/old-order", False)
    assert "REPO_ID first" in capsys.readouterr().err


def test_version_help_and_one_line_errors(pipe_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default --out would land
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("hf-vq ")
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = capsys.readouterr().out
    assert "Sneaker" in help_text and "default: 4" in help_text
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(tmp_path / "in.png")
    for model in (str(tmp_path / "no" / "such" / "tok"), "./typo"):
        with pytest.raises(SystemExit, match=r"^--tokenizer .*no such folder") as error:
            main(["reconstruct", "--tokenizer", model, "--image", str(tmp_path / "in.png")])
        assert "\n" not in str(error.value)
    for argv in (["evaluate", "samples", "fashion-mnist:train", "--max_images", "0"],
                 ["evaluate", "tokenizer", str(pipe_dir), "--batch_size", "-5"],
                 ["evaluate", "pipeline", "--samples_dir", str(tmp_path / "s"), "--per_class", "0"]):
        with pytest.raises(SystemExit):  # argparse's own refusal, before anything is loaded
            main(argv)
        assert "must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_reconstruct_takes_a_pipeline_folder(pipe_dir, tmp_path, capsys):
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(tmp_path / "in.png")
    main(["reconstruct", "--tokenizer", str(pipe_dir), "--image", str(tmp_path / "in.png"), "--out",
          str(tmp_path / "out.png")])
    assert "tokens (1, 2, 4, 4)" in capsys.readouterr().out


def test_evaluation_commands_take_the_gpu_when_there_is_one_and_each_process_its_own(monkeypatch):
    from types import SimpleNamespace

    from hf_vq.evaluation.command import _set_device
    from hf_vq.utils import default_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == "cuda"
    for flag, state, expected in [(None, None, "cuda"), ("cpu", None, "cpu"),
                                  ("cpu", SimpleNamespace(num_processes=2, device=torch.device("cuda", 1)), "cuda:1")]:
        args = SimpleNamespace(device=flag)
        _set_device(args, state)
        assert args.device == expected


def test_evaluate_pipeline_refuses_a_device_under_a_multi_process_launch_before_any_work(tmp_path, monkeypatch):
    """One policy with the benchmark: each launched process works on its launcher's device."""
    import hf_vq.evaluation.sampling as sampling

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(sampling, "process_state", lambda: pytest.fail("joined the process group before refusing"))
    with pytest.raises(SystemExit, match="--device cpu: under a launch of 2 processes"):
        main(["evaluate", "pipeline", "--samples_dir", str(tmp_path / "s"), "--device", "cpu"])
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("argv, name", [(["generate", "--labels", "0"], "generate"),
                                        (["evaluate", "tokenizer", "some/model"], "evaluate tokenizer")])
def test_single_process_commands_refuse_a_multi_process_launch(argv, name, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match=f"hf-vq {name}: runs in one process, but 2 were launched"):
        main(argv)


def test_a_device_the_machine_lacks_is_refused_by_the_parser(monkeypatch, capsys):
    import argparse

    from hf_vq.utils import device_arg

    assert device_arg("cpu") == "cpu"
    for value, message in [("gpu", "'gpu' is not a torch device"), ("meta", "has no meta device")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            device_arg(value)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device("cuda"))
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: 2)
    assert device_arg("cuda") == "cuda" and device_arg("cuda:1") == "cuda:1"
    with pytest.raises(argparse.ArgumentTypeError, match="there are 2 cuda devices"):
        device_arg("cuda:2")
    with pytest.raises(SystemExit):  # before any model loads
        main(["generate", "--labels", "0", "--device", "cuda:2"])
    assert "argument --device: cuda:2: there are 2 cuda devices" in capsys.readouterr().err


def test_an_output_file_hf_vq_did_not_write_is_never_replaced(pipe_dir, tmp_path):
    from PIL import Image

    from hf_vq.utils import written_by_hf_vq

    mine = tmp_path / "photo.png"
    Image.new("L", (4, 4)).save(mine)
    before = mine.read_bytes()
    with pytest.raises(SystemExit, match="photo.png exists and hf-vq did not write it.*pass --overwrite"):
        main(["generate", "--model", str(pipe_dir), "--labels", "0", "-n", "1", "--out", str(mine)])
    assert mine.read_bytes() == before
    main(["generate", "--model", str(pipe_dir), "--labels", "0", "-n", "1", "--out", str(mine), "--overwrite"])
    assert written_by_hf_vq(mine)
    mine.write_bytes(before)
    out = tmp_path / "grid.jpg"
    for _ in "12":  # its own output, a rerun replaces
        main(["generate", "--model", str(pipe_dir), "--labels", "0", "-n", "1", "--out", str(out)])
    assert written_by_hf_vq(out) and not written_by_hf_vq(mine)
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    with pytest.raises(SystemExit, match="notes.json exists and hf-vq did not write it"):
        main(["evaluate", "tokenizer", str(pipe_dir), "--output", str(notes)])
    assert notes.read_text() == '{"mine": 1}'
