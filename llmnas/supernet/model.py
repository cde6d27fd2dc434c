"""The weight-shared supernet of a transformer space.

One set of maximum-size weights holds every architecture of a space (weight entanglement, as in
Once-for-All, HAT and AutoFormer). A subnet takes the first rows and columns of each weight:

- model width ``d``: the first ``d`` channels of the embeddings, the residual stream and the norms;
- attention: the first ``H*hs`` query rows and ``G*hs`` key/value rows; the head count and head width
  only change how those rows are split (so heads at a fixed width share weights), and windows, RoPE and
  ALiBi only change masks and rotations;
- FFN: the first ``hidden`` units; SwiGLU's gate has weights of its own, its up projection is the one
  GELU and ReLU² use; a MoE layer (weights of its own) takes its first experts, each at its first units;
- depth: the first layers.

``unshare`` (``supernet.unshare``) stops some of that sharing: each head count and/or attention kind gets query
and key projections of its own, each activation its own FFN up and down projections (a leading axis of the
weight, one entry per value; :func:`variant` picks it).

RMSNorm and LayerNorm share their (bias-free) weights; a learned position table and an untied output head
exist only when the space has architectures that need them.

The architecture is an argument of :meth:`SuperNet.forward`; no module stores a sampled state. The
slicing is :func:`subnet_weights`, a pure function that returns the subnet's weights under the names of a
standalone :class:`~llmnas.models.decoder.Decoder`'s state dict, and the forward pass is the decoder's
own functions (``attend``, ``feed_forward``, ``mixture_of_experts``, ``norm``, ``lm_output``) applied to
those weights, so :meth:`SuperNet.extract` and :meth:`SuperNet.forward` agree by construction.

Example:
    >>> space = load_space("tiny")  # doctest: +SKIP
    >>> net = SuperNet(space)  # doctest: +SKIP
    >>> arch = space.sample(0)  # doctest: +SKIP
    >>> out = net(idx, arch, targets=idx)  # doctest: +SKIP
    >>> model = net.extract(arch)  # a Decoder with the same logits  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from llmnas.errors import RecipeError
from llmnas.models.decoder import (
    AttentionContext,
    Decoder,
    DecoderOutput,
    attend,
    feed_forward,
    lm_output,
    mixture_of_experts,
    norm,
)
from llmnas.space.arch import Architecture, BlockSpec, MoEFFN
from llmnas.space.transformer import TransformerSpace
from llmnas.supernet.config import UNSHARE_DECISIONS
from llmnas.supernet.dims import SupernetDims, check_member

Weights = dict[str, torch.Tensor]


# ---------------------------------------------------------------------- slicing (pure functions)
def rows(w: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` entries of the first axis (``w[:n]``)."""
    return w[:n]


def block(w: torch.Tensor, n_out: int, n_in: int) -> torch.Tensor:
    """A linear layer's weight ``(out, in)`` cut to its first ``n_out`` outputs and ``n_in`` inputs."""
    return w[:n_out, :n_in]


def experts(w: torch.Tensor, n: int, n_out: int, n_in: int) -> torch.Tensor:
    """Stacked expert weights ``(E, out, in)`` cut to the first ``n`` experts, outputs and inputs."""
    return w[:n, :n_out, :n_in]


def variant(w: torch.Tensor, i: int, n: int) -> torch.Tensor:
    """Entry ``i`` of a weight stacked over ``n`` unshared values (``n == 1``: the shared weight itself)."""
    return w[i] if n > 1 else w


def ffn_weights(prefix: str, p: dict[str, nn.Parameter], d: int, hidden: int, activation: str) -> Weights:
    """A dense FFN of width ``hidden`` at model width ``d`` from full-size ``gate``/``up``/``down``."""
    w = {f"{prefix}.up.weight": block(p["up"], hidden, d), f"{prefix}.down.weight": block(p["down"], d, hidden)}
    if activation == "swiglu":
        w[f"{prefix}.gate.weight"] = block(p["gate"], hidden, d)
    return w


def moe_weights(prefix: str, layer: SuperLayer, d: int, spec: MoEFFN) -> Weights:
    """A MoE layer: router rows, experts (``[gate; up]`` stacked for SwiGLU, as the decoder holds them)."""
    e, h = spec.n_experts, spec.expert_hidden
    up = experts(layer.expert_up, e, h, d)
    if spec.activation == "swiglu":
        up = torch.cat((experts(layer.expert_gate, e, h, d), up), dim=1)
    w = {
        f"{prefix}.router.weight": block(layer.router, e, d),
        f"{prefix}.up": up,
        f"{prefix}.down": experts(layer.expert_down, e, d, h),
    }
    if spec.shared_expert_hidden:
        shared = {"gate": layer.shared_gate, "up": layer.shared_up, "down": layer.shared_down}
        w.update(ffn_weights(f"{prefix}.shared", shared, d, spec.shared_expert_hidden, spec.activation))
    return w


