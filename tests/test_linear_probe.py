"""Linear probe: null-class generator features, the classifier and its choices, the command end to end."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_far import random_ids
from test_far import tiny_model as tiny_far
from test_maskgit import random_ids as maskgit_ids
from test_maskgit import tiny_model as tiny_maskgit

from hf_vq import FARForClassConditionalGeneration, FQGANPipeline
from hf_vq.evaluation import linear_probe as probe_module
from hf_vq.evaluation.linear_probe import (
    fit_linear_classifier,
    generator_features,
    linear_probe,
    main,
    resolve_blocks,
    validation_split,
)


def blobs(n: int, num_classes: int, dim: int, seed: int, separable: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, dim) features and labels: class means far apart with small noise, or pure noise with random labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    features = torch.randn(n, dim, generator=g)
    if separable:
        features = 0.3 * features + 3 * torch.eye(num_classes, dim)[labels] + 5.0  # the offset is standardised away
    return features, labels


def test_probe_is_perfect_on_separable_blocks_chance_on_random_ones_and_chooses_on_validation():
    train = [blobs(600, 4, 8, seed, separable) for seed, separable in ((0, False), (1, True))]
    test = [blobs(1000, 4, 8, seed, separable) for seed, separable in ((2, False), (3, True))]
    # the same labels for both blocks of a split, as one forward pass gives every block of the same images
    train_labels, test_labels = train[1][1], test[1][1]
    result = linear_probe(torch.stack([f for f, _ in train]), train_labels, torch.stack([f for f, _ in test]),
                          test_labels, blocks=[3, 7])
    random_block, separable_block = result.blocks
    assert result.chosen is separable_block and separable_block.block == 7
    assert separable_block.test_top1 == 1.0 and separable_block.val_top1 == 1.0
    assert abs(random_block.test_top1 - 0.25) < 0.06  # chance for 4 classes
    assert all(p.converged for p in result.blocks)
    assert (result.num_fit, result.num_val, result.num_test, result.num_classes) == (540, 60, 1000, 4)
    json.dumps(result.to_dict())


def test_choices_never_look_at_the_test_labels():
    features = [blobs(300, 3, 6, seed, separable=seed > 0) for seed in range(3)]
    train = torch.stack([f[:200] for f, _ in features])
    test = torch.stack([f[200:] for f, _ in features])
    labels = features[2][1]
    true = linear_probe(train, labels[:200], test, labels[200:], weight_decays=(1e-3, 1e-1))
    shuffled = linear_probe(train, labels[:200], test, labels[200:].flip(0), weight_decays=(1e-3, 1e-1))
    assert [(p.block, p.weight_decay, p.val_top1) for p in true.blocks] == \
        [(p.block, p.weight_decay, p.val_top1) for p in shuffled.blocks]
    assert true.chosen.block == shuffled.chosen.block and true.chosen.test_top1 != shuffled.chosen.test_top1


def test_classifier_standardises_with_training_statistics():
    features, labels = blobs(200, 2, 4, 0, separable=True)
    features[:, 3] = 7.0  # constant on the training images: centred, not divided by zero
    classifier = fit_linear_classifier(features, labels, 2, weight_decay=1e-2)
    torch.testing.assert_close(classifier.mean, features.mean(0))
    assert classifier.std[3] == 1 and torch.isfinite(classifier.logits(features + 1)).all()
    assert classifier.accuracy(features, labels) == 1.0


def spy_on_forward(model, monkeypatch) -> list[dict]:
    """Record every forward call's class_labels (and masked_positions); refuse any label but the null class."""
    calls, forward, null = [], model.forward, model.config.num_classes

    def spy(*args, **kwargs):
        labels = kwargs["class_labels"]
        if (labels != null).any():
            raise AssertionError(f"the model received class labels {labels.tolist()}")
        calls.append(kwargs)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    return calls


@pytest.mark.parametrize("kind", ["gpt", "far", "maskgit"])
def test_generator_features_average_each_state_on_the_null_class_and_leave_the_model_as_it_was(kind, monkeypatch):
    model = {"gpt": lambda: tiny_far(1), "far": lambda: tiny_far(2), "maskgit": lambda: tiny_maskgit(2)}[kind]()
    ids = maskgit_ids(batch=5) if kind == "maskgit" else random_ids(1 if kind == "gpt" else 2, batch=5)
    null = torch.full((5,), model.config.num_classes)
    visible = {} if model.is_autoregressive else {"masked_positions": torch.zeros(5, ids.shape[2], dtype=torch.bool)}
    with torch.no_grad():
        expected = model(ids, null, output_hidden_states=True, **visible).hidden_states
    weights = {name: t.clone() for name, t in model.state_dict().items()}
    model.train()
    calls = spy_on_forward(model, monkeypatch)

    features = generator_features(model, ids, "all", batch_size=2)

    assert features.shape == (3, 5, 32) and len(calls) == 3  # 2 blocks + embeddings; batches of 2, 2, 1
    for block, states in enumerate(expected):  # position 0, the null class token, is left out
        torch.testing.assert_close(features[block], states[:, 1:].mean(1), rtol=0, atol=1e-6)
    if not model.is_autoregressive:
        assert all(not call["masked_positions"].any() for call in calls)
    assert torch.equal(generator_features(model, ids, [2, 0], batch_size=2), features[[2, 0]])
    assert model.training  # the mode it was in
    assert all(torch.equal(t, weights[name]) for name, t in model.state_dict().items())


