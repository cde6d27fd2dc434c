"""Budgeted, Accelerate-native training of one architecture."""

from llmnas.train.loop import TrainConfig, TrainingDiverged, TrainingPruned, TrainResult, lr_at, train

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "TrainingPruned", "lr_at", "train"]
