"""The one training loop. Every objective (GAN tokenizer, AR and NAR generators, ...) is a `TrainingRecipe` on it.

The loop owns what every run needs: the Accelerate setup, the data loader, one optimizer and LR schedule per
trained module, gradient accumulation and clipping, EMA, logging, preview images, atomic checkpoints with exact
resume, the run summary and the Hub push. A recipe says what is trained and what the losses are:

    class MyRecipe(TrainingRecipe):
        name = "train_mine"
        def build(self): self.model = ...
        def make_optimizer(self, name, module): return torch.optim.AdamW(module.parameters(), self.args.learning_rate)
        def train_dataset(self): return dataset, collate_fn
        def training_step(self, batch, step):
            loss = self.model(**batch).loss
            yield "model", loss, {"loss": loss.detach()}
        def save_final(self, model, output_dir): ...

    run(MyRecipe, argv)  # flags: the loop's (add_run_arguments) plus the recipe's (add_arguments)
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, parse_flag_from_env, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..model_card import hub_dataset_id, training_text, write_card_if_missing
from ..utils import create_hub_repo, error_line, launched_processes, push_folder
from .checkpointing import (
    RunMeter,
    add_run_arguments,
    batches_from,
    check_run_arguments,
    checkpoint_step,
    prepare_run_dir,
    resume_step,
    save_checkpoint,
    start_run,
)

# One optimizer phase of a training step: (name of the trained module, its loss, detached values to log).
Phase = tuple[str, torch.Tensor, dict[str, torch.Tensor]]


class TrainingRecipe:
    """An objective on the shared loop.

    `trainable` names the attributes that hold the trained modules; the first is the model that is kept (EMA,
    saved, pushed), the others (a discriminator, say) get their own optimizer and schedule. After
    `accelerator.prepare` the loop puts the prepared (e.g. DDP-wrapped) modules back on those attributes, and
    the run's `accelerator` on the recipe.
    """

    accelerator: Accelerator

    name: str = "train"
    trainable: tuple[str, ...] = ("model",)
    default_checkpointing_steps: int = 500
    training_started: bool = False  # set by the loop at its first step: what fails before is the input's fault

    def __init__(self, args: argparse.Namespace):
        """Read the configs and check the flags: what the run's identity needs, and cheap checks."""
        self.args = args

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The recipe's own flags (the loop's come from `add_run_arguments`)."""

    def run_identity(self) -> dict[str, Any]:
        """What defines this run: a folder holding a run with another identity is refused, not overwritten."""
        raise NotImplementedError

    def setup(self) -> None:
        """Load what the run needs (data, frozen networks); like `__init__`, it fails on bad input before training."""

    def build(self) -> None:
        """Create the trained modules (under the run's seed) on the attributes named in `trainable`."""
        raise NotImplementedError

    def make_optimizer(self, name: str, module: nn.Module) -> torch.optim.Optimizer:
        """The optimizer of trained module `name`."""
        raise NotImplementedError

    def train_dataset(self) -> tuple[Dataset, Callable | None]:
        """The training dataset and its collate function (None for torch's default)."""
        raise NotImplementedError

    def before_prepare(self) -> None:
        """Last chance to touch the unwrapped modules on every rank alike (e.g. a data-dependent codebook init)."""

    def to_device(self, device: torch.device) -> None:
        """Move frozen helpers (teachers, loss networks, a tokenizer) to the training device."""

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> Iterator[Phase]:
        """Yield one phase per optimizer, in order; the loop runs backward, clipping and the step after each.

        The values logged must include "loss".
        """
        raise NotImplementedError

    def save_preview(self, model: nn.Module, path: Path) -> None:
        """Write a preview image (samples, reconstructions) of `model`, in eval mode, to `path`."""

    def save_final(self, model: nn.Module, output_dir: Path) -> Path:
        """Save the final model (EMA weights when kept) under `output_dir`; return the folder to push."""
        raise NotImplementedError


def step_seed(seed: int, process: int, micro_step: int) -> int:
    """The seed of one micro-step's random stream on one process."""
    return ((seed * 1_000_003 + process) * 1_000_003 + micro_step) % 2**63


def recipe_parser(recipe_cls: type[TrainingRecipe]) -> argparse.ArgumentParser:
    """The command line of a recipe: the loop's flags plus the recipe's."""
    parser = argparse.ArgumentParser(description=recipe_cls.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, checkpointing_steps=recipe_cls.default_checkpointing_steps)
    recipe_cls.add_arguments(parser)
    return parser


def parse_recipe_args(recipe_cls: type[TrainingRecipe], argv: list[str] | None = None) -> argparse.Namespace:
    """The loop's flags plus the recipe's, parsed."""
    return recipe_parser(recipe_cls).parse_args(argv)


def run(recipe_cls: type[TrainingRecipe], argv: list[str] | None = None) -> nn.Module:
    """Parse the command line and train; what `examples/train_*.py` call.

    From the command line (`argv` None), bad input found before the first training step ends the script with one
    line, as `hf-vq` commands do; a failure during training keeps its traceback, and a caller passing `argv` gets
    the exception.
    """
    recipe = None
    try:
        recipe = recipe_cls(parse_recipe_args(recipe_cls, argv))
        return train(recipe)
    except (ValueError, OSError) as err:  # not TypeError: before training that is a bug, whose traceback helps
        if argv is not None or getattr(recipe, "training_started", False):
            raise
        raise SystemExit(f"{recipe_cls.name}: {error_line(err)}") from err


def train(recipe: TrainingRecipe, keep_process_group: bool = False) -> nn.Module:
    """Train `recipe` to `--max_train_steps` (or `--max_minutes`); returns the final model on every rank.

    With `keep_process_group` the processes' group outlives the run, for a caller that trains again in the same
    processes (`hf-vq benchmark`); by default it ends with the run, as `Accelerator.end_training` ends it.
    """
    args = recipe.args
    output_dir = Path(args.output_dir)

    # ---- everything that can fail on bad input fails here (and in the recipe's __init__), before any training
    check_run_arguments(args)
    # as `accelerate launch` asks for it; checked again below on the Accelerator (which a config may also set up)
    check_sharding(recipe, parse_flag_from_env("ACCELERATE_USE_FSDP"), os.environ.get("FSDP_VERSION") == "2")
    identity = recipe.run_identity()
    resume = prepare_run_dir(output_dir, identity, args.resume_from_checkpoint, args.push_to_hub)
    if resume is not None and checkpoint_step(resume) > args.max_train_steps:
        # Resumed, it would take no step and save the checkpoint's weights as a model of more steps than asked for.
        raise ValueError(
            f"--resume_from_checkpoint {resume} is at step {checkpoint_step(resume)}, past --max_train_steps "
            f"{args.max_train_steps}; raise --max_train_steps to continue that run, or resume an earlier checkpoint"
        )
    if torch.distributed.is_initialized():
        # A process that trained before (hf-vq benchmark runs several trainings) joins no new group below, so the
        # main process would start writing this run's folder while another still checks it is empty.
        torch.distributed.barrier()
    recipe.setup()
    dataset, collate_fn = recipe.train_dataset()
    processes = launched_processes()  # as the launcher set it; the Accelerator comes later
    if len(dataset) < args.train_batch_size * processes:
        raise ValueError(
            f"the training set has {len(dataset)} examples, fewer than one batch ({args.train_batch_size} per process "
            f"x {processes} processes); lower --train_batch_size or use more data"
        )
    set_seed(args.seed)
    recipe.build()
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(getattr(recipe, recipe.trainable[0]))
    accelerator = start_run(args, recipe.name, identity)
    recipe.accelerator = accelerator
    if accelerator.distributed_type == DistributedType.FSDP:
        check_sharding(recipe, True, accelerator.is_fsdp2,
                       ram_efficient_loading=accelerator.state.fsdp_plugin.cpu_ram_efficient_loading,
                       buffers=saved_buffers(getattr(recipe, recipe.trainable[0])))
    repo_id = None
    if args.push_to_hub and accelerator.is_main_process:
        # now, so that a taken name or a token without write access fails before the training, not after it
        repo_id = create_hub_repo(args.hub_model_id or output_dir.name)

    loader = DataLoader(dataset, batch_size=args.train_batch_size, shuffle=True, drop_last=True,
                        collate_fn=collate_fn, num_workers=args.dataloader_num_workers)
    names = recipe.trainable
    modules = [getattr(recipe, name) for name in names]
    optimizers = [recipe.make_optimizer(name, module) for name, module in zip(names, modules)]
    # Warmup and total steps count scheduler calls, which the prepared scheduler makes once per process.
    schedulers = [
        get_scheduler(args.lr_scheduler, opt, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                      num_training_steps=args.max_train_steps * accelerator.num_processes)
        for opt in optimizers
    ]
    recipe.before_prepare()
    # FSDP shards the trained model in place; previews and the final save load its gathered weights into a plain
    # copy, whose frame is taken now, on the meta device, so that it costs no memory.
    frame = _meta_copy(modules[0]) if accelerator.is_fsdp2 else None
    prepared = accelerator.prepare(*modules, *optimizers, *schedulers, loader)
    n = len(names)
    modules, optimizers, schedulers, loader = prepared[:n], prepared[n:2 * n], prepared[2 * n:3 * n], prepared[-1]
    for name, module in zip(names, modules):
        setattr(recipe, name, module)
    model = modules[0]
    plain = unwrapped(accelerator, model)
    size = sum(p.numel() for p in plain.parameters())
    accelerator.print(f"{recipe.name}: {type(plain).__name__}, {size / 1e6:.2f}M parameters, "
                      f"{len(dataset)} training examples")
    ema = None
    if args.use_ema:  # after prepare, so every rank starts from rank 0's (broadcast) weights, or its shard of them
        ema = ShardAwareEMA(model.parameters(), decay=args.ema_decay)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    recipe.to_device(accelerator.device)

    peak_rates = [list(getattr(s, "scheduler", s).base_lrs) for s in schedulers]  # this launch's learning-rate flags
    global_step = resume_step(accelerator, resume)
    if resume is not None:
        _resync_learning_rates(schedulers, peak_rates, accelerator)
    meter = RunMeter.for_run(args, accelerator)
    progress = tqdm(total=args.max_train_steps, initial=global_step, disable=not accelerator.is_local_main_process,
                    desc=recipe.name)
    for module in modules:
        module.train()
    micro_step = global_step * args.gradient_accumulation_steps
    recipe.training_started = True
    for batch in batches_from(accelerator, loader, global_step, args.gradient_accumulation_steps):
        if global_step >= args.max_train_steps:
            break
        # A micro-step's random draws (dropout, label dropout, masks, flips) come from a stream seeded by (seed,
        # process, micro-step), so a resumed run replays them exactly whatever the data loader drew from the
        # global RNG for its own bookkeeping (it draws when an epoch's iterator starts, and a resume starts one).
        torch.manual_seed(step_seed(args.seed, accelerator.process_index, micro_step))
        micro_step += 1
        logs: dict[str, torch.Tensor] = {}
        with accelerator.accumulate(*modules):
            for name, loss, phase_logs in recipe.training_step(batch, global_step):
                i = names.index(name)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(modules[i].parameters(), args.max_grad_norm)
                optimizers[i].step()
                schedulers[i].step()
                optimizers[i].zero_grad(set_to_none=True)
                logs.update(phase_logs)
        if not accelerator.sync_gradients:
            continue
        global_step += 1
        progress.update(1)
        meter.step()
        if ema is not None:
            ema.step(model.parameters())
        done = global_step >= args.max_train_steps or _out_of_time(accelerator, meter, global_step, args.logging_steps)
        if global_step % args.logging_steps == 0 or done:  # the last step too: the summary keeps its losses
            values = {key: float(value) for key, value in logs.items()}
            values["lr"] = schedulers[0].get_last_lr()[0]
            progress.set_postfix(loss=f"{values['loss']:.4f}")
            accelerator.log(meter.log(values), step=global_step)
        if global_step % args.checkpointing_steps == 0 or done:
            save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
        if global_step % args.validation_steps == 0 or done:
            preview = output_dir / "samples" / f"step-{global_step:07d}.png"
            _preview(recipe, accelerator, model, frame, ema, preview)
            if accelerator.is_main_process and preview.is_file():
                _log_image(accelerator, "preview", preview, global_step)
        if done:
            break

    progress.close()
    accelerator.wait_for_everyone()
    if frame is not None:  # every rank takes part in the gather and ends with the same full model
        final = _full_model(model, frame, ema, every_rank=True).to(accelerator.device)
    else:
        final = unwrapped(accelerator, model)
        if ema is not None:
            ema.copy_to(final.parameters())
    final.eval()
    if accelerator.is_main_process:
        folder = recipe.save_final(final, output_dir)
        summary = meter.write_summary(output_dir, global_step, accelerator.device)  # before the push can fail
        if args.push_to_hub:
            card = partial(write_card_if_missing, folder, dataset=hub_dataset_id(getattr(args, "dataset", None)),
                           training=training_text(recipe.name, global_step, args))
            push_folder(folder, repo_id, message=f"Upload {folder.name} ({recipe.name})", before_upload=card,
                        create=False)
        accelerator.print(f"saved {folder} after {global_step} steps; {summary}")
    if keep_process_group:
        for tracker in accelerator.trackers:
            tracker.finish()
    else:
        accelerator.end_training()
    return final


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on the model's own activation recomputation: transformers' `activation_checkpointing_enable` (formerly
    `gradient_checkpointing_enable`, which now warns) or diffusers' `enable_gradient_checkpointing`."""
    for switch in ("activation_checkpointing_enable", "enable_gradient_checkpointing", "gradient_checkpointing_enable"):
        if hasattr(model, switch):
            getattr(model, switch)()
            return
    raise ValueError(f"--gradient_checkpointing: a {type(model).__name__} has no gradient checkpointing")


def unwrapped(accelerator: Accelerator, module: nn.Module) -> nn.Module:
    """The plain module under Accelerate's wrappers, torch.compile's included (`accelerate launch --dynamo_backend`
    compiles the prepared models): what previews sample from and the final save writes."""
    return accelerator.unwrap_model(module, keep_torch_compile=False)


def check_sharding(recipe: TrainingRecipe, fsdp: bool, fsdp2: bool, ram_efficient_loading: bool = False,
                   buffers: Sequence[str] = ()) -> None:
    """Refuse the FSDP runs the loop cannot do right (`fsdp`: the run shards; `fsdp2`: with FSDP2;
    `ram_efficient_loading`: Accelerate's fsdp_cpu_ram_efficient_loading; `buffers`: the model's saved buffers)."""
    if not fsdp:
        return
    if len(recipe.trainable) > 1:  # Accelerate's FSDP2 prepares one model per run
        raise ValueError(
            f"{recipe.name} trains {len(recipe.trainable)} modules ({', '.join(recipe.trainable)}), and FSDP shards "
            "one model per run; train it with DDP instead (examples/accelerate/ddp_multi_gpu.yaml): a tokenizer "
            "and its discriminator fit on one device"
        )
    if not fsdp2:
        raise ValueError("FSDP training needs fsdp_version: 2 in the Accelerate config (FSDP1 keeps flat local shards "
                         "that the EMA checkpoint and the gathered previews do not handle)")
    if ram_efficient_loading and buffers:
        raise ValueError(
            f"{recipe.name}'s model keeps state in buffers ({', '.join(buffers[:3])}), which Accelerate's "
            "fsdp_cpu_ram_efficient_loading does not send to the other processes (it broadcasts sharded parameters "
            "only); launch with --fsdp_cpu_ram_efficient_loading false"
        )


def saved_buffers(module: nn.Module) -> list[str]:
    """Names of the buffers in `module`'s state dict (the persistent ones)."""
    parameters = {name for name, _ in module.named_parameters(remove_duplicate=False)}  # tied ones under each name
    return [name for name in module.state_dict() if name not in parameters]


def _out_of_time(accelerator: Accelerator, meter: RunMeter, step: int, every: int) -> bool:
    """Whether any process has used up --max_minutes: one answer on every process, so that all stop at one step.

    Several processes agree through a collective (and a device sync), so they ask only every `every` steps.
    """
    if meter.max_minutes is None:
        return False
    if accelerator.num_processes == 1:
        return meter.timed_out()
    if step % every:
        return False
    late = torch.tensor([float(meter.timed_out())], device=accelerator.device)
    return bool(accelerator.reduce(late, reduction="sum") > 0)


def _resync_learning_rates(schedulers: list, peak_rates: list[list[float]], accelerator: Accelerator) -> None:
    """Set each optimizer's learning rate from its schedule at the resumed step, with this launch's peak rates.

    A checkpoint holds the rates of the schedule it was saved under; when --max_train_steps has changed since (a run
    continued to more steps), a decaying schedule gives another rate at that step, and when --learning_rate has
    changed, another peak. Without this the resumed run would train at the checkpoint's rates, ignoring the flags.
    """
    for scheduler, peaks in zip(schedulers, peak_rates):
        inner = getattr(scheduler, "scheduler", scheduler)  # Accelerate's wrapper around the torch scheduler
        if not hasattr(inner, "lr_lambdas"):  # diffusers' schedules are all LambdaLR
            continue
        if peaks != inner.base_lrs:
            accelerator.print(f"resumed with peak learning rates {peaks}; the checkpoint's run had {inner.base_lrs}")
            inner.base_lrs = list(peaks)
        rates = [base * factor(inner.last_epoch) for base, factor in zip(inner.base_lrs, inner.lr_lambdas)]
        for group, rate in zip(inner.optimizer.param_groups, rates):
            group["lr"] = rate
        inner._last_lr = rates


def _log_image(accelerator: Accelerator, name: str, path: Path, step: int) -> None:
    """Send a saved preview grid to the run's trackers that take images (TensorBoard, Weights & Biases)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({name: pixels}, step=step, dataformats="HWC")
        elif tracker.name == "wandb":
            tracker.log_images({name: [pixels]}, step=step)


class ShardAwareEMA(EMAModel):
    """diffusers' EMAModel that also averages FSDP-sharded (DTensor) parameters, shard by shard.

    The average is elementwise, so each rank keeping the average of its own shards is the sharded average of the full
    weights, with no communication per step. A checkpoint holds the full tensors (gathered by every rank, written by
    rank 0), as a run without sharding writes them; loading one puts each tensor back where the average it replaces
    lived: its device and, under FSDP, this rank's shard of it.
    """

    def state_dict(self) -> dict:
        """The EMA state with full (gathered) tensors; collective under FSDP."""
        state = super().state_dict()
        # each full tensor goes to the CPU as soon as it is gathered: every rank holds one at a time on its device,
        # not the whole model (the state is written from the CPU anyway)
        state["shadow_params"] = [p.full_tensor().cpu() if isinstance(p, DTensor) else p for p in self.shadow_params]
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state of full tensors onto the devices (and shards) of the current averages."""
        current = self.shadow_params
        super().load_state_dict(state_dict)
        self.shadow_params = [_like(loaded, like) for loaded, like in zip(self.shadow_params, current)]


def _like(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`tensor`, a full tensor, placed as `like` is: on its device, or sharded as it is (each rank its own shard)."""
    if isinstance(like, DTensor):
        # every rank holds the full tensor (read from the checkpoint), so each cuts its shard without communication
        return distribute_tensor(tensor.to(like.device), like.device_mesh, like.placements, src_data_rank=None)
    return tensor.to(like.device)


def _meta_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` with its parameters on the meta device (buffers are copied): a frame for `_full_model`."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in module.parameters()}
    return copy.deepcopy(module, memo)


@contextmanager
def _ema_weights(model: nn.Module, ema: EMAModel | None) -> Iterator[None]:
    """The model with its EMA weights swapped in (in place), swapped back out on exit; nothing without EMA."""
    if ema is None:
        yield
        return
    params = list(model.parameters())
    sharded = any(isinstance(p, DTensor) for p in params)
    if sharded:  # a shard is a fraction of the model: kept where it is, not sent through the CPU as `ema.store` does
        stored = [p.detach().clone() for p in params]
    else:
        ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        if sharded:
            for param, saved in zip(params, stored):
                param.data.copy_(saved)
        else:
            ema.restore(params)


def _storage(tensor: torch.Tensor) -> int:
    """The address of the memory behind `tensor` (its local shard's for a DTensor)."""
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.untyped_storage().data_ptr()


@torch.no_grad()
def _full_model(model: nn.Module, frame: nn.Module, ema: EMAModel | None, every_rank: bool) -> nn.Module | None:
    """A plain copy of the FSDP-sharded `model` (its EMA weights when kept); collective, every rank must call it.

    With `every_rank` each rank gets the copy; otherwise only the main process does (on the CPU), the others None.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=not every_rank)
    with _ema_weights(model, ema):
        state = get_model_state_dict(model, options=options)
        if ema is not None:
            # On one rank the gathered tensors can be the parameters themselves (also "offloaded" to the CPU they
            # are on), which the exit swaps back to the training weights: copy them out while they hold the average.
            owned = {_storage(p) for p in model.parameters()}
            state = {k: v.clone() if _storage(v) in owned else v for k, v in state.items()}
    if not state:  # a rank other than 0 when the gather went to rank 0 only
        return None
    full = copy.deepcopy(frame)
    full.load_state_dict(state, assign=True)
    return full


@torch.no_grad()
def _preview(recipe: TrainingRecipe, accelerator: Accelerator, model: nn.Module, frame: nn.Module | None,
             ema: EMAModel | None, path: Path) -> None:
    """The recipe's preview of the current model (its EMA weights when kept), written by the main process.

    Under FSDP every rank takes part in gathering the full weights into a plain copy, which the main process samples
    from; otherwise the main process swaps the EMA weights into the model in place and back out.
    """
    if frame is not None:
        full = _full_model(model, frame, ema, every_rank=False)
        if full is not None:
            full.to(accelerator.device).eval()
            path.parent.mkdir(parents=True, exist_ok=True)
            recipe.save_preview(full, path)
        return
    if not accelerator.is_main_process:
        return
    model = unwrapped(accelerator, model)
    with _ema_weights(model, ema):
        model.eval()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            recipe.save_preview(model, path)
        finally:
            model.train()
