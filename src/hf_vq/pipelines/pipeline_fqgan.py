"""FQGANPipeline: class-conditional token sampling (AR or NAR) followed by detokenization."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from importlib.resources import files
from typing import Any

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils import logging

from ..generators import GENERATOR_CLASSES, ClassConditionalGeneratorConfig
from ..generators.sampling import as_number
from ..tokenizers import TOKENIZER_CLASSES, AutoImageTokenizer, ImageTokenizerMixin
from ..utils import check_output_dir, save_pretrained_atomic

logger = logging.get_logger(__name__)

IMAGENET_LABELS_REPO = "huggingface/label-files"
IMAGENET_LABELS_FILE = "imagenet-1k-id2label.json"

# The diffusers way in: `DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)`. diffusers finds a pipeline
# class that is not its own through a list `_class_name` in model_index.json, ["module file stem", "class name"], and
# a module file of that name beside it (its custom-pipeline layout). `save_pretrained` writes both; the module only
# imports hf_vq (see the file). diffusers runs that file only with trust_remote_code=True (or never, when
# DIFFUSERS_DISABLE_REMOTE_CODE is set); FQGANPipeline.from_pretrained never runs it (see `_dict_from_json_file`).
PIPELINE_MODULE = "hf_vq_pipeline"
PIPELINE_CLASS_NAME = (PIPELINE_MODULE, "FQGANPipeline")


def pipeline_module_source() -> str:
    """The module file `save_pretrained` writes beside model_index.json (package data)."""
    return (files("hf_vq") / "assets" / "pipeline_module" / f"{PIPELINE_MODULE}.py").read_text(encoding="utf-8")


def is_fqgan_pipeline_class_name(class_name: Any) -> bool:
    """Whether a model_index.json `_class_name` names FQGANPipeline: hf_vq's list, or the plain name (older folders)."""
    return class_name == "FQGANPipeline" or (
        isinstance(class_name, (list, tuple)) and tuple(class_name) == PIPELINE_CLASS_NAME
    )


def load_id2label(source: str | os.PathLike | None = None) -> dict[int, str]:
    """id -> class name from a JSON file, from JSON text ('{"0": "cat", ...}'), or with None the ImageNet names
    from the Hub's `huggingface/label-files`."""
    if isinstance(source, str) and source.lstrip()[:1] in ("{", "["):
        table = json.loads(source)
    else:
        if source is None:
            from huggingface_hub import hf_hub_download

            source = hf_hub_download(IMAGENET_LABELS_REPO, IMAGENET_LABELS_FILE, repo_type="dataset")
        with open(source) as f:
            table = json.load(f)
    if not isinstance(table, dict) or not all(str(k).isdigit() and isinstance(v, str) for k, v in table.items()):
        raise ValueError("labels must be a JSON object of class id -> name, such as {\"0\": \"T-shirt/top\"}")
    return {int(k): v for k, v in table.items()}


def _ids_beyond(id2label: dict[int, str], num_classes: int) -> list[int]:
    """The ids `id2label` names that a generator of `num_classes` classes does not have."""
    return sorted(i for i in id2label if not 0 <= i < num_classes)


def check_labels(id2label: dict[int, str], num_classes: int) -> None:
    """Raise when class names are given for ids a generator of `num_classes` classes does not have."""
    beyond = _ids_beyond(id2label, num_classes)
    if beyond:
        raise ValueError(f"the labels name class ids up to {max(beyond)}, but the generator has {num_classes} classes "
                         f"(ids 0-{num_classes - 1}): give the labels of the data it was trained on")


def _labels_within(id2label: dict[int, str], num_classes: int) -> dict[int, str]:
    """`id2label` without the names of ids the generator lacks, which a saved folder may hold: `hf-vq assemble`
    gave every pipeline ImageNet's 1000 names before it checked them. Dropped with a warning, so the folder loads."""
    beyond = set(_ids_beyond(id2label, num_classes))
    if beyond:
        logger.warning("dropping %d class names for ids this %d-class generator does not have (re-save the pipeline "
                       "to keep them out)", len(beyond), num_classes)
    return {i: name for i, name in id2label.items() if i not in beyond}


