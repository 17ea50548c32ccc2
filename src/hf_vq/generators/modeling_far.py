"""FAR (FQGAN's factorized AR generator) and LlamaGen's class-conditional GPT (FAR with one codebook)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.generation.logits_process import LogitsProcessor
from transformers.utils import ModelOutput

from . import cpu_decoding
from .blocks import (
    FixedShapeKVCache,
    LabelEmbedder,
    Linear,
    RMSNorm,
    StaticKVCache,
    TokenGridMixin,
    make_blocks,
    rope_2d_table,
    run_blocks,
)
from .configuration_far import FARConfig
from .sampling import (
    Generators,
    check_class_labels,
    check_generators,
    check_sampling_args,
    decoding_compile_kwargs,
    eval_mode,
    exponential_noise,
    guidance_scale_at,
    guide,
    logits_warpers,
    multinomial_from_noise,
    multinomial_from_uniform,
    sampling_device,
    sampling_probs,
    uniform_noise,
)

# Module names match the official LlamaGen GPT (gpt.py) and FQGAN FAR (far_dual.py / far_triple.py) files:
# `cls_embedding.embedding_table.weight`, `tok_embeddings.weight` (k=1) or `tok_embeddings_{1..k}.weight`,
# `aggregation_layer.{weight,bias}` (k>1), `layers.{n}.{attention.wqkv, attention.wo, feed_forward.w1/w2/w3,
# attention_norm, ffn_norm}.weight`, `ar_head.{n}.*` (k>1), `norm.weight`, `output.weight` (k=1) or
# `output_{1..k}.weight`. So official keys map to themselves; these official entries are not weights and
# are dropped: the precomputed RoPE table and KV-cache buffers left by a sampling run.
OFFICIAL_DROPPED_KEYS = re.compile(r"^(freqs_cis|causal_mask)$|\.kv_cache\.[kv]_cache$")


def official_key_to_hf(key: str) -> str | None:
    """Our state-dict key for an official LlamaGen GPT / FAR key, or None for one dropped on purpose."""
    return None if OFFICIAL_DROPPED_KEYS.search(key) else key


@dataclass
class FAROutput(ModelOutput):
    """Teacher-forced output.

    Attributes:
        loss: cross-entropy averaged over all (non-ignored) sub-tokens, i.e. the mean of the k per-codebook
            losses (when labels are given).
        logits: (B, k, N, vocab_size) float32 logits; logits[:, j, i] predicts sub-token j of position i.
        hidden_states: with `output_hidden_states=True`, num_hidden_layers + 1 tensors of shape (B, N, D), N the
            length of input_ids: the input of the first backbone block (the embeddings, after token dropout), then
            the output of every backbone block. Position 0 holds the class (or null) token and position i >= 1
            image token i - 1 (the inputs are shifted right by one, so the last image token is never an input);
            position i is the state that predicts image token i. The last entry is the last block's output before
            the final norm, not the normed state (Llama puts the normed one last): for k > 1 that norm acts on the
            outputs of the per-position AR head (`ar_head`), which runs after the backbone on its own k-long
            sequences and is not part of these states.
        attentions: with `output_attentions=True` (eager attention), num_hidden_layers tensors of shape
            (B, num_attention_heads, N, N): each backbone block's attention weights, rows the queries.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class _CausalStepper:
    """Runs a causal block stack one new position per call.

    With a static KV cache each call costs one position; without (`use_cache=False`) it re-runs the whole
    prefix, which is the reference the cache is checked against. `fixed_shape=True` uses the cache that compiled
    decoding needs (one graph for every position, positions given as tensors).
    """

    def __init__(
        self,
        blocks: nn.ModuleList,
        rope: torch.Tensor,
        batch_size: int,
        max_length: int,
        config: FARConfig,
        dtype: torch.dtype,
        device: torch.device,
        use_cache: bool,
        fixed_shape: bool = False,
    ):
        self.blocks, self.rope = blocks, rope
        self.cache = self.inputs = None
        if use_cache:
            cache_cls = FixedShapeKVCache if fixed_shape else StaticKVCache
            self.cache = cache_cls(
                len(blocks), batch_size, config.num_attention_heads, max_length, config.head_dim, dtype, device
            )
        else:
            # the re-run reference keeps its inputs in the residual stream's fp32 (see `TransformerBlock`)
            self.inputs = torch.empty(batch_size, max_length, config.hidden_size, dtype=torch.float32, device=device)

    def __call__(self, x: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
        """(B, 1, D) input at `position` (an int, or a (1,) tensor for the fixed-shape cache) -> (B, 1, D) output."""
        if self.cache is not None:
            rope = self.rope[position] if isinstance(position, torch.Tensor) else self.rope[position : position + 1]
            for i, block in enumerate(self.blocks):
                x = block(x, rope, True, self.cache, i, position)
            return x
        self.inputs[:, position : position + 1] = x
        x = self.inputs[:, : position + 1]
        for block in self.blocks:
            x = block(x, self.rope[: position + 1], True)
        return x[:, -1:]


def _decode_position(
    model: FARForClassConditionalGeneration,
    backbone: _CausalStepper,
    head: _CausalStepper | None,
    previous: torch.Tensor | None,
    position: int | torch.Tensor,
    noise: torch.Tensor,
    scale: torch.Tensor,
    warpers: list[LogitsProcessor],
    use_cfg: bool,
    condition: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One position's (B, k) sampled tokens, and whether all their probabilities were finite.

    The input is the previous position's (B, k, 1) tokens, embedded here so that a compiled graph covers the
    embedding too, or at position 0 (previous=None) the (rows, 1, D) class `condition`. The backbone gives h_i; for
    k > 1 the AR head then predicts the sub-tokens in turn from [h_i, E1[t1], ...]. Each draw is
    `multinomial_from_noise` with the caller's Exp(1) `noise` (k, B, vocab), i.e. torch.multinomial's draw for the
    same generator state, or `multinomial_from_uniform` with its (k, B) U[0, 1) numbers (`SEEDED_DRAWS`), so the
    whole position is one graph when compiled.
    """
    if previous is None:
        x = condition
    else:
        x = model.embed_tokens(previous).float()  # the residual stream
        x = torch.cat([x, x]) if use_cfg else x
    h = backbone(x, position)
    tokens, finite = [], []
    for j in range(noise.shape[0]):
        if head is not None:
            h = head(h, j)
        logits = model.head_logits(model.norm(h[:, 0]), j)
        if use_cfg:
            logits = guide(logits, scale)
        probs = sampling_probs(logits, warpers)
        finite.append(torch.isfinite(probs).all())  # argmax would turn NaN into a token; torch.multinomial raises
        draw = multinomial_from_noise if noise.dim() == 3 else multinomial_from_uniform
        tokens.append(draw(probs, noise[j]))
        if j < noise.shape[0] - 1:
            h = model.token_embeddings[j](tokens[j])[:, None].float()
            h = torch.cat([h, h]) if use_cfg else h
    return torch.stack(tokens, dim=1), torch.stack(finite).all()


@functools.cache
def _compiled_decode_position(device_type: str) -> Callable:
    """`_decode_position` under torch.compile for a device type (`decoding_compile_kwargs`), built on first
    request so importing hf_vq never loads the compiler.

    The random draws come in as noise, so a whole position (k sub-tokens) is one graph; positions and guidance
    scales arrive as tensors on the device, so that graph serves every position.
    """
    return torch.compile(_decode_position, **decoding_compile_kwargs(device_type))


class FARForClassConditionalGeneration(TokenGridMixin, PreTrainedModel):
    """Class-conditional AR generator over (B, k, N) token grids.

    k = 1 is LlamaGen's GPT: [class, tok_0 .. tok_{N-2}] -> next token. k > 1 is FAR: the k sub-token
    embeddings of a position are concatenated and projected (`aggregation_layer`), and at each position a
    small causal transformer (`ar_head`) predicts the k sub-tokens in turn from [h_i, E1[t1_i], ...].
    """

    config: FARConfig
    config_class = FARConfig
    main_input_name = "input_ids"
    # forward's logits at position i predict token i from the tokens before it (the AR validation perplexity)
    is_autoregressive = True
    _no_split_modules = ["TransformerBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, config: FARConfig):
        super().__init__(config)
        self.cls_embedding = LabelEmbedder(config.num_classes, config.hidden_size, config.class_dropout_prob)
        self.tok_dropout = nn.Dropout(config.token_dropout)
        self.layers = make_blocks(config, config.num_hidden_layers)
        if config.num_codebooks > 1:
            self.ar_head = make_blocks(config, config.num_head_layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self._add_token_modules(config.vocab_size)
        self.register_state_dict_post_hook(cpu_decoding.contiguous_state_dict)  # after sampling on a CPU
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if any(module is head for head in self.output_heads):
            init.zeros_(module.weight)  # LlamaGen/FAR start from zero logits

    def train(self, mode: bool = True) -> FARForClassConditionalGeneration:
        """nn.Module.train; entering training mode also restores the row-major weight layout that sampling sets
        (see `set_gemm_layout`), so training, DDP and state-dict consumers see contiguous weights."""
        if mode:
            cpu_decoding.set_gemm_layout(self, None)
        return super().train(mode)

    def rope_table(self, device: torch.device) -> torch.Tensor:
        """(cls_token_num + N, head_dim // 2, 2) 2D RoPE (cos, sin) rows, the condition row zeroed."""
        c = self.config
        return rope_2d_table(c.grid_size, c.head_dim, c.rope_theta, c.cls_token_num, device)

    def forward(
        self,
        input_ids: torch.LongTensor,
        class_labels: torch.LongTensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
    ) -> FAROutput | tuple:
        r"""Teacher-forced logits for all positions, and the loss when `labels` are given.

        Args:
            input_ids: (B, k, N) token ids, sub-codebooks in FAR order (vis first).
            class_labels: (B,) class ids; num_classes is the null class. In training they are dropped to the
                null class with probability class_dropout_prob.
            labels: (B, k, N) targets, normally `input_ids` itself; -100 entries are ignored.
            output_hidden_states: also return the backbone's hidden states (see `FAROutput`); default
                `config.output_hidden_states`.
            return_dict: default `config.return_dict`; False returns `FAROutput.to_tuple()`: (loss, logits,
                hidden_states, attentions) without the entries that are None.
            output_attentions: also return the backbone's attention weights (see `FAROutput`); needs
                `attn_implementation="eager"`. Default `config.output_attentions`.
        """
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        output_attentions = self._check_output_attentions(output_attentions)
        input_ids = self._check_token_ids(input_ids, min_length=1)
        class_labels = check_class_labels(class_labels, self.config.num_classes, input_ids.device,
                                          input_ids.shape[0], self.training)
        if labels is not None and (labels.shape != input_ids.shape or labels.dtype.is_floating_point
                                   or labels.dtype == torch.bool):
            raise ValueError(
                f"labels must be integer ids of the shape of input_ids {tuple(input_ids.shape)}, got {labels.dtype} "
                f"{tuple(labels.shape)}"
            )
        batch, k, length = input_ids.shape
        rope = self.rope_table(input_ids.device)

        # One lookup per table serves both the backbone's inputs and the AR head's mini-sequences.
        sub_tokens = self.sub_token_embeddings(input_ids)
        inputs = self.aggregate(sub_tokens[:, :, :-1])
        x = torch.cat([self.cls_embedding(class_labels), inputs], dim=1)
        x = self.tok_dropout(x.float())  # the residual stream is fp32 (see `TransformerBlock`)
        x, all_hidden_states, all_attentions = run_blocks(self.layers, x, rope[:length], True, output_hidden_states,
                                                          output_attentions)

        if k == 1:
            hidden = x.unsqueeze(2)
        else:
            # Mini-sequence per position: [h_i, E1[t1_i], ..., E_{k-1}[t_{k-1,i}]], on RoPE rows 0..k-1.
            hidden = torch.stack([x, *sub_tokens[:, :-1].float().unbind(1)], dim=2).flatten(0, 1)
            for block in self.ar_head:
                hidden = block(hidden, rope[:k], causal=True)
            hidden = hidden.view(batch, length, k, -1)
        hidden = self.norm(hidden)
        logits = torch.stack([self.head_logits(hidden[:, :, j], j) for j in range(k)], dim=1)

        loss = None
        if labels is not None:
            # Every codebook has N targets, so this is FAR's mean of the k per-codebook losses; with -100
            # entries it stays a per-token mean instead of dividing by zero for a fully ignored codebook.
            loss = F.cross_entropy(logits.flatten(0, 2), labels.flatten().long())
        output = FAROutput(loss=loss, logits=logits, hidden_states=all_hidden_states, attentions=all_attentions)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return output if return_dict else output.to_tuple()

    # Not `forward`: `apply_forward_hook` runs a model-offload hook's onloading first, as diffusers' VAEs do.
    @apply_forward_hook
    @torch.no_grad()
    def sample(
        self,
        class_labels: torch.Tensor | Sequence[int],
        guidance_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: Generators = None,
        cfg_schedule: str = "constant",
        use_cache: bool = True,
        callback: Callable[[int, torch.Tensor], None] | None = None,
        compile: bool = False,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
    ) -> torch.LongTensor:
        """Sample (B, k, N) token grids for the given class ids.

        Args:
            class_labels: B class ids; num_classes gives unconditional samples.
            guidance_scale: classifier-free guidance s, logits = u + s (c - u) on a batched [cond; null] pass;
                1.0 turns guidance (and the null pass) off.
            temperature, top_k, top_p: applied in that order to every sub-token's logits (top_k=0, top_p=1 off).
            generator: torch.Generator for the draws, or a list of B (each sample draws from its own, whatever
                else is in the batch; its logits may still round differently at another batch size, as GEMMs of
                other shapes do): one number per sub-token, drawn where the generator is, so a seed gives
                the same draws on any device (`sampling.SEEDED_DRAWS`). None draws as torch.multinomial does from
                the device's global generator (the noise it would use drawn position by position), as the official
                samplers do.
            cfg_schedule: "constant", or "linear" (the scale ramps from 1 to s with the fraction of tokens done).
            use_cache: decode on preallocated static KV caches; False re-runs the whole prefix every step
                (a slow reference that gives the same tokens up to the last bits of the logits).
            callback: called as callback(position, tokens) after each position, e.g. for a progress bar; the
                positions not yet sampled hold 0.
            compile: run each decoding position (embeddings, transformer stacks, norm, heads, guidance, warpers
                and the k sub-token draws) as one `torch.compile` graph (needs a C++ compiler on CPU). The
                first call compiles, which takes tens of seconds; later calls reuse the graph. Tokens can
                differ from the eager sampler's in the last bits of the logits, like any change of kernels.
            num_inference_steps: part of the generators' shared sampling contract; an AR model decodes one
                position per step, so only None or N (= grid_size**2) is accepted.
            device: where the decoding runs; default the weights' device. Pipelines pass their execution device:
                with offloading, the weights wait on the CPU or on "meta" until each module runs.
        """
        c = self.config
        self.num_sampling_steps(num_inference_steps)
        device = sampling_device(self, device)
        labels = check_class_labels(class_labels, c.num_classes, device)
        guidance_scale, temperature, top_k, top_p = check_sampling_args(
            guidance_scale, temperature, top_k, top_p, c.vocab_size, cfg_schedule
        )
        check_generators(generator, labels.shape[0])
        if compile and not use_cache:
            raise ValueError("compile=True compiles the cached decoding step; it needs use_cache=True")
        warpers = logits_warpers(temperature, top_k, top_p)
        batch = labels.shape[0]
        if guidance_scale != 1.0:
            labels = torch.cat([labels, torch.full_like(labels, c.num_classes)])

        # On a CPU: the decoding weight layouts (kept in eval mode; `train()` restores them) and packed copies.
        with eval_mode(self), cpu_decoding.prepared_for_decoding(self, Linear, rows=labels.shape[0]):
            tokens = self._decode(
                labels, batch, guidance_scale, warpers, generator, cfg_schedule, use_cache, callback, compile
            )
        return tokens

    def num_sampling_steps(self, num_inference_steps: int | None = None) -> int:
        """How many steps (callback calls) `sample` takes: one per grid position."""
        n = self.config.num_image_tokens
        if num_inference_steps is not None and num_inference_steps != n:
            raise ValueError(
                f"an AR generator decodes one position per step ({n} steps for a {self.config.grid_size}x"
                f"{self.config.grid_size} grid), so num_inference_steps={num_inference_steps} cannot apply; leave it "
                "out (it sets a MaskGIT generator's parallel decoding steps)"
            )
        return n

    def _decode(
        self,
        labels: torch.Tensor,
        batch: int,
        guidance_scale: float,
        warpers: list[LogitsProcessor],
        generator: Generators,
        cfg_schedule: str,
        use_cache: bool,
        callback: Callable[[int, torch.Tensor], None] | None,
        compile: bool,
    ) -> torch.LongTensor:
        c = self.config
        device, dtype = labels.device, self.activation_dtype(labels.device)
        k, length, rows = c.num_codebooks, c.num_image_tokens, labels.shape[0]
        use_cfg = rows != batch
        rope = self.rope_table(device)
        backbone = _CausalStepper(self.layers, rope, rows, length, c, dtype, device, use_cache, compile)
        head = _CausalStepper(self.ar_head, rope, rows, k, c, dtype, device, use_cache, compile) if k > 1 else None
        decode_position = _compiled_decode_position(device.type) if compile else _decode_position
        # Compiled graphs take positions and scales as tensors, so they neither bake them in nor recompile.
        positions = torch.arange(length, device=device)[:, None] if compile else range(length)
        tokens = torch.zeros(batch, k, length, dtype=torch.long, device=device)  # what a callback sees ahead

        # fp64 so guidance rounds as with a Python float; on the device, as CUDA graphs need every input there, and
        # made once: a copy from the host per position would make the host wait for the device every time
        scales = [guidance_scale_at(guidance_scale, cfg_schedule, (i + 1) / length) for i in range(length)]
        scales = torch.tensor(scales, dtype=torch.float64, device=device)
        if generator is not None:  # every position's (k, B) numbers up front (`SEEDED_DRAWS`)
            uniform = uniform_noise((batch, length, k), generator, device).permute(1, 2, 0).contiguous()
        finite = torch.ones((), dtype=torch.bool, device=device)
        for i in range(length):
            if generator is None:
                noise = exponential_noise(k, (batch, c.vocab_size), None, device)
            else:  # a copy: a compiled step's input gets storage of its own (aligned), not an offset into all steps'
                noise = uniform[i].clone()
            sampling = (positions[i], noise, scales[i], warpers, use_cfg)
            if i == 0:  # the class condition, run eagerly: the compiled graph then has one kind of input
                condition = self.cls_embedding(labels).float()
                drawn, ok = _decode_position(self, backbone, head, None, *sampling, condition=condition)
            else:
                drawn, ok = decode_position(self, backbone, head, tokens[:, :, i - 1 : i], *sampling)
            tokens[:, :, i] = drawn
            finite &= ok
            if callback is not None:
                callback(i, tokens)
        if not finite:  # checked once at the end: a check per position would stall the compiled loop
            raise FloatingPointError(
                f"the generator ({self.norm.weight.dtype} weights) produced NaN or infinite logits, so the sampled "
                "tokens are meaningless; check its weights, or load it in float32"
            )
        return tokens
