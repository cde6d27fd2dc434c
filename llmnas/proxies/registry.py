"""The proxies by name, with the direction in which each is a *quality* score."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llmnas.proxies.common import Batch, ProxyError
from llmnas.proxies.counts import non_embedding_params, params
from llmnas.proxies.grad_norm import grad_norm
from llmnas.proxies.synflow import synflow
from llmnas.space.arch import Architecture

ProxyFn = Callable[[Architecture, Batch | None, int], float]


@dataclass(frozen=True)
class Proxy:
    """A zero-cost proxy.

    Attributes:
        fn: ``fn(arch, batch, seed) -> float``; deterministic for a given seed and batch.
        direction: ``"maximize"`` when a larger value predicts a better (lower-loss) model after training,
            else ``"minimize"``.
        needs_data: whether ``fn`` reads ``batch`` (the others take ``None``).
    """

    fn: ProxyFn
    direction: str
    needs_data: bool


PROXIES: dict[str, Proxy] = {
    "params": Proxy(params, "maximize", needs_data=False),
    "non_embedding_params": Proxy(non_embedding_params, "maximize", needs_data=False),
    "synflow": Proxy(synflow, "maximize", needs_data=False),
    "grad_norm": Proxy(grad_norm, "maximize", needs_data=True),
}


def get_proxy(name: str) -> Proxy:
    """The proxy called ``name``; an unknown name raises :class:`ProxyError` listing the known ones."""
    if name not in PROXIES:
        raise ProxyError(f"proxy {name!r} is not known (allowed: {', '.join(PROXIES)})")
    return PROXIES[name]


def score(name: str, arch: Architecture, batch: Batch | None = None, seed: int = 0) -> float:
    """The value of proxy ``name`` for ``arch`` (the batch only reaches proxies that read data)."""
    proxy = get_proxy(name)
    return proxy.fn(arch, batch if proxy.needs_data else None, seed)


def objective_name(name: str) -> str:
    """The search objective (always minimised) that stands for proxy ``name``: ``neg_<name>`` for a proxy
    that is maximised, whose value is the negated score, else ``<name>`` itself."""
    return f"neg_{name}" if get_proxy(name).direction == "maximize" else name


def proxy_of_objective(objective: str) -> str | None:
    """The proxy an objective name stands for (``neg_synflow`` -> ``synflow``), or ``None``."""
    for name in PROXIES:
        if objective_name(name) == objective:
            return name
    return None


def objective_value(name: str, value: float) -> float:
    """A proxy's value as its (minimised) objective: negated for a maximised proxy."""
    return -value if get_proxy(name).direction == "maximize" else value
