"""Decoding with a KV cache over a :class:`~llmnas.models.decoder.Decoder`'s own weights and functions.

The decoder's ``forward`` recomputes the whole context; a served model (the HF export's ``generate``)
keeps each layer's keys and values and computes one new position per step. This module does that for
measurement: :func:`prefill` runs the prompt and fills a :class:`KVCache`, :func:`decode_step` adds one
token. The projections, norms, RoPE, ALiBi, windows and FFNs are the decoder's (its modules and
functions), so the logits equal ``Decoder.forward``'s at every position (tested); the decoder itself is
unchanged.

Shapes: B batch, T new positions, L cached positions, D model width, H query heads, G KV heads, hs head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmnas.models.decoder import (
    AttentionContext,
    Block,
    Decoder,
    MixtureOfExperts,
    alibi_slopes,
    apply_rope,
    rope_tables,
)
from llmnas.space.arch import Architecture


class KVCache:
    """Preallocated keys and values of every layer: ``(B, G, capacity, hs)`` each, filled up to ``length``."""

    def __init__(self, arch: Architecture, batch_size: int, capacity: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if capacity > arch.max_seq_len:
            raise ValueError(f"cache capacity {capacity} exceeds max_seq_len={arch.max_seq_len}")
        self.keys, self.values = [], []
        for spec in arch.blocks:
            a = spec.attn
            shape = (batch_size, a.n_kv_heads, capacity, a.head_dim)
            self.keys.append(torch.empty(shape, device=device, dtype=dtype))
            self.values.append(torch.empty(shape, device=device, dtype=dtype))
        self.capacity, self.length = capacity, 0
        self._rope: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._slopes: dict[int, torch.Tensor] = {}
        self.arch, self.device, self.dtype = arch, torch.device(device), dtype

    @classmethod
    def for_model(cls, model: Decoder, batch_size: int, capacity: int) -> KVCache:
        p = next(model.parameters())
        return cls(model.arch, batch_size, capacity, p.device, p.dtype)

    def rope(self, head_dim: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables of positions ``start .. stop - 1`` (a table's row depends on its position alone)."""
        if head_dim not in self._rope:
            cos, sin = rope_tables(head_dim, self.capacity, self.arch.rope_base, self.device)
            self._rope[head_dim] = (cos.to(self.dtype), sin.to(self.dtype))
        cos, sin = self._rope[head_dim]
        return cos[start:stop], sin[start:stop]

    def slopes(self, n_heads: int) -> torch.Tensor:
        if n_heads not in self._slopes:
            self._slopes[n_heads] = alibi_slopes(n_heads).to(device=self.device, dtype=self.dtype)
        return self._slopes[n_heads]


def attention_step(block: Block, x: torch.Tensor, cache: KVCache, layer: int, ctx: AttentionContext | None,
                   start: int) -> torch.Tensor:
    """``x + attn(norm(x))`` for new positions ``start .. start + T - 1``, keys and values stored in the cache.

    With ``start == 0`` (the prompt) the mask is the decoder's own (``ctx``); later the new query sees the
    cached keys, the last ``window`` of them under a sliding window, with ALiBi's distance bias.
    """
    attn = block.attn
    s, pos = attn.spec, attn.pos
    B, T, _ = x.shape
    h = block.attn_norm(x)
    q = F.linear(h, attn.q.weight).view(B, T, s.n_heads, s.head_dim).transpose(1, 2)  # (B, H, T, hs)
    k = F.linear(h, attn.k.weight).view(B, T, s.n_kv_heads, s.head_dim).transpose(1, 2)  # (B, G, T, hs)
    v = F.linear(h, attn.v.weight).view(B, T, s.n_kv_heads, s.head_dim).transpose(1, 2)
    stop = start + T
    if pos == "rope":
        cos, sin = cache.rope(s.head_dim, start, stop)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    cache.keys[layer][:, :, start:stop] = k
    cache.values[layer][:, :, start:stop] = v
    if start == 0:
        assert ctx is not None
        bias = ctx.bias(s)
        keys, values, causal = k, v, bias is None
    else:
        first = 0 if s.window is None else max(0, start + 1 - s.window)  # the first key the first query sees
        keys, values = cache.keys[layer][:, :, first:stop], cache.values[layer][:, :, first:stop]  # (B, G, L, hs)
        dist = torch.arange(first, stop, device=x.device) - torch.arange(start, stop, device=x.device)[:, None]
        bias, causal = None, False
        if pos == "alibi":
            bias = cache.slopes(s.n_heads)[:, None, None] * dist.to(x.dtype)  # (H, T, L)
        if T > 1:  # several new positions after a prompt: causal (and windowed) among themselves
            hidden = (dist > 0) | (dist <= -s.window if s.window is not None else False)
            mask = torch.zeros(hidden.shape, device=x.device, dtype=x.dtype).masked_fill(hidden, float("-inf"))
            bias = mask if bias is None else bias + mask
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, is_causal=causal,
                                       enable_gqa=s.n_kv_heads != s.n_heads)  # (B, H, T, hs)
    return x + F.linear(y.transpose(1, 2).reshape(B, T, s.q_dim), attn.out.weight)


