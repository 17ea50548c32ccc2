"""Model cards for what hf_vq pushes: a pipeline, a lone tokenizer or a lone generator folder.

The card is a `huggingface_hub.ModelCard`: metadata through `ModelCardData` (library, task, tags, datasets by Hub
id, and one `EvalResult` per number of the JSON that `hf-vq evaluate` writes), the body rendered from
`assets/model_cards/model_card_template.md` (package data, so that `hf-vq push` works from an installed wheel).

    card = pipeline_model_card("runs/fmnist-far/pipeline", "me/fmnist-far", evaluation=json.load(open("eval.json")))
    write_model_card(card, "runs/fmnist-far/pipeline")
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .utils import is_hub_id, write_file_atomic

logger = logging.getLogger(__name__)

# Every card hf_vq writes carries this line; a README.md without it is the user's, never rewritten silently.
CARD_MARKER = "<!-- hf_vq model card"
_MARKER_LINE = (CARD_MARKER + ": written by hf_vq.model_card; `hf-vq push --evaluation` rewrites it. Delete this "
                "line to keep your edits. -->")

FASHION_MNIST = "zalando-datasets/fashion_mnist"
# hf_vq's own dataset names (training.data.load_image_dataset) -> their Hub ids.
DATASET_IDS = {"fashion-mnist": FASHION_MNIST, "fashion_mnist": FASHION_MNIST}
DATASET_NAMES = {FASHION_MNIST: "Fashion-MNIST"}

GENERATION_TASK = "unconditional-image-generation"  # the Hub has no class-conditional task
RECONSTRUCTION_TASK = "image-to-image"  # a tokenizer's numbers measure reconstruction, not generation

CITATIONS: dict[str, tuple[str, str]] = {
    "fqgan": ("FQGAN: Factorized Visual Tokenization and Generation (Bai et al., 2024, arXiv 2411.16681)", """\
@article{bai2024factorized,
  title   = {Factorized Visual Tokenization and Generation},
  author  = {Bai, Zechen and others},
  journal = {arXiv preprint arXiv:2411.16681},
  year    = {2024}
}"""),
    "llamagen": ("LlamaGen: Autoregressive Model Beats Diffusion (Sun et al., 2024, arXiv 2406.06525)", """\
@article{sun2024autoregressive,
  title   = {Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation},
  author  = {Sun, Peize and others},
  journal = {arXiv preprint arXiv:2406.06525},
  year    = {2024}
}"""),
    "vqkd": ("VQ-KD: Image Understanding Makes for A Good Tokenizer for Image Generation (Wang et al., NeurIPS 2024, "
             "arXiv 2411.04406)", """\
@inproceedings{wang2024image,
  title     = {Image Understanding Makes for A Good Tokenizer for Image Generation},
  author    = {Wang, Luting and others},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2024},
  note      = {arXiv:2411.04406}
}"""),
    "vitvqgan": ("ViT-VQGAN: Vector-quantized Image Modeling with Improved VQGAN (Yu et al., ICLR 2022, "
                 "arXiv 2110.04627)", """\
@inproceedings{yu2022vectorquantized,
  title     = {Vector-quantized Image Modeling with Improved {VQGAN}},
  author    = {Yu, Jiahui and others},
  booktitle = {International Conference on Learning Representations},
  year      = {2022},
  note      = {arXiv:2110.04627}
}"""),
    "maskgit": ("MaskGIT: Masked Generative Image Transformer (Chang et al., CVPR 2022, arXiv 2202.04200)", """\
