"""Official LlamaGen VQ and FQGAN Dual/Triple tokenizer checkpoints -> `FQGANTokenizer`.

Our layout differs from the official one only by module renames, all of them prefix renames: the shared
trunk moves under `encoder.trunk`, each sub-codebook's branch (adapter, norm_out, conv_out) under
`encoder.heads.{i}`, the k quant convs and codebooks into lists, the feature-prediction heads into
`feature_heads.{i}`. Sub-codebook i follows FAR's order (vis first), which is also the channel order of the
official decoder input (`post_quant_conv` takes [vis, sem] or [vis, sem_mid, sem_high]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from accelerate import init_empty_weights

from ..tokenizers import TOKENIZER_PRESETS, FQGANTokenizer
from .checkpoint import ConversionReport, count_indexed, map_state_dict, require_shape
from .vqkd import KIND as VQKD_KIND

FQGAN_KINDS = ("llamagen-vq", "fqgan-dual", "fqgan-triple")
# BEiT-v2's VQ-KD converts to a VQKDTokenizer (see `.vqkd`).
TOKENIZER_KINDS = FQGAN_KINDS + (VQKD_KIND,)

# Official suffix of each sub-codebook's modules (`quantize_vis`, `conv_out_sem_mid`, ...), in our order.
_BRANCHES = {"llamagen-vq": ("",), "fqgan-dual": ("vis", "sem"), "fqgan-triple": ("vis", "sem_mid", "sem_high")}
_ADAPTERS = {
    "fqgan-dual": ("visual_head", "semantic_head"),
    "fqgan-triple": ("visual_head", "semantic_head_mid", "semantic_head_high"),
}
_FEATURE_HEADS = {
    "fqgan-dual": {"feat_pred_head": 1},
    "fqgan-triple": {"mid_sem_feat_pred": 1, "high_sem_feat_pred": 2},
}
# The official FactorizedAdapter and FeatPredHead hard-code 8 heads; head count is not in the weights.
_OFFICIAL_HEADS = 8
_DROPPED_REASON = "training-time FIFO of recent code indices, not a weight (ours is a non-persistent buffer)"


def _prefixes(kind: str) -> dict[str, str]:
    """Official key prefix -> our key prefix."""
    table = {
        "encoder.conv_in.": "encoder.trunk.conv_in.",
        "encoder.conv_blocks.": "encoder.trunk.conv_blocks.",
        "encoder.mid.": "encoder.trunk.mid.",
        "post_quant_conv.": "post_quant_conv.",
        "decoder.": "decoder.",
    }
    for i, branch in enumerate(_BRANCHES[kind]):
        suffix = f"_{branch}" if branch else ""
        table[f"encoder.norm_out{suffix}."] = f"encoder.heads.{i}.norm_out."
        table[f"encoder.conv_out{suffix}."] = f"encoder.heads.{i}.conv_out."
        table[f"quant_conv{suffix}."] = f"quant_convs.{i}."
        table[f"quantize{suffix}.embedding."] = f"quantize.codebooks.{i}.embedding."
    for i, name in enumerate(_ADAPTERS.get(kind, ())):
        table[f"encoder.{name}.0."] = f"encoder.heads.{i}.adapter."
    for name, i in _FEATURE_HEADS.get(kind, {}).items():
        table[f"{name}."] = f"feature_heads.{i}."
    return table


def _rename(key: str, table: Mapping[str, str]) -> str:
    matches = [prefix for prefix in table if key.startswith(prefix)]
    if not matches:
        raise KeyError(key)
    prefix = max(matches, key=len)
    return table[prefix] + key[len(prefix) :]


def official_tokenizer_key_to_hf(key: str, kind: str) -> str | None:
    """Our key for an official tokenizer key, None for one dropped on purpose; KeyError for an unknown key."""
    if key in {f"quantize{'_' + b if b else ''}.codebook_used" for b in _BRANCHES[kind]}:
        return None
    return _rename(key, _prefixes(kind))


def hf_tokenizer_key_to_official(key: str, kind: str) -> str:
    """The official key of one of our tokenizer keys (the inverse of `official_tokenizer_key_to_hf`)."""
    return _rename(key, {ours: official for official, ours in _prefixes(kind).items()})


def infer_tokenizer_config(
    shapes: Mapping[str, torch.Size], kind: str, image_size: int | None = None
) -> tuple[dict, dict[str, str]]:
    """FQGANTokenizer config from official key shapes; plus the settings not stored in the weights, with origin."""

    def shape(key: str) -> torch.Size:
        return require_shape(shapes, key, kind)

    base, in_channels = shape("encoder.conv_in.weight")[:2]
    shape("encoder.conv_blocks.0.res.0.conv1.weight")
    multipliers = []
    while (key := f"encoder.conv_blocks.{len(multipliers)}.res.0.conv1.weight") in shapes:
        width = shapes[key][0]
        if width % base:
            raise ValueError(f"{key} has {width} output channels, not a multiple of the base width {base}")
        multipliers.append(width // base)
    branches = _BRANCHES[kind]
    first = f"_{branches[0]}" if branches[0] else ""
    codebook_size, code_dim = shape(f"quantize{first}.embedding.weight")
    config = dict(
        in_channels=in_channels,
        out_channels=shape("decoder.conv_out.weight")[0],
        base_channels=base,
        channel_multipliers=tuple(multipliers),
        num_res_blocks=count_indexed(shapes, "encoder.conv_blocks.0.res.{}.conv1.weight"),
        z_channels=shape("post_quant_conv.weight")[0],
        num_codebooks=len(branches),
        quantizer=dict(kind="vq", codebook_size=codebook_size, dim=code_dim),
    )
    settings = {}
    preset = next(
        (
            name
            for name, p in TOKENIZER_PRESETS.items()
            if p["num_codebooks"] == len(branches) and tuple(p["channel_multipliers"]) == tuple(multipliers)
        ),
        None,
    )
    preset_kwargs = TOKENIZER_PRESETS.get(preset, {})
    config["codebook_names"] = tuple(branches) if kind != "llamagen-vq" else None
    ratio = preset_kwargs.get("quantizer", {}).get("entropy_loss_ratio")
    if ratio is not None:
        config["quantizer"]["entropy_loss_ratio"] = ratio
        settings["entropy_loss_ratio"] = f"{ratio} (training setting of preset {preset})"

    downsample = 2 ** (len(multipliers) - 1)
    if kind == "llamagen-vq":
        # Fully convolutional: sample_size is only the default image size, not a constraint.
        config["sample_size"] = image_size or 256
        settings["sample_size"] = f"{config['sample_size']} ({'--image-size' if image_size else 'default'})"
    else:
        adapter = f"encoder.{_ADAPTERS[kind][0]}.0."
        positions = shape(adapter + "positional_embedding")[0]
        grid = math.isqrt(positions)
        if grid * grid != positions:
            raise ValueError(f"{adapter}positional_embedding has {positions} rows, not a square token grid")
        sample_size = grid * downsample
        if image_size is not None and image_size != sample_size:
            raise ValueError(
                f"this {kind} tokenizer's adapters have a fixed {grid}x{grid} grid, so it takes {sample_size} px "
                f"images only; --image-size {image_size} does not match (leave it out)"
            )
        config.update(
            sample_size=sample_size,
            adapter_layers=count_indexed(shapes, adapter + "transformer.{}.ln_1.weight"),
            adapter_heads=_OFFICIAL_HEADS,
        )
        settings["adapter_heads"] = f"{_OFFICIAL_HEADS} (fixed in the official FactorizedAdapter)"

    dims: list[int | None] = [None] * len(branches)
    depths = set()
    for name, i in _FEATURE_HEADS.get(kind, {}).items():
        if f"{name}.class_embedding" in shapes:
            dims[i] = shapes[f"{name}.class_embedding"][-1]
            depths.add(count_indexed(shapes, name + ".transformer.{}.ln_1.weight"))
    if len(depths) > 1:
        raise ValueError(
            f"feature heads of different depths {sorted(depths)} are not supported (one feature_head_layers)"
        )
    if depths:
        preset_dims = preset_kwargs.get("teacher_dims") or [None] * len(branches)
        preset_models = preset_kwargs.get("teacher_models") or [None] * len(branches)
        teachers = tuple(m if d is not None and d == pd else None for m, d, pd in zip(preset_models, dims, preset_dims))
        config.update(
            teacher_dims=tuple(dims),
            teacher_models=teachers,
            feature_head_layers=depths.pop(),
            feature_head_heads=_OFFICIAL_HEADS,
        )
        origin = f"preset {preset}" if any(teachers) else "no preset teacher of these widths: set it before training"
        settings["teacher_models"] = f"{teachers} ({origin})"
        settings["feature_head_heads"] = f"{_OFFICIAL_HEADS} (fixed in the official FeatPredHead)"
    return config, settings


def convert_tokenizer_state_dict(
    state_dict: Mapping[str, torch.Tensor], kind: str, image_size: int | None = None
) -> tuple[FQGANTokenizer, ConversionReport]:
    """An official LlamaGen / FQGAN tokenizer state dict -> (FQGANTokenizer in eval mode, report); the tensors are
    reused, not copied."""
    if kind not in FQGAN_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {FQGAN_KINDS}")
    config, settings = infer_tokenizer_config({k: v.shape for k, v in state_dict.items()}, kind, image_size)
    with init_empty_weights(include_buffers=False):
        model = FQGANTokenizer(**config)
    mapped, dropped = map_state_dict(
        state_dict,
        lambda key: official_tokenizer_key_to_hf(key, kind),
        lambda key: hf_tokenizer_key_to_official(key, kind),
        {k: v.shape for k, v in model.state_dict().items()},
        kind,
    )
    model.load_state_dict(mapped, strict=True, assign=True)
    report = ConversionReport(
        kind=kind,
        num_mapped=len(mapped),
        num_parameters=sum(p.numel() for p in model.parameters()),
        dropped=dict.fromkeys(dropped, _DROPPED_REASON),
        settings=settings,
    )
    return model.eval(), report
