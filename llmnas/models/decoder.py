"""The heterogeneous decoder: one readable PyTorch implementation of any :class:`Architecture`.

Each layer is built from its own :class:`BlockSpec` (heads, KV heads, head width, window, FFN kind),
passed explicitly to the constructor; nothing about the architecture lives in global state. The
weight layouts are the ones the stock Hugging Face classes use (after splitting the fused
projections), so export is a copy, and the ones a weight-shared supernet will slice.

Shapes: B batch, T time, D model width, H query heads, G KV heads, hs head width, E experts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmnas.space.arch import Architecture, AttentionSpec, BlockSpec, MoEFFN


@dataclass
class DecoderOutput:
    """Output of :meth:`Decoder.forward`.

    Attributes:
        logits: ``(B, T, vocab)`` next-token logits.
        loss: mean next-token cross-entropy (nats/token) plus the weighted MoE auxiliary losses, when
            targets were given.
        ce_loss: the cross-entropy part of ``loss`` alone.
        aux_loss: sum over MoE layers of ``aux_loss_weight * load_balancing_loss`` (0 without MoE).
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


# ---------------------------------------------------------------------- positions and masks
def rope_tables(head_dim: int, seq_len: int, base: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin of shape ``(T, hs)`` for Llama's "rotate half" layout.

    Llama computes ``x * cos + cat(-x2, x1) * sin``; with the sign folded into the first half of the sin
    table this is ``x * cos + cat(x2, x1) * signed_sin``, one negation fewer per call.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)  # (T, hs/2)
    return torch.cat((freqs, freqs), dim=-1).cos(), torch.cat((-freqs.sin(), freqs.sin()), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``(B, heads, T, hs)`` by the position tables of :func:`rope_tables`."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * signed_sin


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al., 2022), including the interleaving for non powers of two."""
    closest = 2 ** math.floor(math.log2(n_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest != n_heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        n_extra = min(closest, n_heads - closest)
        slopes += [extra_base ** (2 * i + 1) for i in range(n_extra)]
    return torch.tensor(slopes, dtype=torch.float32)


def attention_bias(
    seq_len: int, window: int | None, slopes: torch.Tensor | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor | None:
    """Additive attention bias for a causal (optionally windowed, optionally ALiBi) layer.

    ``None`` means plain causal attention (SDPA's ``is_causal`` fast path). Otherwise a float tensor of
    shape ``(T, T)`` or ``(H, T, T)`` with ``-inf`` where a query must not see a key.
    """
    if window is None and slopes is None:
        return None
    i = torch.arange(seq_len, device=device)
    dist = i[None, :] - i[:, None]  # key - query, <= 0 where visible
    visible = dist <= 0
    if window is not None:
        visible = visible & (dist > -window)
    bias = torch.zeros(seq_len, seq_len, device=device, dtype=dtype).masked_fill(~visible, float("-inf"))
    if slopes is not None:
        bias = bias + slopes.to(device=device, dtype=dtype)[:, None, None] * dist.to(dtype)
    return bias


class AttentionContext:
    """Per-forward tables shared by the layers: RoPE tables per head width, masks per layer kind.

    Built once per forward pass, so layers with the same shape reuse one table.
    """

    def __init__(self, arch: Architecture, seq_len: int, device: torch.device, dtype: torch.dtype) -> None:
        self.arch, self.seq_len, self.device, self.dtype = arch, seq_len, device, dtype
        self._rope: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._bias: dict[tuple[int | None, int], torch.Tensor | None] = {}

    def rope(self, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        if head_dim not in self._rope:
            cos, sin = rope_tables(head_dim, self.seq_len, self.arch.rope_base, self.device)
            self._rope[head_dim] = (cos.to(self.dtype), sin.to(self.dtype))
        return self._rope[head_dim]

    def bias(self, spec: AttentionSpec) -> torch.Tensor | None:
        alibi = self.arch.pos == "alibi"
        key = (spec.window, spec.n_heads if alibi else 0)
        if key not in self._bias:
            slopes = alibi_slopes(spec.n_heads) if alibi else None
            self._bias[key] = attention_bias(self.seq_len, spec.window, slopes, self.device, self.dtype)
        return self._bias[key]


# ---------------------------------------------------------------------- modules
def norm(x: torch.Tensor, weight: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """RMSNorm or LayerNorm (no bias) over the last ``weight.shape[0]`` channels: what :func:`make_norm`'s
    modules compute, as a function of the weight (the supernet passes a slice)."""
    shape = (weight.shape[0],)
    if kind == "rmsnorm":
        return F.rms_norm(x, shape, weight, eps)
    return F.layer_norm(x, shape, weight, None, eps)


def make_norm(arch: Architecture) -> nn.Module:
    if arch.norm == "rmsnorm":
        return nn.RMSNorm(arch.d_model, eps=arch.norm_eps)
    return nn.LayerNorm(arch.d_model, eps=arch.norm_eps, bias=False)


class Attention(nn.Module):
    """Causal self-attention with GQA/MQA, optional sliding window, RoPE or ALiBi."""

    def __init__(self, d_model: int, spec: AttentionSpec, pos: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.spec, self.pos, self.dropout = spec, pos, dropout
        # Separate projections: contiguous outputs and no slicing in backward (measured faster than fused).
        self.q = nn.Linear(d_model, spec.q_dim, bias=False)
        self.k = nn.Linear(d_model, spec.kv_dim, bias=False)
        self.v = nn.Linear(d_model, spec.kv_dim, bias=False)
        self.out = nn.Linear(spec.q_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        dropout = self.dropout if self.training else 0.0
        weights = (self.q.weight, self.k.weight, self.v.weight, self.out.weight)
        return attend(x, *weights, self.spec, self.pos, ctx, dropout)


def attend(
    x: torch.Tensor,
    wq: torch.Tensor,
    wk: torch.Tensor,
    wv: torch.Tensor,
    wo: torch.Tensor,
    spec: AttentionSpec,
    pos: str,
    ctx: AttentionContext,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Causal self-attention of ``x`` ``(B, T, D)`` with projection weights ``wq (H*hs, D)``, ``wk, wv
    (G*hs, D)`` and ``wo (D, H*hs)``: :class:`Attention`'s computation, shared with the supernet."""
    B, T, _ = x.shape
    s = spec
    q = F.linear(x, wq).view(B, T, s.n_heads, s.head_dim).transpose(1, 2)  # (B, H, T, hs)
    k = F.linear(x, wk).view(B, T, s.n_kv_heads, s.head_dim).transpose(1, 2)  # (B, G, T, hs)
    v = F.linear(x, wv).view(B, T, s.n_kv_heads, s.head_dim).transpose(1, 2)  # (B, G, T, hs)
    if pos == "rope":
        cos, sin = ctx.rope(s.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    bias = ctx.bias(s)
    y = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=bias,
        is_causal=bias is None,
        dropout_p=dropout,
        enable_gqa=s.n_kv_heads != s.n_heads,
    )  # (B, H, T, hs)
    return F.linear(y.transpose(1, 2).reshape(B, T, s.q_dim), wo)


def activate(h: torch.Tensor, activation: str) -> torch.Tensor:
    """Apply an FFN activation; for SwiGLU ``h`` holds ``[gate; up]`` on its last axis."""
    if activation == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    if activation == "gelu":
        return F.gelu(h)
    return F.relu(h).square()  # relu2


def up_width(hidden: int, activation: str) -> int:
    return 2 * hidden if activation == "swiglu" else hidden


class FeedForward(nn.Module):
    """Dense FFN: ``down(act(up(x)))``, or ``down(silu(gate(x)) * up(x))`` for SwiGLU."""

    def __init__(self, d_model: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.activation = activation
        self.gate = nn.Linear(d_model, hidden, bias=False) if activation == "swiglu" else None
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = None if self.gate is None else self.gate.weight
        return feed_forward(x, gate, self.up.weight, self.down.weight, self.activation)


def feed_forward(
    x: torch.Tensor, gate: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor, activation: str
) -> torch.Tensor:
    """:class:`FeedForward` as a function of its weights: ``gate, up (hidden, D)``, ``down (D, hidden)``;
    ``gate`` is used (and required) for SwiGLU only."""
    if activation == "swiglu":
        return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)
    return F.linear(activate(F.linear(x, up), activation), down)


class MixtureOfExperts(nn.Module):
    """Top-k token-choice MoE (Mixtral routing: softmax, top-k, renormalise) with an optional shared expert.

    Tokens are grouped by expert with one sort, so the only Python loop is over experts. Expert
    weights are 3-D tensors, ``up: (E, up_width, D)`` and ``down: (E, D, hidden)``, as in
    transformers' Mixtral.
    """

    def __init__(self, d_model: int, spec: MoEFFN) -> None:
        super().__init__()
        self.spec = spec
        self.router = nn.Linear(d_model, spec.n_experts, bias=False)
        self.up = nn.Parameter(
            torch.empty(spec.n_experts, up_width(spec.expert_hidden, spec.activation), d_model)
        )
        self.down = nn.Parameter(torch.empty(spec.n_experts, d_model, spec.expert_hidden))
        self.shared = (
            FeedForward(d_model, spec.shared_expert_hidden, spec.activation)
            if spec.shared_expert_hidden
            else None
        )

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router probabilities ``(N, E)``, top-k weights ``(N, k)`` and expert indices ``(N, k)``."""
        return route(x, self.router.weight, self.spec.top_k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # unbind once: indexing the 3-D weights per expert would make backward fill E full-size zero grads.
        shared = None
        if self.shared is not None:
            s = self.shared
            shared = (None if s.gate is None else s.gate.weight, s.up.weight, s.down.weight)
        return mixture_of_experts(x, self.router.weight, self.up.unbind(0), self.down.unbind(0), shared, self.spec)


def route(x: torch.Tensor, router: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixtral routing of ``x (N, D)``: softmax over ``router (E, D)``'s logits, top-k, renormalised."""
    probs = F.linear(x, router).float().softmax(dim=-1)
    weights, experts = probs.topk(top_k, dim=-1)
    return probs, weights / weights.sum(dim=-1, keepdim=True), experts


def mixture_of_experts(
    x: torch.Tensor,
    router: torch.Tensor,
    ups: Sequence[torch.Tensor],
    downs: Sequence[torch.Tensor],
    shared: tuple[torch.Tensor | None, torch.Tensor, torch.Tensor] | None,
    spec: MoEFFN,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`MixtureOfExperts` as a function of its weights: ``router (E, D)``, one ``up`` per expert
    ``(up_width, D)`` (``[gate; up]`` for SwiGLU), one ``down`` per expert ``(D, hidden)``, and the shared
    expert's ``(gate, up, down)`` or ``None``. Returns the output and the load-balancing loss."""
    B, T, D = x.shape
    flat = x.reshape(-1, D)  # (N, D)
    probs, weights, experts = route(flat, router, spec.top_k)
    k, E = spec.top_k, spec.n_experts
    expert_of = experts.reshape(-1)  # (N*k,)
    order = expert_of.argsort(stable=True)
    counts = torch.bincount(expert_of, minlength=E)
    token_of = order // k
    xs = flat[token_of]  # (N*k, D), grouped by expert
    outs = []
    for e, chunk in enumerate(xs.split(counts.tolist())):
        if chunk.shape[0]:
            outs.append(F.linear(activate(F.linear(chunk, ups[e]), spec.activation), downs[e]))
    ys = torch.cat(outs) * weights.reshape(-1)[order, None].to(x.dtype)
    out = torch.zeros_like(flat).index_add_(0, token_of, ys)
    if shared is not None:
        out = out + feed_forward(flat, *shared, spec.activation)
    # Load-balancing loss as in Switch Transformer / transformers' Mixtral: E * sum_e f_e * P_e,
    # with f_e the share of tokens whose top-k includes e; it equals k when routing is uniform.
    frac_tokens = counts.to(probs.dtype) / flat.shape[0]
    aux = E * (frac_tokens * probs.mean(dim=0)).sum()
    return out.view(B, T, D), aux


class Block(nn.Module):
    """Pre-norm decoder layer: ``x + attn(norm(x))`` then ``x + ffn(norm(x))``."""

    def __init__(self, arch: Architecture, spec: BlockSpec, dropout: float = 0.0) -> None:
        super().__init__()
        self.spec = spec
        self.attn_norm = make_norm(arch)
        self.attn = Attention(arch.d_model, spec.attn, arch.pos, dropout)
        self.ffn_norm = make_norm(arch)
        f = spec.ffn
        self.ffn: nn.Module = (
            MixtureOfExperts(arch.d_model, f)
            if isinstance(f, MoEFFN)
            else FeedForward(arch.d_model, f.hidden, f.activation)
        )
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = x + self.drop(self.attn(self.attn_norm(x), ctx))
        h = self.ffn_norm(x)
        if isinstance(self.ffn, MixtureOfExperts):
            out, aux = self.ffn(h)
            return x + self.drop(out), aux * self.ffn.spec.aux_loss_weight
        return x + self.drop(self.ffn(h)), None


def lm_output(logits: torch.Tensor, targets: torch.Tensor | None, aux_total: torch.Tensor | None) -> DecoderOutput:
    """Wrap ``logits`` ``(B, T, V)``; with ``targets`` (``-100`` = ignored), add the loss."""
    if targets is None:
        return DecoderOutput(logits=logits, aux_loss=aux_total)
    ce = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
    loss = ce if aux_total is None else ce + aux_total
    return DecoderOutput(logits=logits, loss=loss, ce_loss=ce, aux_loss=aux_total)


class Decoder(nn.Module):
    """A decoder-only language model built from an :class:`Architecture`.

    Example:
        >>> from llmnas.space import load_space
        >>> arch = load_space("tiny").sample(0)
        >>> model = Decoder(arch)
        >>> out = model(torch.zeros(1, 8, dtype=torch.long), targets=torch.zeros(1, 8, dtype=torch.long))
        >>> out.logits.shape[-1] == arch.vocab_size
        True
    """

    def __init__(self, arch: Architecture, dropout: float = 0.0) -> None:
        super().__init__()
        self.arch = arch
        self.embed = nn.Embedding(arch.vocab_size, arch.d_model)
        self.pos_embed = nn.Embedding(arch.max_seq_len, arch.d_model) if arch.pos == "learned" else None
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.layers = nn.ModuleList(Block(arch, spec, dropout) for spec in arch.blocks)
        self.norm = make_norm(arch)
        self.lm_head = None if arch.tie_embeddings else nn.Linear(arch.d_model, arch.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """GPT-2 initialisation: N(0, 0.02), output projections scaled by 1/sqrt(2 * layers)."""
        out_std = std / math.sqrt(2 * self.arch.n_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)  # norm weights
            elif name.endswith(("out.weight", "down.weight", ".down")):
                nn.init.normal_(p, 0.0, out_std)
            else:
                nn.init.normal_(p, 0.0, std)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> DecoderOutput:
        """Logits for token ids ``idx`` ``(B, T)``; with ``targets`` (``-100`` = ignored), the loss."""
        B, T = idx.shape
        if T > self.arch.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len={self.arch.max_seq_len}")
        x = self.embed(idx)  # (B, T, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed.weight[:T]
        x = self.drop(x)
        ctx = AttentionContext(self.arch, T, idx.device, x.dtype)
        aux_total = None
        for layer in self.layers:
            x, aux = layer(x, ctx)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        return lm_output(F.linear(self.norm(x), self.output_weight), targets, aux_total)

    def num_parameters(self) -> int:
        """Distinct parameters (a tied output head counted once)."""
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after ``idx`` ``(B, T)``; context cropped to ``max_seq_len``."""
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.arch.max_seq_len :]).logits[:, -1, :] / max(temperature, 1e-6)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx
