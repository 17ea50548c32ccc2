"""The training loop shared by examples/train_far.py (AR) and examples/train_maskgit.py (NAR).

Reads a codes dataset written by examples/extract_codes.py, trains the generator with AdamW (weight decay on
matrices only), label dropout for CFG, EMA, gradient clipping and atomic checkpoints, saves sample grids during
training, and ends with a complete FQGANPipeline folder (tokenizer + generator + class names).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate.utils import set_seed
from datasets import load_from_disk
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils import make_image_grid
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..generators import (
    FARConfig,
    FARForClassConditionalGeneration,
    MaskGITConfig,
    MaskGITForClassConditionalGeneration,
)
from ..pipelines import FQGANPipeline
from ..tokenizers import FQGANTokenizer
from ..utils import push_folder, save_pretrained_atomic
from .checkpointing import (
    RunMeter,
    add_run_arguments,
    batches_from,
    prepare_run_dir,
    resume_step,
    save_checkpoint,
    start_run,
)
from .optim import param_groups

GENERATORS = {
    "far": (FARConfig, FARForClassConditionalGeneration),
    "maskgit": (MaskGITConfig, MaskGITForClassConditionalGeneration),
}


def parse_args(kind: str, argv: list[str] | None = None) -> argparse.Namespace:
    """Flags shared by both generator scripts."""
    p = argparse.ArgumentParser(description=f"Train a {kind} generator on extracted codes with Accelerate.")
    p.add_argument("--codes_dir", required=True, help="output of examples/extract_codes.py")
    p.add_argument("--tokenizer", required=True, help="the FQGANTokenizer the codes came from (folder or Hub id)")
    p.add_argument("--model_config", required=True,
                   help="JSON of config kwargs; vocab_size, num_codebooks, grid_size and num_classes default to "
                        "what the codes and tokenizer say")
    add_run_arguments(p, checkpointing_steps=1000)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--weight_decay", type=float, default=0.05)
    p.add_argument("--adam_beta1", type=float, default=0.9)
    p.add_argument("--adam_beta2", type=float, default=0.95)
    p.add_argument("--guidance_scale", type=float, default=2.0, help="for the sample grids")
    return p.parse_args(argv)


@torch.no_grad()
def save_sample_grid(pipe: FQGANPipeline, num_classes: int, guidance_scale: float, path: Path, seed: int) -> None:
    """One row per class (up to 10), 8 samples each."""
    classes = list(range(min(num_classes, 10)))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(classes, num_images_per_label=8, guidance_scale=guidance_scale,
                  generator=torch.Generator(pipe.device).manual_seed(seed)).images
    path.parent.mkdir(parents=True, exist_ok=True)
    make_image_grid(images, rows=len(classes), cols=8).save(path)


def main(kind: str, argv: list[str] | None = None) -> torch.nn.Module:
    """Train a `kind` ("far" or "maskgit") generator; saves <output_dir>/pipeline and returns the final generator
    (EMA weights when kept) on every rank."""
    config_cls, model_cls = GENERATORS[kind]
    args = parse_args(kind, argv)
    output_dir = Path(args.output_dir)

    # ---- everything that can fail on bad input fails here, before any training work
    codes = load_from_disk(args.codes_dir)
    for column in ("codes", "label"):
        if column not in codes.column_names:
            raise ValueError(f"{args.codes_dir} has no {column!r} column (columns: {codes.column_names}); "
                             "write it with examples/extract_codes.py")
    id2label = dict(enumerate(codes.features["label"].names))
    tokenizer = FQGANTokenizer.from_pretrained(args.tokenizer).eval()
    k, n = codes.features["codes"].shape
    grid = int(round(n**0.5))
    model_kwargs = json.loads(Path(args.model_config).read_text())
    derived = dict(vocab_size=tokenizer.codebook_sizes[0], num_codebooks=k, grid_size=grid, num_classes=len(id2label))
    for name, value in derived.items():
        if model_kwargs.setdefault(name, value) != value:
            raise ValueError(f"--model_config sets {name}={model_kwargs[name]} but the codes/tokenizer give {value}")
    config = config_cls(**model_kwargs)
    run_identity = {"kind": kind, "model_config": model_kwargs, "codes_dir": str(args.codes_dir)}
    resume = prepare_run_dir(output_dir, run_identity, args.resume_from_checkpoint, args.push_to_hub)

    accelerator = start_run(args, f"train_{kind}", run_identity)

    set_seed(args.seed)
    model = model_cls(config)
    accelerator.print(f"{kind}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
                      f"{len(codes)} code grids of shape ({k}, {n})")
    loader = DataLoader(codes.with_format("torch", columns=["codes", "label"]), batch_size=args.train_batch_size,
                        shuffle=True, drop_last=True)
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.learning_rate,
                                  betas=(args.adam_beta1, args.adam_beta2))
    scheduler = get_scheduler(args.lr_scheduler, optimizer,
                              num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                              num_training_steps=args.max_train_steps * accelerator.num_processes)
    model, optimizer, scheduler, loader = accelerator.prepare(model, optimizer, scheduler, loader)
    ema = None
    if args.use_ema:  # after prepare, so every rank starts from rank 0's (broadcast) weights
        ema = EMAModel(model.parameters(), decay=args.ema_decay)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    tokenizer.to(accelerator.device)

    global_step = resume_step(accelerator, resume)

    def pipeline() -> FQGANPipeline:
        """The current generator (its EMA weights when kept) with the tokenizer."""
        generator = accelerator.unwrap_model(model)
        if ema is not None:
            generator = model_cls(config).to(accelerator.device)
            generator.load_state_dict(accelerator.unwrap_model(model).state_dict())
            ema.copy_to(generator.parameters())
        return FQGANPipeline(vqvae=tokenizer, transformer=generator.eval(), id2label=id2label)

    meter = RunMeter.for_run(args, accelerator)
    progress = tqdm(total=args.max_train_steps, initial=global_step, disable=not accelerator.is_local_main_process,
                    desc=f"train_{kind}")
    model.train()
    for batch in batches_from(accelerator, loader, global_step, args.gradient_accumulation_steps):
        if global_step >= args.max_train_steps:
            break
        with accelerator.accumulate(model):
            tokens = batch["codes"].long()
            targets = {"labels": tokens} if kind == "far" else {}
            loss = model(input_ids=tokens, class_labels=batch["label"], **targets).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue
        global_step += 1
        progress.update(1)
        meter.step()
        if ema is not None:
            ema.step(model.parameters())
        if global_step % args.logging_steps == 0:
            logs = {"loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0]}
            progress.set_postfix(loss=f"{logs['loss']:.4f}")
            accelerator.log(meter.log(logs), step=global_step)
        done = global_step >= args.max_train_steps or meter.timed_out()
        if global_step % args.checkpointing_steps == 0 or done:
            save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
        if accelerator.is_main_process and (global_step % args.validation_steps == 0 or done):
            save_sample_grid(pipeline(), config.num_classes, args.guidance_scale,
                             output_dir / "samples" / f"step-{global_step:07d}.png", args.seed)
            model.train()
        if done:
            break

    progress.close()
    accelerator.wait_for_everyone()
    pipe_dir = output_dir / "pipeline"
    pipe = pipeline()
    if accelerator.is_main_process:
        save_pretrained_atomic(pipe, pipe_dir)
        summary = meter.write_summary(output_dir, global_step, accelerator.device)
        if args.push_to_hub:
            push_folder(pipe_dir, args.hub_model_id or output_dir.name, message="Upload FQGANPipeline")
        accelerator.print(f"saved {pipe_dir} after {global_step} steps; {summary}")
    accelerator.end_training()
    return pipe.transformer