def subnet_weights(net: SuperNet, arch: Architecture) -> Weights:
    """The weights of ``arch`` inside ``net``, keyed like ``Decoder(arch).state_dict()`` (views and, for
    SwiGLU experts, one concatenation: gradients flow back into the supernet)."""
    d = arch.d_model
    w: Weights = {"embed.weight": net.embed[:, :d], "norm.weight": rows(net.norm, d)}
    if arch.pos == "learned":
        w["pos_embed.weight"] = net.pos_embed[: arch.max_seq_len, :d]
    if not arch.tie_embeddings:
        w["lm_head.weight"] = net.lm_head[:, :d]
    n_attn, n_ffn = len(net.attn_variants), len(net.ffn_variants)
    for i, spec in enumerate(arch.blocks):
        layer, a, pre = net.layers[i], spec.attn, f"layers.{i}"
        qk = net.attn_variant(spec)
        w[f"{pre}.attn_norm.weight"] = rows(layer.attn_norm, d)
        w[f"{pre}.ffn_norm.weight"] = rows(layer.ffn_norm, d)
        w[f"{pre}.attn.q.weight"] = block(variant(layer.q, qk, n_attn), a.q_dim, d)
        w[f"{pre}.attn.k.weight"] = block(variant(layer.k, qk, n_attn), a.kv_dim, d)
        w[f"{pre}.attn.v.weight"] = block(layer.v, a.kv_dim, d)
        w[f"{pre}.attn.out.weight"] = block(layer.out, d, a.q_dim)
        f = spec.ffn
        if isinstance(f, MoEFFN):
            w.update(moe_weights(f"{pre}.ffn", layer, d, f))
        else:
            j = net.ffn_variant(spec)
            dense = {"gate": layer.gate, "up": variant(layer.up, j, n_ffn), "down": variant(layer.down, j, n_ffn)}
            w.update(ffn_weights(f"{pre}.ffn", dense, d, f.hidden, f.activation))
    return w


# ---------------------------------------------------------------------- modules (weights only)
def _param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape))


class SuperLayer(nn.Module):
    """One layer's full-size weights; it has no forward of its own (see :meth:`SuperNet.forward`)."""

    def __init__(self, dims: SupernetDims, n_attn: int = 1, n_ffn: int = 1) -> None:
        super().__init__()
        D = dims.d_model
        qk = (n_attn,) if n_attn > 1 else ()  # one query/key projection per unshared attention value
        fv = (n_ffn,) if n_ffn > 1 else ()
        self.attn_norm, self.ffn_norm = _param(D), _param(D)
        self.q, self.k, self.v = _param(*qk, dims.q_dim, D), _param(*qk, dims.kv_dim, D), _param(dims.kv_dim, D)
        self.out = _param(D, dims.q_dim)
        if dims.ffn_hidden:
            self.up, self.down = _param(*fv, dims.ffn_hidden, D), _param(*fv, D, dims.ffn_hidden)
            self.gate = _param(dims.ffn_hidden, D) if dims.gate else None
        if dims.n_experts:
            E, H = dims.n_experts, dims.expert_hidden
            self.router = _param(E, D)
            self.expert_up, self.expert_down = _param(E, H, D), _param(E, D, H)
            self.expert_gate = _param(E, H, D) if dims.gate else None
        if dims.shared_hidden:
            S = dims.shared_hidden
            self.shared_up, self.shared_down = _param(S, D), _param(D, S)
            self.shared_gate = _param(S, D) if dims.gate else None