@inproceedings{chang2022maskgit,
  title     = {{MaskGIT}: Masked Generative Image Transformer},
  author    = {Chang, Huiwen and others},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition},
  year      = {2022},
  note      = {arXiv:2202.04200}
}"""),
}
_TAGS = {"fqgan": "fqgan", "llamagen": "llamagen", "vqkd": "vq-kd", "vitvqgan": "vit-vqgan", "maskgit": "maskgit"}

# Human names of the keys `hf-vq evaluate` writes; Fréchet distances and scores of other feature networks than the
# FID Inception are named in `_metric_name`, never as FID or IS.
_METRIC_NAMES = {
    "fid": "FID (Inception-v3 pool3 features)",
    "rfid": "rFID: FID of reconstructions to originals",
    "inception_score": "Inception Score",
    "precision": "Precision (k = 3)",
    "recall": "Recall (k = 3)",
    "class_accuracy": "Class accuracy of the samples",
    "psnr_db": "PSNR of reconstructions (dB)",
    "ssim": "SSIM of reconstructions",
    "lpips": "LPIPS-VGG of reconstructions",
    "codebook_usage": "Codebook usage (fraction of codes used)",
    "codebook_entropy": "Codebook entropy (nats)",
    "codebook_perplexity": "Codebook perplexity",
    "teacher_cosine": "Cosine of predicted to teacher features",
    "ar_validation_perplexity": "AR validation perplexity (teacher-forced)",
}
_RECONSTRUCTION_KEYS = {"rfid", "psnr_db", "ssim", "lpips", "codebook_usage", "codebook_entropy", "codebook_perplexity",
                        "teacher_cosine"}
_FEATURE_KEYS = {"fid", "rfid", "inception_score", "precision", "recall", "class_accuracy"}
# Evaluation settings that change the numbers, recorded with each generation metric.
_GENERATION_SETTINGS = ("guidance_scale", "num_inference_steps", "temperature", "top_k", "top_p")


def template_path() -> Path:
    """The markdown template of hf_vq's model cards (package data)."""
    return Path(str(files("hf_vq") / "assets" / "model_cards" / "model_card_template.md"))


def hub_dataset_id(name: str | os.PathLike | None) -> str | None:
    """The Hub id of a dataset hf_vq names ("fashion-mnist" -> "zalando-datasets/fashion_mnist"); None for a folder.

    Only "org/name" ids count: a bare name could as well be a local folder that is gone by now.
    """
    if name is None or str(name) == "":
        return None
    name = str(name)
    if name in DATASET_IDS:
        return DATASET_IDS[name]
    if not is_hub_id(name) or "/" not in name or Path(name).exists():
        return None
    return name


# ---------------------------------------------------------------------------------------------- what is described


@dataclass
class _Model:
    """What a card says about the model: its kind and parts, read from live modules or saved configs."""

    kind: str  # "pipeline", "tokenizer" or "generator"
    tokenizer: Any = None  # an hf_vq tokenizer (possibly on the meta device: only its shape is read)
    generator: dict[str, Any] | None = None  # the generator's config
    id2label: dict[int, str] = field(default_factory=dict)
    samples_image: str | None = None


def _tokenizer_from_config(config: dict[str, Any]):
    """An hf_vq tokenizer built on the meta device from its saved config: its shape without reading its weights."""
    import torch

    from .tokenizers import tokenizer_class

    with torch.device("meta"):
        return tokenizer_class(config["_class_name"]).from_config(config)


def _generator_model_types() -> dict[str, str]:
    """hf_vq generator model_type -> class name."""
    from .generators import GENERATOR_CLASSES

    return {cls.config_class.model_type: cls.__name__ for cls in GENERATOR_CLASSES}


def folder_kind(folder: str | os.PathLike) -> str | None:
    """"pipeline", "tokenizer" or "generator" for a folder hf_vq saved; None for anything else."""
    folder = Path(folder)
    index = _read_json_or_none(folder / "model_index.json")
    if index is not None:
        from .pipelines.pipeline_fqgan import is_fqgan_pipeline_class_name

        return "pipeline" if is_fqgan_pipeline_class_name(index.get("_class_name")) else None
    config = _read_json_or_none(folder / "config.json")
    if config is None:
        return None
    from .tokenizers import TOKENIZER_CLASSES

    if config.get("_class_name") in {cls.__name__ for cls in TOKENIZER_CLASSES}:
        return "tokenizer"
    if config.get("model_type") in _generator_model_types():
        return "generator"
    return None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _read_json_or_none(path: Path) -> dict[str, Any] | None:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, unreadable or not JSON: not a folder hf_vq saved
        return None
    return config if isinstance(config, dict) else None


