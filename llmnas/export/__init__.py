"""Export architectures and their weights as Hugging Face model directories.

``export_model(arch, out_dir)`` writes a directory that ``AutoModelForCausalLM.from_pretrained`` loads
with a stock transformers class where one fits the architecture exactly, else with the self-contained
llmnas remote code; it checks logits parity before it reports success. ``save_checkpoint`` /
``load_checkpoint`` are the training checkpoints it reads.
"""

from __future__ import annotations

from llmnas.export.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from llmnas.export.exporter import ExportReport, export_model
from llmnas.export.targets import choose_target, misfits

__all__ = [
    "CheckpointError",
    "ExportReport",
    "choose_target",
    "export_model",
    "load_checkpoint",
    "load_weights",
    "misfits",
    "save_checkpoint",
]
