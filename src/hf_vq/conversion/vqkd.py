"""Official BEiT-v2 VQ-KD checkpoints (microsoft/unilm `beit2/modeling_vqkd.py`) -> `VQKDTokenizer`.

The released tokenizers are `vqkd_encoder_base_decoder_1x768x12_clip`, `..._3x768x12_clip` and
`..._1x768x12_dino`: a ViT-B/16 encoder (`modeling_finetune.VisionTransformer` with q/v biases, no layer scale,
mean-pooling layout, so `fc_norm` and no `norm`), `encode_task_layer`, the `NormEMAVectorQuantizer` (8192 x 32
cosine codes), a 1- or 3-block ViT feature decoder over the codes (1x1 patches) and `decode_task_layer` to the
teacher's space (512-d CLIP, 768-d DINO). Our modules keep the official names except `patch_embed.proj` ->
`patch_embed` and `mlp.fc1`/`mlp.fc2` -> `mlp.0`/`mlp.2`.
The teacher (`teacher_model.*`), its input scaling (`scaling_layer.*`), the quantizer's statistics and any
`loss*` entries are dropped, as the official `as_tokenzer=True` loader drops them.

Input convention: the official `get_tokens` / `get_codebook_indices` take images in [0, 1] (`ToTensor()`, no
normalisation) and map them to [-1, 1] (`process_type="default"`: x * 255 / 127.5 - 1) before the encoder; our
`VQKDTokenizer` takes [-1, 1] images directly, so an official [0, 1] image x gives the same tokens as
`tokenize(2 * x - 1)`. The official ViT interpolates its position embeddings for other image sizes; ours has a
fixed grid (the released 224 px, 14 x 14 tokens).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from accelerate import init_empty_weights

from ..tokenizers.modeling_vqkd import VQKD_PRESETS, VQKDTokenizer
from .checkpoint import ConversionReport, count_indexed, map_state_dict, require_shape

KIND = "beitv2-vqkd"
# Head count is not in the weights: `get_model_default_params()` gives 12 to the encoder and the decoder.
OFFICIAL_HEADS = 12
# Official prefixes dropped whole, with the reason (the official tokenizer loader deletes the same ones).
_DROPPED_PREFIXES = {
    "teacher_model.": "frozen teacher (CLIP / DINO ViT-B/16) used only for training targets",
    "scaling_layer.": "the teacher's input normalisation constants, used only for training targets",
    "loss": "training loss module state (deleted by the official tokenizer loader too)",
}
_DROPPED_KEYS = {
    "quantize.cluster_size": "code-usage statistic (EMA of counts), not used for tokenizing",
    "quantize.embedding.cluster_size": "EMA statistic that NormEMAVectorQuantizer never reads",
    "quantize.embedding.embed_avg": "EMA statistic that NormEMAVectorQuantizer never reads",
    "quantize.embedding.initted": "k-means init flag (checked to be set; ours is stored as set)",
}
_RENAMES = {  # official infix -> ours, within encoder./decoder.
    "patch_embed.proj.": "patch_embed.",
    "mlp.fc1.": "mlp.0.",
    "mlp.fc2.": "mlp.2.",
}
_OWN_PREFIXES = ("encoder.", "decoder.", "encode_task_layer.", "decode_task_layer.")


def dropped_reason(key: str) -> str | None:
    """Why an official VQ-KD key is dropped, or None when it is a weight we map."""
    if key in _DROPPED_KEYS:
        return _DROPPED_KEYS[key]
    return next((reason for prefix, reason in _DROPPED_PREFIXES.items() if key.startswith(prefix)), None)


def official_vqkd_key_to_hf(key: str) -> str | None:
    """Our key for an official VQ-KD key, None for one dropped on purpose; KeyError for an unknown key."""
    if dropped_reason(key) is not None:
        return None
    if key == "quantize.embedding.weight":
        return key
    if not key.startswith(_OWN_PREFIXES):
        raise KeyError(key)
    for official, ours in _RENAMES.items():
        key = key.replace(official, ours)
    return key


def hf_vqkd_key_to_official(key: str) -> str:
    """The official key of one of our VQ-KD keys (the inverse of `official_vqkd_key_to_hf`)."""
    if key == "quantize.initted":  # the official flag the converter checks and drops; ours is set on conversion
        return "quantize.embedding.initted"
    for official, ours in _RENAMES.items():
        key = key.replace(ours, official)
    return key


def infer_vqkd_config(
    shapes: Mapping[str, torch.Size], image_size: int | None = None, num_heads: int | None = None
) -> tuple[dict, dict[str, str]]:
    """VQKDTokenizer config from official key shapes; plus the settings not stored in the weights, with origin."""

    def shape(key: str) -> torch.Size:
        return require_shape(shapes, key, KIND)

    scaled = sorted(k for k in shapes if ".gamma_1" in k or ".gamma_2" in k)
    if scaled:
        raise ValueError(
            f"this VQ-KD checkpoint uses layer scale ({scaled[0]}, ...; init_values > 0), which VQKDTokenizer's ViT "
            "does not have; the released BEiT-v2 tokenizers use init_values=0"
        )
    width, in_channels, patch, _ = shape("encoder.patch_embed.proj.weight")
    decoder_width, code_dim, decoder_patch, _ = shape("decoder.patch_embed.proj.weight")
    if decoder_patch != 1:
        raise ValueError(f"the feature decoder reads the codes through 1x1 patches, got {decoder_patch} px patches")
    positions = shape("encoder.pos_embed")[1] - 1  # the CLS token has a position
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise ValueError(f"encoder.pos_embed has {positions} patch positions, not a square token grid")
    if shape("decoder.pos_embed")[1] - 1 != positions:
        raise ValueError(f"decoder.pos_embed has {shape('decoder.pos_embed')[1] - 1} patch positions, "
                         f"the encoder {positions}")
    sample_size = grid * patch
    if image_size is not None and image_size != sample_size:
        raise ValueError(
            f"this VQ-KD tokenizer's position embeddings fix a {grid}x{grid} grid, so it takes {sample_size} px "
            f"images only; --image-size {image_size} does not match (leave it out)"
        )
    ratios = {shape(f"{part}.blocks.0.mlp.fc1.weight")[0] / w for part, w in (("encoder", width),
                                                                               ("decoder", decoder_width))}
    if len(ratios) > 1:
        raise ValueError(f"encoder and decoder MLP ratios differ ({sorted(ratios)}); VQKDTokenizer has one mlp_ratio")
    heads = OFFICIAL_HEADS if num_heads is None else num_heads
    for part, w in (("encoder", width), ("decoder", decoder_width)):
        if heads < 1 or w % heads:
            raise ValueError(f"{heads} heads do not fit the {part} width {w}; pass --num-heads (num_heads=...)")
    codebook_size, dim = shape("quantize.embedding.weight")
    if dim != code_dim:
        raise ValueError(f"codes are {dim}-d but the feature decoder reads {code_dim} channels")
    teacher_dim = shape("decode_task_layer.2.weight")[0]
    preset = next((name for name, p in VQKD_PRESETS.items() if p.get("teacher_model")
                   and p.get("teacher_dim") == teacher_dim), None)
    teacher_model = VQKD_PRESETS[preset]["teacher_model"] if preset else None
    config = dict(
        in_channels=in_channels,
        out_channels=in_channels,
        sample_size=sample_size,
        patch_size=patch,
        encoder_width=width,
        encoder_layers=count_indexed(shapes, "encoder.blocks.{}.norm1.weight"),
        encoder_heads=heads,
        decoder_width=decoder_width,
        decoder_layers=count_indexed(shapes, "decoder.blocks.{}.norm1.weight"),
        decoder_heads=heads,
        mlp_ratio=ratios.pop(),
        teacher_dim=teacher_dim,
        teacher_model=teacher_model,
        quantizer=dict(kind="cosine_ema", codebook_size=codebook_size, dim=dim),
        pixel_decoder=None,
    )
    origin = "--num-heads" if num_heads is not None else "official get_model_default_params"
    settings = {
        "encoder_heads, decoder_heads": f"{heads} ({origin})",
        "teacher_model": f"{teacher_model} " + (f"(preset {preset}: the official CLIP ViT-B/16 teacher)" if preset
                                                 else "(set it before further training)"),
        "pixel_decoder": "None (VQ-KD has none: tokens cannot become images until stage 2 trains one)",
        "input": "[-1, 1] images (the official get_tokens takes [0, 1] and rescales to [-1, 1] itself)",
    }
    return config, settings


def convert_vqkd_state_dict(
    state_dict: Mapping[str, torch.Tensor], image_size: int | None = None, num_heads: int | None = None
) -> tuple[VQKDTokenizer, ConversionReport]:
    """An official BEiT-v2 VQ-KD state dict -> (VQKDTokenizer in eval mode, report); tensors reused, not copied."""
    config, settings = infer_vqkd_config({k: v.shape for k, v in state_dict.items()}, image_size, num_heads)
    initted = state_dict.get("quantize.embedding.initted")
    if initted is not None and initted.device.type != "meta" and not bool(initted.flatten()[0]):
        raise ValueError("quantize.embedding.initted is 0: the codebook was never initialised (untrained checkpoint)")
    with init_empty_weights(include_buffers=False):
        model = VQKDTokenizer(**config)
    expected = {k: v.shape for k, v in model.state_dict().items() if k != "quantize.initted"}
    mapped, dropped = map_state_dict(state_dict, official_vqkd_key_to_hf, hf_vqkd_key_to_official, expected, KIND)
    codebook = mapped["quantize.embedding.weight"]
    if codebook.device.type != "meta":
        norms = codebook.float().norm(dim=-1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
            raise ValueError(
                f"quantize.embedding.weight rows are not unit vectors (norms {norms.min():.4g} .. {norms.max():.4g}): "
                "the official quantizer's codebook is L2-normalised; the file is not a trained VQ-KD"
            )
    mapped["quantize.initted"] = torch.tensor(True)
    model.load_state_dict(mapped, strict=True, assign=True)
    report = ConversionReport(
        kind=KIND,
        num_mapped=len(mapped) - 1,
        num_parameters=sum(p.numel() for p in model.parameters()),
        dropped={key: dropped_reason(key) for key in dropped},
        settings=settings,
    )
    return model.eval(), report
