"""Run bookkeeping shared by the training scripts: atomic checkpoints, resume, run identity, run meter."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, parse_flag_from_env
from diffusers.optimization import SchedulerType

from ..utils import require_hub_token

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
RUN_FILE = "run_config.json"
SUMMARY_FILE = "train_summary.json"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete `checkpoint-<step>` folders, oldest first (temp folders of interrupted saves are ignored)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step encoded in a checkpoint folder name."""
    match = _CHECKPOINT.match(Path(path).name)
    if not match:
        raise ValueError(f"{path} is not a checkpoint-<step> folder")
    return int(match.group(1))


def prepare_run_dir(
    output_dir: str | os.PathLike, run_identity: dict, resume: str | None, push_to_hub: bool = False
) -> Path | None:
    """Check the output folder belongs to this run and resolve `resume` ("latest" or a path) to a checkpoint.

    Raises before any work when the folder is not empty but holds no run (an unrelated folder), when it holds a
    different run that saved something (checkpoints or a final summary; one that saved nothing, stopped by a bad
    flag or a failing first step, is taken over, its tracker logs left in place), when it holds checkpoints but no
    resume was asked for, when the resume path does not exist, or when a Hub push is asked for without a token.
    """
    root = Path(output_dir)
    if push_to_hub:
        require_hub_token()
    run_file = root / RUN_FILE
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"--output_dir {root} is a file; choose a new or empty folder")
    if root.is_dir() and not run_file.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"--output_dir {root} is not empty and holds no hf_vq run (no {RUN_FILE}); choose a new or empty folder, "
            "so that nothing in it is overwritten"
        )
    if run_file.exists():
        diff = _identity_diff(run_file, run_identity)
        if diff and (list_checkpoints(root) or (root / SUMMARY_FILE).exists()):
            raise ValueError(
                f"{root} holds a different run (differs in: {', '.join(diff)}). Choose another --output_dir, "
                "or delete the folder to start over."
            )
        if diff:  # a run that stopped before it saved anything (a bad flag, a first step that failed): nothing to keep
            _say(f"{root} holds a run that saved nothing (it differed in: {', '.join(diff)}); starting this one there")
    checkpoint = None
    if resume is not None:
        if resume == "latest":
            checkpoints = list_checkpoints(root)
            checkpoint = checkpoints[-1] if checkpoints else None
            if checkpoint is None:
                _say(f"--resume_from_checkpoint latest: {root} holds no checkpoint yet; starting a fresh run")
        else:
            checkpoint = Path(resume)
            if not checkpoint.is_dir():
                raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
            if not _CHECKPOINT.match(checkpoint.name):
                raise ValueError(f"--resume_from_checkpoint {resume} is not a checkpoint-<step> folder (a run keeps "
                                 "them in its output folder); give one of those, or 'latest'")
            source_run = checkpoint.parent / RUN_FILE
            diff = _identity_diff(source_run, run_identity) if source_run.is_file() else []
            if diff:
                raise ValueError(
                    f"--resume_from_checkpoint {resume} belongs to another run (differs in: {', '.join(diff)}); "
                    f"resume it with that run's settings, or start a new run from a saved model with "
                    "--pretrained_model_name_or_path"
                )
            later = [p.name for p in list_checkpoints(root) if checkpoint_step(p) > checkpoint_step(checkpoint)]
            if later:
                # Kept, they would outlive the resumed run's own checkpoints in pruning and be taken as "latest".
                raise ValueError(
                    f"--resume_from_checkpoint {resume}: {root} holds later checkpoints ({', '.join(later)}) of the "
                    "run being branched from; move them out of the folder first, or resume with 'latest'"
                )
    elif list_checkpoints(root):
        raise ValueError(
            f"{root} already holds checkpoints of this run; pass --resume_from_checkpoint latest to continue it, "
            "or choose another --output_dir."
        )
    return checkpoint


def _identity_diff(run_file: Path, run_identity: dict) -> list[str]:
    """The fields in which the run recorded in `run_file` differs from `run_identity`."""
    previous = json.loads(run_file.read_text())
    return sorted(k for k in set(previous) | set(run_identity) if previous.get(k) != run_identity.get(k))


def _say(message: str) -> None:
    """Print once per launch: called before the Accelerator exists, on every process."""
    if os.environ.get("RANK", "0") == "0":
        print(message)


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def write_run_identity(output_dir: str | os.PathLike, run_identity: dict) -> None:
    """Record what defines this run, atomically."""
    _write_json_atomic(Path(output_dir) / RUN_FILE, run_identity)


