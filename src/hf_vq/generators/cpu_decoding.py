"""CPU-only decoding techniques, behind one boundary: the model files call only what this module exports.

On a CPU, half-precision generators keep their activations in fp32 and round only the weights: bf16
activations flip the top-1 token of the trained Fashion-MNIST FAR at more positions than bf16 weights do, and a
CPU gains nothing from half-precision activations. Token-by-token decoding there is bound by how fast the weights
stream from memory, so two layouts help it: the `half_linear` kernel on packed half-precision weights, and
input-major fp32/fp16 weights for torch's GEMMs. Off the CPU none of this runs, allocates or compiles: activations
take the weights' dtype (`activation_dtype`), every `blocks.Linear` meets inputs of its own dtype and is a plain
`F.linear`, and `prepared_for_decoding` / `set_gemm_layout` return without touching the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .half_linear import COLUMN_TILE, FEW_ROWS, half_linear, half_linear_supports, kernel_available, pack_weight

HALF = (torch.float16, torch.bfloat16)


def activation_dtype(weight_dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The dtype a generator's activations (and KV cache) take: fp32 on a CPU, the weights' dtype elsewhere."""
    return torch.float32 if torch.device(device).type == "cpu" else weight_dtype


def packable(module: nn.Linear) -> bool:
    """Whether `half_linear` can take the layer's weight: bias-free, CPU, fp16/bf16, out a multiple of 32, kernel
    built."""
    weight = module.weight
    return (
        weight.device.type == "cpu"
        and weight.dtype in HALF
        and module.bias is None
        and weight.shape[0] % COLUMN_TILE == 0
        and kernel_available()
    )


def mixed_precision_linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` for fp32 CPU activations over fp16/bf16 weights, in fp32: through the packed copy that
    `prepared_for_decoding` made, else on the upcast weight (which saves memory, not time)."""
    packed = module._buffers.get("packed_weight")
    if packed is not None and half_linear_supports(x, packed):
        return half_linear(x, packed)
    bias = None if module.bias is None else module.bias.to(x.dtype)
    return F.linear(x, module.weight.to(x.dtype), bias)


def _on_cpu(model: nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in model.parameters())


def set_gemm_layout(model: nn.Module, rows: int | None) -> None:
    """On CPU, lay fp32 / fp16 linear weights out for multiplying `rows` activations: input-major below FEW_ROWS
    (64) rows, the usual row-major layout otherwise or for `rows=None`; elsewhere, nothing.

    Token-by-token decoding multiplies `rows` (batch, doubled for CFG) activations by every weight, and for few
    rows the CPU GEMMs are faster when the (out, in) weight is laid out in memory as (in, out); bf16 is slower
    input-major at any size, so it is left alone, and so are the weights that `prepared_for_decoding` packs. Only
    strides change, never values, so the sampled tokens do not. Weights are re-laid out one at a time and no copy
    is kept, so memory grows by one weight matrix at most. Generators keep the layout while in eval mode (repeated
    sampling pays for the copies once) and restore the row-major layout in `train()`; their `state_dict()` holds
    contiguous copies of re-laid weights (`contiguous_state_dict`), as safetensors' `save_file` needs. Code that
    views the parameters themselves as flat (`parameters_to_vector`) can call `set_gemm_layout(model, None)` first.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears or not _on_cpu(model):
        return
    decoding = rows is not None and rows < FEW_ROWS
    for m in linears:
        weight = m.weight.data
        input_major = decoding and not packable(m) and weight.dtype in (torch.float32, torch.float16)
        if input_major and not weight.t().is_contiguous():
            m.weight.data = weight.t().contiguous().t()
        elif not input_major and not weight.is_contiguous():
            m.weight.data = weight.contiguous()


def contiguous_state_dict(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """A `register_state_dict_post_hook` hook: contiguous copies of the weights `set_gemm_layout` laid out input-major
    (never of `keep_vars` parameters, which must stay the module's own)."""
    for key, value in state_dict.items():
        if key.startswith(prefix) and not isinstance(value, nn.Parameter) and not value.is_contiguous():
            state_dict[key] = value.contiguous()


@contextmanager
def prepared_for_decoding(model: nn.Module, linear_cls: type[nn.Linear], rows: int) -> Iterator[None]:
    """Lay the CPU model's weights out for decoding `rows` activations (`set_gemm_layout`, kept afterwards) and,
    within the body, give its half-precision `linear_cls` layers packed copies for `half_linear` when they are
    fewer than FEW_ROWS. The copies are made afresh and dropped on exit, so they always match the weights and cost
    memory only while sampling. A no-op for a model that is not on the CPU.
    """
    if not _on_cpu(model):
        yield
        return
    set_gemm_layout(model, rows)
    linears = [m for m in model.modules() if isinstance(m, linear_cls) and packable(m)] if rows < FEW_ROWS else []
    try:
        for m in linears:
            # A buffer, so that torch.compile takes it as a graph input; never saved (persistent=False).
            m.register_buffer("packed_weight", pack_weight(m.weight), persistent=False)
        yield
    finally:
        for m in linears:
            m._buffers.pop("packed_weight", None)
