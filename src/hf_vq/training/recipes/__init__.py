"""Objectives on the shared training loop: one recipe per kind of model trained."""

from .generators import ARGeneratorRecipe, GeneratorRecipe, NARGeneratorRecipe
from .tokenizer_gan import TokenizerGANRecipe
from .vitvqgan import ViTVQGANRecipe
from .vqkd import VQKDPixelDecoderRecipe, VQKDRecipe

__all__ = [
    "ARGeneratorRecipe",
    "GeneratorRecipe",
    "NARGeneratorRecipe",
    "TokenizerGANRecipe",
    "VQKDPixelDecoderRecipe",
    "VQKDRecipe",
    "ViTVQGANRecipe",
]
