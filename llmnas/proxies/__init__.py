"""Zero-cost proxies: scores of an architecture at initialisation that predict its quality after training.

Each proxy is a function ``(arch, batch | None, seed) -> float``, deterministic for a given seed;
:data:`PROXIES` names them with the direction in which each is a quality score and whether it reads
data.

- ``params``, ``non_embedding_params``: sizes from the spec (LiteTransformerSearch's proxy is the second).
- ``synflow``: SynFlow (Tanaka et al., 2020) on a log scale, data-free.
- ``grad_norm``: gradient norm of the cross-entropy on one real batch at initialisation.

Example:
    >>> from llmnas.space import load_space
    >>> arch = load_space("tiny").sample(0)
    >>> score("params", arch) == arch.param_counts().total
    True
    >>> score("synflow", arch, seed=0) == score("synflow", arch, seed=0)
    True
"""

from __future__ import annotations

from llmnas.proxies.common import Batch, ProxyError, data_batch, initial_model, one_thread
from llmnas.proxies.counts import non_embedding_params, params
from llmnas.proxies.grad_norm import grad_norm
from llmnas.proxies.registry import (
    PROXIES,
    Proxy,
    get_proxy,
    objective_name,
    objective_value,
    proxy_of_objective,
    score,
)
from llmnas.proxies.synflow import synflow

__all__ = [
    "PROXIES",
    "Batch",
    "Proxy",
    "ProxyError",
    "data_batch",
    "get_proxy",
    "grad_norm",
    "initial_model",
    "non_embedding_params",
    "objective_name",
    "objective_value",
    "one_thread",
    "params",
    "proxy_of_objective",
    "score",
    "synflow",
]