def check_components(vqvae: ImageTokenizerMixin, transformer: torch.nn.Module) -> None:
    """Raise when the components are not a tokenizer and a generator, or disagree on codebooks, size or grid."""
    if not isinstance(transformer, tuple(GENERATOR_CLASSES)):
        names = ", ".join(cls.__name__ for cls in GENERATOR_CLASSES)
        raise TypeError(f"transformer must be an hf_vq generator ({names}), got {type(transformer).__name__}")
    check_tokenizer_fits(vqvae, transformer.config)


def check_tokenizer_fits(vqvae: ImageTokenizerMixin, config: ClassConditionalGeneratorConfig) -> None:
    """Raise when a tokenizer cannot decode what a generator of `config` samples (codebooks, sizes, grid)."""
    if not isinstance(vqvae, ImageTokenizerMixin):
        raise TypeError(f"vqvae must be an hf_vq tokenizer (ImageTokenizerMixin), got {type(vqvae).__name__}")
    vqvae.check_can_decode()
    t = config
    if t.num_codebooks != vqvae.num_codebooks:
        raise ValueError(f"vqvae has {vqvae.num_codebooks} sub-codebooks but transformer predicts {t.num_codebooks}")
    if any(size != t.vocab_size for size in vqvae.codebook_sizes):
        raise ValueError(f"vqvae codebook sizes {vqvae.codebook_sizes} != transformer vocab_size {t.vocab_size}")
    if vqvae.fixed_size and (t.grid_size, t.grid_size) != vqvae.token_grid():
        h, w = vqvae.token_grid()
        raise ValueError(
            f"transformer samples a {t.grid_size}x{t.grid_size} grid but the vqvae takes only its {h}x{w} grid"
        )


