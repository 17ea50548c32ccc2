"""MaskGIT-style non-autoregressive class-conditional generator on LlamaGen blocks."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .blocks import LabelEmbedder, RMSNorm, TokenGridMixin, make_blocks, rope_2d_table, run_blocks
from .configuration_maskgit import MaskGITConfig
from .sampling import (
    Generators,
    as_number,
    check_class_labels,
    check_generators,
    check_sampling_args,
    eval_mode,
    guidance_scale_at,
    guide,
    logits_warpers,
    masking_schedule,
    multinomial_from_uniform,
    sampling_device,
    uniform_noise,
    warp,
)

DEFAULT_NUM_STEPS = 12  # MaskGIT's and MAGE's decoding steps


def hashed_uniform(keys: torch.LongTensor, count: int) -> torch.FloatTensor:
    """(B, count) numbers in [0, 1), each a hash of its row of `keys` (B, L) and its column: the same row gives the
    same numbers on any device, in any batch. Integer mixing as in the lowbias32 hash, on int64 with constants
    below 2**31, so that no product overflows."""
    mask = 0xFFFFFFFF
    weights = (torch.arange(keys.shape[1], device=keys.device) * 0x2C1B3C6D + 0x9E3779B) & 0x7FFFFFFF
    x = ((keys.long() & 0xFFFF) * weights).sum(dim=1, keepdim=True) & mask
    x = (x + torch.arange(count, device=keys.device) * 0x61C88647) & mask
    for multiplier, shift in ((0x7FEB352D, 15), (0x46CA68B, 16)):
        x = x ^ (x >> 16)
        x = (x * multiplier) & mask
        x = x ^ (x >> shift)
    return (x >> 8).float() / 2.0**24  # 24 bits: exact in float32, so never rounded up to 1


@dataclass
class MaskGITOutput(ModelOutput):
    """Masked-token prediction output.

    Attributes:
        loss: mean over the k sub-codebooks of the label-smoothed cross-entropy on the masked positions.
        logits: (B, k, N, vocab_size) float32 logits at every position.
        masked_positions: (B, N) bool, the positions that were masked (all k sub-tokens together).
        hidden_states: with `output_hidden_states=True`, num_hidden_layers + 1 tensors of shape (B, 1 + N, D):
            the input of the first block (the embeddings, after token dropout), then the output of every block.
            Position 0 holds the class (or null) token and position 1 + i image position i (masked positions
            hold the mask embedding). The last entry is the last block's output before the final norm (Llama puts
            the normed state last); the heads read norm(hidden_states[-1][:, 1:]).
        attentions: with `output_attentions=True` (eager attention), num_hidden_layers tensors of shape
            (B, num_attention_heads, 1 + N, 1 + N): each block's attention weights, rows the queries.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    masked_positions: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class MaskGITForClassConditionalGeneration(TokenGridMixin, PreTrainedModel):
    """Bidirectional transformer over [class, position_0 .. position_{N-1}] that predicts masked positions.

    A position's input is the aggregation of its k sub-token embeddings (each table has an extra mask row);
    k output heads predict its sub-tokens. Sampling starts fully masked and reveals positions on a cosine
    schedule, most confident first.
    """

    config: MaskGITConfig
    config_class = MaskGITConfig
    main_input_name = "input_ids"
    is_autoregressive = False
    _no_split_modules = ["TransformerBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, config: MaskGITConfig):
        super().__init__(config)
        self.cls_embedding = LabelEmbedder(config.num_classes, config.hidden_size, config.class_dropout_prob)
        self.tok_dropout = nn.Dropout(config.token_dropout)
        self.layers = make_blocks(config, config.num_hidden_layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self._add_token_modules(config.vocab_size + 1)
        self.post_init()

    def predict(self, input_ids: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """(B, k, N) ids, masked positions holding config.mask_token -> (B, k, N, vocab_size) float32 logits."""
        c = self.config
        input_ids = self._check_token_ids(input_ids, c.num_image_tokens, num_ids=c.mask_token + 1)
        class_labels = check_class_labels(class_labels, c.num_classes, input_ids.device, input_ids.shape[0],
                                          self.training)
        return self._predict(input_ids, class_labels, output_hidden_states=False)[0]

    def _predict(
        self, input_ids: torch.Tensor, class_labels: torch.Tensor, output_hidden_states: bool,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """`predict`'s logits, and the hidden states and attentions of `MaskGITOutput` when asked for."""
        c = self.config
        rope = rope_2d_table(c.grid_size, c.head_dim, c.rope_theta, 1, input_ids.device)
        x = torch.cat([self.cls_embedding(class_labels), self.embed_tokens(input_ids)], dim=1)
        x = self.tok_dropout(x.float())  # the residual stream is fp32 (see `TransformerBlock`)
        x, all_hidden_states, all_attentions = run_blocks(self.layers, x, rope, False, output_hidden_states,
                                                          output_attentions)
        x = self.norm(x[:, 1:])
        logits = torch.stack([self.head_logits(x, j) for j in range(c.num_codebooks)], dim=1)
        return logits, all_hidden_states, all_attentions

    def random_mask(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.BoolTensor:
        """(B, N) training mask: r ~ U[0, 1), ceil(cos(pi r / 2) N) random positions per sample."""
        n = self.config.num_image_tokens
        r = torch.rand(batch_size, device=device, generator=generator)
        return self._mask_from_uniform(r, torch.rand(batch_size, n, device=device, generator=generator))

    def input_mask(self, input_ids: torch.LongTensor) -> torch.BoolTensor:
        """(B, N) mask of `random_mask`'s law whose draws are a hash of each sample's own ids: an eval forward
        gives the same mask, and loss, for the same grid whatever the batch, while distinct grids get their own
        masking ratios, as the training objective averages over; pure tensor ops, so graphs trace it too."""
        n = self.config.num_image_tokens
        uniform = hashed_uniform(input_ids.flatten(1), n + 1)
        return self._mask_from_uniform(uniform[:, 0], uniform[:, 1:])

    def _mask_from_uniform(self, r: torch.Tensor, scores: torch.Tensor) -> torch.BoolTensor:
        n = self.config.num_image_tokens
        num_masked = torch.ceil(torch.cos(math.pi / 2 * r) * n).clamp(1, n)
        ranks = scores.argsort(dim=1).argsort(dim=1)
        return ranks < num_masked[:, None]

    def forward(
        self,
        input_ids: torch.LongTensor,
        class_labels: torch.LongTensor,
        masked_positions: torch.BoolTensor | None = None,
        generator: torch.Generator | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
    ) -> MaskGITOutput | tuple:
        r"""Mask whole positions of clean token grids and return the loss of predicting them.

        Args:
            input_ids: (B, k, N) clean token ids, sub-codebooks in FAR order.
            class_labels: (B,) class ids; dropped to the null class (num_classes) with class_dropout_prob in training.
            masked_positions: (B, N) bool positions to mask; drawn with `random_mask` when None. All False gives
                the states of fully visible grids (the loss is then NaN: no position is predicted).
            generator: torch.Generator for the random mask. Without one, training draws from torch's global
                stream, and eval mode takes `input_mask`, a function of each grid's ids, so that evaluating the
                same grids gives the same loss each time (transformers' eval contract).
            output_hidden_states: also return the hidden states (see `MaskGITOutput`); default
                `config.output_hidden_states`.
            return_dict: default `config.return_dict`; False returns `MaskGITOutput.to_tuple()`: (loss, logits,
                masked_positions, hidden_states, attentions) without the entries that are None.
            output_attentions: also return the attention weights (see `MaskGITOutput`); needs
                `attn_implementation="eager"`. Default `config.output_attentions`.
        """
        c = self.config
        if output_hidden_states is None:
            output_hidden_states = c.output_hidden_states
        output_attentions = self._check_output_attentions(output_attentions)
        input_ids = self._check_token_ids(input_ids, min_length=c.num_image_tokens)
        batch = input_ids.shape[0]
        class_labels = check_class_labels(class_labels, c.num_classes, input_ids.device, batch, self.training)
        if masked_positions is None and generator is None and not self.training:
            masked_positions = self.input_mask(input_ids)
        elif masked_positions is None:
            masked_positions = self.random_mask(batch, input_ids.device, generator)
        elif masked_positions.shape != (batch, c.num_image_tokens) or masked_positions.dtype != torch.bool:
            raise ValueError(
                f"masked_positions must be a bool tensor of shape ({batch}, {c.num_image_tokens}), got "
                f"{masked_positions.dtype} {tuple(masked_positions.shape)}"
            )
        logits, all_hidden_states, all_attentions = self._predict(
            input_ids.masked_fill(masked_positions[:, None], c.mask_token), class_labels, output_hidden_states,
            output_attentions,
        )
        targets = input_ids.masked_fill(~masked_positions[:, None], -100)
        losses = [
            F.cross_entropy(logits[:, j].flatten(0, 1), targets[:, j].flatten(), label_smoothing=c.label_smoothing)
            for j in range(c.num_codebooks)
        ]
        loss = torch.stack(losses).mean()
        output = MaskGITOutput(loss=loss, logits=logits, masked_positions=masked_positions,
                               hidden_states=all_hidden_states, attentions=all_attentions)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return output if return_dict else output.to_tuple()

    def num_sampling_steps(self, num_inference_steps: int | None = None) -> int:
        """How many steps (callback calls) `sample` takes: `num_inference_steps`, default 12 (MaskGIT's), at most
        one per position."""
        n = self.config.num_image_tokens
        if num_inference_steps is None:
            return min(DEFAULT_NUM_STEPS, n)
        steps = as_number("num_inference_steps", num_inference_steps, integer=True)
        if not 1 <= steps <= n:
            raise ValueError(
                f"num_inference_steps must lie in [1, {n}] (each step reveals at least one of the {n} positions), "
                f"got {steps}"
            )
        return steps

    # Not `forward`: `apply_forward_hook` runs a model-offload hook's onloading first, as diffusers' VAEs do.
    @apply_forward_hook
    @torch.no_grad()
    def sample(
        self,
        class_labels: torch.Tensor | Sequence[int],
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        choice_temperature: float = 4.5,
        generator: Generators = None,
        cfg_schedule: str = "constant",
        callback: Callable[[int, torch.Tensor], None] | None = None,
        compile: bool = False,
        device: torch.device | str | None = None,
    ) -> torch.LongTensor:
        """Sample (B, k, N) token grids in `num_inference_steps` parallel decoding steps (default 12).

        Each step samples every masked position (temperature, top-k, top-p per sub-token, CFG as the AR model),
        then keeps the `masking_schedule` number of least confident positions masked. Confidence is the sum of
        a position's k sub-token log-probabilities plus Gumbel noise scaled by
        choice_temperature * (1 - (t + 1) / num_inference_steps); revealed positions are never masked again.

        Args:
            callback: called as callback(step, tokens) after each step; masked entries hold config.mask_token.
            compile: part of the generators' shared sampling contract; MaskGIT samples eagerly, so only False.
            device: where the decoding runs; default the weights' device (pipelines pass their execution device).
        """
        c = self.config
        device = sampling_device(self, device)
        num_steps = self.num_sampling_steps(num_inference_steps)
        if compile:
            raise ValueError("compile=True is for AR generators (FAR/GPT); MaskGIT samples eagerly")
        labels = check_class_labels(class_labels, c.num_classes, device)
        guidance_scale, temperature, top_k, top_p = check_sampling_args(
            guidance_scale, temperature, top_k, top_p, c.vocab_size, cfg_schedule
        )
        check_generators(generator, labels.shape[0])
        choice_temperature = as_number("choice_temperature", choice_temperature)
        if not choice_temperature >= 0:
            raise ValueError(f"choice_temperature must be >= 0, got {choice_temperature}")
        warpers = logits_warpers(temperature, top_k, top_p)
        use_cfg = guidance_scale != 1.0
        batch, k, n = labels.shape[0], c.num_codebooks, c.num_image_tokens
        if use_cfg:
            labels = torch.cat([labels, torch.full_like(labels, c.num_classes)])

        tokens = torch.full((batch, k, n), c.mask_token, dtype=torch.long, device=device)
        unknown = torch.ones(batch, n, dtype=torch.bool, device=device)
        with eval_mode(self):
            for step, num_masked in enumerate(masking_schedule(n, num_steps)):
                logits = self._predict(torch.cat([tokens, tokens]) if use_cfg else tokens, labels, False)[0]
                if use_cfg:
                    logits = guide(logits, guidance_scale_at(guidance_scale, cfg_schedule, 1 - num_masked / n))
                logits = warp(logits.flatten(0, 2), warpers)
                if generator is not None:  # `SEEDED_DRAWS`
                    uniform = uniform_noise((batch, k * n), generator, device).flatten()
                    sampled = multinomial_from_uniform(logits.softmax(-1), uniform)[:, None]
                else:
                    sampled = torch.multinomial(logits.softmax(-1), 1)
                log_probs = logits.log_softmax(-1).gather(-1, sampled).view(batch, k, n).sum(1)
                sampled = torch.where(unknown[:, None], sampled.view(batch, k, n), tokens)
                if num_masked == 0:
                    tokens = sampled
                else:
                    noise = uniform_noise((batch, n), generator, device)
                    gumbel = -torch.log(-torch.log(noise.clamp_min(torch.finfo(noise.dtype).tiny)))
                    confidence = log_probs + choice_temperature * (1 - (step + 1) / num_steps) * gumbel
                    confidence = confidence.masked_fill(~unknown, math.inf)
                    least = confidence.topk(num_masked, dim=1, largest=False).indices
                    unknown = torch.zeros_like(unknown).scatter_(1, least, True)
                    tokens = sampled.masked_fill(unknown[:, None], c.mask_token)
                if callback is not None:
                    callback(step, tokens)
        return tokens
