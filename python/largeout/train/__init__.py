"""The reference trainer (``largeout train`` / ``python -m largeout``)."""

from .config import TrainConfig, load_config
from .data import Dataset, Split, load_dataset
from .trainer import evaluate_split, predict_topk, train

__all__ = ["TrainConfig", "load_config", "train", "predict_topk", "evaluate_split", "Dataset", "Split", "load_dataset"]
