"""Configuration of the MaskGIT-style (NAR) class-conditional generator."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .blocks import round_up
from .configuration_far import check_generator_config


@strict
class MaskGITConfig(PreTrainedConfig):
    r"""
    Configuration of [`MaskGITForClassConditionalGeneration`]: a bidirectional LlamaGen-block transformer over
    [class, position_0 .. position_{N-1}], each position the aggregation of its k sub-token embeddings.

    Args:
        vocab_size: codebook size (per sub-codebook); each embedding table has one more row, the mask token
            (id vocab_size).
        num_codebooks: k, sub-tokens per grid position; a position is masked and revealed as a whole.
        num_classes: number of classes; the class table has num_classes + 1 rows, the last is the null class.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: transformer size
            (intermediate_size defaults to round_up(8 * hidden_size / 3, 256)).
        grid_size: tokens per image side; N = grid_size**2 positions.
        rms_norm_eps, rope_theta: RMSNorm epsilon and 2D RoPE base.
        class_dropout_prob: probability of dropping the label to the null class in training (for CFG).
        token_dropout, resid_dropout, ffn_dropout, attention_dropout: dropout rates.
        label_smoothing: label smoothing of the masked-token cross-entropy.
        initializer_range: std of the normal init of linear and embedding weights.
    """

    model_type = "hf_vq_maskgit"

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
    label_smoothing: float = 0.1
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = round_up(8 * self.hidden_size // 3, 256)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: sizes that the model cannot be built with."""
        check_generator_config(self)
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_image_tokens(self) -> int:
        return self.grid_size**2

    @property
    def mask_token(self) -> int:
        """Id of the mask token in every sub-codebook's embedding table."""
        return self.vocab_size
