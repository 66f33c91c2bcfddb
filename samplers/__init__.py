"""Generation algorithms as functions of a model function (no tokenizer, no files, no DDP inside)."""
from samplers.guidance import ClassifierFreeGuidance, combine
from samplers.mask_predict import sample as mask_predict_sample
from core.seeding import row_generators, row_seed, uniform_rows  # the one per-row seeding scheme
from samplers.official_stream import OfficialStream
from samplers.strategy import Strategy

__all__ = ["ClassifierFreeGuidance", "combine", "mask_predict_sample", "OfficialStream", "row_generators", "row_seed",
           "uniform_rows", "Strategy"]
