"""Configuration of the MaskGIT-style (NAR) class-conditional generator."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict

from .configuration_base import ClassConditionalGeneratorConfig


@strict
class MaskGITConfig(ClassConditionalGeneratorConfig):
    r"""
    Configuration of [`MaskGITForClassConditionalGeneration`]: a bidirectional LlamaGen-block transformer over
    [class, position_0 .. position_{N-1}], each position the aggregation of its k sub-token embeddings.

    Each sub-codebook's embedding table has one more row than `vocab_size`, the mask token (id vocab_size); a
    position is masked and revealed as a whole (all k sub-tokens together).

    Args (besides those of [`ClassConditionalGeneratorConfig`]):
        label_smoothing: label smoothing of the masked-token cross-entropy.
    """

    model_type = "hf_vq_maskgit"

    label_smoothing: float = 0.1

    def validate_architecture(self):
        """Part of `@strict` validation: sizes that the model cannot be built with."""
        super().validate_architecture()
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")

    @property
    def mask_token(self) -> int:
        """Id of the mask token in every sub-codebook's embedding table."""
        return self.vocab_size
