"""Train an FQGANTokenizer (VQGAN, FQGAN-Dual/Triple, FSQ, LFQ) with Accelerate.

    accelerate launch examples/train_fqgan.py --tokenizer_config examples/configs/fmnist_fqgan_dual.json \
        --dataset fashion-mnist --resolution 28 --output_dir runs/fmnist-tokenizer

Losses (REFERENCE.md §3): pixel (L2/L1) + LPIPS + hinge GAN after --disc_start + the tokenizer's own
quantizer, entropy, disentanglement and InfoNCE representation losses.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from diffusers.image_processor import VaeImageProcessor
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from diffusers.utils import make_image_grid
from torch.func import functional_call
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hf_vq import FQGANTokenizer, FrozenTeacher
from hf_vq.training.checkpointing import (
    RunMeter,
    add_run_arguments,
    batches_from,
    prepare_run_dir,
    resume_step,
    save_checkpoint,
    start_run,
)
from hf_vq.training.data import ImageTransform, collate, load_image_dataset, with_image_transform
from hf_vq.training.losses import LPIPS, LPIPS_DOWNLOAD_HINT, PatchGANDiscriminator, hinge_d_loss, hinge_g_loss
from hf_vq.utils import push_folder, save_pretrained_atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer_config", required=True, help="JSON file of FQGANTokenizer config kwargs")
    add_run_arguments(p, checkpointing_steps=500)
    # data
    p.add_argument("--dataset", default="fashion-mnist", help="'fashion-mnist', an imagefolder path or a Hub id")
    p.add_argument("--split", default="train")
    p.add_argument("--image_column", default=None)
    p.add_argument("--label_column", default=None)
    p.add_argument("--skip_corrupt", action="store_true", help="drop unreadable images instead of stopping")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--random_flip", action="store_true")
    p.add_argument("--dataloader_num_workers", type=int, default=0)
    # optimisation (Adam, as FQGAN)
    p.add_argument("--learning_rate", type=float, default=2e-4)
    p.add_argument("--disc_learning_rate", type=float, default=None, help="defaults to --learning_rate")
    p.add_argument("--adam_beta1", type=float, default=0.9)
    p.add_argument("--adam_beta2", type=float, default=0.95)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--gradient_checkpointing", action="store_true")
    # losses
    p.add_argument("--reconstruction_loss", choices=["l2", "l1"], default="l2")
    p.add_argument("--reconstruction_weight", type=float, default=1.0)
    p.add_argument("--perceptual_weight", type=float, default=1.0)
    p.add_argument("--vgg16_path", default=None, help="torchvision vgg16-397923af.pth")
    p.add_argument("--lpips_path", default=None, help="lpips weights v0.1/vgg.pth")
    p.add_argument("--disc_weight", type=float, default=0.5)
    p.add_argument("--disc_start", type=int, default=20000)
    p.add_argument("--disc_channels", type=int, default=64)
    p.add_argument("--disc_layers", type=int, default=3)
    p.add_argument(
        "--teachers", nargs="*", default=None,
        help="one teacher (Hub id or local path, or 'none') per sub-codebook; default: the config's teacher_models",
    )
    return p.parse_args(argv)


def load_teachers(args: argparse.Namespace, model_config: dict) -> list[FrozenTeacher | None]:
    """One frozen teacher (or None) per sub-codebook; every configured feature head must get one."""
    k = model_config.get("num_codebooks", 1)
    names = args.teachers if args.teachers is not None else (model_config.get("teacher_models") or [None] * k)
    names = [None if n in (None, "none", "None", "") else n for n in names]
    dims = model_config.get("teacher_dims") or [None] * k
    if len(names) != k:
        raise ValueError(f"--teachers needs one entry per sub-codebook ({k}); use 'none' where there is no teacher")
    for i, (name, dim) in enumerate(zip(names, dims)):
        if (name is None) != (dim is None):
            raise ValueError(f"sub-codebook {i}: teacher {name!r} but teacher_dims[{i}]={dim}; set both or neither")
    teachers = [FrozenTeacher.from_pretrained(n) if n else None for n in names]
    for i, (teacher, dim) in enumerate(zip(teachers, dims)):
        if teacher is not None and teacher.hidden_size != dim:
            raise ValueError(f"teacher {names[i]!r} has width {teacher.hidden_size}, config teacher_dims[{i}]={dim}")
    return teachers


def pixel_loss(kind: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L2 or L1 reconstruction loss."""
    return F.mse_loss(y, x) if kind == "l2" else F.l1_loss(y, x)


