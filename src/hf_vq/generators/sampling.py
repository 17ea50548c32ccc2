"""Sampling utilities shared by the AR (FAR/GPT) and NAR (MaskGIT) generators."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from transformers.generation.logits_process import (
    LogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ..utils import may_read_values

CFG_SCHEDULES = ("constant", "linear")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the body in eval mode (no dropout, no label dropout), then restore the previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def decoding_compile_kwargs(device_type: str) -> dict:
    """`torch.compile` arguments for an AR decoding step on a device type.

    A step launches a few hundred small kernels and GEMMs, so their launch cost matters: on CUDA the step is
    replayed as a CUDA graph (`mode="reduce-overhead"`; the KV cache it writes has static addresses, see
    `blocks.FixedShapeKVCache`), and on a CPU inductor's C++ wrapper launches them instead of Python.
    """
    if device_type == "cuda":
        return {"mode": "reduce-overhead"}
    return {"options": {"cpp_wrapper": True}}


def sampling_device(model: torch.nn.Module, device: torch.device | str | None) -> torch.device:
    """The device a generator samples on: the one asked for, else its weights'. A model whose weights sit on "meta"
    (sequential offload) cannot tell: the caller (a pipeline's execution device) must."""
    # accelerate runs offloaded ("cpu", "disk") modules on the map's one accelerator; a map over several of them
    # would split the decoding loop's KV cache and draws across devices.
    placed = [d for d in (getattr(model, "hf_device_map", None) or {}).values() if d not in ("cpu", "disk")]
    if len({d if isinstance(d, int) else torch.device(d).index or 0 for d in placed}) > 1:  # 0 = "cuda" = "cuda:0"
        raise ValueError(f"the generator is split over devices {sorted(set(map(str, placed)))} (device_map): sampling "
                         "decodes on one; load it on one device (device_map={'': 0}, with CPU or disk offload if it "
                         "does not fit)")
    if device is not None:
        return torch.device(device)
    weights = next(model.parameters()).device
    if weights.type == "meta":
        raise ValueError("the generator's weights are offloaded (on 'meta'): pass the device to sample on, as "
                         "pipelines do with their execution device")
    return weights


def check_class_labels(
    class_labels: torch.Tensor | Sequence[int],
    num_classes: int,
    device: torch.device,
    batch_size: int | None = None,
    training: bool = False,
) -> torch.Tensor:
    """Class ids as a (B,) long tensor on `device`; ids lie in [0, num_classes], num_classes is the null class.

    Their values are checked where `utils.may_read_values` allows (not in a training step off the CPU).
    """
    if not isinstance(class_labels, torch.Tensor) and any(isinstance(label, str) for label in class_labels):
        raise TypeError(f"class_labels must be class ids, got names {list(class_labels)}: the pipeline takes names "
                        "(pipe.get_label_ids maps them), a generator takes ids")
    labels = torch.as_tensor(class_labels, device=device)
    if labels.dim() != 1 or labels.numel() == 0:
        raise ValueError(f"class_labels must be a non-empty 1-D list or tensor of ids, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"class_labels must hold integer class ids, got dtype {labels.dtype}")
    if batch_size is not None and labels.shape[0] != batch_size:
        raise ValueError(f"class_labels has {labels.shape[0]} entries for a batch of {batch_size}")
    if not may_read_values(labels.device, training):
        return labels.long()
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > num_classes:
        raise ValueError(
            f"class_labels must lie in [0, {num_classes - 1}] (or {num_classes} for unconditional samples), "
            f"got values in [{low}, {high}]"
        )
    return labels.long()


def as_number(name: str, value: object, integer: bool = False) -> int | float:
    """`value` as a Python int (`integer`) or finite float, taking numpy scalars and one-element tensors as well;
    a clear error for anything else (bools included)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 or isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kind) or not math.isfinite(value):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a finite number'}, got {value!r}")
    return int(value) if integer else float(value)


def check_sampling_args(
    guidance_scale: float,
    temperature: float,
    top_k: int,
    top_p: float,
    vocab_size: int,
    cfg_schedule: str = "constant",
) -> tuple[float, float, int, float]:
    """The sampling settings as Python numbers `(guidance_scale, temperature, top_k, top_p)`; a clear error for
    settings that cannot be honoured."""
    guidance_scale, temperature, top_p = (
        as_number(name, value) for name, value in
        (("guidance_scale", guidance_scale), ("temperature", temperature), ("top_p", top_p))
    )
    try:
        top_k = as_number("top_k", top_k, integer=True)
    except ValueError:
        raise ValueError(f"top_k must be an integer in [0, {vocab_size}] (0 disables it), got {top_k!r}") from None
    if not guidance_scale >= 0:
        raise ValueError(f"guidance_scale must be >= 0 (1.0 disables guidance), got {guidance_scale}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= top_k <= vocab_size:
        raise ValueError(f"top_k must lie in [0, {vocab_size}] (0 disables it), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1] (1 disables it), got {top_p}")
    if cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {cfg_schedule!r}")
    return guidance_scale, temperature, top_k, top_p


def logits_warpers(temperature: float, top_k: int, top_p: float) -> list[LogitsProcessor]:
    """Temperature, then top-k, then top-p (LlamaGen's order); settings that change nothing are left out."""
    warpers: list[LogitsProcessor] = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def warp(logits: torch.Tensor, warpers: list[LogitsProcessor]) -> torch.Tensor:
    """Apply the warpers to (rows, vocab) logits."""
    for warper in warpers:
        logits = warper(None, logits)
    return logits


def guidance_scale_at(guidance_scale: float, cfg_schedule: str, fraction_done: float) -> float:
    """Guidance scale for a step after which `fraction_done` of the tokens are known.

    "linear" ramps from 1 towards `guidance_scale` with the fraction of known tokens (as MAR).
    """
    if cfg_schedule == "constant":
        return guidance_scale
    return 1.0 + (guidance_scale - 1.0) * fraction_done


def guide(logits: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance on a [cond; uncond] batch: u + s * (c - u), written as c + (s - 1)(c - u)
    so that s = 1 returns the conditional logits exactly."""
    cond, uncond = logits.chunk(2)
    return cond + (scale - 1.0) * (cond - uncond)


def sampling_probs(logits: torch.Tensor, warpers: list[LogitsProcessor]) -> torch.Tensor:
    """fp32 probabilities of (rows, vocab) logits after the warpers."""
    return torch.softmax(warp(logits.float(), warpers), dim=-1)


Generators = torch.Generator | Sequence[torch.Generator] | None

# What a sampler given a generator (or one per sample) draws: one U[0, 1) number per sub-token, all of them up front
# where the generator lives, moved to the device once, and turned into tokens by inverse CDF
# (`multinomial_from_uniform`). So a seed gives the same draws on any device (a CPU seed such as
# `torch.manual_seed(0)` drives a CUDA model, as in diffusers' pipelines), at a cost that does not grow with the
# vocabulary. Without a generator the draws are torch.multinomial's from the device's global generator, as the
# official samplers make them. Recorded with sample sets, so that a set is never finished under another scheme.
SEEDED_DRAWS = "one U[0, 1) number per sub-token, inverse CDF"


def check_generators(generator: Generators, batch: int) -> None:
    """Refuse a list of generators that does not hold one torch.Generator per sample."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch or not all(isinstance(g, torch.Generator) for g in generator):
            raise ValueError(
                f"a list of generators needs one torch.Generator per sample ({batch}), got {len(generator)} items"
            )
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")


def _per_sample(
    draw: Callable[[torch.Generator, torch.device], torch.Tensor],
    generators: Sequence[torch.Generator],
    device: torch.device,
) -> torch.Tensor:
    # Each sample's numbers come from its own generator, drawn on that generator's device (as diffusers'
    # randn_tensor does), so a sample does not depend on which others share its batch.
    return torch.stack([draw(g, g.device) for g in generators]).to(device)


def exponential_noise(count: int, shape: tuple[int, int], generator: torch.Generator | None,
                      device: torch.device) -> torch.Tensor:
    """(count, rows, vocab) fp32 Exp(1) noise, drawn as `count` successive torch.multinomial calls on (rows, vocab)
    probabilities would draw theirs (one `exponential_` per call), so `multinomial_from_noise` gives their tokens."""
    on = noise_device(generator, device)
    return torch.stack(
        [torch.empty(shape, dtype=torch.float32, device=on).exponential_(generator=generator) for _ in range(count)]
    ).to(device)


def uniform_noise(shape: tuple[int, ...], generator: Generators, device: torch.device) -> torch.Tensor:
    """(rows, ...) fp32 U[0, 1) noise, row r from generator r when a list of generators is given."""
    if isinstance(generator, (list, tuple)):
        return _per_sample(lambda g, on: torch.rand(shape[1:], device=on, generator=g), generator, device)
    return torch.rand(shape, device=noise_device(generator, device), generator=generator).to(device)


def noise_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Where the numbers of `generator` are drawn: on its own device, then moved to `device` (diffusers'
    `randn_tensor` convention), so `torch.manual_seed(0)`, a CPU generator, drives a CUDA model too."""
    return torch.device(device) if generator is None else generator.device


def multinomial_from_noise(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One draw per row of (rows, vocab) probabilities given Exp(1) noise: argmax(p / q) -> (rows,) long.

    This is how torch.multinomial draws one sample (the exponential race): with the noise it would have drawn
    from the same generator it returns the same tokens, and with the noise drawn beforehand the draw can sit
    inside a compiled graph.
    """
    return (probs / noise).argmax(dim=-1)


def multinomial_from_uniform(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One draw per row of (rows, vocab) probabilities given one U[0, 1) number per row, by inverse CDF -> (rows,)
    long: the first token whose cumulative probability exceeds the draw (never a token of probability 0).

    One number per token instead of `multinomial_from_noise`'s vocab-wide noise: the draws of a sampler given a
    generator (see `SEEDED_DRAWS`).
    """
    cdf = probs.float().cumsum(dim=-1)
    target = uniform.to(cdf)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)


def masking_schedule(num_tokens: int, num_steps: int) -> list[int]:
    """MaskGIT's number of still-masked positions after each step (cosine schedule).

    floor(N cos(pi/2 (t+1)/T)), kept in [1, previous - 1] so each step reveals at least one position while one
    stays masked for the next; the last step reveals everything.
    """
    masked, schedule = num_tokens, []
    for step in range(num_steps - 1):
        target = math.floor(num_tokens * math.cos(math.pi / 2 * (step + 1) / num_steps))
        masked = max(1, min(masked - 1, target))
        schedule.append(masked)
    return schedule + [0]
