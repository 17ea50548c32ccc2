"""Configuration of the FAR / LlamaGen GPT class-conditional generator."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_base import ClassConditionalGeneratorConfig

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


@strict
class FARConfig(ClassConditionalGeneratorConfig):
    r"""
    Configuration of [`FARForClassConditionalGeneration`].

    `num_codebooks=1` is exactly a LlamaGen class-conditional GPT; `num_codebooks>1` (FQGAN-Dual: 2,
    Triple: 3) adds the aggregation layer and the factorized AR head of FAR.

    Args (besides those of [`ClassConditionalGeneratorConfig`]):
        num_head_layers: depth of the FAR AR head (blocks of backbone width); ignored when num_codebooks == 1.
        cls_token_num: condition positions before the image tokens (class-conditional models use 1).

    Example:
        >>> config = FARConfig.from_preset("FAR-Base", num_codebooks=3)
    """

    model_type = "hf_vq_far"

    num_head_layers: int = 3
    cls_token_num: int = 1

    def validate_architecture(self):
        """Part of `@strict` validation: sizes that the model cannot be built with."""
        super().validate_architecture()
        if self.num_codebooks > 1 and self.num_head_layers < 1:
            raise ValueError(f"num_codebooks={self.num_codebooks} needs num_head_layers >= 1 for the FAR head")
        if self.num_codebooks > self.grid_size**2 + 1:
            raise ValueError("the FAR head uses RoPE rows 0..num_codebooks-1, so num_codebooks <= grid_size**2 + 1")
        if self.cls_token_num != 1:
            raise ValueError(
                f"cls_token_num={self.cls_token_num}: class-conditional LlamaGen/FAR models use exactly one "
                "condition token"
            )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> FARConfig:
        """A config for one of FAR_PRESETS ("GPT-B" ... "GPT-3B", "FAR-Base", "FAR-Large"), with overrides."""
        if name not in FAR_PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(FAR_PRESETS)}")
        return cls(**{**FAR_PRESETS[name], **overrides})