class RunMeter:
    """Wall clock, throughput and peak memory of one training session, for the logs and the final summary.

    Throughput skips the first `warmup_steps` optimizer steps (allocator and kernel warm-up), so short benchmark
    runs and long runs report comparable figures.
    """

    def __init__(self, max_minutes: float | None, samples_per_step: int, warmup_steps: int = 5):
        self.max_minutes = max_minutes
        self.samples_per_step = samples_per_step
        self.warmup_steps = warmup_steps
        self.start = time.monotonic()
        self.steps = 0
        self._warm_start: float | None = None
        self.last_logs: dict[str, float] = {}

    @classmethod
    def for_run(cls, args: argparse.Namespace, accelerator: Accelerator) -> RunMeter:
        """The meter of a training script: samples per optimizer step over every process, `--max_minutes`."""
        samples_per_step = args.train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
        if accelerator.device.type == "cuda":  # this session's peak, not an earlier training's in the same process
            torch.cuda.reset_peak_memory_stats(accelerator.device)
        return cls(args.max_minutes, samples_per_step)

    def step(self) -> None:
        """Count one optimizer step."""
        self.steps += 1
        if self.steps == self.warmup_steps:
            self._warm_start = time.monotonic()

    @property
    def minutes(self) -> float:
        """Wall-clock minutes since the meter started."""
        return (time.monotonic() - self.start) / 60

    def timed_out(self) -> bool:
        """True once the session has used its --max_minutes."""
        return self.max_minutes is not None and self.minutes > self.max_minutes

    def samples_per_second(self) -> float | None:
        """Training samples (images or code grids, all processes) per second since warm-up."""
        if self._warm_start is None or self.steps <= self.warmup_steps:
            return None
        return (self.steps - self.warmup_steps) * self.samples_per_step / (time.monotonic() - self._warm_start)

    @staticmethod
    def peak_memory_mib(device: torch.device) -> float:
        """Peak allocated CUDA memory since the last reset (`for_run` resets it for a run), or on CPU this
        process's peak resident memory (over its whole life: the OS keeps no other)."""
        if device.type == "cuda":
            return torch.cuda.max_memory_allocated(device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def log(self, logs: dict[str, float]) -> dict[str, float]:
        """Remember the latest logged values (for the summary) and add the throughput to them."""
        self.last_logs = dict(logs)
        rate = self.samples_per_second()
        return logs if rate is None else {**logs, "samples_per_second": rate}

    def write_summary(self, output_dir: str | os.PathLike, global_step: int, device: torch.device) -> dict:
        """Write `train_summary.json`: steps, wall time, throughput, peak memory and the last logged losses.

        A session that took no step (a finished run resumed) keeps the losses the earlier summary logged at this step.
        """
        path = Path(output_dir) / SUMMARY_FILE
        last_logs = self.last_logs
        if not self.steps and path.is_file():
            previous = json.loads(path.read_text())
            if previous.get("global_step") == global_step:
                last_logs = previous.get("last_logs", {})
        summary = {
            "global_step": global_step,
            "session_steps": self.steps,
            "session_minutes": round(self.minutes, 2),
            "samples_per_second": self.samples_per_second(),
            "peak_memory_mib": round(self.peak_memory_mib(device), 1),
            "device": str(device),
            "last_logs": last_logs,
        }
        _write_json_atomic(path, summary)
        return summary


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None
) -> Path:
    """`accelerator.save_state` into a temp folder renamed to `checkpoint-<step>`; prune beyond `total_limit`.

    A kill at any moment leaves either the previous checkpoints or the new complete one, never a partial one
    under a checkpoint name.
    """
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit is not None:
            for old in list_checkpoints(root)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def check_run_arguments(args: argparse.Namespace) -> None:
    """Refuse, before any work, run flags the loop cannot honour (zero steps or batch sizes, a bad EMA decay, a
    negative clipping norm or learning rate, a tracker that is not installed)."""
    for name in ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "checkpointing_steps",
                 "validation_steps", "logging_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise ValueError(f"--checkpoints_total_limit must be >= 1, got {args.checkpoints_total_limit}")
    if args.mixed_precision == "fp16" and (parse_flag_from_env("ACCELERATE_USE_CPU")
                                           or not torch.accelerator.is_available()):
        # accelerate turns fp16 autocast off on a CPU without a word: the run would train in fp32 as if asked to
        raise ValueError("--mixed_precision fp16 is not run on a CPU (accelerate trains in fp32 there): pass bf16, "
                         "or no")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ValueError(f"--max_minutes must be > 0, got {args.max_minutes}")
    if not 0 <= args.ema_decay < 1:
        raise ValueError(f"--ema_decay must lie in [0, 1), got {args.ema_decay}")
    if args.dataloader_num_workers < 0:
        raise ValueError(f"--dataloader_num_workers must be >= 0, got {args.dataloader_num_workers}")
    if args.max_grad_norm < 0:  # clip_grad_norm_ would scale every gradient by a negative factor: ascent
        raise ValueError(f"--max_grad_norm must be >= 0 (0 turns clipping off), got {args.max_grad_norm}")
    for name, value in sorted(vars(args).items()):  # every optimizer's rate: --learning_rate, --disc_learning_rate
        if name.endswith("learning_rate") and value is not None and not value >= 0:  # 0: a step that changes nothing
            raise ValueError(f"--{name} must be >= 0, got {value}")
    check_tracker(args.report_to)