def _model_of_folder(folder: Path) -> _Model:
    kind = folder_kind(folder)
    if kind is None:
        raise ValueError(
            f"{folder} is not a saved hf_vq pipeline (model_index.json), tokenizer (config.json with an hf_vq "
            "`_class_name`) or generator (config.json with an hf_vq model_type) folder"
        )
    image = "samples.png" if (folder / "samples.png").is_file() else None
    if kind == "tokenizer":
        return _Model(kind, tokenizer=_tokenizer_from_config(_read_json(folder / "config.json")), samples_image=image)
    if kind == "generator":
        return _Model(kind, generator=_read_json(folder / "config.json"), samples_image=image)
    index = _read_json(folder / "model_index.json")
    return _Model(kind, tokenizer=_tokenizer_from_config(_read_json(folder / "vqvae" / "config.json")),
                  generator=_read_json(folder / "transformer" / "config.json"),
                  id2label={int(k): v for k, v in (index.get("id2label") or {}).items()}, samples_image=image)


def _model_of_pipeline(pipe) -> _Model:
    return _Model("pipeline", tokenizer=pipe.vqvae, generator=pipe.transformer.config.to_dict(),
                  id2label={int(k): v for k, v in (pipe.config.id2label or {}).items()})


def _tokenizer_papers(tokenizer) -> list[str]:
    name = type(tokenizer).__name__
    if name == "FQGANTokenizer":  # its CNN trunk and VQ are LlamaGen's; k > 1 is FQGAN's factorization
        return ["fqgan", "llamagen"] if tokenizer.num_codebooks > 1 else ["llamagen"]
    if name == "VQKDTokenizer":  # its pixel decoder, when trained, is LlamaGen's CNN decoder
        return ["vqkd", "llamagen"] if tokenizer.can_decode else ["vqkd"]
    if name == "ViTVQGANTokenizer":
        return ["vitvqgan"]
    return []


def _generator_papers(config: dict[str, Any]) -> list[str]:
    k = config.get("num_codebooks", 1)
    if config.get("model_type") == "hf_vq_maskgit":  # MaskGIT decoding on LlamaGen blocks
        return ["maskgit", "llamagen"]
    return ["fqgan", "llamagen"] if k > 1 else ["llamagen"]


def _papers(model: _Model) -> list[str]:
    papers = _tokenizer_papers(model.tokenizer) if model.tokenizer is not None else []
    papers += _generator_papers(model.generator) if model.generator is not None else []
    return list(dict.fromkeys(papers))


def _sizes(values: Sequence[int]) -> str:
    if len(values) == 1:
        return str(values[0])
    return f"{len(values)} x {values[0]}" if len(set(values)) == 1 else " + ".join(map(str, values))


def _describe_tokenizer(tokenizer) -> str:
    name, k, sizes = type(tokenizer).__name__, tokenizer.num_codebooks, list(tokenizer.codebook_sizes)
    family = {
        "FQGANTokenizer": "FQGAN's factorized tokenizer" if k > 1 else "LlamaGen's VQGAN tokenizer",
        "VQKDTokenizer": "VQ-KD: codes distilled from a frozen image-understanding teacher",
        "ViTVQGANTokenizer": "ViT-VQGAN",
    }.get(name)
    colour = "gray" if tokenizer.in_channels == 1 else "RGB"
    grid, size, plural = tokenizer.grid_size, tokenizer.sample_size, "s" if k > 1 else ""
    text = (f"an image tokenizer, `{name}`{f' ({family})' if family else ''}, that turns {size}x{size} {colour} "
            f"images into {k} grid{plural} of {grid}x{grid} tokens (codebook{plural} of {_sizes(sizes)} codes)")
    if not tokenizer.can_decode:
        text += "; it has no pixel decoder yet, so it tokenizes but cannot turn tokens back into images"
    return text


