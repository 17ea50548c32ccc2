"""Run a benchmark spec: for every row, train the tokenizer, extract codes, train the AR and NAR proposal networks,
sample, evaluate, and write the row's JSON.

    tokenizer (1 or 2 training stages) -> codes -> ar -> ar_samples -> ar_eval
                                                -> nar -> nar_samples -> nar_eval
               -> tokenizer_eval

Every stage is cached (`stages.py`), so a killed run continues where it stopped. Everything that can be wrong with
the spec, the data or the result folder is refused before the first stage runs.

Under `accelerate launch` (or `torchrun`) the processes train every network together, the spec's batch size being
the global batch (split evenly over the processes, so a row sees the same samples whatever the process count), and
share the sampling; the main process extracts the codes, evaluates, and writes every stage record, row and table.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import __version__
from ..utils import (
    atomic_directory,
    check_device_flag,
    default_device,
    file_sha256,
    launched_processes,
    save_image,
    write_file_atomic,
)
from .spec import GENERATOR_RECIPES, TOKENIZER_KINDS, BenchmarkSpec, Row, flags_to_argv, recipe_class
from .stages import Stage, StageCache, code_version, spent_seconds

if TYPE_CHECKING:
    from ..evaluation.features import FeatureNetwork

MARKER = "benchmark.json"  # in the result folder: which spec it belongs to (and that hf_vq made it)
GRID_PER_CLASS = 8
PATH_FLAGS = {"output_dir", "tokenizer_config", "tokenizer", "codes_dir", "model_config", "pixel_decoder",
              "resume_from_checkpoint", "max_minutes"}
TRAINING_STAGES = {stage for kind in TOKENIZER_KINDS.values() for stage, _ in kind.stages} | set(GENERATOR_RECIPES)


def versions() -> dict[str, str]:
    """Versions of what the numbers depend on."""
    import accelerate
    import diffusers
    import huggingface_hub
    import transformers

    return {"hf_vq": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "diffusers": diffusers.__version__, "accelerate": accelerate.__version__,
            "huggingface_hub": huggingface_hub.__version__, "python": platform.python_version()}


def git_commit() -> str | None:
    """The commit of the hf_vq checkout in use (with "-dirty" for uncommitted changes), when it runs from one."""
    package = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() / "src" / "hf_vq" != package:  # an install inside another repository
        return None
    commit = git("rev-parse", "HEAD")
    return commit and commit + ("-dirty" if git("status", "--porcelain", "--", "src") else "")


def command_line(argv: list[str], num_processes: int) -> str:
    """The command that ran, as a user would type it again: `hf-vq ...` however the CLI was started (the console
    script, or `-m hf_vq.cli` under a launcher, whose argv[0] is the module's file), with its launcher when several
    processes ran it."""
    if Path(argv[0]).name not in ("hf-vq", "cli.py"):  # called from Python, not the command line
        return shlex.join(argv)
    if num_processes == 1:
        return shlex.join(["hf-vq", *argv[1:]])
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        # CPU processes on one machine (gloo): accelerate's own multi-CPU launcher wants MPI
        launcher = ["ACCELERATE_USE_CPU=true", "torchrun", "--nproc_per_node", str(num_processes)]
    else:
        launcher = ["accelerate", "launch", "--num_processes", str(num_processes)]
    return shlex.join([*launcher, "-m", "hf_vq.cli", *argv[1:]])


class BenchmarkRun:
    """One spec, a work folder (cached stages) and a result folder (row JSONs, grids, the table)."""

    def __init__(self, spec: BenchmarkSpec, output_dir: str | Path, work_dir: str | Path, device: str | None = None,
                 rows: list[str] | None = None, log=print):
        self.spec = spec
        self.output_dir = Path(output_dir)
        self.work_dir = Path(work_dir)
        check_device_flag(device)
        self.num_processes = launched_processes()
        unknown = sorted(set(rows or []) - {r.name for r in spec.rows})
        if unknown:
            raise ValueError(f"--rows {unknown}: the spec's rows are {[r.name for r in spec.rows]}")
        self.rows = [r for r in spec.rows if rows is None or r.name in rows]
        if self.num_processes > 1:
            batches = {stage: getattr(spec.budget, stage).batch_size for stage in ("tokenizer", "ar", "nar")}
            for stage, batch in batches.items():
                if batch % self.num_processes:
                    counts = [n for n in range(1, min(batches.values()) + 1)
                              if all(b % n == 0 for b in batches.values())]
                    advice = (f"launch {', '.join(map(str, counts[:-1]))} or {counts[-1]} processes"
                              if len(counts) > 1 else "run it in one process")
                    raise ValueError(
                        f"the {stage} budget's batch size {batch} does not split evenly over {self.num_processes} "
                        f"processes, and every row must train on the spec's global batch; {advice}")
            from ..evaluation.sampling import process_state

            self.state = process_state()  # joins the process group now: every process starts together
            self.device, self.is_main_process = str(self.state.device), self.state.is_main_process
            # Stage folders are named by a hash of the sources: processes that read other sources would never meet.
            main_version = self._from_main(code_version())
            if code_version() != main_version:
                raise RuntimeError(f"this process runs hf_vq sources {code_version()}, the main process "
                                   f"{main_version}: every process must run the same checkout; relaunch once edits "
                                   "are done")
        else:
            self.state = None
            self.device = device or default_device()
            self.is_main_process = True
        self.log = log if self.is_main_process else (lambda _: None)
        self.cache = StageCache(self.work_dir, log, is_main_process=self.is_main_process)
        self.command = command_line(sys.argv, self.num_processes)
        # read now, from the code that runs: the checkout may move on (commits, edits) while a row trains
        self.git_commit = git_commit()

    def _from_main(self, value: Any) -> Any:
        """The main process's `value`, on every process (collective when several run)."""
        if self.state is None:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    # ---- checks before any work
    def check(self) -> None:
        """Refuse a result folder of another spec or feature network, a teacher that does not load, and a dataset
        without labels."""
        from ..evaluation.reports import check_comparable
        from ..training.data import check_labelled

        self._check_folder(self.output_dir, "result")
        self._check_folder(self.work_dir, "work")
        existing = [json.loads(p.read_text()) for p in sorted(self.output_dir.glob("row-*.json"))]
        noise = self.output_dir / "noise.json"
        if noise.is_file():
            existing.append({"row": "noise", **json.loads(noise.read_text())})
        for row in existing:
            if row.get("spec_fingerprint") != self.spec.fingerprint():
                raise ValueError(
                    f"{self.output_dir} holds {row.get('row')!r}, measured under another version of this spec "
                    "(its data, seed, feature network, budget, proposal networks or shared flags differ): rows of "
                    "one table must share them; use another --output_dir")
        check_comparable([*existing, {"feature_network": self.network.describe()}])
        from ..tokenizers import FrozenTeacher

        for name in sorted({t for row in self.rows for t in self.spec.teachers(row)}):
            FrozenTeacher.from_pretrained(name)  # a missing or damaged teacher fails now, not hours into the run
        why = "the proposal networks are class-conditional and the table scores class accuracy"
        train, test = (check_labelled(self.spec.dataset, split, why)
                       for split in (self.spec.train_split, self.spec.test_split))
        # every Fréchet distance compares the samples (drawn evenly over the classes, as `sample` does)
        # or the reconstructions with the test split
        num_classes = getattr(train.features["label"], "num_classes", None)
        drawn = self.spec.num_samples if num_classes is None else num_classes * max(1, self.spec.num_samples //
                                                                                     num_classes)
        self.network.check_enough_images(drawn, f"the spec's num_samples {self.spec.num_samples}, drawn evenly over "
                                                "the classes,")
        self.network.check_enough_images(len(test), f"the test split {self.spec.test_split!r}")

    def _check_folder(self, folder: Path, what: str) -> None:
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"the {what} folder {folder} is a file; choose a folder")
        marker = folder / MARKER
        if folder.is_dir() and any(folder.iterdir()) and not marker.is_file():
            raise FileExistsError(f"the {what} folder {folder} is not empty and was not made by hf-vq benchmark (no "
                                  f"{MARKER}); choose a new or empty folder, so that nothing in it is overwritten")
        if marker.is_file():
            made_for = json.loads(marker.read_text()).get("spec")
            if made_for != self.spec.name:
                raise ValueError(f"the {what} folder {folder} holds benchmark {made_for!r}, not {self.spec.name!r}")

    @functools.cached_property
    def network(self) -> FeatureNetwork:
        """The feature network of every Fréchet distance, score and class accuracy of the run."""
        from ..evaluation.features import load_feature_network

        return load_feature_network(self.spec.features, self.spec.feature_weights, device=self.device)

    # ---- the run
    def run(self, noise: bool = True) -> list[dict[str, Any]]:
        """Every selected row (and, with `noise`, the noise reruns when their row is selected), then the table;
        returns the rows' results."""
        from .table import write_table

        self.check()
        if self.state is not None:  # every process has checked the folders before the main process writes to them
            self.state.wait_for_everyone()
        for folder in (self.output_dir, self.work_dir) if self.is_main_process else ():
            marker = {"spec": self.spec.name, "spec_file": str(self.spec.path)}
            write_file_atomic(folder / MARKER, lambda p, m=marker: p.write_text(json.dumps(m, indent=2) + "\n"))
        try:
            results = [self.run_row(row) for row in self.rows]
            if noise and self.spec.noise_row and any(r.name == self.spec.noise_row for r in self.rows):
                self.run_noise()
            if self.is_main_process:
                write_table(self.output_dir)
        finally:
            if self.state is not None:
                self.state.destroy_process_group()
        return results

    def run_row(self, row: Row) -> dict[str, Any]:
        """All stages of one row; writes row-<slug>.json and the sample grids."""
        self.log(f"== {row.name}")
        tokenizer_stages = self.train_tokenizer(row)
        tokenizer_dir = Path(tokenizer_stages[-1].result["output"])
        codes = self.extract_codes(row, tokenizer_stages[-1], tokenizer_dir)
        stages = {s.name.split("/")[-1]: s for s in tokenizer_stages}
        stages["codes"] = codes
        stages["tokenizer_eval"] = self.evaluate_tokenizer(row, tokenizer_stages[-1], tokenizer_dir)
        for kind in ("ar", "nar"):
            stages.update(self.generate(row, kind, codes, tokenizer_dir, self.spec.seed))

        result = self.row_result(row, stages)
        if not self.is_main_process:
            return result
        for kind in ("ar", "nar"):
            self.write_grid(Path(stages[f"{kind}_samples"].result["samples"]),
                            self.output_dir / f"row-{row.slug}-{kind}.png")
        path = self.output_dir / f"row-{row.slug}.json"
        write_file_atomic(path, lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
        self.log(f"wrote {path}")
        return result

    # ---- training stages
    def _train(self, name: str, recipe_path: str, identity: dict[str, Any], argv: list[str], steps: int,
               batch_size: int, saved_as: str) -> Stage:
        """A training stage on the shared loop, in this process; resumes from its last checkpoint when restarted.
        `saved_as` names the folder the recipe saves its final model in."""
        from ..training.loop import parse_recipe_args, train

        recipe = recipe_class(recipe_path)
        fixed = ["--train_batch_size", str(batch_size // self.num_processes), "--max_train_steps", str(steps),
                 "--seed", str(identity["seed"])]
        # every flag as the recipe resolves it, defaults included, so a changed default is a new stage; the paths are
        # left out: what they hold is in the identity already
        resolved = vars(parse_recipe_args(recipe, argv + fixed + ["--output_dir", "-"]))
        identity = {**identity, "num_processes": self.num_processes,
                    "resolved_flags": {k: v for k, v in resolved.items() if k not in PATH_FLAGS}}

        def compute(folder: Path) -> dict[str, Any]:
            run_dir = folder / "run"
            full = argv + fixed + ["--output_dir", str(run_dir), "--resume_from_checkpoint", "latest"]
            if self.spec.budget.max_minutes:  # the cap holds over every attempt, a killed one's included
                # the main process keeps the folder's attempts
                spent = self._from_main(spent_seconds(folder) if self.is_main_process else None)
                remaining = self.spec.budget.max_minutes - spent / 60
                full += ["--max_minutes", str(max(remaining, 0.01))]
            train(recipe(parse_recipe_args(recipe, full)), keep_process_group=True)
            if not self.is_main_process:  # the main process writes the summary, and the stage's record from it
                return {}
            summary = json.loads((run_dir / "train_summary.json").read_text())
            return {"output": str(run_dir / saved_as), "steps": summary["global_step"], "planned_steps": steps,
                    "matched": summary["global_step"] >= steps, "batch_size": batch_size,
                    "samples_per_second": summary["samples_per_second"], "peak_memory_mib": summary["peak_memory_mib"],
                    "last_logs": summary["last_logs"]}

        return self.cache.run(name, identity, compute, every_process=True)

    def _data_flags(self) -> list[str]:
        return ["--dataset", self.spec.dataset, "--split", self.spec.train_split,
                "--resolution", str(self.spec.resolution)]

    def train_tokenizer(self, row: Row) -> list[Stage]:
        """The row's tokenizer: reused when pretrained, else trained by its kind's recipe(s) within the budget."""
        if row.pretrained:
            def reuse(folder: Path) -> dict[str, Any]:
                return {"output": row.pretrained, "steps": None, "planned_steps": None, "matched": True}

            weights = sorted(Path(row.pretrained).glob("*.safetensors"))
            identity = {"pretrained": row.pretrained, "config": row.config,
                        "weights": {p.name: file_sha256(p) for p in weights}}
            return [self.cache.run(f"{row.slug}/tokenizer", identity, reuse)]
        budget = self.spec.budget.tokenizer
        kind_stages = TOKENIZER_KINDS[row.kind].stages
        # a two-stage tokenizer splits the tokenizer budget: stage 1 gets `stage_fraction` of the samples
        shares = [1.0] if len(kind_stages) == 1 else [row.stage_fraction, 1 - row.stage_fraction]
        done: list[Stage] = []
        for (stage, recipe_path), share in zip(kind_stages, shares):
            steps = max(1, int(budget.samples * share) // budget.batch_size)
            flags = self.spec.train_args(row, stage)
            identity = {"row_kind": row.kind, "stage": stage, "config": row.config, "flags": flags, "steps": steps,
                        "batch_size": budget.batch_size, "seed": self.spec.seed, "dataset": self.spec.dataset,
                        "split": self.spec.train_split, "resolution": self.spec.resolution,
                        "max_minutes": self.spec.budget.max_minutes}
            if not done:
                config_path = self.work_dir / "configs" / f"{row.slug}-tokenizer.json"
                write_file_atomic(config_path, lambda p: p.write_text(json.dumps(row.config, indent=2)))
                argv = ["--tokenizer_config", str(config_path)]
            else:  # the second stage trains on the first's tokenizer (VQ-KD's pixel decoder)
                identity.update(previous=done[-1].key, pixel_decoder=row.pixel_decoder)
                argv = ["--tokenizer", done[-1].result["output"]]
                if row.pixel_decoder is not None:
                    decoder_path = self.work_dir / "configs" / f"{row.slug}-pixel-decoder.json"
                    write_file_atomic(decoder_path, lambda p: p.write_text(json.dumps(row.pixel_decoder, indent=2)))
                    argv += ["--pixel_decoder", str(decoder_path)]
            argv += self._data_flags() + flags_to_argv(flags)
            done.append(self._train(f"{row.slug}/{stage}", recipe_path, identity, argv, steps, budget.batch_size,
                                    "tokenizer"))
        return done

    def extract_codes(self, row: Row, tokenizer_stage: Stage, tokenizer_dir: Path) -> Stage:
        """Token grids of the training split (each image and its mirror), for the proposal networks."""
        from ..tokenizers import AutoImageTokenizer
        from ..training.codes import extract_codes
        from ..training.data import load_image_dataset

        def compute(folder: Path) -> dict[str, Any]:
            tokenizer = AutoImageTokenizer.from_pretrained(tokenizer_dir).to(self.device)
            data = load_image_dataset(self.spec.dataset, self.spec.train_split)
            table = extract_codes(tokenizer, data, self.spec.resolution, flip=True)
            with atomic_directory(folder / "codes", "hf-vq benchmark", overwrite=True) as tmp:
                table.save_to_disk(str(tmp))
            return {"output": str(folder / "codes"), "num_grids": len(table)}

        identity = {"tokenizer": tokenizer_stage.key, "dataset": self.spec.dataset, "split": self.spec.train_split,
                    "resolution": self.spec.resolution, "flip": True}
        return self.cache.run(f"{row.slug}/codes", identity, compute)

    def generate(self, row: Row, kind: str, codes: Stage, tokenizer_dir: Path, seed: int) -> dict[str, Stage]:
        """Train one proposal network (AR or NAR) on the codes, draw the samples, score them."""
        budget = getattr(self.spec.budget, kind)
        generator = getattr(self.spec, kind)
        flags = self.spec.train_args(row, kind)
        config_path = self.work_dir / "configs" / f"{kind}.json"
        write_file_atomic(config_path, lambda p: p.write_text(json.dumps(generator.config, indent=2)))
        identity = {"codes": codes.key, "kind": kind, "config": generator.config, "flags": flags,
                    "steps": budget.steps, "batch_size": budget.batch_size, "seed": seed,
                    "max_minutes": self.spec.budget.max_minutes}
        argv = ["--codes_dir", codes.result["output"], "--tokenizer", str(tokenizer_dir),
                "--model_config", str(config_path), *flags_to_argv(flags)]
        suffix = "" if seed == self.spec.seed else f"-seed{seed}"
        trained = self._train(f"{row.slug}/{kind}{suffix}", GENERATOR_RECIPES[kind], identity, argv, budget.steps,
                              budget.batch_size, "pipeline")
        samples = self.sample(f"{row.slug}/{kind}_samples{suffix}", trained, generator.sampling, seed)
        evaluation = self.evaluate_samples(f"{row.slug}/{kind}_eval{suffix}", samples, trained, kind == "ar")
        return {kind: trained, f"{kind}_samples": samples, f"{kind}_eval": evaluation}

    # ---- sampling and evaluation stages
    def sample(self, name: str, trained: Stage, sampling: dict[str, Any], seed: int) -> Stage:
        """`num_samples` class-conditional samples in ADM's npz layout (resumable batch by batch)."""
        from ..evaluation.sampling import generate_samples, pipeline_sample_fn
        from ..pipelines import FQGANPipeline

        def compute(folder: Path) -> dict[str, Any]:
            pipe = FQGANPipeline.from_pretrained(trained.result["output"]).to(self.device)
            pipe.set_progress_bar_config(disable=True)
            num_classes = pipe.transformer.config.num_classes
            per_class = max(1, self.spec.num_samples // num_classes)
            path = generate_samples(pipeline_sample_fn(pipe, **sampling), folder / "samples", num_classes, per_class,
                                    seed, batch_size=100, settings={"pipeline": trained.key, **sampling})
            return {"samples": str(path), "num_samples": num_classes * per_class}

        identity = {"pipeline": trained.key, "sampling": sampling, "num_samples": self.spec.num_samples, "seed": seed}
        return self.cache.run(name, identity, compute, every_process=True)  # each process draws its share

    def reference(self, channels: int):
        """The feature set of the test split, computed once per channel count and feature network."""
        from ..evaluation.feature_sets import dataset_images, feature_set_of_images, load_feature_set

        identity = {"dataset": self.spec.dataset, "split": self.spec.test_split, "resolution": self.spec.resolution,
                    "channels": channels, "network": self.network.sha256}

        def compute(folder: Path) -> dict[str, Any]:
            images, labels = dataset_images(self.spec.dataset, self.spec.test_split, self.spec.resolution, channels)
            source = f"{self.spec.dataset}:{self.spec.test_split}"
            features = feature_set_of_images(self.network, images, labels, source)
            return {"features": str(features.save(folder / "reference.npz")), "num_images": len(images)}

        stage = self.cache.run(f"reference-{channels}ch", identity, compute)
        return load_feature_set(stage.result["features"], self.network)

    def evaluate_samples(self, name: str, samples: Stage, trained: Stage, autoregressive: bool) -> Stage:
        """Fréchet distance, score, precision/recall and class accuracy of the samples; the AR network's validation
        perplexity on the test split."""
        from ..evaluation.feature_sets import dataset_images, feature_set_of_images
        from ..evaluation.linear_probe import tokenize_images
        from ..evaluation.perplexity import validation_perplexity
        from ..evaluation.reports import evaluate_generation
        from ..evaluation.sampling import load_samples
        from ..pipelines import FQGANPipeline

        def compute(folder: Path) -> dict[str, Any]:
            images, labels = load_samples(samples.result["samples"])
            reference = self.reference(images.shape[-1])
            scored = feature_set_of_images(self.network, images, labels, samples.result["samples"])
            result = evaluate_generation(scored, reference, self.network.id2label)
            if autoregressive:
                pipe = FQGANPipeline.from_pretrained(trained.result["output"]).to(self.device)
                test, test_labels = dataset_images(self.spec.dataset, self.spec.test_split, self.spec.resolution,
                                                   pipe.vqvae.in_channels)
                tokens = tokenize_images(pipe.vqvae, test)
                batches = zip(tokens.split(256), torch.from_numpy(test_labels).split(256))
                result["validation_perplexity"] = validation_perplexity(pipe.transformer, batches).to_dict()
            return result

        identity = {"samples": samples.key, "network": self.network.sha256, "test_split": self.spec.test_split}
        return self.cache.run(name, identity, compute)

    def evaluate_tokenizer(self, row: Row, tokenizer_stage: Stage, tokenizer_dir: Path) -> Stage:
        """Codebook usage and perplexity, PSNR/SSIM and the reconstructions' Fréchet distance on the test split (and,
        for a VQ-KD tokenizer, the cosine similarity of its predicted teacher features)."""
        from ..evaluation.feature_sets import dataset_images
        from ..evaluation.reports import evaluate_tokenizer
        from ..tokenizers import AutoImageTokenizer, FrozenTeacher

        def compute(folder: Path) -> dict[str, Any]:
            tokenizer = AutoImageTokenizer.from_pretrained(tokenizer_dir).to(self.device).eval()
            images, _ = dataset_images(self.spec.dataset, self.spec.test_split, self.spec.resolution,
                                       tokenizer.in_channels)
            # VQ-KD predicts its teacher's features: score them against the teacher it distilled
            names = self.spec.teachers(row) if hasattr(tokenizer, "predict_teacher_features") else []
            teacher = FrozenTeacher.from_pretrained(names[0]).to(self.device) if names else None
            return evaluate_tokenizer(tokenizer, images, self.network, teacher=teacher)

        identity = {"tokenizer": tokenizer_stage.key, "network": self.network.sha256, "dataset": self.spec.dataset,
                    "split": self.spec.test_split, "resolution": self.spec.resolution,
                    "teachers": self.spec.teachers(row)}
        return self.cache.run(f"{row.slug}/tokenizer_eval", identity, compute)

    # ---- results
    def row_result(self, row: Row, stages: dict[str, Stage]) -> dict[str, Any]:
        """The row's JSON: metrics, time per stage, and what produced them."""
        tokenizer = stages["tokenizer_eval"].result
        config = row.config or {}
        k = config.get("num_codebooks", 1)
        size = (config.get("quantizer") or {}).get("codebook_size")
        training = [name for name in stages if name in TRAINING_STAGES]
        return {
            "row": row.name,
            "slug": row.slug,
            "index": [r.name for r in self.spec.rows].index(row.name),
            "kind": row.kind,
            "spec": self.spec.name,
            "spec_fingerprint": self.spec.fingerprint(),
            "codebooks": f"{k} x {size}" if size else None,
            "tokenizer_config": row.config,
            "dataset": {"name": self.spec.dataset, "train_split": self.spec.train_split,
                        "test_split": self.spec.test_split, "resolution": self.spec.resolution},
            "budget": self.spec.budget.to_dict(),
            "seed": self.spec.seed,
            "num_processes": self.num_processes,
            "feature_network": self.network.describe(),
            "tokenizer": tokenizer,
            "ar": stages["ar_eval"].result,
            "nar": stages["nar_eval"].result,
            "sampling": {"ar": self.spec.ar.sampling, "nar": self.spec.nar.sampling},
            "training": {name: stages[name].result for name in training},
            "matched": all(stages[name].result.get("matched", True) for name in training),
            "minutes": {name: round(stage.seconds / 60, 2) for name, stage in stages.items()},
            "total_minutes": round(sum(stage.seconds for stage in stages.values()) / 60, 2),
            "command": self.command,
            "versions": versions(),
            "git_commit": self.git_commit,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def run_noise(self) -> None:
        """Rerun the noise row's AR and NAR stages with the extra seeds; write noise.json (spread of each metric)."""
        row = self.spec.row(self.spec.noise_row)
        tokenizer_stages = self.train_tokenizer(row)
        tokenizer_dir = Path(tokenizer_stages[-1].result["output"])
        codes = self.extract_codes(row, tokenizer_stages[-1], tokenizer_dir)
        seeds = [self.spec.seed, *self.spec.noise_seeds]
        fd = self.network.fd_metric
        noise: dict[str, Any] = {"row": row.name, "spec_fingerprint": self.spec.fingerprint(), "seeds": seeds,
                                 "fd_metric": fd,
                                 "feature_network": self.network.describe(), "budget": self.spec.budget.to_dict()}
        for kind in ("ar", "nar"):
            values = [self.generate(row, kind, codes, tokenizer_dir, seed)[f"{kind}_eval"].result for seed in seeds]
            per_seed = {metric: [v[metric] for v in values] for metric in (fd, "class_accuracy", "precision", "recall")
                        if all(metric in v for v in values)}
            noise[kind] = {metric: {"values": vals, "std": float(np.std(vals, ddof=1))}
                           for metric, vals in per_seed.items()}
        path = self.output_dir / "noise.json"
        if self.is_main_process:
            write_file_atomic(path, lambda p: p.write_text(json.dumps(noise, indent=2) + "\n"))

    def write_grid(self, samples_path: Path, out: Path) -> None:
        """The first GRID_PER_CLASS samples of every class, one row per class."""
        from diffusers.utils import make_image_grid
        from PIL import Image

        from ..evaluation.sampling import load_samples

        images, labels = load_samples(samples_path)
        classes = sorted(set(labels.tolist()))
        picked = [images[labels == c][:GRID_PER_CLASS] for c in classes]
        cols = min(len(p) for p in picked)
        tiles = [Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img) for p in picked for img in p[:cols]]
        grid = make_image_grid(tiles, rows=len(classes), cols=cols)
        save_image(grid, out)
