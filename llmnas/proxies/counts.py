"""Parameter-count proxies: the size of an architecture, from its spec alone (no model is built)."""

from __future__ import annotations

from llmnas.proxies.common import Batch
from llmnas.space.arch import Architecture


def params(arch: Architecture, batch: Batch | None = None, seed: int = 0) -> float:
    """Total parameters (tied embeddings counted once); ``batch`` and ``seed`` are not used."""
    return float(arch.param_counts().total)


def non_embedding_params(arch: Architecture, batch: Batch | None = None, seed: int = 0) -> float:
    """Decoder parameters outside the token embedding, the learned position table and an untied output head.

    The proxy of LiteTransformerSearch (Javaheripi et al., 2022): among decoders of one family the
    non-embedding parameter count ranks the validation perplexity after training well. ``batch`` and
    ``seed`` are not used.
    """
    return float(arch.param_counts().non_embedding)