def _describe_generator(config: dict[str, Any]) -> str:
    model_type = config.get("model_type")
    name = _generator_model_types().get(model_type, model_type)
    k = config.get("num_codebooks", 1)
    if model_type == "hf_vq_maskgit":
        family = "MaskGIT-style parallel decoding on LlamaGen transformer blocks"
    elif k > 1:
        family = f"FQGAN's factorized autoregressive generator: each position predicts its {k} sub-tokens"
    else:
        family = "LlamaGen's class-conditional GPT"
    layers, width, classes = (config.get(k) for k in ("num_hidden_layers", "hidden_size", "num_classes"))
    size = f"{layers} transformer layer{'s' if layers != 1 else ''} of width {width}, {classes} classes"
    return f"a generator, `{name}` ({family}; {size}),"


def _description(model: _Model) -> str:
    if model.kind == "pipeline":
        return (f"A class-conditional image generator in the `hf_vq` format (an `FQGANPipeline`): "
                f"{_describe_tokenizer(model.tokenizer)}, and {_describe_generator(model.generator)} that samples "
                "those token grids given a class label.")
    if model.kind == "tokenizer":
        return f"In the `hf_vq` format: {_describe_tokenizer(model.tokenizer)}."
    return (f"In the `hf_vq` format: {_describe_generator(model.generator)} that samples class-conditional token "
            "grids; the tokenizer it was trained on turns them into images.")


# ---------------------------------------------------------------------------------------------- evaluation results


@dataclass
class _Metric:
    key: str
    value: float
    name: str
    task: str
    args: dict[str, Any] | None
    config: str | None
    split: str | None = None  # where it differs from its evaluation's (the AR perplexity's held-out split)


@dataclass
class _Evaluation:
    """One evaluation JSON (or one section of a hand-written one) and the dataset it was measured on."""

    title: str
    result: dict[str, Any]
    dataset_id: str | None
    dataset_split: str | None
    metrics: list[_Metric]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _metric_name(key: str, network: dict[str, Any]) -> str | None:
    """The human name of a metric key, or None for a key that is not a metric (settings, counts, paths)."""
    if key in _METRIC_NAMES:
        return _METRIC_NAMES[key]
    features = network.get("name")
    fd = network.get("fd_metric")
    if key.startswith("rfd_") or (fd and key == "r" + fd):
        return f"Fréchet distance of reconstructions to originals on {features or key[4:]} features (not rFID)"
    if key.startswith("fd_") or key == fd:
        return f"Fréchet distance on {features or key[3:]} features (not FID)"
    if key.startswith("is_") or key == network.get("is_metric"):
        return f"Inception-Score-style score of {features or key[3:]} logits (not IS)"
    return None


def _by_network(key: str) -> bool:
    return key in _FEATURE_KEYS or key.startswith(("fd_", "rfd_", "is_"))


def _metrics_of(result: dict[str, Any]) -> list[_Metric]:
    """One entry per metric number of an evaluation result (lists: one per sub-codebook)."""
    network = result.get("feature_network") if isinstance(result.get("feature_network"), dict) else {}
    settings = {k: result[k] for k in _GENERATION_SETTINGS if _is_number(result.get(k))}
    metrics = []
    for key, value in result.items():
        name = _metric_name(key, network)
        if name is None:
            continue
        reconstruction = key in _RECONSTRUCTION_KEYS or key.startswith("rfd_")
        by_network = _by_network(key)
        # a teacher-forced perplexity and reconstructions do not depend on the sampling settings
        args = dict(settings) if not reconstruction and key != "ar_validation_perplexity" else {}
        if by_network and network.get("sha256"):
            args["feature_network_sha256"] = network["sha256"]
        config = network.get("name") if by_network else None
        task = RECONSTRUCTION_TASK if reconstruction else GENERATION_TASK
        if key == "ar_validation_perplexity" and isinstance(value, dict):  # as perplexity.ValidationPerplexity
            per_codebook = value.get("per_codebook") or []
            value = [value.get("perplexity")] + (list(per_codebook) if len(per_codebook) > 1 else [])
            labels = [None] + list(range(len(value) - 1))
        elif isinstance(value, list) and all(_is_number(v) for v in value):
            labels = list(range(len(value))) if len(value) > 1 else [None]
        else:
            value, labels = [value], [None]
        for index, number in zip(labels, value):
            if not _is_number(number):
                continue
            extra = {} if index is None else {"sub_codebook": index}
            suffix = "" if index is None else f", sub-codebook {index}"
            split = result.get("ppl_split") if key == "ar_validation_perplexity" else None
            metrics.append(_Metric(key, number, name + suffix, task, {**args, **extra} or None, config, split))
    return metrics


