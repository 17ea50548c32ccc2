"""Configuration of the FAR / LlamaGen GPT class-conditional generator."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .blocks import round_up

# Sizes from LlamaGen (gpt.py) and FQGAN (far_dual.py / far_triple.py).
FAR_PRESETS: dict[str, dict] = {
    "GPT-B": dict(num_hidden_layers=12, num_attention_heads=12, hidden_size=768, num_codebooks=1),
    "GPT-L": dict(num_hidden_layers=24, num_attention_heads=16, hidden_size=1024, num_codebooks=1),
    "GPT-XL": dict(num_hidden_layers=36, num_attention_heads=20, hidden_size=1280, num_codebooks=1),
    "GPT-XXL": dict(num_hidden_layers=48, num_attention_heads=24, hidden_size=1536, num_codebooks=1),
    "GPT-3B": dict(num_hidden_layers=24, num_attention_heads=32, hidden_size=3200, num_codebooks=1),
    "FAR-Base": dict(
        num_hidden_layers=24, num_attention_heads=16, hidden_size=1024, num_codebooks=2, num_head_layers=3
    ),
    "FAR-Large": dict(
        num_hidden_layers=36, num_attention_heads=20, hidden_size=1280, num_codebooks=2, num_head_layers=4
    ),
}


def check_generator_config(config: PreTrainedConfig) -> None:
    """Shape checks shared by the FAR and MaskGIT configs."""
    for name in ("vocab_size", "num_codebooks", "num_classes", "grid_size", "num_hidden_layers"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.hidden_size % config.num_attention_heads != 0:
        raise ValueError(
            f"hidden_size ({config.hidden_size}) must be a multiple of num_attention_heads "
            f"({config.num_attention_heads})"
        )
    if (config.hidden_size // config.num_attention_heads) % 4 != 0:
        raise ValueError(
            f"head_dim = hidden_size / num_attention_heads = {config.hidden_size // config.num_attention_heads} "
            "must be a multiple of 4 for the 2D rotary embedding (half the pairs per axis)"
        )


@strict
class FARConfig(PreTrainedConfig):
    r"""
    Configuration of [`FARForClassConditionalGeneration`].

    `num_codebooks=1` is exactly a LlamaGen class-conditional GPT; `num_codebooks>1` (FQGAN-Dual: 2,
    Triple: 3) adds the aggregation layer and the factorized AR head of FAR.

    Args:
        vocab_size: codebook size (per sub-codebook).
        num_codebooks: k, the number of sub-tokens per grid position (vis first, then the semantic ones).
        num_classes: number of classes; the class table has num_classes + 1 rows, the last is the null class.
        hidden_size, num_hidden_layers, num_attention_heads: backbone size.
        intermediate_size: SwiGLU width; default round_up(8 * hidden_size / 3, 256) as LlamaGen.
        num_head_layers: depth of the FAR AR head (blocks of backbone width); ignored when num_codebooks == 1.
        grid_size: tokens per image side; a sequence has grid_size**2 positions.
        cls_token_num: condition positions before the image tokens (class-conditional models use 1).
        rms_norm_eps, rope_theta: RMSNorm epsilon and 2D RoPE base.
        class_dropout_prob: probability of dropping the label to the null class in training (for CFG).
        token_dropout, resid_dropout, ffn_dropout, attention_dropout: dropout rates as LlamaGen.
        initializer_range: std of the normal init of linear and embedding weights.

    Example:
        >>> config = FARConfig.from_preset("FAR-Base", num_codebooks=3)
    """

    model_type = "hf_vq_far"

    vocab_size: int = 16384
    num_codebooks: int = 1
    num_classes: int = 1000
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    num_head_layers: int = 3
    grid_size: int = 16
    cls_token_num: int = 1
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
        if self.intermediate_size is None:
            self.intermediate_size = round_up(8 * self.hidden_size // 3, 256)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: sizes that the model cannot be built with."""
        check_generator_config(self)
        if self.num_codebooks > 1 and self.num_head_layers < 1:
            raise ValueError(f"num_codebooks={self.num_codebooks} needs num_head_layers >= 1 for the FAR head")
        if self.num_codebooks > self.grid_size**2 + 1:
            raise ValueError("the FAR head uses RoPE rows 0..num_codebooks-1, so num_codebooks <= grid_size**2 + 1")
        if self.cls_token_num != 1:
            raise ValueError(
                f"cls_token_num={self.cls_token_num}: class-conditional LlamaGen/FAR models use exactly one "
                "condition token"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_image_tokens(self) -> int:
        return self.grid_size**2

    @classmethod
    def from_preset(cls, name: str, **overrides) -> FARConfig:
        """A config for one of FAR_PRESETS ("GPT-B" ... "GPT-3B", "FAR-Base", "FAR-Large"), with overrides."""
        if name not in FAR_PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(FAR_PRESETS)}")
        return cls(**{**FAR_PRESETS[name], **overrides})
