"""Hardware-aware search: measured latency, throughput and memory, and a latency predictor that reports its error.

- :func:`measure` / :func:`measure_many`: prefill latency, decode tokens/s with a KV cache, training-step time
  and peak memory of architectures on this machine's CPU or GPU, medians over interleaved repeats, with the
  settings and the device description (:func:`describe_device`) recorded beside every figure.
- :class:`LatencyPredictor`: a per-block look-up table plus a small regression over architecture features,
  fitted by :func:`profile_space` on a measured sample of a space, saved with the device and space it is
  valid for, and reporting its error on held-out architectures; :func:`load_predictor` refuses it elsewhere.
- :mod:`llmnas.hardware.objectives`: the recipe's ``hardware`` section (objectives ``prefill_ms``,
  ``decode_tokens_per_s``, ``peak_memory_mb``; latency caps) for the search engine.

Example:
    >>> from llmnas.space import load_space
    >>> m = measure(load_space("tiny").sample(0), "cpu", repeats=3, train_repeats=0, memory=False)
    >>> sorted(m.values())
    ['decode_ms_per_step', 'decode_tokens_per_s', 'prefill_ms']
"""

from __future__ import annotations

from llmnas.hardware.device import HardwareError, describe_device, resolve_device
from llmnas.hardware.measure import Figure, Measurement, Settings, measure, measure_many
from llmnas.hardware.predictor import LatencyPredictor, load_predictor, space_identity
from llmnas.hardware.profile import profile_space

__all__ = [
    "Figure",
    "HardwareError",
    "LatencyPredictor",
    "Measurement",
    "Settings",
    "describe_device",
    "load_predictor",
    "measure",
    "measure_many",
    "profile_space",
    "resolve_device",
    "space_identity",
]