def _dataset_of(result: dict[str, Any]) -> tuple[str | None, str | None]:
    """(Hub id, split) an evaluation result names: a generation's `reference` "DATASET:SPLIT" (the images its samples
    are compared with), else `dataset`/`split` (a tokenizer's)."""
    reference = result.get("reference")
    if isinstance(reference, str) and ":" in reference and not reference.endswith(".npz"):
        name, split = reference.rsplit(":", 1)
        return hub_dataset_id(name), split
    if isinstance(result.get("dataset"), str):
        return hub_dataset_id(result["dataset"]), result.get("split")
    return None, None  # a reference batch file: its dataset is not recorded in the result


def public_value(value: Any) -> Any:
    """A result's value as a card shows it: a local path (absolute, `~/...` or `file://...`) names only its file (a
    folder inside the hf_vq package, its place there), so that a published card does not show the author's
    folders."""
    if isinstance(value, dict):
        return {k: public_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public_value(v) for v in value]
    if not isinstance(value, str):
        return value
    path = os.path.expanduser(value.removeprefix("file://"))
    if not os.path.isabs(path):
        return value
    parts = Path(path).parts
    inside = [i for i in range(len(parts) - 1) if parts[i] == "hf_vq" and parts[i + 1] == "assets"]
    return "/".join(parts[inside[-1]:]) if inside else f"(local) {Path(path).name}"


def _evaluations(evaluation: dict | list[dict] | None, default_dataset: str | None) -> list[_Evaluation]:
    """Normalise evaluation JSON(s) into evaluations with their metrics; hand-written JSONs may nest sections."""
    if evaluation is None:
        return []
    results = [evaluation] if isinstance(evaluation, dict) else list(evaluation)
    found = []
    for i, result in enumerate(results):
        if not isinstance(result, dict):
            raise ValueError(f"an evaluation must be a JSON object (as `hf-vq evaluate --output` writes), got "
                             f"{type(result).__name__}")
        samples = result.get("samples")
        if "pipeline" not in result and isinstance(samples, str) and ":" in samples and not Path(samples).exists():
            raise ValueError(f"evaluation {i + 1} scores real images ({samples}), the floor of the metrics, not a "
                             "model: leave it out of the card")
        sections = [(_title(result, i), result)]
        if not _metrics_of(result):  # e.g. {"tokenizer_test_set": {...}, "generation": {...}}
            sections = [(key.replace("_", " ").capitalize(), value) for key, value in result.items()
                        if isinstance(value, dict) and _metrics_of(value)]
        if not sections:
            raise ValueError(f"evaluation {i + 1} holds no metric hf_vq knows (keys: {', '.join(result)}); give "
                             "the JSON `hf-vq evaluate ... --output` writes")
        for title, section in sections:
            section = public_value(section)
            dataset_id, split = _dataset_of(section)
            found.append(_Evaluation(title, section, dataset_id or default_dataset, split, _metrics_of(section)))
    return found


def _title(result: dict[str, Any], index: int) -> str:
    if "tokenizer" in result or any(k in result for k in ("psnr_db", "codebook_usage")):
        return "Tokenizer reconstruction"
    if "pipeline" in result or "samples" in result:
        return "Class-conditional generation"
    return f"Evaluation {index + 1}"