class SuperNet(nn.Module):
    """Maximum-size weights for every architecture of ``space``; ``forward(idx, arch)`` runs one of them.

    Args:
        space: the transformer space (with its final vocabulary size and block size).
        dropout: dropout of every subnet while training (as in :class:`Decoder`).
        unshare: per-layer decisions whose values get weights of their own (``supernet.unshare``; each must
            have two or more values in the space).

    Raises:
        RecipeError: an ``unshare`` decision the space does not vary.
    """

    def __init__(self, space: TransformerSpace, dropout: float = 0.0, unshare: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.space = space
        self.dims = dims = SupernetDims.of(space)
        self.dropout = dropout
        self.unshare = tuple(unshare)
        for decision in self.unshare:
            if decision not in UNSHARE_DECISIONS:
                raise RecipeError(f"supernet.unshare: {decision!r} is not one of {', '.join(UNSHARE_DECISIONS)}")
            values = space.layer_choices.get(decision, ())
            if len(values) < 2:
                raise RecipeError(f"supernet.unshare: {decision!r} takes {len(values)} value(s) in the space "
                                  f"{space.name!r} ({list(values)}): there is nothing to unshare; remove it")
        attn_keys = [k for k in ("n_heads", "attention") if k in self.unshare]
        #: the unshared (n_heads, attention) values, one query/key projection each ([()]: all shared)
        self.attn_variants = list(itertools.product(*(space.layer_choices[k] for k in attn_keys)))
        self._attn_keys = attn_keys
        #: the unshared activations, one FFN up/down projection each ([()]: all shared)
        self.ffn_variants = ([(v,) for v in space.layer_choices["activation"]] if "activation" in self.unshare
                             else [()])
        self.embed = _param(dims.vocab_size, dims.d_model)
        self.pos_embed = _param(dims.max_seq_len, dims.d_model) if dims.learned_pos else None
        self.layers = nn.ModuleList(SuperLayer(dims, len(self.attn_variants), len(self.ffn_variants))
                                    for _ in range(dims.n_layers))
        self.norm = _param(dims.d_model)
        self.lm_head = _param(dims.vocab_size, dims.d_model) if dims.untied else None
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """The decoder's GPT-2 initialisation at the deepest depth (output projections ``std/sqrt(2 L)``)."""
        out_std = std / math.sqrt(2 * self.dims.n_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("out", "down", "expert_down", "shared_down")):
                nn.init.normal_(p, 0.0, out_std)
            else:
                nn.init.normal_(p, 0.0, std)

    def attn_variant(self, spec: BlockSpec) -> int:
        """Which unshared query/key projection a layer of this spec uses (0 when they are shared)."""
        if len(self.attn_variants) == 1:
            return 0
        value = {"n_heads": spec.attn.n_heads, "attention": "full" if spec.attn.window is None else "sliding"}
        return self.attn_variants.index(tuple(value[k] for k in self._attn_keys))

    def ffn_variant(self, spec: BlockSpec) -> int:
        """Which unshared FFN up/down projection a dense layer of this spec uses (0 when they are shared)."""
        if len(self.ffn_variants) == 1:
            return 0
        return self.ffn_variants.index((spec.ffn.activation,))

    def check(self, arch: Architecture) -> None:
        """Raise :class:`~llmnas.errors.ArchitectureError` unless ``arch`` is one of this supernet's subnets."""
        check_member(self.space, arch, f"of space {self.space.name!r}")

    def weights(self, arch: Architecture) -> Weights:
        return subnet_weights(self, arch)

    def forward(self, idx: torch.Tensor, arch: Architecture, targets: torch.Tensor | None = None) -> DecoderOutput:
        """What ``Decoder(arch)`` with the sliced weights computes for ``idx`` ``(B, T)``.

        ``arch`` is not checked here (once per architecture is enough: :meth:`check`).
        """
        B, T = idx.shape
        if T > arch.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len={arch.max_seq_len}")
        w = subnet_weights(self, arch)
        p = self.dropout if self.training else 0.0
        x = F.embedding(idx, w["embed.weight"])  # (B, T, d)
        if arch.pos == "learned":
            x = x + w["pos_embed.weight"][:T]
        x = F.dropout(x, p, self.training) if p else x
        ctx = AttentionContext(arch, T, idx.device, x.dtype)
        aux_total = None
        for i, spec in enumerate(arch.blocks):
            pre = f"layers.{i}"
            h = norm(x, w[f"{pre}.attn_norm.weight"], arch.norm, arch.norm_eps)
            a = attend(h, w[f"{pre}.attn.q.weight"], w[f"{pre}.attn.k.weight"], w[f"{pre}.attn.v.weight"],
                       w[f"{pre}.attn.out.weight"], spec.attn, arch.pos, ctx, p)
            x = x + (F.dropout(a, p, self.training) if p else a)
            h = norm(x, w[f"{pre}.ffn_norm.weight"], arch.norm, arch.norm_eps)
            f = spec.ffn
            if isinstance(f, MoEFFN):
                shared = None
                if f.shared_expert_hidden:
                    s = f"{pre}.ffn.shared"
                    shared = (w.get(f"{s}.gate.weight"), w[f"{s}.up.weight"], w[f"{s}.down.weight"])
                out, aux = mixture_of_experts(h, w[f"{pre}.ffn.router.weight"], w[f"{pre}.ffn.up"].unbind(0),
                                              w[f"{pre}.ffn.down"].unbind(0), shared, f)
                aux = aux * f.aux_loss_weight
                aux_total = aux if aux_total is None else aux_total + aux
            else:
                s = f"{pre}.ffn"
                out = feed_forward(h, w.get(f"{s}.gate.weight"), w[f"{s}.up.weight"], w[f"{s}.down.weight"],
                                   f.activation)
            x = x + (F.dropout(out, p, self.training) if p else out)
        head = w["embed.weight"] if arch.tie_embeddings else w["lm_head.weight"]
        logits = F.linear(norm(x, w["norm.weight"], arch.norm, arch.norm_eps), head)  # (B, T, V)
        return lm_output(logits, targets, aux_total)

    @torch.no_grad()
    def extract(self, arch: Architecture) -> Decoder:
        """A standalone :class:`Decoder` holding a copy of ``arch``'s weights (same logits as :meth:`forward`)."""
        self.check(arch)
        model = Decoder(arch, dropout=self.dropout).to(self.embed.device, self.embed.dtype)
        model.load_state_dict({k: v.detach().clone() for k, v in subnet_weights(self, arch).items()}, strict=True)
        return model

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
