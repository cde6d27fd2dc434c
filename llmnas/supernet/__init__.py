"""The weight-shared supernet of a transformer space: train once, score any subnet with inherited weights.

- :class:`SuperNet` (:mod:`llmnas.supernet.model`): maximum-size weights; ``forward(idx, arch)`` runs a
  subnet, ``extract(arch)`` returns it as a standalone :class:`~llmnas.models.decoder.Decoder`.
- :func:`train_supernet` (:mod:`llmnas.supernet.train`): the sandwich rule, in-place distillation and
  progressive shrinking under Accelerate (``python``, DDP, DeepSpeed), with checkpoints and resume.
- :func:`load_supernet`, :func:`evaluate_subnet` (inherited weights as they are) and :func:`finetune_subnet`
  (after a few steps of training from them): what the search's ``supernet`` evaluator uses.
"""

from __future__ import annotations

from llmnas.supernet.checkpoint import SupernetCheckpoint, load_supernet
from llmnas.supernet.config import SupernetConfig
from llmnas.supernet.dims import SupernetDims
from llmnas.supernet.evaluate import SubnetView, evaluate_subnet, finetune_subnet
from llmnas.supernet.model import SuperNet, subnet_weights

__all__ = [
    "SubnetView",
    "SuperNet",
    "SupernetCheckpoint",
    "SupernetConfig",
    "SupernetDims",
    "evaluate_subnet",
    "finetune_subnet",
    "load_supernet",
    "subnet_weights",
]
