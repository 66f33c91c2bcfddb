"""FID-Inception network and streaming FID / IS / sFID / precision-recall evaluation (see metrics/evaluator.py)."""
from metrics.evaluator import METRICS, Evaluator, features_to_stats
from metrics.features import FeatureCollector
from metrics.files import Reference, SampleBatchWriter, load_reference, save_stats, write_sample_batch
from metrics.formulas import (feature_stats, frechet_distance, frechet_distance_to_features, inception_score,
                              inception_score_splits, precision_recall)
from metrics.inception import FIDInception
from metrics.inception_weights import build_fid_inception, find_fid_weights, load_fid_weights
from metrics.preprocess import MODES, preprocess
from metrics.stats import iter_image_folder, stats_from_images

__all__ = [
    "METRICS", "MODES", "Evaluator", "FIDInception", "FeatureCollector", "Reference", "SampleBatchWriter",
    "build_fid_inception", "feature_stats", "features_to_stats", "find_fid_weights", "frechet_distance",
    "frechet_distance_to_features", "inception_score", "inception_score_splits", "iter_image_folder",
    "load_fid_weights", "load_reference", "precision_recall", "preprocess", "save_stats", "stats_from_images",
    "write_sample_batch",
]
