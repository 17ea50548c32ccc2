"""Evaluation: reconstruction and codebook statistics, classifier accuracy, Fréchet distances (FID)."""

from .classifier import ClassifierAccuracy
from .fid import InceptionFeatureExtractor, fid_from_features, frechet_distance, frechet_feature_distance
from .inception import FID_WEIGHTS_NAME, FID_WEIGHTS_URL, FIDInceptionV3, find_fid_weights, load_fid_inception
from .metrics import codebook_perplexity, codebook_usage, psnr

__all__ = [
    "FID_WEIGHTS_NAME",
    "FID_WEIGHTS_URL",
    "ClassifierAccuracy",
    "FIDInceptionV3",
    "InceptionFeatureExtractor",
    "codebook_perplexity",
    "codebook_usage",
    "fid_from_features",
    "find_fid_weights",
    "frechet_distance",
    "frechet_feature_distance",
    "load_fid_inception",
    "psnr",
]
