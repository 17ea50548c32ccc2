"""The LlamaGen transformer block and its pieces, shared by the FAR/GPT and MaskGIT generators.

Module names (`attention.wqkv`, `feed_forward.w1`, `attention_norm`, ...) follow LlamaGen so official
state dicts load without renaming.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..utils import may_read_values
from . import cpu_decoding


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= n."""
    return -(-n // multiple) * multiple


def rope_2d_table(grid_size: int, head_dim: int, theta: float, num_prefix: int,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """LlamaGen's 2D rotary table: (num_prefix + grid_size**2, head_dim // 2, 2) float32 (cos, sin) pairs.

    Row `num_prefix + t` rotates image token t (raster order): the first head_dim/4 pairs by its row index,
    the rest by its column index. The `num_prefix` condition rows are zero, not identity, so the condition's
    rotated q and k vanish and it reaches other tokens only through its values. Real pairs rather than complex
    numbers, as in LlamaGen, so the rotation also compiles (inductor generates no code for complex ops). Built on
    `device`, as transformers builds its rotary tables, not copied there from the host at every forward.
    """
    half = head_dim // 2
    freqs = 1.0 / (theta ** (torch.arange(0, half, 2, device=device)[: half // 2].float() / half))
    angles = torch.outer(torch.arange(grid_size, dtype=torch.float32, device=device), freqs)
    grid = torch.cat(
        [
            angles[:, None, :].expand(-1, grid_size, -1),  # row index
            angles[None, :, :].expand(grid_size, -1, -1),  # column index
        ],
        dim=-1,
    ).flatten(0, 1)
    table = torch.stack([torch.cos(grid), torch.sin(grid)], dim=-1)
    return torch.cat([torch.zeros(num_prefix, half, 2, device=device), table])


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2j], x[2j+1]) of x (B, S, ..., head_dim) by rope (S, head_dim // 2, 2), in fp32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    rope = rope.view(rope.shape[0], *([1] * (x.dim() - 3)), *rope.shape[1:])
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = rope[..., 0], rope[..., 1]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2).type_as(x)


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 from the fp32 residual stream, returned in the dtype the next GEMMs take
    (`cpu_decoding.activation_dtype`: the weights' dtype off the CPU, fp32 on it)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps)
        if self.weight.dtype == torch.float32:  # the common case, without a call per norm
            return out
        return out.to(cpu_decoding.activation_dtype(self.weight.dtype, x.device))


class Linear(nn.Linear):
    """nn.Linear that on a CPU also takes fp32 activations over fp16/bf16 weights and returns fp32.

    Activations take the weights' dtype off the CPU, so there it is a plain `F.linear`; the CPU's mixed-precision
    GEMMs live in `cpu_decoding`. Any other mix of dtypes is multiplied in the weight's dtype, as autocast would.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if x.dtype == weight.dtype:
            return F.linear(x, weight, self.bias)
        if x.device.type == "cpu" and x.dtype == torch.float32:
            return cpu_decoding.mixed_precision_linear(self, x)
        return F.linear(x.to(weight.dtype), weight, self.bias).to(x.dtype)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.w1 = Linear(dim, hidden_dim, bias=False)
        self.w3 = Linear(dim, hidden_dim, bias=False)
        self.w2 = Linear(hidden_dim, dim, bias=False)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class StaticKVCache:
    """Keys and values of a stack of attention layers, preallocated once and written in place.

    `keys[layer]` is (batch, heads, max_length, head_dim); keys are stored after RoPE.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        max_length: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        shape = (batch_size, num_heads, max_length, head_dim)
        self.max_length = max_length
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    def update(
        self, layer_idx: int, start: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, H, S, hd) key/value at [start, start + S) and return views of everything up to there."""
        end = start + key.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions, asked to write up to {end}")
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[:, :, start:end].copy_(key)
        values[:, :, start:end].copy_(value)
        return keys[:, :, :end], values[:, :, :end]

    def causal_mask(self, start: int, length: int) -> torch.Tensor | None:
        """Boolean (length, keys) mask for `length` queries at `start`, or None where SDPA's is_causal is right.

        SDPA's is_causal aligns top-left, so a chunk after a cached prefix needs a bottom-right mask.
        """
        if length == 1 or start == 0:
            return None
        return torch.ones(length, start + length, dtype=torch.bool, device=self.keys[0].device).tril(start)


class FixedShapeKVCache(StaticKVCache):
    """A StaticKVCache for compiled decoding: the position is a tensor and reads are always the whole buffer.

    Every step then has the same shapes and no Python int that changes, so `torch.compile` builds one graph for
    all positions, and the write is an in-place `index_copy_` that the graph does not turn into a copy of the
    whole buffer. The unwritten tail is masked out. The eager sampler keeps the exact-length reads of
    StaticKVCache.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.key_positions = torch.arange(self.max_length, device=self.keys[0].device)
        if self.keys[0].device.type == "cuda":
            # CUDA graphs replay writes into these buffers, so their addresses must not change between replays;
            # guard=False: a new cache (the next `sample` call) re-records the graph instead of recompiling it.
            for buffer in (*self.keys, *self.values, self.key_positions):
                torch._dynamo.mark_static_address(buffer, guard=False)

    def update(
        self, layer_idx: int, start: int | torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, H, S, hd) key/value at start + [0, S) (int or (1,) long start); return the full buffers."""
        positions = start + torch.arange(key.shape[2], device=key.device)
        end = positions[-1] + 1
        if not torch.compiler.is_compiling() and end > self.max_length:  # eager only: a graph cannot raise
            raise ValueError(f"KV cache holds {self.max_length} positions, asked to write up to {int(end)}")
        self.keys[layer_idx].index_copy_(2, positions, key.to(self.keys[layer_idx].dtype))
        self.values[layer_idx].index_copy_(2, positions, value.to(self.values[layer_idx].dtype))
        return self.keys[layer_idx], self.values[layer_idx]

    def causal_mask(self, start: int | torch.Tensor, length: int) -> torch.Tensor:
        """(length, max_length) mask: query start + q sees keys 0 .. start + q."""
        query_positions = start + torch.arange(length, device=self.key_positions.device)
        return self.key_positions[None, :] <= query_positions[:, None]


def single_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), masked) v for one query per head: (B, H, 1, d) q, (B, H, S, d) k and v, (1, S) mask.

    Written as broadcast products and sums so that inductor fuses it into a couple of loops; SDPA's CPU kernel
    costs about 300 us per call at one query, about as much as the layer's projections.
    """
    scores = (q * k).sum(-1, keepdim=True) * q.shape[-1] ** -0.5
    weights = torch.softmax(scores.float().masked_fill(~mask.view(1, 1, -1, 1), float("-inf")), dim=2)
    return (weights.type_as(v) * v).sum(2, keepdim=True)


def attention_implementation(config) -> str:
    """The attention kernel a generator's config names (`set_attn_implementation`); SDPA when unset."""
    return config._attn_implementation or "sdpa"


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    is_causal: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling, masked) v written out (`attn_implementation="eager"`), the one implementation that
    returns the attention weights: (B, H, L, d) inputs -> (B, L, H, d) output and (B, H, L, S) weights."""
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)).float() * scaling
    if is_causal and attention_mask is None:  # aligned top-left, as SDPA's is_causal
        attention_mask = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device).tril()
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool \
            else scores + attention_mask
    weights = F.dropout(torch.softmax(scores, dim=-1).to(query.dtype), p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class Attention(nn.Module):
    """Multi-head attention with a fused [q; k; v] projection and 2D RoPE.

    Forwards without a KV cache (training, scoring, hidden states) run the kernel `config._attn_implementation`
    names, read at each call as transformers' attention modules read it, so `set_attn_implementation` switches a
    built model: "sdpa" (the default), "eager" (which also returns the weights) or "flash_attention_2". Cached
    sampling runs its own static-shape SDPA path (or `single_query_attention`), whatever the implementation.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.attention_dropout = config.attention_dropout
        self.wqkv = Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.wo = Linear(config.hidden_size, config.hidden_size, bias=False)
        self.resid_dropout = nn.Dropout(config.resid_dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        causal: bool,
        cache: StaticKVCache | None = None,
        layer_idx: int = 0,
        start: int | torch.Tensor = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, L, D) -> (B, L, D) and the (B, H, L, S) attention weights (None unless the implementation is eager)."""
        batch, length, dim = x.shape
        qkv = self.wqkv(x).view(batch, length, 3, self.num_heads, self.head_dim)
        qk = apply_rope(qkv[:, :, :2], rope)
        q, k, v = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
        dropout = self.attention_dropout if self.training else 0.0
        weights = None
        if cache is None:
            implementation = attention_implementation(self.config)
            attend = eager_attention_forward if implementation == "eager" else ALL_ATTENTION_FUNCTIONS[implementation]
            out, weights = attend(self, q, k, v, None, dropout=dropout, scaling=None, is_causal=causal)
            return self.resid_dropout(self.wo(out.reshape(batch, length, dim))), weights
        mask = None
        k, v = cache.update(layer_idx, start, k, v)
        if causal:
            mask = cache.causal_mask(start, length)
            causal = mask is None
        if isinstance(cache, FixedShapeKVCache) and length == 1 and mask is not None:
            out = single_query_attention(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=causal and length > 1)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(batch, length, dim))), weights


class TransformerBlock(GradientCheckpointingLayer):
    """Pre-norm block: x + attn(norm(x)), then + ffn(norm(.)).

    The residual stream is fp32 whatever the weights' dtype, while the GEMMs, attention and KV cache run in the
    dtype the norms hand them (half precision off the CPU): on the trained Fashion-MNIST FAR in bf16, a bf16
    residual stream flips more top-1 tokens than the 1% that an fp32 one keeps under, and the stream is one
    (rows, D) tensor per step, a negligible share of the memory traffic. `activation_checkpointing_enable()` on
    the model recomputes the block in the backward pass (transformers' layer contract)."""

    def __init__(self, config):
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config.hidden_size, config.intermediate_size, config.ffn_dropout)
        self.attention_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        causal: bool,
        cache: StaticKVCache | None = None,
        layer_idx: int = 0,
        start: int | torch.Tensor = 0,
        output_attentions: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The block's output; with `output_attentions`, also its attention weights (eager attention only)."""
        attended, weights = self.attention(self.attention_norm(x), rope, causal, cache, layer_idx, start)
        h = x.float() + attended
        h = h + self.feed_forward(self.ffn_norm(h))
        return (h, weights) if output_attentions else h


class LabelEmbedder(nn.Module):
    """Class table with num_classes + 1 rows; the last row is the null (unconditional) class."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """(B,) long -> (B, 1, dim); in training, labels are dropped to the null class with dropout_prob."""
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels).unsqueeze(1)


def make_blocks(config, num_layers: int) -> nn.ModuleList:
    """`num_layers` TransformerBlocks sized from a FAR/MaskGIT config."""
    return nn.ModuleList(TransformerBlock(config) for _ in range(num_layers))


def run_blocks(
    blocks: nn.ModuleList, x: torch.Tensor, rope: torch.Tensor, causal: bool, output_hidden_states: bool,
    output_attentions: bool,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
    """A cache-free pass of `x` through `blocks`: the output, and what the models' outputs return when asked for,
    the stack's input then every block's output (`hidden_states`) and every block's attention weights."""
    hidden_states = (x,) if output_hidden_states else None
    attentions = () if output_attentions else None
    for block in blocks:
        if output_attentions:
            x, weights = block(x, rope, causal, output_attentions=True)
            attentions += (weights,)
        else:
            x = block(x, rope, causal)
        if output_hidden_states:
            hidden_states += (x,)
    return x, hidden_states, attentions


def token_module_names(prefix: str, num_codebooks: int) -> list[str]:
    """LlamaGen/FAR attribute names for per-codebook modules: `prefix` for k=1, `prefix_1..k` otherwise."""
    if num_codebooks == 1:
        return [prefix]
    return [f"{prefix}_{j}" for j in range(1, num_codebooks + 1)]


class OutputHead(Linear):
    """A bias-free vocabulary projection whose logits are fp32 whatever the precision.

    Half-precision hidden states and weights are multiplied with fp32 accumulation and an fp32 result, never
    rounded to bf16/fp16 logits (spaced 0.0625 apart at |logit| ~ 10 in bf16, which flips near-tied top-1 tokens):
    on CUDA one half GEMM with fp32 output (`torch.mm(..., out_dtype=torch.float32)`), elsewhere on the upcast
    operands, which gives the same products (bf16/fp16 products are exact in fp32). The weight is read only here,
    so offloading hooks on the head see every use of it.
    """

    def __init__(self, in_features: int, out_features: int, **kwargs):
        super().__init__(in_features, out_features, bias=False, **kwargs)

    def forward(self, hidden: torch.Tensor) -> torch.FloatTensor:
        weight = self.weight
        if hidden.dtype == torch.float32:  # fp32 models, and the CPU's fp32 activations over half weights
            return F.linear(hidden, weight) if weight.dtype == torch.float32 else super().forward(hidden)
        if hidden.dtype == weight.dtype and hidden.device.type == "cuda" and _MM_OUT_DTYPE:
            rows = hidden.reshape(-1, hidden.shape[-1])
            return HalfMatmulFloatOut.apply(rows, weight).view(*hidden.shape[:-1], weight.shape[0])
        return F.linear(hidden.float(), weight.float())


def _traceable_mm_out_dtype() -> bool:
    """Whether `torch.mm(..., out_dtype=)` exists with the meta kernel that torch.compile and meta-device models trace
    through: torch 2.8 has the op but not that kernel."""
    try:
        probes = (torch.empty(1, 1, device="meta", dtype=dtype) for dtype in (torch.bfloat16, torch.float16))
        return all(torch.mm(x, x, out_dtype=torch.float32).dtype == torch.float32 for x in probes)
    except (TypeError, RuntimeError, NotImplementedError):
        return False


_MM_OUT_DTYPE = _traceable_mm_out_dtype()


class HalfMatmulFloatOut(torch.autograd.Function):
    """rows @ weight.T for half `rows` (N, D) and `weight` (V, D), with an fp32 result; differentiable.

    `torch.mm(..., out_dtype=)` has no derivative, so training (bf16 weights under FSDP's mixed precision) needs
    this backward: the fp32 logit gradient is rounded to the operands' precision, as a half model's own gradients
    are, and the two products run as half GEMMs. CUDA runs the fused op (`OutputHead` calls this on CUDA only); the
    CPU, which has no kernel for it, multiplies the upcast operands, which gives the same products (for the tests).
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, weight: torch.Tensor) -> torch.FloatTensor:
        ctx.save_for_backward(rows, weight)
        if rows.device.type == "cpu":
            return F.linear(rows.float(), weight.float())
        return torch.mm(rows, weight.t(), out_dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        rows, weight = ctx.saved_tensors
        grad = grad.to(rows.dtype)
        grad_rows = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad.t() @ rows if ctx.needs_input_grad[1] else None
        return grad_rows, grad_weight


class TokenGridMixin:
    """Per-sub-codebook embeddings and output heads of a generator over (B, k, N) token grids.

    Modules are attributes named as in the official files (`tok_embeddings` / `tok_embeddings_{1..k}`,
    `aggregation_layer`, `output` / `output_{1..k}`) so official state dicts load key for key.
    """

    supports_gradient_checkpointing = True

    def __init__(self, config: PreTrainedConfig, *args: Any, **kwargs: Any):
        # The whole config again: `from_pretrained(..., num_attention_heads=5)` and attribute assignments set one
        # field at a time, which checks only that field's type, not the sizes the model is built with.
        config.validate()
        super().__init__(config, *args, **kwargs)

    def _add_token_modules(self, embedding_rows: int) -> None:
        c = self.config
        self._embedding_names = token_module_names("tok_embeddings", c.num_codebooks)
        for name in self._embedding_names:
            self.add_module(name, nn.Embedding(embedding_rows, c.hidden_size))
        if c.num_codebooks > 1:
            self.aggregation_layer = Linear(c.num_codebooks * c.hidden_size, c.hidden_size)
        self._output_names = token_module_names("output", c.num_codebooks)
        for name in self._output_names:
            self.add_module(name, OutputHead(c.hidden_size, c.vocab_size))

    def _check_output_attentions(self, output_attentions: bool | None) -> bool:
        """`output_attentions`, its default read from the config; refused unless eager attention returns weights."""
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        implementation = attention_implementation(self.config)
        if output_attentions and implementation != "eager":
            raise ValueError(f"output_attentions=True needs the attention weights, which only eager attention "
                             f"computes; this model runs {implementation!r}: call model.set_attn_implementation"
                             "('eager') first, or load it with attn_implementation='eager'")
        return output_attentions

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding table; for k > 1 the first (visual) sub-codebook's, as the other k - 1 tables are
        `token_embeddings[1:]`. One registered table, so that FSDP can shard it as a unit of its own."""
        return self.token_embeddings[0]

    def generate(self, *args: Any, **kwargs: Any) -> None:
        """Refused with a pointer to `sample`: transformers' `generate` decodes text, one token per step."""
        raise NotImplementedError(
            f"{type(self).__name__} has no transformers `generate` (its tokens are (k, N) grids drawn per class): "
            "sample them with model.sample(class_labels, guidance_scale=..., generator=...), or images with "
            "FQGANPipeline(vqvae=tokenizer, transformer=model)(class_labels)"
        )

    def resize_token_embeddings(self, *args: Any, **kwargs: Any) -> None:
        """Refused: the vocabulary is the tokenizer's codebook, held by k tables and k heads (MaskGIT's tables with a
        mask row), which transformers' resizing of one table would leave inconsistent."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot resize its vocabulary: vocab_size is the tokenizer's codebook size, shared "
            "by every sub-codebook's embedding table and output head. For a tokenizer with another codebook, build "
            "a new generator: from_config(config) after setting config.vocab_size"
        )

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """Replace the table `get_input_embeddings` returns."""
        if not isinstance(value, nn.Embedding):
            raise TypeError(f"expected an nn.Embedding, got {type(value).__name__}")
        setattr(self, self._embedding_names[0], value)

    def sub_token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, k, S) ids -> (B, k, S, D) embeddings, one per sub-codebook."""
        return torch.stack([table(input_ids[:, j]) for j, table in enumerate(self.token_embeddings)], dim=1)

    def aggregate(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, k, S, D) sub-token embeddings -> (B, S, D): concatenated and projected when k > 1."""
        if embeddings.shape[1] == 1:
            return embeddings[:, 0]
        # In the activation dtype: on a CPU, fp32 over the half weights (`Linear`), as every other layer there
        embeddings = embeddings.to(self.activation_dtype(embeddings.device))
        return self.aggregation_layer(embeddings.transpose(1, 2).flatten(2))

    @property
    def token_embeddings(self) -> list[nn.Embedding]:
        """The k sub-codebook embedding tables, vis first."""
        return [getattr(self, name) for name in self._embedding_names]

    @property
    def output_heads(self) -> list[OutputHead]:
        """The k output projections; head j predicts sub-token j."""
        return [getattr(self, name) for name in self._output_names]

    def head_logits(self, hidden: torch.Tensor, j: int) -> torch.FloatTensor:
        """fp32 logits of sub-token j from (..., D) final-normed hidden states (see `OutputHead`)."""
        return self.output_heads[j](hidden)

    def activation_dtype(self, device: torch.device | str) -> torch.dtype:
        """The dtype of the activations and KV cache on `device` (`cpu_decoding.activation_dtype`)."""
        return cpu_decoding.activation_dtype(self.dtype, device)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, k, S) ids -> (B, S, D): the sub-token embeddings, concatenated and projected when k > 1."""
        return self.aggregate(self.sub_token_embeddings(input_ids))

    def _check_token_ids(
        self, input_ids: torch.Tensor, min_length: int, num_ids: int | None = None
    ) -> torch.LongTensor:
        """`input_ids` as a long tensor, after a clear error for a shape, dtype or (where values may be read) id
        outside [0, `num_ids`) (default vocab_size)."""
        c = self.config
        num_ids = c.vocab_size if num_ids is None else num_ids
        if (not isinstance(input_ids, torch.Tensor) or input_ids.dtype.is_floating_point or input_ids.dtype.is_complex
                or input_ids.dtype == torch.bool or input_ids.dim() != 3):
            raise ValueError(
                "input_ids must be an integer tensor (batch, num_codebooks, sequence), got "
                f"{getattr(input_ids, 'dtype', type(input_ids))} of shape {tuple(getattr(input_ids, 'shape', ()))}"
            )
        batch, k, length = input_ids.shape
        if batch == 0:
            raise ValueError("input_ids holds an empty batch; give at least one token grid")
        if k != c.num_codebooks:
            raise ValueError(f"input_ids has {k} codebooks on dim 1, the model has num_codebooks={c.num_codebooks}")
        if not min_length <= length <= c.num_image_tokens:
            raise ValueError(
                f"input_ids has {length} positions on dim 2; the model takes {min_length} to "
                f"grid_size**2 = {c.num_image_tokens}"
            )
        input_ids = input_ids.long()  # embedding lookups and loss targets take long ids
        if not may_read_values(input_ids.device, self.training):
            return input_ids
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= num_ids:
            raise ValueError(f"input_ids must lie in [0, {num_ids}), got values in [{low}, {high}]")
        return input_ids