def ffn_step(block: Block, x: torch.Tensor) -> torch.Tensor:
    """``x + ffn(norm(x))`` (the MoE's auxiliary loss is not needed for inference)."""
    h = block.ffn_norm(x)
    if isinstance(block.ffn, MixtureOfExperts):
        return x + block.ffn(h)[0]
    return x + block.ffn(h)


def embed(model: Decoder, idx: torch.Tensor, start: int) -> torch.Tensor:
    x = model.embed(idx)  # (B, T, D)
    if model.pos_embed is not None:
        x = x + model.pos_embed.weight[start : start + idx.shape[1]]
    return x


def head(model: Decoder, x: torch.Tensor) -> torch.Tensor:
    """Logits of the last position only ``(B, vocab)``: what sampling the next token needs."""
    return F.linear(model.norm(x[:, -1]), model.output_weight)


@torch.no_grad()
def forward_cached(model: Decoder, idx: torch.Tensor, cache: KVCache, all_logits: bool = False) -> torch.Tensor:
    """Process tokens ``idx (B, T)`` after the ``cache.length`` cached ones and return the next-token logits
    ``(B, vocab)`` (``(B, T, vocab)`` with ``all_logits``)."""
    start = cache.length
    B, T = idx.shape
    if start + T > cache.capacity:
        raise ValueError(f"{start + T} positions exceed the cache's capacity {cache.capacity}")
    x = embed(model, idx, start)
    ctx = AttentionContext(model.arch, T, idx.device, x.dtype) if start == 0 else None
    for i, block in enumerate(model.layers):
        x = ffn_step(block, attention_step(block, x, cache, i, ctx, start))
    cache.length = start + T
    if all_logits:
        return F.linear(model.norm(x), model.output_weight)
    return head(model, x)


def prefill(model: Decoder, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run the prompt ``idx (B, T)`` into an empty ``cache``; the next-token logits ``(B, vocab)``."""
    cache.length = 0
    return forward_cached(model, idx, cache)


def decode_step(model: Decoder, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One generated token ``(B, 1)`` at the next position; the following token's logits ``(B, vocab)``."""
    return forward_cached(model, token, cache)


@torch.no_grad()
def generate_greedy(model: Decoder, prompt: torch.Tensor, new_tokens: int, cache: KVCache) -> torch.Tensor:
    """Greedy decoding with the cache: the ``new_tokens`` ids after ``prompt`` ``(B, new_tokens)``."""
    logits = prefill(model, prompt, cache)
    out = []
    for _ in range(new_tokens):
        nxt = logits.argmax(-1, keepdim=True)  # (B, 1)
        out.append(nxt)
        logits = decode_step(model, nxt, cache)
    return torch.cat(out, dim=1)