def _eval_results(evaluations: list[_Evaluation]) -> list[EvalResult]:
    results = []
    for ev in evaluations:
        if ev.dataset_id is None:
            logger.warning("%s: no Hub dataset id (pass dataset=...), so its numbers stay out of the card's "
                           "metadata and appear in its text only", ev.title)
            continue
        for m in ev.metrics:
            results.append(EvalResult(
                task_type=m.task, task_name="Image reconstruction (tokenizer)" if m.task == RECONSTRUCTION_TASK
                else "Class-conditional image generation",
                dataset_type=ev.dataset_id, dataset_name=DATASET_NAMES.get(ev.dataset_id, ev.dataset_id),
                dataset_split=m.split or ev.dataset_split, metric_type=m.key, metric_value=m.value, metric_name=m.name,
                metric_config=m.config, metric_args=m.args,
            ))
    return results


def _evaluation_text(evaluations: list[_Evaluation]) -> str:
    """The card's metric table, one row per number, and each evaluation's JSON in a collapsed block."""
    if not evaluations:
        return ("Not evaluated yet: `hf-vq evaluate pipeline|tokenizer ... --output eval.json` measures it, and "
                "`hf-vq push REPO_ID FOLDER --evaluation eval.json` puts the numbers here.")
    rows = ["| Evaluation | Metric | Key | Value | Dataset | Split |", "|---|---|---|---|---|---|"]
    for ev in evaluations:
        dataset = ev.dataset_id or str(ev.result.get("dataset") or ev.result.get("reference") or "?")
        for m in ev.metrics:
            split = m.split or ev.dataset_split or ""
            rows.append(f"| {ev.title} | {m.name} | `{m.key}` | {m.value:.4g} | {dataset} | {split} |")
    blocks = [f"<details><summary>{ev.title}: the full result</summary>\n\n```json\n"
              f"{json.dumps(ev.result, indent=2, ensure_ascii=False)}\n```\n\n</details>" for ev in evaluations]
    return "\n".join(rows) + "\n\n" + "\n\n".join(blocks)


def _method_text(evaluations: list[_Evaluation]) -> str:
    """'How it was evaluated': what was measured against what, the feature network and its hash, the protocols."""
    paragraphs = []
    for ev in evaluations:
        r = ev.result
        parts = []
        if "num_samples" in r:
            how = ", ".join(f"{k.replace('_', ' ')} {r[k]}" for k in ("per_class", "seed", *_GENERATION_SETTINGS)
                            if k in r)
            parts.append(f"{r['num_samples']} samples{f' ({how})' if how else ''} were scored against "
                         f"{r.get('num_reference', 'the')} reference images ({r.get('reference', 'not recorded')})")
        elif "num_images" in r:
            parts.append(f"{r['num_images']} images of {r.get('dataset', '?')}:{r.get('split', '?')} were tokenized "
                         "and decoded, and the reconstructions compared with the originals")
        if "image_size" in r:
            parts.append(f"at {'x'.join(map(str, r['image_size']))} px")
        network = r.get("feature_network")
        notes = []
        if isinstance(network, dict) and network.get("name"):
            parts.append(f"with the feature network `{network['name']}` (weights sha256 `{network.get('sha256')}`)")
            distances = [k for k in r if k in ("fid", "rfid") or k.startswith(("fd_", "rfd_"))]
            if any(k not in ("fid", "rfid") for k in distances):
                notes.append(f"{', '.join(f'`{k}`' for k in distances)}: a Fréchet distance on these features, not "
                             "FID, so not comparable with published FID numbers.")
        if r.get("hf_vq_version"):
            notes.append(f"Measured by hf_vq {r['hf_vq_version']}.")
        text = f"**{ev.title}.** " + (", ".join(parts) + ". " if parts else "See the full result above. ")
        text = (text + " ".join(notes)).rstrip()
        protocol = r.get("protocol")
        if isinstance(protocol, dict) and protocol:
            text += "\n\n" + "\n".join(f"- `{k}`: {v}" for k, v in protocol.items())
        paragraphs.append(text)
    return "\n\n".join(paragraphs)


# ---------------------------------------------------------------------------------------------- the card


def _default_guidance_scale() -> float:
    from .pipelines import FQGANPipeline

    return inspect.signature(FQGANPipeline.__call__).parameters["guidance_scale"].default


