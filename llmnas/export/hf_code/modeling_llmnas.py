"""A heterogeneous decoder-only LM for transformers: every layer has its own attention and MLP.

Written by ``llmnas export`` for architectures that no stock class fits; imports only torch and
transformers. Each layer is pre-norm attention then pre-norm MLP with residuals. Attention is causal
self-attention through ``torch.nn.functional.scaled_dot_product_attention`` with GQA/MQA, an optional
sliding window, and RoPE (Llama's rotate-half layout), ALiBi or learned absolute positions. The MLP
is dense (SwiGLU, GELU or squared ReLU) or a top-k mixture of experts with Mixtral routing (softmax,
top-k, renormalise) and an optional always-on shared expert. Generation uses the standard
transformers KV cache; sliding windows are applied by the attention mask, so the cache keeps every
position.

Shapes: B batch, T new tokens, S cached + new tokens, D hidden size, H query heads, G KV heads,
hs head width, E experts, N tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_llmnas import LlmnasConfig

try:  # transformers >= 5: init functions that leave weights loaded from a checkpoint alone
    from transformers import initialization as init
except ImportError:  # pragma: no cover
    from torch.nn import init


@dataclass(frozen=True)
class AttentionSpec:
    n_heads: int
    n_kv_heads: int
    head_dim: int
    window: int | None

    @classmethod
    def from_config(cls, d: dict) -> AttentionSpec:
        return cls(d["num_attention_heads"], d["num_key_value_heads"], d["head_dim"], d["sliding_window"])


@dataclass(frozen=True)
class MLPSpec:
    kind: str  # "dense" or "moe"
    hidden: int  # width of the dense MLP, or of each routed expert
    activation: str  # "swiglu", "gelu" or "relu2"
    n_experts: int = 0
    top_k: int = 0
    shared_hidden: int = 0

    @classmethod
    def from_config(cls, d: dict) -> MLPSpec:
        if d["type"] == "dense":
            return cls("dense", d["intermediate_size"], d["hidden_act"])
        return cls(
            "moe",
            d["intermediate_size"],
            d["hidden_act"],
            d["num_experts"],
            d["num_experts_per_tok"],
            d["shared_expert_intermediate_size"],
        )


# ---------------------------------------------------------------------- positions and masks
def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al., 2022), including the interleaving for non powers of two."""
    closest = 2 ** math.floor(math.log2(n_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest != n_heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra_base ** (2 * i + 1) for i in range(min(closest, n_heads - closest))]
    return torch.tensor(slopes, dtype=torch.float32)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class AttentionInputs:
    """What the layers of one forward pass share: RoPE tables per head width, masks per layer kind.

    Args:
        config: the model config.
        position_ids: ``(B, T)`` positions of the new tokens (RoPE).
        past_length: tokens already in the cache; the new tokens are cache slots
            ``past_length .. past_length + T - 1`` and causality and windows count in slots.
        padding_mask: ``(B, S)`` with 0 at padding, or ``None``.
        dtype: dtype of the hidden states.
    """

    def __init__(
        self,
        config: LlmnasConfig,
        position_ids: torch.Tensor,
        past_length: int,
        padding_mask: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> None:
        self.config, self.position_ids, self.dtype = config, position_ids, dtype
        self.past_length = past_length
        self.q_len = position_ids.shape[-1]
        self.kv_len = past_length + self.q_len
        if padding_mask is not None and bool(padding_mask[:, : self.kv_len].all()):
            padding_mask = None
        self.padding_mask = padding_mask
        self._rope: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._masks: dict[tuple, tuple[torch.Tensor | None, bool]] = {}

    def rope(self, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of shape ``(B, 1, T, hs)``."""
        if head_dim not in self._rope:
            base = self.config.rope_parameters["rope_theta"]
            device = self.position_ids.device
            inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
            freqs = self.position_ids[..., None].float() * inv_freq  # (B, T, hs/2)
            emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, hs)
            self._rope[head_dim] = (emb.cos().to(self.dtype), emb.sin().to(self.dtype))
        return self._rope[head_dim]

    def mask(self, spec: AttentionSpec) -> tuple[torch.Tensor | None, bool]:
        """``(attn_mask, is_causal)`` for SDPA: an additive float mask, or ``None`` when plain causal
        attention (``is_causal``) or no mask at all (one query over the whole cache) is exact."""
        alibi = self.config.position_embedding_type == "alibi"
        key = (spec.window, spec.n_heads if alibi else 0)
        if key not in self._masks:
            plain = spec.window is None and not alibi and self.padding_mask is None
            if plain and self.q_len in (self.kv_len, 1):
                self._masks[key] = (None, self.q_len > 1)
            else:
                slopes = alibi_slopes(spec.n_heads) if alibi else None
                self._masks[key] = (self._bias(spec.window, slopes), False)
        return self._masks[key]

    def _bias(self, window: int | None, slopes: torch.Tensor | None) -> torch.Tensor:
        device = self.position_ids.device
        q = torch.arange(self.past_length, self.kv_len, device=device)
        k = torch.arange(self.kv_len, device=device)
        dist = (k[None, :] - q[:, None])[None, None]  # (1, 1, T, S): key slot - query slot
        visible = dist <= 0
        if window is not None:
            visible = visible & (dist > -window)
        if self.padding_mask is not None:
            visible = visible & self.padding_mask[:, None, None, : self.kv_len].bool()
        if slopes is None:
            bias = torch.zeros(visible.shape, device=device, dtype=self.dtype)
        else:
            bias = (slopes.to(device)[None, :, None, None] * dist).to(self.dtype)  # product in fp32
        # finite, not -inf: a query that sees no key at all (left padding) must not turn into NaN
        return bias.masked_fill(~visible, torch.finfo(self.dtype).min)


# ---------------------------------------------------------------------- modules
def make_norm(config: LlmnasConfig) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=False)


def activate(h: torch.Tensor, activation: str) -> torch.Tensor:
    """Apply an MLP activation; for SwiGLU ``h`` holds ``[gate; up]`` on its last axis."""
    if activation == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    if activation == "gelu":
        return F.gelu(h)
    return F.relu(h).square()


class LlmnasAttention(nn.Module):
    def __init__(self, config: LlmnasConfig, spec: AttentionSpec, layer_idx: int) -> None:
        super().__init__()
        self.spec, self.layer_idx = spec, layer_idx
        self.use_rope = config.position_embedding_type == "rope"
        d, s = config.hidden_size, spec
        self.q_proj = nn.Linear(d, s.n_heads * s.head_dim, bias=False)
        self.k_proj = nn.Linear(d, s.n_kv_heads * s.head_dim, bias=False)
        self.v_proj = nn.Linear(d, s.n_kv_heads * s.head_dim, bias=False)
        self.o_proj = nn.Linear(s.n_heads * s.head_dim, d, bias=False)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, cache: Cache | None) -> torch.Tensor:
        B, T, _ = x.shape
        s = self.spec
        q = self.q_proj(x).view(B, T, s.n_heads, s.head_dim).transpose(1, 2)  # (B, H, T, hs)
        k = self.k_proj(x).view(B, T, s.n_kv_heads, s.head_dim).transpose(1, 2)  # (B, G, T, hs)
        v = self.v_proj(x).view(B, T, s.n_kv_heads, s.head_dim).transpose(1, 2)  # (B, G, T, hs)
        if self.use_rope:
            cos, sin = inputs.rope(s.head_dim)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, G, S, hs)
        mask, is_causal = inputs.mask(s)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=s.n_kv_heads != s.n_heads
        )  # (B, H, T, hs)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, s.n_heads * s.head_dim))


class LlmnasMLP(nn.Module):
    """Dense MLP: ``down(silu(gate(x)) * up(x))`` for SwiGLU, else ``down(act(up(x)))``."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str) -> None:
        super().__init__()
        self.activation = activation
        if activation == "swiglu":
            self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(activate(self.up_proj(x), self.activation))


class LlmnasExperts(nn.Module):
    """Expert weights as 3-D tensors, as in transformers' Mixtral: ``gate_up_proj (E, 2 * hidden, D)``
    (rows ``[gate; up]``) for SwiGLU or ``up_proj (E, hidden, D)``, and ``down_proj (E, D, hidden)``."""

    def __init__(self, hidden_size: int, spec: MLPSpec) -> None:
        super().__init__()
        self.activation = spec.activation
        up_rows = 2 * spec.hidden if spec.activation == "swiglu" else spec.hidden
        up = nn.Parameter(torch.empty(spec.n_experts, up_rows, hidden_size))
        if spec.activation == "swiglu":
            self.gate_up_proj = up
        else:
            self.up_proj = up
        self.down_proj = nn.Parameter(torch.empty(spec.n_experts, hidden_size, spec.hidden))

    @property
    def up_weight(self) -> torch.Tensor:
        return self.gate_up_proj if self.activation == "swiglu" else self.up_proj

    def forward(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Expert ``e`` applied to tokens ``x`` ``(n, D)``."""
        return activate(x @ self.up_weight[e].t(), self.activation) @ self.down_proj[e].t()


class LlmnasSparseMoE(nn.Module):
    """Top-k token-choice experts (softmax, top-k, renormalise) plus an optional shared expert."""

    def __init__(self, hidden_size: int, spec: MLPSpec) -> None:
        super().__init__()
        self.spec = spec
        self.router = nn.Linear(hidden_size, spec.n_experts, bias=False)
        self.experts = LlmnasExperts(hidden_size, spec)
        self.shared_expert = (
            LlmnasMLP(hidden_size, spec.shared_hidden, spec.activation) if spec.shared_hidden else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        flat = x.reshape(-1, D)  # (N, D)
        probs = self.router(flat).float().softmax(dim=-1)  # (N, E)
        weights, experts = probs.topk(self.spec.top_k, dim=-1)  # (N, k)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        # group the (token, expert) pairs by expert with one sort: the only loop is over experts
        expert_of = experts.reshape(-1)  # (N*k,)
        order = expert_of.argsort(stable=True)
        counts = torch.bincount(expert_of, minlength=self.spec.n_experts).tolist()
        token_of = order // self.spec.top_k
        outs = [
            self.experts(chunk, e) for e, chunk in enumerate(flat[token_of].split(counts)) if chunk.shape[0]
        ]
        ys = torch.cat(outs) * weights.reshape(-1)[order, None].to(x.dtype)
        out = torch.zeros_like(flat).index_add_(0, token_of, ys)
        if self.shared_expert is not None:
            out = out + self.shared_expert(flat)
        return out.view(B, T, D)


class LlmnasDecoderLayer(nn.Module):
    def __init__(self, config: LlmnasConfig, layer_idx: int) -> None:
        super().__init__()
        block = config.block_configs[layer_idx]
        self.attention_spec = AttentionSpec.from_config(block["attention"])
        self.mlp_spec = MLPSpec.from_config(block["mlp"])
        self.input_layernorm = make_norm(config)
        self.self_attn = LlmnasAttention(config, self.attention_spec, layer_idx)
        self.post_attention_layernorm = make_norm(config)
        m = self.mlp_spec
        self.mlp = (
            LlmnasSparseMoE(config.hidden_size, m)
            if m.kind == "moe"
            else LlmnasMLP(config.hidden_size, m.hidden, m.activation)
        )

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, cache: Cache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), inputs, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlmnasPreTrainedModel(PreTrainedModel):
    config_class = LlmnasConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["LlmnasDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LlmnasExperts):
            for p in module.parameters(recurse=False):
                init.normal_(p, mean=0.0, std=self.config.initializer_range)


class LlmnasModel(LlmnasPreTrainedModel):
    """The decoder without the output head."""

    def __init__(self, config: LlmnasConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.position_embedding_type == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(LlmnasDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = make_norm(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if cache is None:
            cache = kwargs.pop("past_key_values", None)  # the name before transformers 5.x
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + x.shape[1], device=x.device)[None].expand(x.shape[0], -1)
        if self.config.position_embedding_type == "learned":
            if past + x.shape[1] > self.config.max_position_embeddings:
                raise ValueError(
                    f"sequence of {past + x.shape[1]} tokens is longer than max_position_embeddings="
                    f"{self.config.max_position_embeddings} (learned positions)"
                )
            x = x + self.embed_positions(position_ids)
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError("attention_mask must be a 2-D (batch, sequence) padding mask")
        inputs = AttentionInputs(self.config, position_ids, past, attention_mask, x.dtype)
        for layer in self.layers:
            x = layer(x, inputs, cache if use_cache else None)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), cache=cache if use_cache else None)


class LlmnasForCausalLM(LlmnasPreTrainedModel, GenerationMixin):
    """The decoder with its language-modelling head (tied to the token embedding when configured)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LlmnasConfig) -> None:
        super().__init__(config)
        self.model = LlmnasModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            h = h[:, -logits_to_keep:] if logits_to_keep else h
        else:
            h = h[:, logits_to_keep]
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)


__all__ = ["LlmnasForCausalLM", "LlmnasModel", "LlmnasPreTrainedModel"]
