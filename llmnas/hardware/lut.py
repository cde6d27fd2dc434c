"""The per-block look-up table: each distinct block shape's latency, measured once.

A decoder's latency is, to first order, the sum of its parts: the embedding and output head (fixed by the
width, vocabulary and positions) and, per layer, its attention and its FFN. A part's cost depends on its
shape alone (width, heads, KV heads, head width, window, positions, norm; FFN kind, width, activation,
experts), not on where it sits, so the table holds one entry per distinct shape (:func:`block_keys`): an
architecture whose layers repeat a shape, or two architectures that share one, reuse its entry.

Each entry is timed as the decoder runs it when serving (:mod:`llmnas.hardware.cache`): the prompt's
positions at once (prefill), and one position with a cache of ``prompt_len + new_tokens / 2`` keys (the
average context of a decoding step). Entries are timed in shuffled rounds, interleaved like
:func:`~llmnas.hardware.measure.measure_many`'s, and the median is kept.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from typing import Any

import torch

from llmnas.hardware.cache import KVCache, attention_step, embed, ffn_step, head
from llmnas.hardware.device import resolve_dtype
from llmnas.hardware.measure import Settings, in_fresh_process, timer, torch_threads
from llmnas.models.decoder import AttentionContext, Block, Decoder
from llmnas.space.arch import Architecture, BlockSpec, _block_to_dict

MODES = ("prefill", "decode")


def base_key(arch: Architecture) -> str:
    return json.dumps(["base", arch.vocab_size, arch.d_model, arch.norm, arch.pos, arch.tie_embeddings,
                       arch.max_seq_len])


def attn_key(arch: Architecture, block: BlockSpec) -> str:
    return json.dumps(["attn", arch.d_model, arch.norm, arch.pos, _block_to_dict(block)["attn"]], sort_keys=True)


def ffn_key(arch: Architecture, block: BlockSpec) -> str:
    return json.dumps(["ffn", arch.d_model, arch.norm, _block_to_dict(block)["ffn"]], sort_keys=True)


def block_keys(arch: Architecture) -> list[str]:
    """The table's keys an architecture uses: its base, then each layer's attention and FFN (repeats kept)."""
    keys = [base_key(arch)]
    for b in arch.blocks:
        keys += [attn_key(arch, b), ffn_key(arch, b)]
    return keys


def _one_layer(arch: Architecture, block: BlockSpec) -> Architecture:
    return arch.replace(blocks=(block,))


class _Part:
    """One table entry's module and its two timed calls."""

    def __init__(self, key: str, arch: Architecture, device: torch.device, settings: Settings, seed: int) -> None:
        s, kind = settings, json.loads(key)[0]
        self.key = key
        dtype = resolve_dtype(s.dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Decoder(arch).to(device=device, dtype=dtype).eval()
            x = torch.randn(s.batch_size, s.prompt_len, arch.d_model, generator=torch.Generator().manual_seed(seed))
            x = x.to(device=device, dtype=dtype)
            idx = torch.randint(0, arch.vocab_size, (s.batch_size, s.prompt_len)).to(device)
        mid = s.prompt_len + s.new_tokens // 2
        cache = KVCache(arch, s.batch_size, mid + 1, device, dtype)
        block: Block = model.layers[0]
        ctx = AttentionContext(arch, s.prompt_len, device, dtype)
        one = x[:, :1].contiguous()
        if kind == "base":
            self.calls = {"prefill": lambda: head(model, embed(model, idx, 0)),
                          "decode": lambda: head(model, embed(model, idx[:, :1], mid))}
        elif kind == "attn":
            attention_step(block, x, cache, 0, ctx, 0)  # fills the first positions; a step writes position mid
            self.calls = {"prefill": lambda: attention_step(block, x, cache, 0, ctx, 0),
                          "decode": lambda: attention_step(block, one, cache, 0, None, mid)}
        else:
            self.calls = {"prefill": lambda: ffn_step(block, x), "decode": lambda: ffn_step(block, one)}


def parts_of(archs: Iterable[Architecture]) -> dict[str, Architecture]:
    """Every distinct table key of ``archs``, each with a one-layer architecture that holds that part."""
    out: dict[str, Architecture] = {}
    for arch in archs:
        out.setdefault(base_key(arch), _one_layer(arch, arch.blocks[0]))
        for b in arch.blocks:
            out.setdefault(attn_key(arch, b), _one_layer(arch, b))
            out.setdefault(ffn_key(arch, b), _one_layer(arch, b))
    return out


def measure_parts(parts: dict[str, Architecture], device: torch.device, settings: Settings, *, seed: int = 0,
                  chunk: int = 256, inner: int = 3,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, dict[str, float]]:
    """``{key: {"prefill": ms, "decode": ms}}`` for each part: medians over ``settings.repeats`` shuffled rounds
    of ``inner`` calls each (divided by ``inner``), after ``settings.warmup`` untimed calls; each chunk of parts
    in a fresh process when ``settings.isolate``."""
    out: dict[str, dict[str, float]] = {}
    keys = sorted(parts)
    for first in range(0, len(keys), chunk):
        args = ({k: parts[k] for k in keys[first : first + chunk]}, device, settings, seed + first, inner)
        out.update(in_fresh_process(_measure_parts_chunk, *args) if settings.isolate else _measure_parts_chunk(*args))
        if progress is not None:
            progress(min(first + chunk, len(keys)), len(keys))
    return out


def _measure_parts_chunk(parts: dict[str, Architecture], device: torch.device, settings: Settings, seed: int,
                         inner: int) -> dict[str, dict[str, float]]:
    time_it = timer(device, settings.clock_for(device))
    rng = random.Random(seed)
    with torch_threads(settings.threads), torch.no_grad():
        group = [_Part(k, parts[k], device, settings, seed + i) for i, k in enumerate(sorted(parts))]
        times: dict[tuple[str, str], list[float]] = {(p.key, m): [] for p in group for m in MODES}
        for p in group:
            for m in MODES:
                for _ in range(settings.warmup):
                    p.calls[m]()
        jobs = [(p, m) for p in group for m in MODES]
        for _ in range(settings.repeats):
            rng.shuffle(jobs)
            for p, m in jobs:
                call = p.calls[m]
                times[(p.key, m)].append(1e3 * time_it(lambda call=call: [call() for _ in range(inner)])[0] / inner)
        return {p.key: {m: sorted(times[(p.key, m)])[len(times[(p.key, m)]) // 2] for m in MODES} for p in group}


def lut_sum(arch: Architecture, table: dict[str, dict[str, float]], mode: str) -> float:
    """The architecture's latency as the sum of its parts' entries (``KeyError`` for a part not in the table)."""
    return sum(table[k][mode] for k in block_keys(arch))


def space_parts(space: Any) -> dict[str, Architecture]:
    """Every part any architecture of a transformer space can have (so the table covers the whole space)."""
    from llmnas.space.feasibility import groups

    out: dict[str, Architecture] = {}
    for g in groups(space):
        for a in g.attn:
            for f in g.ffn[:1]:
                out.setdefault(attn_key(g.arch([BlockSpec(a, f)]), BlockSpec(a, f)), g.arch([BlockSpec(a, f)]))
        for f in g.ffn:
            arch = g.arch([BlockSpec(g.attn[0], f)])
            out.setdefault(ffn_key(arch, arch.blocks[0]), arch)
        arch = g.arch([BlockSpec(g.attn[0], g.ffn[0])])
        out.setdefault(base_key(arch), arch)
    return out

