"""The configuration base every class-conditional token generator shares (FAR / LlamaGen GPT, MaskGIT)."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ..utils import check_config_types
from .blocks import round_up


def _declared_fields(config_class: type) -> dict[str, Any]:
    """Type hints of the fields hf_vq's generator configs declare (not those of transformers' PreTrainedConfig)."""
    hints = {}
    for klass in reversed(config_class.__mro__):
        if isinstance(klass, type) and issubclass(klass, ClassConditionalGeneratorConfig):
            namespace = vars(sys.modules[klass.__module__])
            for name, hint in vars(klass).get("__annotations__", {}).items():
                hints[name] = eval(hint, namespace) if isinstance(hint, str) else hint  # postponed annotations
    return hints


@strict
class ClassConditionalGeneratorConfig(PreTrainedConfig):
    r"""
    Fields shared by hf_vq's generators over (B, k, N) token grids of LlamaGen blocks.

    Args:
        vocab_size: codebook size (per sub-codebook).
        num_codebooks: k, the number of sub-tokens per grid position (vis first, then the semantic ones).
        num_classes: number of classes; the class table has num_classes + 1 rows, the last is the null class.
        hidden_size, num_hidden_layers, num_attention_heads: transformer size.
        intermediate_size: SwiGLU width; default round_up(8 * hidden_size / 3, 256) as LlamaGen.
        grid_size: tokens per image side; a sequence has grid_size**2 positions.
        rms_norm_eps, rope_theta: RMSNorm epsilon and 2D RoPE base.
        class_dropout_prob: probability of dropping the label to the null class in training (for CFG).
        token_dropout, resid_dropout, ffn_dropout, attention_dropout: dropout rates as LlamaGen.
        initializer_range: std of the normal init of linear and embedding weights.
    """

    vocab_size: int = 16384
    num_codebooks: int = 1
    num_classes: int = 1000
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    grid_size: int = 16
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    class_dropout_prob: float = 0.1
    token_dropout: float = 0.1
    resid_dropout: float = 0.1
    ffn_dropout: float = 0.1
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        hints = _declared_fields(type(self))
        check_config_types({name: getattr(self, name) for name in hints}, hints, type(self).__name__)
        if self.intermediate_size is None:
            self.intermediate_size = round_up(8 * self.hidden_size // 3, 256)
        super().__post_init__(**kwargs)

    @classmethod
    def unknown_keys(cls, kwargs: dict[str, Any]) -> list[str]:
        """The keys of `kwargs` that are no field of this config. transformers keeps extra keys as plain attributes,
        so a typo ("hidden_sise") would build the default size without a word; a config read from a user's file is
        checked with this first."""
        return sorted(set(kwargs) - {f.name for f in dataclasses.fields(cls)} - {"model_type"})

    def validate_architecture(self):
        """Part of `@strict` validation: sizes that the model cannot be built with."""
        sizes = ("vocab_size", "num_codebooks", "num_classes", "grid_size", "num_hidden_layers", "hidden_size",
                 "num_attention_heads", "intermediate_size")
        for name in sizes:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("class_dropout_prob", "token_dropout", "resid_dropout", "ffn_dropout", "attention_dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability: it must lie in [0, 1], got {getattr(self, name)}")
        if self.tie_word_embeddings:
            raise ValueError("tie_word_embeddings=True cannot apply: the k output heads are kept apart from the "
                             "embedding tables (MaskGIT's tables have a mask row more), so set it to False")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.head_dim % 4 != 0:
            raise ValueError(
                f"head_dim = hidden_size / num_attention_heads = {self.head_dim} must be a multiple of 4 for the "
                "2D rotary embedding (half the pairs per axis)"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_image_tokens(self) -> int:
        return self.grid_size**2