def _example_labels(model: _Model, example_labels: Sequence[str | int] | None) -> list[str | int]:
    if example_labels:
        return list(example_labels)
    # The first synonym of a name ("tench, Tinca tinca" -> "tench"): the pipeline matches any one of them.
    names = [model.id2label[i].split(",")[0].strip() for i in sorted(model.id2label)][:2]
    return names or [0, 1]


def _card(model: _Model, repo_id: str, evaluation, dataset: str | None, training: str, limitations: str,
          example_labels: Sequence[str | int] | None = None) -> ModelCard:
    dataset_id = DATASET_IDS.get(dataset, dataset) if dataset else None
    if dataset_id is not None and not is_hub_id(dataset_id):
        raise ValueError(f"dataset {dataset!r} is not a Hub dataset id (such as {FASHION_MNIST})")
    evaluations = _evaluations(evaluation, dataset_id)
    papers = _papers(model)
    tags = ["hf_vq"]
    tags += ["image-tokenizer"] if model.tokenizer is not None else []
    tags += ["class-conditional-image-generation"] if model.generator is not None else []
    tags += [_TAGS[p] for p in papers]
    datasets = [dataset_id] if dataset_id else list(dict.fromkeys(e.dataset_id for e in evaluations if e.dataset_id))
    model_name = repo_id.split("/")[-1]
    card_data = ModelCardData(
        library_name="hf_vq", license="apache-2.0", model_name=model_name, tags=tags, datasets=datasets or None,
        # a lone tokenizer or generator does not make images by itself: no Hub task fits it
        pipeline_tag=GENERATION_TASK if model.kind == "pipeline" else None,
        eval_results=_eval_results(evaluations) or None,
    )
    guidance = next((e.result["guidance_scale"] for e in evaluations if _is_number(e.result.get("guidance_scale"))),
                    None)
    labels = _example_labels(model, example_labels)
    tokenizer = model.tokenizer
    kwargs = dict(
        marker=_MARKER_LINE, model_name=model_name, repo_id=repo_id, kind=model.kind,
        description=_description(model), samples_image=model.samples_image,
        example_labels=repr(labels), example_labels_cli=" ".join(shlex.quote(str(x)) for x in labels),
        guidance_scale=guidance if guidance is not None else _default_guidance_scale(),
        training=training.strip() or "Not documented for this upload.",
        evaluation=_evaluation_text(evaluations), evaluation_method=_method_text(evaluations),
        limitations=limitations.strip() or _default_limitations(model, bool(evaluations)),
        citation_intro="If you use this model, please cite the work its parts come from: "
                       + "; ".join(CITATIONS[p][0] for p in papers) + ".",
        citations="\n\n".join(CITATIONS[p][1] for p in papers),
    )
    if tokenizer is not None:
        kwargs.update(channels=tokenizer.in_channels, size=tokenizer.sample_size, grid=tokenizer.grid_size,
                      num_codebooks=tokenizer.num_codebooks, can_decode=tokenizer.can_decode)
    return ModelCard.from_template(card_data, template_path=template_path(), **kwargs)


def _default_limitations(model: _Model, evaluated: bool) -> str:
    sentences = []
    if model.kind == "pipeline" and model.id2label:
        size = model.tokenizer.sample_size
        sentences.append(f"It generates only the {len(model.id2label)} classes it was trained on, at {size}x{size} px, "
                         "with that data's content and biases.")
    if evaluated:
        sentences.append("The numbers above hold for the dataset, split and protocol stated with them, not for other "
                         "data.")
    else:
        sentences.append("It has not been evaluated: check it on your data before relying on it.")
    return " ".join(sentences)


def pipeline_model_card(
    pipe_or_folder,
    repo_id: str,
    evaluation: dict | list[dict] | None = None,
    dataset: str | None = None,
    training: str = "",
    limitations: str = "",
    *,
    example_labels: Sequence[str | int] | None = None,
) -> ModelCard:
    """The model card of an `FQGANPipeline` (object or saved folder) to be pushed as `repo_id`."""
    if isinstance(pipe_or_folder, (str, os.PathLike)):
        model = _model_of_folder(Path(pipe_or_folder))
        if model.kind != "pipeline":
            raise ValueError(f"{pipe_or_folder} is a {model.kind} folder, not a pipeline: use model_card_for_folder")
    else:
        model = _model_of_pipeline(pipe_or_folder)
    return _card(model, repo_id, evaluation, dataset, training, limitations, example_labels)


