"""Feature networks, reference batches, whole evaluations and their JSON results; codebook and AR perplexity."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_far import tiny_model
from test_maskgit import tiny_model as tiny_maskgit

from hf_vq.evaluation import (
    ClassifierNetwork,
    CodebookStatistics,
    FeatureSet,
    bundled_classifier_path,
    check_comparable,
    codebook_entropy,
    evaluate_generation,
    evaluate_tokenizer,
    feature_set_of_images,
    fid_from_features,
    frechet_distance,
    load_feature_network,
    load_feature_set,
    validation_perplexity,
)
from hf_vq.evaluation.features import BUNDLED_CLASSIFIER_SHA256, file_sha256
from hf_vq.tokenizers import FQGANTokenizer


@pytest.fixture(scope="module")
def fmnist():
    return load_feature_network("fmnist")


def uint8_images(n: int, size: int = 28, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def test_codebook_statistics_over_batches_equal_the_whole_set():
    indices = torch.tensor([[0, 0, 1, 3]]).view(4, 1)  # histogram 2, 1, 0, 1 of 4 codes
    p = np.array([0.5, 0.25, 0.25])
    entropy = float(-(p * np.log(p)).sum())
    stats = CodebookStatistics(4).update(indices[:1]).update(indices[1:])
    computed = stats.compute()
    assert computed.keys() == {"usage", "entropy", "perplexity"}
    assert computed["usage"] == [0.75]
    assert computed["entropy"] == pytest.approx([entropy])
    assert computed["perplexity"] == pytest.approx([math.exp(entropy)])
    assert codebook_entropy(indices, 4) == pytest.approx([entropy])
    assert codebook_entropy(torch.arange(8).view(8, 1), 8) == pytest.approx([math.log(8)])
    with pytest.raises(ValueError, match="no indices"):
        CodebookStatistics(4).compute()


def test_validation_perplexity_is_exp_of_the_mean_cross_entropy_per_codebook_and_position():
    model = tiny_model(2)
    tokens = torch.randint(0, model.config.vocab_size, (5, 2, model.config.grid_size**2),
                           generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0, 1])
    result = validation_perplexity(model, [(tokens[:2], labels[:2]), (tokens[2:], labels[2:])])
    model.eval()
    logits = model(input_ids=tokens, class_labels=labels).logits
    nll = F.cross_entropy(logits.flatten(0, 2), tokens.flatten(), reduction="none").view(tokens.shape).double()
    assert result.perplexity == pytest.approx(math.exp(nll.mean().item()), rel=1e-6)
    assert result.per_codebook == pytest.approx([math.exp(v) for v in nll.mean((0, 2)).tolist()], rel=1e-6)
    assert result.per_position == pytest.approx([math.exp(v) for v in nll.mean((0, 1)).tolist()], rel=1e-6)
    assert result.num_tokens == tokens.numel()
    with pytest.raises(ValueError, match="autoregressive"):
        validation_perplexity(tiny_maskgit(), [(tokens, labels)])


def test_frechet_distance_refuses_too_few_samples_and_broken_covariances():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="more images than dimensions"):
        fid_from_features(rng.normal(size=(8, 16)), rng.normal(size=(100, 16)))
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(np.full((20, 2), np.nan), rng.normal(size=(20, 2)))
    indefinite = np.diag([1.0, -4.0])  # not a covariance: its square root is imaginary
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), indefinite, np.zeros(2), np.eye(2))


def test_bundled_classifier_is_the_recorded_network(fmnist):
    assert file_sha256(bundled_classifier_path() / "model.safetensors") == BUNDLED_CLASSIFIER_SHA256 == fmnist.sha256
    assert (fmnist.fd_metric, fmnist.is_metric) == ("fd_fmnist", "is_fmnist")
    images = torch.rand(3, 1, 28, 28)
    features, logits = fmnist.extract(images)
    assert features.shape == (3, 128) and logits.shape == (3, 10)
    torch.testing.assert_close(logits, fmnist.judge.logits(images))
    with pytest.raises(ValueError, match="unknown feature network"):
        load_feature_network("vgg")


def test_a_copied_classifier_gets_its_own_metric_name_and_a_changed_bundled_one_is_refused(fmnist, tmp_path,
                                                                                          monkeypatch):
    shutil.copytree(bundled_classifier_path(), tmp_path / "copy")
    copy = ClassifierNetwork(tmp_path / "copy")
    assert copy.sha256 == BUNDLED_CLASSIFIER_SHA256 and copy.name.startswith("classifier-")
    assert copy.fd_metric == f"fd_classifier_{copy.sha256[:12]}"
    import hf_vq.evaluation.features as features

    monkeypatch.setattr(features, "BUNDLED_CLASSIFIER_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="damaged or was edited"):
        ClassifierNetwork()


def test_feature_sets_refuse_another_network_or_size(fmnist, tmp_path):
    images = uint8_images(40)
    reference = feature_set_of_images(fmnist, images, np.arange(40) % 10, "ref")
    path = reference.save(tmp_path / "ref.npz")
    loaded = load_feature_set(path, fmnist)
    assert np.array_equal(loaded.features, reference.features) and loaded.image_size == (28, 28)
    with np.load(path) as data:
        assert np.allclose(data["mu"], reference.features.mean(0))
    other = FeatureSet(reference.features, reference.logits, {**fmnist.describe(), "sha256": "f" * 64}, (28, 28))
    with pytest.raises(ValueError, match="different feature networks"):
        other.check_compatible(reference)
    with pytest.raises(ValueError, match="different image sizes"):
        FeatureSet(reference.features, reference.logits, fmnist.describe(), (32, 32)).check_compatible(reference)

    class Other:
        name, sha256 = "other", "e" * 64

    with pytest.raises(ValueError, match="recompute the reference"):
        load_feature_set(path, Other())
    # an ADM reference batch (arr_0 images) is embedded with this network
    np.savez(tmp_path / "adm.npz", arr_0=images)
    adm = load_feature_set(tmp_path / "adm.npz", fmnist)
    np.testing.assert_allclose(adm.features, reference.features, rtol=1e-5)
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="neither"):
        load_feature_set(tmp_path / "bad.npz", fmnist)


def test_evaluate_generation_metrics_and_comparability(fmnist):
    images = uint8_images(300)
    labels = np.arange(300) % 10
    reference = feature_set_of_images(fmnist, images, labels, "ref")
    same = evaluate_generation(reference, reference, fmnist.id2label)
    assert same["fd_fmnist"] == pytest.approx(0.0, abs=1e-6)
    assert same["precision"] == same["recall"] == 1.0
    assert same["class_accuracy"] == pytest.approx(float((reference.logits.argmax(1) == labels).mean()))
    shifted = feature_set_of_images(fmnist, uint8_images(300, seed=1) // 4, labels, "dark")
    worse = evaluate_generation(shifted, reference)
    assert worse["fd_fmnist"] > 0 and "class_accuracy" not in worse
    check_comparable([same, worse])
    with pytest.raises(ValueError, match="different feature networks"):
        check_comparable([same, {**worse, "feature_network": {"sha256": "0" * 64}}])


def test_evaluate_tokenizer_reports_every_metric(fmnist):
    torch.manual_seed(0)
    tokenizer = FQGANTokenizer.from_preset("tiny").eval()
    size = tokenizer.sample_size
    images = uint8_images(140, size=size, channels=tokenizer.in_channels)
    result = evaluate_tokenizer(tokenizer, images, fmnist, batch_size=64)
    assert result["num_images"] == 140 and result["lpips"] is None
    assert len(result["codebook_usage"]) == tokenizer.num_codebooks
    assert result["feature_network"]["sha256"] == BUNDLED_CLASSIFIER_SHA256 and result["rfd_fmnist"] > 0
    assert 0 < result["ssim"] < 1 and math.isfinite(result["psnr_db"])
    json.dumps(result)  # JSON-ready


def test_an_unreadable_image_is_named_on_the_line_a_command_prints_and_can_be_skipped(tmp_path, imagefolder):
    from hf_vq import cli

    FQGANTokenizer.from_preset("tiny").save_pretrained(tmp_path / "tok")
    (imagefolder / "a" / "broken.png").write_bytes(b"not a png")
    argv = ["evaluate", "tokenizer", str(tmp_path / "tok"), "--dataset", str(imagefolder), "--split", "train",
            "--features", "none", "--output", str(tmp_path / "tok.json")]
    with pytest.raises(SystemExit, match=r"1 unreadable image\(s\) in .*, the first .*broken.png: remove or fix them, "
                                         "or drop them with --skip_corrupt"):
        cli.main(argv)
    cli.main([*argv, "--skip_corrupt"])
    assert json.loads((tmp_path / "tok.json").read_text())["num_images"] == 16


def test_cli_evaluate_tokenizer_writes_json(tmp_path):
    from hf_vq import cli

    torch.manual_seed(0)
    FQGANTokenizer.from_preset("tiny").save_pretrained(tmp_path / "tok")
    out = tmp_path / "tok.json"
    cli.main(["evaluate", "tokenizer", str(tmp_path / "tok"), "--max_images", "40", "--features", "none",
              "--output", str(out)])
    result = json.loads(out.read_text())
    assert result["num_images"] == 40 and result["image_size"] == [8, 8] and "rfd_fmnist" not in result
    assert result["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # the default: features vary by device
    with pytest.raises(SystemExit, match="only takes 8 px"):
        cli.main(["evaluate", "tokenizer", str(tmp_path / "tok"), "--resolution", "16"])
    with pytest.raises(SystemExit, match="--output must end in .json"):
        cli.main(["evaluate", "tokenizer", str(tmp_path / "tok"), "--output", str(tmp_path / "x.txt")])
    with pytest.raises(SystemExit, match="vgg16"):
        cli.main(["evaluate", "tokenizer", str(tmp_path / "tok"), "--lpips_vgg", str(tmp_path / "none.pth"),
                  "--lpips_weights", str(tmp_path / "none2.pth")])


def test_cli_evaluate_pipeline_refuses_compile_for_a_nar_generator_before_sampling(tmp_path):
    from test_pipeline import LABELS, maskgit, tokenizer

    from hf_vq import FQGANPipeline, cli

    FQGANPipeline(vqvae=tokenizer(), transformer=maskgit(), id2label=LABELS).save_pretrained(tmp_path / "pipe")
    with pytest.raises(SystemExit, match="--compile is for AR generators"):
        cli.main(["evaluate", "pipeline", str(tmp_path / "pipe"), "--samples_dir", str(tmp_path / "samples"),
                  "--compile", "--ppl_split", "none"])
    # too few samples (or reference images) for a Fréchet distance on the 128-d features: refused before sampling
    for flags, what in [(["--per_class", "40"], "--per_class 40 x 3 classes gives 120 images"),
                        (["--reference_max_images", "100"], "--reference_max_images 100 gives 100 images")]:
        with pytest.raises(SystemExit, match=f"{what}, but a Fréchet distance .* 128-d features needs more than 128"):
            cli.main(["evaluate", "pipeline", str(tmp_path / "pipe"), "--samples_dir", str(tmp_path / "samples"),
                      "--ppl_split", "none", *flags])
    assert not (tmp_path / "samples").exists()


def test_cli_evaluate_pipeline_samples_scores_and_resumes(tmp_path):
    from test_pipeline import LABELS, far, tokenizer

    from hf_vq import FQGANPipeline, cli

    FQGANPipeline(vqvae=tokenizer(), transformer=far(), id2label=LABELS).save_pretrained(tmp_path / "pipe")
    argv = ["evaluate", "pipeline", str(tmp_path / "pipe"), "--samples_dir", str(tmp_path / "samples"),
            "--per_class", "50", "--reference_max_images", "200", "--ppl_split", "none", "--batch_size", "64"]
    with pytest.raises(SystemExit, match="labels up to 9"):  # Fashion-MNIST's 10 classes for a 3-class model
        cli.main([*argv[:-4], "--ppl_max_images", "50"])
    with pytest.raises(SystemExit, match="an AR generator decodes one position per step"):
        cli.main([*argv, "--num_inference_steps", "5"])
    assert not (tmp_path / "samples").exists()  # both refused before sampling
    cli.main([*argv, "--max_batches", "1"])  # stopped early: no result yet
    assert not (tmp_path / "samples" / "samples.npz").exists()
    cli.main([*argv, "--output", str(tmp_path / "gen.json")])
    result = json.loads((tmp_path / "gen.json").read_text())
    assert result["num_samples"] == 150 and result["num_reference"] == 200 and result["image_size"] == [8, 8]
    assert result["feature_network"]["sha256"] == BUNDLED_CLASSIFIER_SHA256
    assert result["fd_fmnist"] > 0 and 1 <= result["is_fmnist"] <= 10 and 0 <= result["precision"] <= 1
    assert "class_accuracy" not in result  # the pipeline's classes are not Fashion-MNIST's
    assert "ar_validation_perplexity" not in result
    # a second run reuses the samples and the saved reference, and gives the same numbers
    cli.main([*argv, "--output", str(tmp_path / "again.json")])
    again = json.loads((tmp_path / "again.json").read_text())
    assert {k: again[k] for k in ("fd_fmnist", "precision", "recall")} == \
        {k: result[k] for k in ("fd_fmnist", "precision", "recall")}
    with pytest.raises(SystemExit, match="seed: 0 on disk, 1 now"):
        cli.main([*argv, "--seed", "1"])
    with pytest.raises(SystemExit, match="settings"):  # samples drawn by an fp32 generator are not resumed in bf16
        cli.main([*argv, "--dtype", "bf16"])
    # the folder rewritten with other weights (a resumed training run saves there): the samples are not its own
    retrained = FQGANPipeline.from_pretrained(tmp_path / "pipe")
    torch.nn.init.normal_(retrained.transformer.output_1.weight)
    retrained.save_pretrained(tmp_path / "pipe")
    with pytest.raises(SystemExit, match="weights_sha256"):
        cli.main([*argv, "--output", str(tmp_path / "stale.json")])
    assert not (tmp_path / "stale.json").exists()
    cli.main([*argv[:4], str(tmp_path / "bf16"), *argv[5:], "--dtype", "bf16", "--output", str(tmp_path / "bf16.json")])
    half = json.loads((tmp_path / "bf16.json").read_text())
    assert half["dtype"] == "bf16" and result["dtype"] == "fp32" and half["num_samples"] == 150
    # every setting that changes the samples is recorded, defaults resolved
    assert {k: result[k] for k in ("guidance_scale", "temperature", "top_k", "top_p", "compile")} == \
        {"guidance_scale": 2.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "compile": False}
    manifest = json.loads((tmp_path / "bf16" / "samples.json").read_text())
    assert manifest["settings"]["dtype"] == "bf16"
    # the same sample file scored on its own gives the pipeline command's numbers
    cli.main(["evaluate", "samples", str(tmp_path / "samples" / "samples.npz"), "--reference_max_images", "200",
              "--output", str(tmp_path / "file.json")])
    scored = json.loads((tmp_path / "file.json").read_text())
    assert scored["fd_fmnist"] == result["fd_fmnist"] and scored["precision"] == result["precision"]
    assert scored["device"] == result["device"]


def test_cli_evaluate_samples_scores_real_images_for_the_floor(tmp_path, monkeypatch):
    from hf_vq import cli

    argv = ["evaluate", "samples", "fashion-mnist:train", "--max_images", "150", "--reference_max_images", "200",
            "--output", str(tmp_path / "floor.json")]
    with pytest.raises(SystemExit, match="needs --resolution"):
        cli.main(argv)
    cli.main([*argv, "--resolution", "28"])
    floor = json.loads((tmp_path / "floor.json").read_text())
    assert floor["num_samples"] == 150 and floor["reference"] == "fashion-mnist:test"
    assert floor["class_accuracy"] > 0.7  # real images, judged by the classifier trained on them
    assert floor["fd_fmnist"] > 0
    # without --output nothing is written, not even the reference cache in the working folder
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    cli.main([*argv[:-2], "--resolution", "28"])
    assert not any((tmp_path / "cwd").iterdir())
