"""The benchmark spec: which tokenizers, which proposal networks, which data, what budget; checked before any work.

A spec is one JSON file (paths in it are relative to the file):

    {
      "name": "fmnist-vqkd",
      "dataset": {"name": "fashion-mnist", "resolution": 28, "train_split": "train", "test_split": "test"},
      "seed": 0,
      "features": "fmnist",                      # the feature network of every Fréchet distance
      "num_samples": 10000,                      # per proposal network, spread evenly over the classes
      "budget": {"tokenizer": {"samples": 160000, "batch_size": 32}, "ar": {...}, "nar": {...},
                 "max_minutes": 40},             # samples seen per stage, the same for every row; minutes cap
      "ar": {"config": "../configs/fmnist_far.json", "sampling": {"guidance_scale": 2.0}},
      "nar": {"config": "../configs/fmnist_maskgit.json", "sampling": {"guidance_scale": 2.0}},
      "train_args": {"tokenizer": {"learning_rate": 1e-3}, "ar": {...}, "nar": {...}},
      "rows": [{"name": "VQGAN", "kind": "vqgan", "config": "../configs/fmnist_vqgan.json"}, ...],
      "noise": {"row": "VQGAN", "seeds": [1, 2]}
    }

Each row trains its tokenizer with the recipe of its kind (`TOKENIZER_KINDS`); `train_args` hold each training
stage's other flags (the recipes' command-line flags, without the dashes), spec-wide and per row.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUDGET_STAGES = ("tokenizer", "ar", "nar")
# flags the benchmark sets itself from the spec and the budget: a spec that sets them is refused
RESERVED_FLAGS = {"output_dir", "train_batch_size", "gradient_accumulation_steps", "max_train_steps", "max_minutes",
                  "seed", "resume_from_checkpoint", "dataset", "split", "resolution", "image_column", "label_column",
                  "skip_corrupt", "tokenizer_config", "tokenizer", "codes_dir", "model_config", "pixel_decoder",
                  "push_to_hub", "hub_model_id"}
SPEC_KEYS = {"name", "dataset", "seed", "features", "feature_weights", "num_samples", "budget", "ar", "nar",
             "train_args", "rows", "noise"}
ROW_KEYS = {"name", "kind", "config", "pretrained", "pixel_decoder", "stage_fraction", "budget", "train_args"}
DATASET_KEYS = {"name", "resolution", "train_split", "test_split"}
# what a spec's "sampling" may set: the pipeline call's knobs (its labels, generators and output type are the runner's)
SAMPLING_KEYS = {"ar": {"guidance_scale", "temperature", "top_k", "top_p", "compile"},
                 "nar": {"guidance_scale", "temperature", "top_k", "top_p", "num_inference_steps"}}


@dataclass(frozen=True)
class TokenizerKind:
    """How the benchmark trains one kind of tokenizer and what the kind's config must say.

    `stages` name the training stages in order; each is a recipe (a `TrainingRecipe` class path, imported when
    the stage runs). The second stage of a two-stage kind (VQ-KD's pixel decoder) trains on the first's output.
    """

    class_name: str  # the config's `_class_name` (a missing one means FQGANTokenizer, as the GAN recipe reads it)
    stages: tuple[tuple[str, str], ...]  # (stage name, recipe class path)
    quantizer: str | None = None  # the config's quantizer kind, when the kind fixes it
    multiple_codebooks: bool | None = None  # num_codebooks > 1 required (True), forbidden (False), or free (None)

    def check_config(self, config: dict[str, Any], where: str, resolution: int | None = None) -> None:
        """Refuse a tokenizer config that is not of this kind, that its class refuses (built on the meta device:
        no memory, no weights), or that cannot take `resolution` px images."""
        import torch

        from ..tokenizers import AutoImageTokenizer

        class_name = config.get("_class_name", "FQGANTokenizer")
        if class_name != self.class_name:
            raise ValueError(f"{where}: its config is a {class_name}, not the {self.class_name} this kind trains")
        quantizer = (config.get("quantizer") or {}).get("kind")
        if self.quantizer is not None and quantizer != self.quantizer:
            raise ValueError(f"{where}: its config's quantizer is {quantizer!r}, not {self.quantizer!r}")
        k = config.get("num_codebooks", 1)
        if self.multiple_codebooks is True and k < 2:
            raise ValueError(f"{where}: a factorized tokenizer needs num_codebooks >= 2, its config has {k}")
        if self.multiple_codebooks is False and k != 1:
            raise ValueError(f"{where}: this kind has one codebook, its config has num_codebooks={k}")
        try:
            with torch.device("meta"):
                model = AutoImageTokenizer.from_config(dict(config), "FQGANTokenizer")
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}: its config is refused: {err}") from err
        if resolution is not None:
            try:
                model.check_pixels(torch.empty(1, model.in_channels, resolution, resolution, device="meta"))
            except ValueError as err:
                raise ValueError(f"{where}: at dataset.resolution {resolution}: {err}") from None


_GAN = "hf_vq.training.recipes.TokenizerGANRecipe"
TOKENIZER_KINDS: dict[str, TokenizerKind] = {
    "vqgan": TokenizerKind("FQGANTokenizer", (("tokenizer", _GAN),), quantizer="vq", multiple_codebooks=False),
    "fsq": TokenizerKind("FQGANTokenizer", (("tokenizer", _GAN),), quantizer="fsq", multiple_codebooks=False),
    "lfq": TokenizerKind("FQGANTokenizer", (("tokenizer", _GAN),), quantizer="lfq", multiple_codebooks=False),
    "fqgan": TokenizerKind("FQGANTokenizer", (("tokenizer", _GAN),), multiple_codebooks=True),
    "vitvqgan": TokenizerKind("ViTVQGANTokenizer", (("tokenizer", "hf_vq.training.recipes.ViTVQGANRecipe"),)),
    "vqkd": TokenizerKind("VQKDTokenizer", (("vqkd", "hf_vq.training.recipes.VQKDRecipe"),
                                            ("pixel_decoder", "hf_vq.training.recipes.VQKDPixelDecoderRecipe"))),
}
GENERATOR_RECIPES = {"ar": "hf_vq.training.recipes.ARGeneratorRecipe",
                     "nar": "hf_vq.training.recipes.NARGeneratorRecipe"}


def recipe_class(path: str) -> type:
    """The recipe class a dotted path names."""
    import importlib

    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class StageBudget:
    """Samples seen by one training stage, in batches of `batch_size`."""

    samples: int
    batch_size: int

    @property
    def steps(self) -> int:
        """Optimizer steps of the stage."""
        return self.samples // self.batch_size


@dataclass(frozen=True)
class Budget:
    """Samples seen per stage (the same for every row) and the wall-clock cap of each training stage."""

    tokenizer: StageBudget
    ar: StageBudget
    nar: StageBudget
    max_minutes: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {s: {"samples": getattr(self, s).samples, "batch_size": getattr(self, s).batch_size}
                               for s in BUDGET_STAGES}
        out["max_minutes"] = self.max_minutes
        return out


@dataclass(frozen=True)
class Row:
    """One tokenizer of the table."""

    name: str
    kind: str
    config: dict[str, Any] | None  # the tokenizer config's content (None for a reused, pretrained tokenizer)
    pixel_decoder: dict[str, Any] | None = None  # VQ-KD stage 2's decoder kwargs
    pretrained: str | None = None  # a trained tokenizer folder to reuse instead of training one
    stage_fraction: float = 0.5  # two-stage kinds: the share of the tokenizer budget the first stage gets
    train_args: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """A file-name-safe form of the name."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


@dataclass(frozen=True)
class GeneratorSpec:
    """A proposal network: its config (FARConfig / MaskGITConfig kwargs) and the sampling settings of its pipeline."""

    config: dict[str, Any]
    sampling: dict[str, Any]


@dataclass(frozen=True)
class BenchmarkSpec:
    """A checked spec (`load_spec`); paths are resolved and configs read, so the spec file is not read again."""

    name: str
    path: Path
    dataset: str
    resolution: int
    train_split: str
    test_split: str
    seed: int
    features: str
    feature_weights: str | None
    num_samples: int
    budget: Budget
    ar: GeneratorSpec
    nar: GeneratorSpec
    rows: tuple[Row, ...]
    noise_row: str | None
    noise_seeds: tuple[int, ...]
    train_args_spec: dict[str, dict[str, Any]] = field(default_factory=dict)

    def row(self, name: str) -> Row:
        """The row called `name`."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no row {name!r} in benchmark spec {self.path}; its rows are {[r.name for r in self.rows]}")

    def fingerprint(self) -> str:
        """A hash of what every row shares (data, seed, feature network, budget, proposal networks, spec-wide flags):
        rows of one table must agree on it."""
        import hashlib

        shared = {"dataset": [self.dataset, self.resolution, self.train_split, self.test_split], "seed": self.seed,
                  "features": [self.features, self.feature_weights], "num_samples": self.num_samples,
                  "budget": self.budget.to_dict(), "ar": [self.ar.config, self.ar.sampling],
                  "nar": [self.nar.config, self.nar.sampling], "train_args": self.train_args_spec}
        return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:16]

    def train_args(self, row: Row, stage: str) -> dict[str, Any]:
        """The flags of one training stage of a row: the spec-wide ones, then the row's."""
        return {**self.train_args_spec.get(stage, {}), **row.train_args.get(stage, {})}

    def teachers(self, row: Row) -> list[str]:
        """The teachers a row's tokenizer trains with (VQ-KD's, FQGAN's semantic branches'), as the recipes read
        them: the stage's flag, else the config's."""
        if row.pretrained:
            return []
        config = row.config or {}
        if row.kind == "vqkd":
            names = [self.train_args(row, "vqkd").get("teacher") or config.get("teacher_model")]
        else:
            names = self.train_args(row, "tokenizer").get("teachers") or config.get("teacher_models") or []
        return [str(n) for n in names if n and str(n) != "none"]


def _fail(path: Path, message: str) -> ValueError:
    return ValueError(f"benchmark spec {path}: {message}")


def _read_json(path: Path, what: str, spec_path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"benchmark spec {spec_path}: {what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise _fail(spec_path, f"{what} {path} is not valid JSON ({err})") from err


def _positive_int(value: Any, where: str, spec_path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(spec_path, f"{where} must be a positive integer, got {value!r}")
    return value


def _budget(raw: Any, where: str, spec_path: Path) -> Budget:
    if not isinstance(raw, dict):
        raise _fail(spec_path, f"{where} must be an object with {', '.join(BUDGET_STAGES)} and max_minutes")
    unknown = set(raw) - {*BUDGET_STAGES, "max_minutes"}
    if unknown:
        raise _fail(spec_path, f"{where} has unknown keys {sorted(unknown)}")
    stages = {}
    for stage in BUDGET_STAGES:
        entry = raw.get(stage)
        if not isinstance(entry, dict) or set(entry) != {"samples", "batch_size"}:
            raise _fail(spec_path, f"{where}.{stage} must be {{\"samples\": N, \"batch_size\": B}}, got {entry!r}")
        samples = _positive_int(entry["samples"], f"{where}.{stage}.samples", spec_path)
        batch = _positive_int(entry["batch_size"], f"{where}.{stage}.batch_size", spec_path)
        if samples < batch:
            raise _fail(spec_path, f"{where}.{stage}: {samples} samples is less than one batch of {batch}")
        stages[stage] = StageBudget(samples, batch)
    minutes = raw.get("max_minutes")
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0):
        raise _fail(spec_path, f"{where}.max_minutes must be a positive number or null, got {minutes!r}")
    return Budget(**stages, max_minutes=minutes)


def _train_args(raw: Any, where: str, spec_path: Path) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise _fail(spec_path, f"{where} must map stage names to objects of flags")
    for stage, flags in raw.items():
        reserved = sorted(set(flags) & RESERVED_FLAGS)
        if reserved:
            raise _fail(spec_path, f"{where}.{stage} sets {reserved}, which the benchmark sets from the spec and "
                                   "its budget")
    return copy.deepcopy(raw)


def load_spec(path: str | Path) -> BenchmarkSpec:
    """Read and check a spec: every error a row could hit later is raised here, before any training."""
    path = Path(path)
    raw = _read_json(path, "spec file", path)
    base = path.parent
    required = ("dataset", "budget", "ar", "nar", "rows")
    missing = [k for k in required if k not in raw]
    if missing:
        raise _fail(path, f"missing {', '.join(missing)}")

    _known_keys(raw, SPEC_KEYS, "the spec", path)
    dataset = raw["dataset"]
    if not isinstance(dataset, dict) or "name" not in dataset or "resolution" not in dataset:
        raise _fail(path, "dataset must be {\"name\": ..., \"resolution\": N, \"train_split\"?, \"test_split\"?}")
    _known_keys(dataset, DATASET_KEYS, "dataset", path)
    budget = _budget(raw["budget"], "budget", path)
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise _fail(path, f"seed must be an integer in [0, 2**31), got {seed!r}")

    generators = {}
    for stage in ("ar", "nar"):
        entry = raw[stage]
        if not isinstance(entry, dict) or "config" not in entry:
            raise _fail(path, f"{stage} must be {{\"config\": \"generator config.json\", \"sampling\": {{...}}}}")
        _known_keys(entry, {"config", "sampling"}, stage, path)
        config = _read_json(base / entry["config"], f"{stage} config", path)
        _check_generator_config(stage, config, path)
        generators[stage] = GeneratorSpec(config, _sampling(stage, entry.get("sampling"), path))

    rows, names = [], set()
    if not isinstance(raw["rows"], list) or not raw["rows"]:
        raise _fail(path, "rows must be a non-empty list")
    resolution = _positive_int(dataset["resolution"], "dataset.resolution", path)
    for i, entry in enumerate(raw["rows"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or "kind" not in entry:
            raise _fail(path, f"row {i} must be an object with a \"name\" (a string) and a \"kind\", got {entry!r}")
        where = f"row {i} ({entry['name']})"
        _known_keys(entry, ROW_KEYS, where, path)
        slug = Row(entry["name"], entry["kind"], None).slug
        clash = [name for name in names if Row(name, "", None).slug == slug]
        if clash or not slug:
            raise _fail(path, f"{where}: its name gives the file name row-{slug}.json, "
                              + (f"as row {clash[0]!r} does; rename one" if clash else "which is empty; rename it"))
        names.add(entry["name"])
        kind = TOKENIZER_KINDS.get(entry["kind"])
        if kind is None:
            raise _fail(path, f"{where}: unknown tokenizer kind {entry['kind']!r}; known kinds: "
                              f"{', '.join(sorted(TOKENIZER_KINDS))}")
        if "budget" in entry and _budget(entry["budget"], f"{where}.budget", path) != budget:
            raise _fail(path, f"{where} has its own budget {entry['budget']}, which differs from the spec's "
                              f"{budget.to_dict()}: every row must get the same budget, or the table compares "
                              "training lengths instead of tokenizers")
        if ("config" in entry) == ("pretrained" in entry):
            raise _fail(path, f"{where} needs either a tokenizer config to train or a pretrained folder to reuse")
        config = pixel_decoder = pretrained = None
        for key in ("config", "pretrained", "pixel_decoder"):
            if key in entry and not isinstance(entry[key], str):
                raise _fail(path, f"{where}: {key} must be a path (a string), got {entry[key]!r}")
        if "config" in entry:
            config = _read_json(base / entry["config"], f"{where}: tokenizer config", path)
            kind.check_config(config, f"benchmark spec {path}: {where}", resolution)
            if "pixel_decoder" in entry:
                if len(kind.stages) < 2:
                    raise _fail(path, f"{where}: a {entry['kind']} tokenizer has no separate pixel decoder stage")
                pixel_decoder = _read_json(base / entry["pixel_decoder"], f"{where}: pixel decoder config", path)
                kind.check_config({**config, "pixel_decoder": pixel_decoder}, f"benchmark spec {path}: {where}",
                                  resolution)
        else:
            folder = base / entry["pretrained"]
            config = _read_json(folder / "config.json", f"{where}: pretrained tokenizer", path)
            kind.check_config(config, f"benchmark spec {path}: {where}", resolution)
            pretrained = str(folder)
        fraction = entry.get("stage_fraction", 0.5)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise _fail(path, f"{where}: stage_fraction must be a number in (0, 1), got {fraction!r}")
        rows.append(Row(entry["name"], entry["kind"], config, pixel_decoder, pretrained, fraction,
                        _train_args(entry.get("train_args"), f"{where}.train_args", path)))

    noise = raw.get("noise") or {}
    seeds = noise.get("seeds") if isinstance(noise, dict) else None
    integers = isinstance(seeds, list) and all(not isinstance(v, bool) and isinstance(v, int) and 0 <= v < 2**31
                                               for v in seeds)
    if noise and (not isinstance(noise, dict) or noise.get("row") not in names or not seeds or not integers):
        raise _fail(path, f"noise must be {{\"row\": one of {sorted(names)}, \"seeds\": [extra integer seeds]}}, "
                          f"got {noise!r}")
    noise_seeds = list(noise.get("seeds", []))
    if seed in noise_seeds or len(set(noise_seeds)) != len(noise_seeds):
        raise _fail(path, f"noise seeds {noise_seeds} must be distinct and differ from the spec's seed {seed}")

    spec = BenchmarkSpec(
        name=raw.get("name", path.stem), path=path, dataset=str(dataset["name"]),
        resolution=resolution,
        train_split=dataset.get("train_split", "train"), test_split=dataset.get("test_split", "test"),
        seed=seed, features=raw.get("features", "fmnist"), feature_weights=raw.get("feature_weights"),
        num_samples=_positive_int(raw.get("num_samples", 10000), "num_samples", path), budget=budget,
        ar=generators["ar"], nar=generators["nar"], rows=tuple(rows), noise_row=noise.get("row"),
        noise_seeds=tuple(noise.get("seeds", ())),
        train_args_spec=_train_args(raw.get("train_args"), "train_args", path),
    )
    every_stage = {name for kind in TOKENIZER_KINDS.values() for name, _ in kind.stages} | set(GENERATOR_RECIPES)
    unknown = sorted(set(spec.train_args_spec) - every_stage)
    if unknown:  # flags under a misspelt stage would be dropped without a word
        raise _fail(path, f"train_args names unknown stages {unknown}; stages: {sorted(every_stage)}")
    for row in spec.rows:
        stages = dict(stage_recipes(row))
        unknown = sorted(set(row.train_args) - set(stages))
        if unknown:
            raise _fail(path, f"row {row.name}: train_args names stages {unknown} that a {row.kind} row does not "
                              f"train; its stages: {list(stages)}")
        for stage, recipe in stages.items():
            check_flags(recipe, spec.train_args(row, stage), f"benchmark spec {path}: {row.name}, stage {stage}")
    return spec


def _sampling(stage: str, raw: Any, path: Path) -> dict[str, Any]:
    """The sampling settings of a proposal network, checked as the pipeline checks them (the vocabulary comes with
    the codes: top_k's upper bound is checked when sampling)."""
    from ..generators.sampling import as_number, check_sampling_args

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(path, f"{stage}.sampling must be an object of pipeline settings, got {raw!r}")
    _known_keys(raw, SAMPLING_KEYS[stage], f"{stage}.sampling", path)
    try:
        check_sampling_args(raw.get("guidance_scale", 1.0), raw.get("temperature", 1.0), raw.get("top_k", 0),
                            raw.get("top_p", 1.0), vocab_size=2**62)
        if "num_inference_steps" in raw and as_number("num_inference_steps", raw["num_inference_steps"], True) < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {raw['num_inference_steps']}")
    except ValueError as err:
        raise _fail(path, f"{stage}.sampling: {err}") from None
    if not isinstance(raw.get("compile", False), bool):
        raise _fail(path, f"{stage}.sampling: compile must be true or false, got {raw['compile']!r}")
    return dict(raw)


def _known_keys(entry: dict[str, Any], known: set[str], where: str, path: Path) -> None:
    unknown = sorted(set(entry) - known)
    if unknown:
        raise _fail(path, f"{where} has unknown keys {unknown}; known: {sorted(known)}")


def _check_generator_config(stage: str, config: dict[str, Any], path: Path) -> None:
    """Build the proposal network's config (no weights) so that a bad value fails now, not after a tokenizer has
    trained."""
    from ..training.recipes.generators import ARGeneratorRecipe, NARGeneratorRecipe

    recipe = ARGeneratorRecipe if stage == "ar" else NARGeneratorRecipe
    # what the codes fill in later: any valid placeholder values check the rest of the config
    placeholders = dict(vocab_size=16, num_codebooks=1, grid_size=2, num_classes=2)
    unknown = recipe.config_class.unknown_keys(config)
    if unknown:
        raise _fail(path, f"{stage} config sets {unknown}, which a {recipe.config_class.__name__} does not have (a "
                          "typo, or another model's config?)")
    try:
        recipe.config_class(**{**placeholders, **config})
    except (ValueError, TypeError) as err:
        raise _fail(path, f"{stage} config is refused by {recipe.config_class.__name__}: {err}") from err


def stage_recipes(row: Row) -> list[tuple[str, str]]:
    """(stage, recipe class path) of every training stage of a row, the generators' included."""
    stages = [] if row.pretrained else list(TOKENIZER_KINDS[row.kind].stages)
    return stages + list(GENERATOR_RECIPES.items())


def flags_to_argv(flags: dict[str, Any]) -> list[str]:
    """{"learning_rate": 1e-3, "use_ema": True, "teachers": ["none"]} -> ["--learning_rate", "0.001", ...]."""
    argv = []
    for key, value in flags.items():
        if value is False or value is None:
            continue
        argv.append(f"--{key}")
        if value is True:
            continue
        argv += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return argv


def check_flags(recipe_path: str, flags: dict[str, Any], where: str) -> None:
    """Refuse flags the stage's recipe does not take, or values of the wrong type (argparse's message)."""
    from ..training.loop import recipe_parser

    parser = recipe_parser(recipe_class(recipe_path))
    parser.allow_abbrev = False  # a spec names flags in full: "learning_rat" is a typo, not learning_rate
    for action in parser._actions:  # the benchmark fills the required flags itself: only the spec's are checked
        action.required = False
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser.parse_args(flags_to_argv(flags))
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else "bad flags"
        raise ValueError(f"{where}: {message.split(': error: ')[-1]}") from None