def check_tracker(report_to: str) -> None:
    """Refuse a `--report_to` tracker that accelerate does not know or that is not installed: accelerate would
    drop it without a word, and the run would train with no logs."""
    if report_to in ("none", "all"):
        return
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    if report_to not in LOGGER_TYPE_TO_CLASS:
        raise ValueError(f"--report_to {report_to}: not a tracker accelerate knows; pass none, all or one of "
                         f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
    modules = ("tensorboard", "tensorboardX") if report_to == "tensorboard" else (report_to,)
    if all(importlib.util.find_spec(module) is None for module in modules):
        extra = " (or hf_vq[train])" if report_to == "tensorboard" else ""
        raise ValueError(f"--report_to {report_to} needs the {report_to} package: pip install {report_to}{extra}, "
                         "or pass --report_to none to train without logs")


def add_run_arguments(parser: argparse.ArgumentParser, checkpointing_steps: int = 500) -> None:
    """Flags every training script shares: batch and steps, precision, EMA, checkpoints, logging, Hub."""
    p = parser
    p.add_argument("--output_dir", required=True)
    p.add_argument("--train_batch_size", type=int, default=32, help="per device")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--max_train_steps", type=int, default=10000)
    p.add_argument("--max_minutes", type=float, default=None, help="stop (and save) after this much wall time")
    p.add_argument("--lr_scheduler", default="constant", choices=[t.value for t in SchedulerType],
                   help="a diffusers.optimization scheduler")
    p.add_argument("--lr_warmup_steps", type=int, default=0)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--gradient_checkpointing", action="store_true",
                   help="recompute the kept model's block activations in the backward pass: less memory (GPT-XL and "
                        "larger, tokenizers at 256 px), the same weights")
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    p.add_argument("--allow_tf32", action="store_true",
                   help="fp32 matmuls on TF32 tensor cores (Ampere and later GPUs): faster fp32 training, as in "
                        "diffusers' scripts (cuDNN convolutions use TF32 by default already)")
    p.add_argument("--use_ema", action="store_true")
    p.add_argument("--ema_decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataloader_num_workers", type=int, default=0)
    p.add_argument("--checkpointing_steps", type=int, default=checkpointing_steps)
    p.add_argument("--checkpoints_total_limit", type=int, default=2,
                   help="keep this many latest checkpoints, deleting older ones (default 2)")
    p.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    p.add_argument("--validation_steps", type=int, default=checkpointing_steps, help="save a sample grid every N steps")
    p.add_argument("--logging_steps", type=int, default=50)
    p.add_argument("--report_to", default="tensorboard",
                   help="an accelerate tracker (tensorboard, wandb, trackio, ...), 'all' installed or 'none'")
    p.add_argument("--push_to_hub", action="store_true")
    p.add_argument("--hub_model_id", default=None)


def start_run(args: argparse.Namespace, name: str, run_identity: dict) -> Accelerator:
    """The Accelerator of a run (seedable data order, trackers on the main process) and the run's identity file."""
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if accelerator.is_main_process:
        write_run_identity(args.output_dir, run_identity)
        hparams = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(name, config=hparams)
    return accelerator


def resume_step(accelerator: Accelerator, checkpoint: Path | None) -> int:
    """Load a checkpoint's state (models, optimizers, schedulers, EMA, RNG) and return its step (0 without one)."""
    if checkpoint is None:
        return 0
    # accelerate counts the registered objects (the EMA weights) against the saved ones and raises a bare count.
    saved, registered = len(list(checkpoint.glob("custom_checkpoint_*.pkl"))), len(accelerator._custom_objects)
    if saved != registered:
        was = "with" if saved > registered else "without"
        raise ValueError(f"{checkpoint} was saved {was} --use_ema: resume it {was} --use_ema, as it was trained")
    accelerator.load_state(str(checkpoint))
    accelerator.print(f"resumed from {checkpoint}")
    return checkpoint_step(checkpoint)


def batches_from(accelerator: Accelerator, loader, step: int, gradient_accumulation_steps: int) -> Iterator:
    """Endless batches continuing the data order exactly where optimizer step `step` left it (epoch and position)."""
    epoch, skip = divmod(step * gradient_accumulation_steps, len(loader))
    while True:
        loader.set_epoch(epoch)
        yield from accelerator.skip_first_batches(loader, skip) if skip else loader
        epoch, skip = epoch + 1, 0