def model_card_for_folder(
    folder: str | os.PathLike,
    repo_id: str,
    evaluation: dict | list[dict] | None = None,
    dataset: str | None = None,
    training: str = "",
    limitations: str = "",
) -> ModelCard:
    """The model card of a saved hf_vq pipeline, tokenizer or generator folder (detected from its configs)."""
    return _card(_model_of_folder(Path(folder)), repo_id, evaluation, dataset, training, limitations)


def is_hf_vq_card(path: str | os.PathLike) -> bool:
    """Whether the README.md at `path` was written by hf_vq (and may be rewritten by it)."""
    path = Path(path)
    return path.is_file() and CARD_MARKER in path.read_text(encoding="utf-8", errors="replace")


def write_model_card(card: ModelCard, folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `card` as `folder/README.md`, atomically; a README.md hf_vq did not write is refused unless `overwrite`."""
    path = Path(folder) / "README.md"
    if path.exists() and not overwrite and not is_hf_vq_card(path):
        raise FileExistsError(f"{path} was not written by hf_vq; keeping it (pass --overwrite_card, overwrite=True, "
                              "to replace it with a generated card)")
    return write_file_atomic(path, lambda tmp: card.save(tmp))


def write_card_if_missing(folder: str | os.PathLike, repo_id: str, **kwargs) -> Path | None:
    """Write the folder's card (`model_card_for_folder(folder, repo_id, **kwargs)`) unless it has a README.md."""
    if (Path(folder) / "README.md").exists():
        return None
    return write_model_card(model_card_for_folder(folder, repo_id, **kwargs), folder)


def card_writer_for_push(
    folder: str | os.PathLike,
    repo_id: str,
    evaluation: list[dict] | None = None,
    dataset: str | None = None,
    overwrite_card: bool = False,
) -> Callable[[str], Path] | None:
    """What `hf-vq push` does to the card: None to leave it, else a writer to call with the repo id as created.

    The card is written when the folder has none, or rewritten when evaluations are given (a hand-written
    README.md only with `overwrite_card`). Every check and the card itself are done now, before the Hub is touched.
    """
    folder = Path(folder)
    readme = folder / "README.md"
    if readme.exists() and not evaluation:
        return None
    if readme.exists() and not overwrite_card and not is_hf_vq_card(readme):
        raise FileExistsError(f"{readme} was not written by hf_vq: pass --overwrite_card to replace it with the "
                              "generated card, or drop --evaluation to upload it as it is")
    if folder_kind(folder) is None:
        if evaluation:
            raise ValueError(f"{folder} is not a saved hf_vq pipeline, tokenizer or generator: no card for "
                             "--evaluation to go into")
        logger.warning("%s is not an hf_vq pipeline, tokenizer or generator folder: uploading it without a card",
                       folder)
        return None
    kwargs = dict(evaluation=evaluation or None, dataset=dataset)
    card = model_card_for_folder(folder, repo_id, **kwargs)

    def write(created_repo_id: str) -> Path:
        # create_repo turns "name" into "user/name": the card's snippets must name the repo that exists
        final = card if created_repo_id == repo_id else model_card_for_folder(folder, created_repo_id, **kwargs)
        return write_model_card(final, folder, overwrite=True)

    return write


def training_text(recipe_name: str, global_step: int, args: Any) -> str:
    """The card's Training section for a run of the training loop: recipe, steps and every argument."""
    arguments = json.dumps(vars(args), indent=2, sort_keys=True, default=str)
    return (f"Trained with hf_vq's `{recipe_name}` recipe for {global_step} steps.\n\n"
            f"<details><summary>Arguments of the run</summary>\n\n```json\n{arguments}\n```\n\n</details>")