def test_resolve_blocks_checks_every_index():
    assert resolve_blocks("all", 5) == [0, 1, 2, 3, 4] and resolve_blocks([4, 0], 5) == [4, 0]
    with pytest.raises(ValueError, match="block index 5 is out of range: the generator has 4 blocks"):
        resolve_blocks([1, 5], 5)
    with pytest.raises(ValueError, match="out of range"):
        resolve_blocks([-1], 5)
    with pytest.raises(ValueError, match="one feature map"):
        resolve_blocks([1], 1)
    with pytest.raises(ValueError, match="repeat"):
        resolve_blocks([1, 1], 5)
    with pytest.raises(ValueError, match="cannot be split"):
        validation_split(5, 0.1, 0)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from test_pipeline import LABELS, far, tokenizer

    path = tmp_path_factory.mktemp("probe") / "pipe"
    FQGANPipeline(vqvae=tokenizer(), transformer=far(), id2label=LABELS).save_pretrained(path)
    return path


def test_command_probes_every_block_of_a_pipeline_on_the_null_class(tiny_pipeline, tmp_path, monkeypatch, capsys):
    labels_seen = []
    forward = FARForClassConditionalGeneration.forward

    def spy(self, input_ids, class_labels, *args, **kwargs):
        labels_seen.append(class_labels.clone())
        return forward(self, input_ids, class_labels, *args, **kwargs)

    monkeypatch.setattr(FARForClassConditionalGeneration, "forward", spy)
    out = tmp_path / "probe.json"
    argv = [str(tiny_pipeline), "--max_train_images", "60", "--max_test_images", "40", "--batch_size", "32",
            "--weight_decays", "0.01", "1", "--output", str(out)]
    main(argv)
    result = json.loads(out.read_text())
    assert result["target"] == "generator" and result["model_class"] == "FARForClassConditionalGeneration"
    assert [p["block"] for p in result["per_block"]] == [0, 1] and result["chosen_block"] in (0, 1)
    assert (result["num_fit"], result["num_val"], result["num_test"], result["num_classes"]) == (54, 6, 40, 10)
    assert 0 <= result["test_top1"] <= 1 and result["weights_unchanged"] is True
    assert len(labels_seen) == 4 and all((labels == 3).all() for labels in labels_seen)  # far() has 3 classes
    if importlib.util.find_spec("matplotlib"):
        assert out.with_suffix(".png").is_file()
    else:
        assert "matplotlib is not installed" in capsys.readouterr().err

    main([*argv[:-1], str(tmp_path / "encoder.json"), "--target", "encoder"])
    encoder = json.loads((tmp_path / "encoder.json").read_text())
    assert encoder["model_class"] == "FQGANTokenizer" and [p["block"] for p in encoder["per_block"]] == [0]
    assert encoder["weights_unchanged"] is True


def test_command_stops_at_an_unreadable_image_unless_told_to_skip_it(tiny_pipeline, tmp_path, imagefolder):
    (imagefolder / "a" / "broken.png").write_bytes(b"not a png")
    argv = [str(tiny_pipeline), "--dataset", str(imagefolder), "--train_split", "train", "--test_split", "train",
            "--target", "encoder", "--weight_decays", "1", "--output", str(tmp_path / "probe.json")]
    with pytest.raises(SystemExit, match="broken.png"):
        main(argv)
    assert not (tmp_path / "probe.json").exists()
    main([*argv, "--skip_corrupt"])
    result = json.loads((tmp_path / "probe.json").read_text())
    assert result["num_test"] == 16 and result["num_fit"] + result["num_val"] == 16


def test_command_refuses_bad_input_before_any_work(tiny_pipeline, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("images were loaded for a command that should have failed")

    monkeypatch.setattr(probe_module, "tokenize_images", no_work)
    monkeypatch.setattr("hf_vq.evaluation.feature_sets.dataset_images", no_work)
    model = str(tiny_pipeline)
    with pytest.raises(SystemExit, match="block index 2 is out of range: the generator has 1 blocks"):
        main([model, "--blocks", "0", "2"])
    with pytest.raises(SystemExit, match="--blocks takes 'all' or block indices"):
        main([model, "--blocks", "last"])
    with pytest.raises(SystemExit, match="no such folder"):
        main([str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="tokenizer folder, which has no generator"):
        main([str(tiny_pipeline / "vqvae"), "--target", "generator"])
    with pytest.raises(SystemExit, match="--output must end in .json"):
        main([model, "--output", str(tmp_path / "probe.txt")])
    with pytest.raises(SystemExit, match="--max_train_images must be >= 1"):
        main([model, "--max_train_images", "0"])
    for flags, message in ((["--val_fraction", "1.5"], r"--val_fraction must lie in \(0, 1\)"),
                           (["--weight_decays", "nan"], "--weight_decays must be finite values >= 0"),
                           (["--weight_decays", "-1"], "--weight_decays must be finite values >= 0"),
                           (["--max_train_images", "5", "--val_fraction", "0.05"], "cannot be split")):
        with pytest.raises(SystemExit, match=message):
            main([model, *flags])
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(unlabelled / f"{i}.png")
    with pytest.raises(SystemExit, match="has no class labels"):
        main([model, "--dataset", str(unlabelled), "--test_split", "train"])