class FQGANPipeline(DiffusionPipeline):
    """Class-conditional image generation: a token generator samples token grids, a tokenizer decodes them.

    Components:
        vqvae: any hf_vq tokenizer (`ImageTokenizerMixin`: FQGAN/VQGAN, ...).
        transformer: any hf_vq generator (`FARForClassConditionalGeneration` for AR, `MaskGITForClassConditional
            Generation` for NAR), through their shared sampling contract.
        id2label: class id -> name(s) (comma-separated synonyms allowed, as ImageNet's), saved in model_index.json.

    Loading: `FQGANPipeline.from_pretrained(folder_or_repo_id)`, or the diffusers way,
    `DiffusionPipeline.from_pretrained(folder_or_repo_id, trust_remote_code=True)`, which runs the repo's
    `hf_vq_pipeline.py` (a re-export of this class: it needs hf_vq installed) and returns this same class. Pass that
    flag only for repos you trust, ideally with a pinned `revision`: whoever can push to the repo can change the file.
    `FQGANPipeline.from_pretrained` never runs it. Loading a Hub id online with `DiffusionPipeline` needs
    `import hf_vq` first: diffusers checks the components' library before it runs the repo's module.
    """

    model_cpu_offload_seq = "transformer->vqvae"
    _callback_tensor_inputs = ["tokens"]

    def __init__(self, vqvae: ImageTokenizerMixin, transformer: torch.nn.Module, id2label: dict | None = None):
        super().__init__()
        check_components(vqvae, transformer)
        # Built from components alone (`FQGANPipeline(**pipe.components)`), the pipeline keeps the generator's names.
        id2label = id2label or config_labels(transformer.config)
        id2label = _labels_within({int(k): v for k, v in id2label.items()}, transformer.config.num_classes)
        if id2label:  # transformers' place for class names, so the generator alone (AutoModel) has them too
            transformer.config.id2label = id2label
            transformer.config.label2id = {name: i for i, name in id2label.items()}
        self.register_modules(vqvae=vqvae, transformer=transformer)
        self.register_to_config(id2label=id2label)
        ids_of: dict[str, list[int]] = {}
        for i, names in id2label.items():
            for name in {n.strip().lower() for n in names.split(",")} - {""}:
                ids_of.setdefault(name, []).append(int(i))
        self.labels = {name: ids[0] for name, ids in ids_of.items() if len(ids) == 1}
        # Names that several classes share (ImageNet's "crane": a bird and a machine) are asked for by id.
        self.shared_labels = {name: ids for name, ids in ids_of.items() if len(ids) > 1}
        self.image_processor = VaeImageProcessor(do_resize=False)

    @classmethod
    def _get_signature_types(cls) -> dict[str, tuple[type, ...]]:
        # diffusers checks a component against these types by exact class (`from_pipe` keeps a model component only
        # if `type(component)` is listed): the registered tokenizer and generator classes, not the abstract contract.
        types = super()._get_signature_types()
        return {**types, "vqvae": tuple(TOKENIZER_CLASSES), "transformer": tuple(GENERATOR_CLASSES)}

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
        # diffusers reads model_index.json through this hook (in `load_config`, and in `download` for a Hub id) and
        # takes a list `_class_name` as a custom pipeline whose module it must run, refusing without
        # trust_remote_code. hf_vq's own entry names this class: read it as the plain name, so that
        # FQGANPipeline.from_pretrained loads this class and never runs a file from the repo. Any other list is
        # left to diffusers and its flag. A private diffusers hook, as the loader tables in `__init__.py`; the
        # tests load the layout from a folder and from the Hub cache, so an upgrade that drops it fails a test.
        config = super()._dict_from_json_file(json_file, **kwargs)  # diffusers < 0.42 passes dduf_entries
        if isinstance(config, dict) and is_fqgan_pipeline_class_name(config.get("_class_name")):
            config["_class_name"] = "FQGANPipeline"
        return config

    def to_json_string(self) -> str:
        """The model_index.json text: diffusers' one, with hf_vq's `_class_name` list (see PIPELINE_MODULE)."""
        text = super().to_json_string()
        if type(self) is not FQGANPipeline:  # a subclass is not what the module file exports: diffusers' plain name
            return text
        config = json.loads(text)
        config["_class_name"] = list(PIPELINE_CLASS_NAME)
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """Write model_index.json and, beside it, the module file its `_class_name` names."""
        if type(self) is FQGANPipeline:
            os.makedirs(save_directory, exist_ok=True)
            with open(os.path.join(save_directory, f"{PIPELINE_MODULE}.py"), "w", encoding="utf-8") as f:
                f.write(pipeline_module_source())
        super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)

    def enable_sequential_cpu_offload(
        self, gpu_id: int | None = None, device: torch.device | str | None = None
    ) -> None:
        """diffusers' sequential offload; on a CPU execution device the hooks onload to "cpu" rather than "cpu:0"."""
        super().enable_sequential_cpu_offload(gpu_id=gpu_id, device=device)
        if self._offload_device.type != "cpu":
            return
        # diffusers names the device "cpu:0", and for a device with an index accelerate's hooks rebuild each onloaded
        # weight as `Parameter(value).to("cpu:0")`, which copies (a CPU tensor's device is plain "cpu") and so
        # leaves a plain tensor in `_parameters`; offloading it back to "meta" then fails on that tensor.
        cpu = torch.device("cpu")
        self._offload_device = cpu
        for model in self.components.values():
            if not isinstance(model, torch.nn.Module):
                continue
            for module in model.modules():
                hook = getattr(module, "_hf_hook", None)
                for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
                    if getattr(h, "execution_device", None) is not None:
                        h.execution_device = cpu

    # What diffusers pipelines expose to `callback_on_step_end`, for the call in progress.
    @property
    def guidance_scale(self) -> float:
        """The classifier-free guidance scale of the current call."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the current call guides (a scale of 1.0 samples the conditional model alone)."""
        return self._guidance_scale != 1.0

    @property
    def num_timesteps(self) -> int:
        """How many sampling steps (callback calls) the current call takes."""
        return self._num_timesteps

    def get_label_ids(self, labels: int | str | Sequence[int | str]) -> list[int]:
        """Class names (case-insensitive) or ids -> ids, with a clear error listing close matches."""
        if isinstance(labels, (torch.Tensor, np.ndarray)):
            labels = labels.reshape(-1).tolist()  # as DiTPipeline takes a tensor of ids, whatever its shape
        if isinstance(labels, (Set, Mapping)):
            raise TypeError(f"class labels must come in order (a list, tuple, range or tensor), got a "
                            f"{type(labels).__name__}")
        labels = [labels] if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable) else list(labels)
        num_classes = self.transformer.config.num_classes
        ids = []
        for label in labels:
            if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.dtype.is_floating_point:
                label = label.item()
            if isinstance(label, bool) or not isinstance(label, (int, str, np.integer)):
                raise TypeError(f"class labels are ids (int) or names (str), got {label!r} ({type(label).__name__})")
            if isinstance(label, str) and not label.strip().removeprefix("-").isdigit():
                key = label.strip().lower()
                if key in self.shared_labels:
                    raise ValueError(f"the class name {label!r} is shared by classes "
                                     f"{', '.join(map(str, self.shared_labels[key]))}: ask for one of them by id")
                if key not in self.labels:
                    close = [self._label_name(c) for c in difflib.get_close_matches(key, self.labels, n=5, cutoff=0.5)]
                    hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
                    raise ValueError(f"Unknown class label {label!r}.{hint}")
                ids.append(self.labels[key])
                continue
            label = int(label)
            if not 0 <= label < num_classes:
                raise ValueError(f"class id {label} is out of range [0, {num_classes})")
            ids.append(label)
        return ids

    def _label_name(self, key: str) -> str:
        """A class name as id2label spells it, from its lower-case key in `self.labels`."""
        names = {int(i): v for i, v in self.config.id2label.items()}[self.labels[key]]
        return next((n.strip() for n in names.split(",") if n.strip().lower() == key), key)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | Sequence[int | str],
        num_images_per_label: int = 1,
        guidance_scale: float = 2.0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        compile: bool = False,
        callback_on_step_end: Callable[[FQGANPipeline, int, int, dict], dict | None] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("tokens",),
    ) -> ImagePipelineOutput | tuple:
        """Generate `num_images_per_label` images for each class label.

        Args:
            class_labels: ids or names (see `get_label_ids`).
            guidance_scale: classifier-free guidance scale (1.0 = none).
            temperature, top_k, top_p: sampling knobs per sub-token (top_k=0 and top_p=1.0 disable them).
            generator: a `torch.Generator` for reproducible samples, or a list with one per image (as in
                diffusers): each image's random draws are then its own, whatever else is in the batch (its logits
                may still differ in the last bits between batch sizes, as any GEMM of another shape rounds
                differently, and so flip a near-tied token).
            num_inference_steps: parallel decoding steps of a NAR generator (default: the model's); an AR
                generator decodes one position per step and accepts only None.
            output_type: "pil", "np" or "pt" for images in [0, 1]; "latent" for the (B, k, h, w) token grids.
            compile: sample with `torch.compile` graphs (AR generators only); the first call compiles (tens of
                seconds), later calls of the same shapes are faster.
            callback_on_step_end: as in diffusers pipelines, called as `callback_on_step_end(pipe, step, step,
                {"tokens": tokens})` after each sampling step; `tokens` is the (B, k, N) grid so far (not yet
                sampled entries: 0 for AR, the mask id for NAR). It may read `pipe.guidance_scale`,
                `pipe.do_classifier_free_guidance` and `pipe.num_timesteps`; it observes only: returning changed
                tokens, or changing the guidance scale, raises an error.
            callback_on_step_end_tensor_inputs: the tensors passed to the callback; only "tokens" exists.
        """
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs can hold {self._callback_tensor_inputs}, got {sorted(unknown)}"
            )
        num_images_per_label = as_number("num_images_per_label", num_images_per_label, integer=True)
        if num_images_per_label < 1:
            raise ValueError(f"num_images_per_label must be an integer >= 1, got {num_images_per_label}")
        steps = self.transformer.num_sampling_steps(num_inference_steps)  # also refuses a bad step count
        ids = torch.tensor(self.get_label_ids(class_labels), device=self._execution_device)
        ids = ids.repeat_interleave(num_images_per_label)
        if isinstance(generator, (list, tuple)) and len(generator) != len(ids):
            raise ValueError(
                f"a list of generators needs one per image ({len(ids)} = labels x num_images_per_label), "
                f"got {len(generator)}"
            )
        knobs = dict(guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                     generator=generator, num_inference_steps=num_inference_steps, compile=compile,
                     device=self._execution_device)

        self._guidance_scale, self._num_timesteps = guidance_scale, steps
        with self.progress_bar(total=steps) as bar:

            def on_step(step: int, tokens: torch.Tensor) -> None:
                bar.update()
                if callback_on_step_end is None:
                    return
                # A copy, compared afterwards: a callback that edits it in place is refused like one that returns
                # changed tokens, not fed back into sampling.
                seen = tokens.clone()
                returned = callback_on_step_end(self, step, step, {"tokens": seen}) or {}
                # Refused loudly rather than ignored: the samplers fix the guidance for the whole call, and an AR
                # generator's KV cache already holds the tokens a callback would replace.
                changed = returned.get("tokens", seen)
                if not torch.equal(changed, tokens):
                    raise ValueError("callback_on_step_end changed the tokens (in what it returned, or in place); "
                                     "hf_vq's samplers do not take tokens back from a callback, which may only "
                                     "observe them")
                if self._guidance_scale != guidance_scale:
                    raise ValueError(f"callback_on_step_end changed the guidance scale to {self._guidance_scale}; it "
                                     "is fixed for a whole call: pass guidance_scale to the call instead")

            tokens = self.transformer.sample(ids, callback=on_step, **knobs)
        grid = self.transformer.config.grid_size
        tokens = tokens.view(len(ids), -1, grid, grid)
        if output_type == "latent":
            self.maybe_free_model_hooks()
            return ImagePipelineOutput(images=tokens) if return_dict else (tokens,)
        images = self.vqvae.detokenize(tokens)
        images = self.image_processor.postprocess(images.float().clamp(-1, 1), output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def assemble_pipeline(
    vqvae: str | os.PathLike | ImageTokenizerMixin,
    transformer: str | os.PathLike | torch.nn.Module,
    output_dir: str | os.PathLike,
    id2label: dict[int, str] | str | os.PathLike | None = None,
    overwrite: bool = False,
) -> FQGANPipeline:
    """Build a pipeline from saved (or in-memory) components and labels, and save it to `output_dir`.

    `id2label` may be a dict, a JSON file or JSON text (`load_id2label`), or None: the generator's own names
    (`config.id2label`) when it has them, else the ImageNet names from the Hub for a 1000-class generator, else
    none (classes are then asked for by id). A non-empty `output_dir` is refused unless `overwrite` (see
    `hf_vq.utils.atomic_directory`).
    """
    check_output_dir(output_dir, overwrite)
    from transformers import AutoModel

    if id2label is not None and not isinstance(id2label, dict):
        id2label = load_id2label(id2label)  # before the models load: a bad labels file fails first
    if not isinstance(vqvae, torch.nn.Module):
        vqvae = AutoImageTokenizer.from_pretrained(vqvae)
    if not isinstance(transformer, torch.nn.Module):
        transformer = AutoModel.from_pretrained(transformer)
    if id2label is None:
        id2label = default_labels(transformer.config)
    check_labels(id2label, transformer.config.num_classes)
    pipe = FQGANPipeline(vqvae=vqvae, transformer=transformer, id2label=id2label)
    save_pretrained_atomic(pipe, output_dir, "hf-vq assemble", overwrite)
    return pipe


def config_labels(config: ClassConditionalGeneratorConfig) -> dict[int, str]:
    """The class names a generator's config holds (`id2label`), without transformers' `LABEL_<i>` placeholders."""
    names = {int(i): name for i, name in (config.id2label or {}).items()}
    return {} if names == {i: f"LABEL_{i}" for i in names} else names


def default_labels(config: ClassConditionalGeneratorConfig) -> dict[int, str]:
    """The class names of a generator given none: its config's, ImageNet's for 1000 classes, else none."""
    names = config_labels(config)
    if names:
        return names
    if config.num_classes == 1000:
        return load_id2label()
    logger.warning("no labels for this %d-class generator: its classes are asked for by id (pass labels to name "
                   "them)", config.num_classes)
    return {}
