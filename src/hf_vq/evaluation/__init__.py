"""Evaluation with the protocols of published numbers: one small module per metric, plain torch/numpy/scipy.

Distribution metrics (FID or a named Fréchet distance, Inception Score, precision/recall) run on a
`FeatureNetwork`; reconstruction metrics (PSNR, SSIM, LPIPS) on uint8-rounded images; codebook statistics over
the whole evaluation set; the AR proposal network's validation perplexity on held-out tokens.
"""

from .classifier import ClassifierAccuracy
from .codebook import CodebookStatistics, codebook_entropy, codebook_perplexity, codebook_usage
from .evaluate_modules import EVALUATE_MODULES, evaluate_module_path
from .feature_sets import FeatureSet, dataset_images, feature_set_of_images, load_feature_set
from .features import (
    FEATURE_NETWORKS,
    ClassifierNetwork,
    FeatureNetwork,
    InceptionNetwork,
    bundled_classifier_path,
    extract_features,
    load_feature_network,
)
from .fid import InceptionFeatureExtractor, fid_from_features, frechet_distance, frechet_feature_distance
from .images import check_image_batch, check_image_pair, to_uint8_unit
from .inception import FID_WEIGHTS_NAME, FID_WEIGHTS_URL, FIDInceptionV3, find_fid_weights, load_fid_inception
from .inception_score import InceptionScore, inception_score
from .lpips import LPIPS, find_lpips_weights, find_vgg16_weights
from .metrics import psnr, psnr_uint8
from .perplexity import ValidationPerplexity, validation_perplexity
from .precision_recall import PrecisionRecall, manifold_radii, precision_recall
from .reports import check_comparable, evaluate_generation, evaluate_tokenizer
from .sampling import generate_samples, load_samples, pipeline_sample_fn, sample_seed
from .ssim import ssim, ssim_gaussian

__all__ = [
    "EVALUATE_MODULES",
    "FEATURE_NETWORKS",
    "FID_WEIGHTS_NAME",
    "FID_WEIGHTS_URL",
    "LPIPS",
    "ClassifierAccuracy",
    "ClassifierNetwork",
    "CodebookStatistics",
    "FIDInceptionV3",
    "FeatureNetwork",
    "FeatureSet",
    "InceptionFeatureExtractor",
    "InceptionNetwork",
    "InceptionScore",
    "PrecisionRecall",
    "ValidationPerplexity",
    "bundled_classifier_path",
    "check_comparable",
    "check_image_batch",
    "check_image_pair",
    "codebook_entropy",
    "codebook_perplexity",
    "codebook_usage",
    "dataset_images",
    "evaluate_generation",
    "evaluate_module_path",
    "evaluate_tokenizer",
    "extract_features",
    "feature_set_of_images",
    "fid_from_features",
    "find_fid_weights",
    "find_lpips_weights",
    "find_vgg16_weights",
    "frechet_distance",
    "frechet_feature_distance",
    "generate_samples",
    "inception_score",
    "load_feature_network",
    "load_feature_set",
    "load_fid_inception",
    "load_samples",
    "manifold_radii",
    "pipeline_sample_fn",
    "precision_recall",
    "psnr",
    "psnr_uint8",
    "sample_seed",
    "ssim",
    "ssim_gaussian",
    "to_uint8_unit",
    "validation_perplexity",
]
