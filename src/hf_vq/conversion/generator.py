"""Official LlamaGen GPT (c2i) and FQGAN FAR checkpoints -> `FARForClassConditionalGeneration`.

Our generator keeps the official module names, so keys map to themselves; the official RoPE table and
KV-cache buffers are dropped. Depth, width, vocabulary, classes, k and the head depth come from the shapes;
the head count and the token grid do not, and come from the flags, the file name, or the preset table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from accelerate import init_empty_weights

from ..generators.configuration_far import FAR_PRESETS, FARConfig
from ..generators.modeling_far import FARForClassConditionalGeneration, official_key_to_hf
from .checkpoint import ConversionReport, count_indexed, map_state_dict, require_shape

GENERATOR_KINDS = ("llamagen-gpt", "far")
# Pixels per token of the tokenizers these generators were trained on (LlamaGen VQ-16, FQGAN ds16).
DOWNSAMPLE = 16
# Image size of the released weights when the file name does not say: GPT-XL, XXL and 3B exist only at 384 px;
# GPT-B and L at 256 and 384 (256 is the default); FAR runs on FQGAN tokenizers, whose adapters take 256 px.
RELEASED_IMAGE_SIZE = {
    "GPT-B": 256, "GPT-L": 256, "GPT-XL": 384, "GPT-XXL": 384, "GPT-3B": 384, "FAR-Base": 256, "FAR-Large": 256,
}
_SIZE_HINT = re.compile(r"_(256|384)(?![0-9])")


def generator_preset(kind: str, depth: int, width: int) -> str | None:
    """The FAR_PRESETS name of an official generator of this kind, depth and width, if any."""
    for name, preset in FAR_PRESETS.items():
        if (
            (preset["num_codebooks"] > 1) == (kind == "far")
            and preset["num_hidden_layers"] == depth
            and preset["hidden_size"] == width
        ):
            return name
    return None


def image_size_from_name(name: str | None) -> int | None:
    """The image size a file name announces (`c2i_L_384.pt` -> 384), if any."""
    match = _SIZE_HINT.search(name or "")
    return int(match.group(1)) if match else None


def _dropped_reason(key: str) -> str:
    if "kv_cache" in key:
        return "KV-cache buffer left by a sampling run, not a weight"
    return "precomputed table, rebuilt from the config"


def infer_generator_config(
    shapes: Mapping[str, torch.Size],
    kind: str,
    image_size: int | None = None,
    num_heads: int | None = None,
    checkpoint_name: str | None = None,
) -> tuple[FARConfig, dict[str, str]]:
    """FARConfig from official key shapes; plus the settings not stored in the weights, with their origin."""

    def shape(key: str) -> torch.Size:
        return require_shape(shapes, key, kind)

    if kind == "llamagen-gpt":
        k = 1
        vocab_size, width = shape("tok_embeddings.weight")
    else:
        k = count_indexed(shapes, "tok_embeddings_{}.weight", start=1)
        if k < 2:
            raise ValueError(f"a far checkpoint has tok_embeddings_1 .. tok_embeddings_k with k >= 2, found k={k}")
        vocab_size, width = shape("tok_embeddings_1.weight")
    depth = count_indexed(shapes, "layers.{}.attention_norm.weight")
    if depth == 0:
        shape("layers.0.attention_norm.weight")
    classes = shape("cls_embedding.embedding_table.weight")[0] - 1  # the last row is the null class
    settings = {}

    preset = generator_preset(kind, depth, width)
    if num_heads is not None:
        settings["num_attention_heads"] = f"{num_heads} (--num-heads)"
    elif preset is not None:
        num_heads = FAR_PRESETS[preset]["num_attention_heads"]
        settings["num_attention_heads"] = f"{num_heads} (preset {preset})"
    else:
        raise ValueError(
            f"no preset for a {kind} with {depth} layers of width {width}, so the head count is unknown: pass "
            "--num-heads (num_heads=...)"
        )
    if num_heads < 1 or width % num_heads or (width // num_heads) % 4:
        raise ValueError(
            f"{num_heads} heads do not fit width {width}: the head size width/heads must be a whole multiple of 4 "
            "(2D RoPE); check --num-heads"
        )

    hinted = image_size_from_name(checkpoint_name)
    if image_size is not None:
        origin = "--image-size"
    elif hinted is not None:
        image_size, origin = hinted, "file name"
    elif preset is not None:
        image_size, origin = RELEASED_IMAGE_SIZE[preset], f"released size of {preset}; pass --image-size to change"
    else:
        image_size, origin = 256, "default; pass --image-size to change"
    if image_size < DOWNSAMPLE or image_size % DOWNSAMPLE:
        raise ValueError(
            f"image size {image_size} must be a positive multiple of {DOWNSAMPLE} (the tokenizer's downsampling)"
        )
    settings["grid_size"] = f"{image_size // DOWNSAMPLE} (image size {image_size}, {origin})"

    config = FARConfig(
        vocab_size=vocab_size,
        num_codebooks=k,
        num_classes=classes,
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=num_heads,
        intermediate_size=shape("layers.0.feed_forward.w1.weight")[0],
        grid_size=image_size // DOWNSAMPLE,
        **({"num_head_layers": count_indexed(shapes, "ar_head.{}.attention_norm.weight")} if k > 1 else {}),
    )
    return config, settings


def convert_generator_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    kind: str,
    image_size: int | None = None,
    num_heads: int | None = None,
    checkpoint_name: str | None = None,
) -> tuple[FARForClassConditionalGeneration, ConversionReport]:
    """An official GPT/FAR state dict -> (FARForClassConditionalGeneration in eval mode, report), tensors reused."""
    if kind not in GENERATOR_KINDS:
        raise ValueError(f"unknown generator kind {kind!r}; choose one of {GENERATOR_KINDS}")
    shapes = {k: v.shape for k, v in state_dict.items()}
    config, settings = infer_generator_config(shapes, kind, image_size, num_heads, checkpoint_name)
    with init_empty_weights(include_buffers=False):
        model = FARForClassConditionalGeneration(config)
    mapped, dropped = map_state_dict(
        state_dict, official_key_to_hf, lambda key: key, {k: v.shape for k, v in model.state_dict().items()}, kind
    )
    model.load_state_dict(mapped, strict=True, assign=True)
    report = ConversionReport(
        kind=kind,
        num_mapped=len(mapped),
        num_parameters=sum(p.numel() for p in model.parameters()),
        dropped={key: _dropped_reason(key) for key in dropped},
        settings=settings,
    )
    return model.eval(), report
