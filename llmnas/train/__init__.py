"""Budgeted, Accelerate-native training of one architecture."""

from llmnas.train.loop import (
    TrainConfig,
    TrainingDiverged,
    TrainingPruned,
    TrainResult,
    lr_at,
    make_accelerator,
    train,
)

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "TrainingPruned", "lr_at", "make_accelerator", "train"]