@torch.no_grad()
def save_reconstruction_grid(model: FQGANTokenizer, images: torch.Tensor, path: Path) -> None:
    """Originals on the top row, reconstructions below."""
    was_training = model.training
    model.eval()
    recon = model(images).sample.clamp(-1, 1)
    model.train(was_training)
    pil = VaeImageProcessor().postprocess(torch.cat([images, recon]).float().cpu(), output_type="pil")
    path.parent.mkdir(parents=True, exist_ok=True)
    make_image_grid(pil, rows=2, cols=len(images)).save(path)


def main(argv: list[str] | None = None) -> FQGANTokenizer:
    """Train; returns the final (EMA when kept) tokenizer, on every rank."""
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    model_config = json.loads(Path(args.tokenizer_config).read_text())
    run_identity = {"tokenizer_config": model_config, "dataset": args.dataset, "resolution": args.resolution}

    # ---- everything that can fail on bad input fails here, before any training work
    resume = prepare_run_dir(output_dir, run_identity, args.resume_from_checkpoint, args.push_to_hub)
    if args.perceptual_weight > 0 and not (args.vgg16_path and args.lpips_path):
        raise SystemExit(f"--perceptual_weight {args.perceptual_weight} needs LPIPS weights. {LPIPS_DOWNLOAD_HINT}")
    set_seed(args.seed)
    model = FQGANTokenizer(**model_config)
    teachers = load_teachers(args, model_config)
    lpips = LPIPS.from_files(args.vgg16_path, args.lpips_path) if args.perceptual_weight > 0 else None
    dataset = load_image_dataset(args.dataset, args.split, args.image_column, args.label_column, args.skip_corrupt)

    accelerator = start_run(args, "train_fqgan", run_identity)

    channels = model_config.get("in_channels", 3)
    transform = ImageTransform(args.resolution, channels=channels, random_flip=args.random_flip)
    train_data = with_image_transform(dataset, transform)
    loader = DataLoader(train_data, batch_size=args.train_batch_size, shuffle=True, drop_last=True,
                        collate_fn=collate, num_workers=args.dataloader_num_workers)
    preview = collate([train_data[i] for i in range(8)])["pixel_values"]

    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    disc = PatchGANDiscriminator(channels, args.disc_channels, args.disc_layers)
    opt_g = torch.optim.Adam(model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             weight_decay=args.weight_decay)
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.disc_learning_rate or args.learning_rate,
                             betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.weight_decay)
    sched_g = get_scheduler(args.lr_scheduler, opt_g, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                            num_training_steps=args.max_train_steps * accelerator.num_processes)
    sched_d = get_scheduler(args.lr_scheduler, opt_d, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                            num_training_steps=args.max_train_steps * accelerator.num_processes)
    if model_config.get("kmeans_init"):
        # Same seed, same first batch on every rank, so k-means gives every rank the same codebook.
        with torch.no_grad():
            model.train().encode(preview)
    model, disc, opt_g, opt_d, sched_g, sched_d, loader = accelerator.prepare(
        model, disc, opt_g, opt_d, sched_g, sched_d, loader
    )
    ema = None
    if args.use_ema:  # after prepare, so every rank starts from rank 0's (broadcast) weights
        ema = EMAModel(model.parameters(), decay=args.ema_decay, model_cls=FQGANTokenizer,
                       model_config=accelerator.unwrap_model(model).config)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    for teacher in teachers:
        if teacher is not None:
            teacher.to(accelerator.device)
    if lpips is not None:
        lpips.to(accelerator.device)
    unwrapped_disc = accelerator.unwrap_model(disc)

    global_step = resume_step(accelerator, resume)
    meter = RunMeter.for_run(args, accelerator)
    progress = tqdm(total=args.max_train_steps, initial=global_step, disable=not accelerator.is_local_main_process,
                    desc="train_fqgan")
    model.train()
    disc.train()
    for batch in batches_from(accelerator, loader, global_step, args.gradient_accumulation_steps):
        if global_step >= args.max_train_steps:
            break
        x = batch["pixel_values"]
        use_gan = global_step >= args.disc_start and args.disc_weight > 0
        with accelerator.accumulate(model, disc):
            feats = [t(x) if t is not None else None for t in teachers]
            out = model(x, teacher_features=feats if any(f is not None for f in feats) else None)
            logs = {name: v.detach() for name, v in out.losses.items()}
            logs["reconstruction_loss"] = pixel_loss(args.reconstruction_loss, x, out.sample)
            loss = args.reconstruction_weight * logs["reconstruction_loss"] + sum(out.losses.values())
            if lpips is not None:
                logs["perceptual_loss"] = lpips(x, out.sample)
                loss = loss + args.perceptual_weight * logs["perceptual_loss"]
            if use_gan:
                # Detached discriminator weights: the generator's loss must not train the discriminator.
                params = {n: p.detach() for n, p in unwrapped_disc.named_parameters()}
                buffers = dict(unwrapped_disc.named_buffers())
                logits_fake = functional_call(unwrapped_disc, (params, buffers), (out.sample,))
                logs["generator_adv_loss"] = hinge_g_loss(logits_fake)
                loss = loss + args.disc_weight * logs["generator_adv_loss"]
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            opt_g.step()
            sched_g.step()
            opt_g.zero_grad(set_to_none=True)

            if use_gan:
                d_loss = args.disc_weight * hinge_d_loss(disc(x), disc(out.sample.detach()))
                logs["discriminator_loss"] = d_loss.detach()
                accelerator.backward(d_loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(disc.parameters(), args.max_grad_norm)
                opt_d.step()
                sched_d.step()
                opt_d.zero_grad(set_to_none=True)

        if not accelerator.sync_gradients:
            continue
        global_step += 1
        progress.update(1)
        meter.step()
        if ema is not None:
            ema.step(model.parameters())
        if global_step % args.logging_steps == 0:
            logs = {k: float(v.detach()) for k, v in logs.items()}
            logs["loss"] = float(loss.detach())
            for i, usage in enumerate(out.usage or []):
                if usage is not None:
                    logs[f"{i}/usage"] = float(usage)
            logs["lr"] = sched_g.get_last_lr()[0]
            progress.set_postfix(loss=f"{logs['loss']:.4f}", rec=f"{logs['reconstruction_loss']:.4f}")
            accelerator.log(meter.log(logs), step=global_step)
        done = global_step >= args.max_train_steps or meter.timed_out()
        if global_step % args.checkpointing_steps == 0 or done:
            save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
        if accelerator.is_main_process and (global_step % args.validation_steps == 0 or done):
            save_reconstruction_grid(accelerator.unwrap_model(model), preview.to(accelerator.device),
                                     output_dir / "samples" / f"step-{global_step:07d}.png")
        if done:
            break

    progress.close()
    accelerator.wait_for_everyone()
    final = accelerator.unwrap_model(model)
    if ema is not None:
        ema.copy_to(final.parameters())
    if accelerator.is_main_process:
        save_pretrained_atomic(final, output_dir / "tokenizer")
        summary = meter.write_summary(output_dir, global_step, accelerator.device)
        if args.push_to_hub:
            push_folder(output_dir / "tokenizer", args.hub_model_id or output_dir.name, message="Upload tokenizer")
        accelerator.print(f"saved {output_dir / 'tokenizer'} after {global_step} steps; {summary}")
    accelerator.end_training()
    return final


if __name__ == "__main__":
    main()
