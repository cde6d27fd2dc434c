"""Which transformers class an architecture exports to, its config, and the weight mapping.

Each :class:`Target` says whether an :class:`Architecture` fits its class *exactly* (same maths, so the
logits agree to float rounding), builds the class's config and maps the llmnas
:class:`~llmnas.models.decoder.Decoder` state dict onto the class's weight names. The stock classes are
tried in order and the first that fits wins; the self-contained llmnas remote code fits everything.

- ``LlamaForCausalLM``: homogeneous layers, RoPE, RMSNorm, dense SwiGLU, full attention, and
  ``n_heads`` divides ``d_model`` (Llama's own check).
- ``MistralForCausalLM``: the same with one sliding window on every layer (or with ``n_heads`` not
  dividing ``d_model``).
- ``MinistralForCausalLM``: the same with some layers full and the others one sliding window.
- ``MixtralForCausalLM``: homogeneous MoE with SwiGLU experts and no shared expert, RoPE, RMSNorm,
  one window or none.
- ``GraniteMoeSharedForCausalLM``: the same plus an always-on (un-gated) shared SwiGLU expert, full
  attention, ``n_heads * head_dim == d_model``; its multipliers are set to the plain transformer's.
- ``GPT2LMHeadModel``: homogeneous, learned positions, LayerNorm, dense GELU or ReLU², MHA, full
  attention, ``n_heads * head_dim == d_model``.
- ``Starcoder2ForCausalLM``: homogeneous, RoPE, LayerNorm, dense GELU or ReLU², any KV heads, one
  window or none, ``n_heads * head_dim == d_model`` (it also covers what GPT-NeoX would).
- ``LlmnasForCausalLM`` (remote code): everything else, e.g. heterogeneous layers, ALiBi, RMSNorm with
  a non-gated FFN, mixed windows with MoE, non-gated experts.

Biases that a stock class has and llmnas has not (GPT-2, and the LayerNorms of StarCoder2) are
exported as zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from llmnas.space.arch import Architecture, BlockSpec, DenseFFN, MoEFFN

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids written into the model config and generation config (``None``: the tokenizer has none)."""

    bos: int | None = None
    eos: int | None = None
    pad: int | None = None


@dataclass(frozen=True)
class Target:
    """One way of exporting: a transformers class, when it fits, its config and its weight names.

    Attributes:
        class_name: the transformers class (``LlamaForCausalLM``) or the remote-code class.
        remote_code: whether loading needs ``trust_remote_code=True``.
        misfit: the reason an architecture does not fit, or ``None`` when it does.
        config: builds the (unsaved) transformers config.
        weights: maps a Decoder state dict to the class's state dict (tied heads left out).
    """

    class_name: str
    remote_code: bool
    misfit: Callable[[Architecture], str | None]
    config: Callable[[Architecture, SpecialTokens], Any]
    weights: Callable[[Architecture, StateDict], StateDict]

    def fits(self, arch: Architecture) -> bool:
        return self.misfit(arch) is None


# ---------------------------------------------------------------------- the llmnas layout, split
def split_layout(arch: Architecture, sd: StateDict) -> StateDict:
    """The Decoder weights under Llama/Mixtral names, with fused projections split.

    ``model.embed_tokens``, ``model.embed_positions`` (learned positions), per layer
    ``input_layernorm``, ``self_attn.{q,k,v,o}_proj``, ``post_attention_layernorm``, dense
    ``mlp.{gate,up,down}_proj`` (``gate`` only for SwiGLU) or MoE ``mlp.router``,
    ``mlp.experts.gate_up_proj`` (SwiGLU, ``(E, 2H, D)``) or ``mlp.experts.up_proj`` (``(E, H, D)``),
    ``mlp.experts.down_proj`` ``(E, D, H)`` and ``mlp.shared_expert.*``; ``model.norm``, ``lm_head``
    (untied only). This is the remote-code model's own layout.
    """
    out: StateDict = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm.weight"]}
    if arch.pos == "learned":
        out["model.embed_positions.weight"] = sd["pos_embed.weight"]
    if not arch.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i, block in enumerate(arch.blocks):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        out |= {
            dst + "input_layernorm.weight": sd[src + "attn_norm.weight"],
            dst + "self_attn.q_proj.weight": sd[src + "attn.q.weight"],
            dst + "self_attn.k_proj.weight": sd[src + "attn.k.weight"],
            dst + "self_attn.v_proj.weight": sd[src + "attn.v.weight"],
            dst + "self_attn.o_proj.weight": sd[src + "attn.out.weight"],
            dst + "post_attention_layernorm.weight": sd[src + "ffn_norm.weight"],
        }
        f = block.ffn
        if isinstance(f, MoEFFN):
            up_name = "gate_up_proj" if f.activation == "swiglu" else "up_proj"
            out |= {
                dst + "mlp.router.weight": sd[src + "ffn.router.weight"],
                dst + f"mlp.experts.{up_name}": sd[src + "ffn.up"],
                dst + "mlp.experts.down_proj": sd[src + "ffn.down"],
            }
            if f.shared_expert_hidden:
                out |= _dense(sd, src + "ffn.shared.", dst + "mlp.shared_expert.", f.activation)
        else:
            out |= _dense(sd, src + "ffn.", dst + "mlp.", f.activation)
    return {k: v.contiguous() for k, v in out.items()}


def _dense(sd: StateDict, src: str, dst: str, activation: str) -> StateDict:
    out = {dst + "up_proj.weight": sd[src + "up.weight"], dst + "down_proj.weight": sd[src + "down.weight"]}
    if activation == "swiglu":
        out[dst + "gate_proj.weight"] = sd[src + "gate.weight"]
    return out


def _rename(sd: StateDict, pairs: tuple[tuple[str, str], ...]) -> StateDict:
    out = {}
    for key, value in sd.items():
        for old, new in pairs:
            key = key.replace(old, new)
        out[key] = value
    return out


# ---------------------------------------------------------------------- fit rules
def _first_misfit(arch: Architecture, rules: list[tuple[bool, str]]) -> str | None:
    return next((why for ok, why in rules if not ok), None)


def _ignoring_window(b: BlockSpec) -> tuple:
    return (b.attn.n_heads, b.attn.n_kv_heads, b.attn.head_dim, b.ffn)


def _windows(arch: Architecture) -> set[int | None]:
    return {b.attn.window for b in arch.blocks}


def _dense_swiglu(arch: Architecture) -> bool:
    return all(isinstance(b.ffn, DenseFFN) and b.ffn.activation == "swiglu" for b in arch.blocks)


def _llama_family_rules(arch: Architecture) -> list[tuple[bool, str]]:
    return [
        (arch.pos == "rope", f"positions are {arch.pos}, not RoPE"),
        (arch.norm == "rmsnorm", f"norm is {arch.norm}, not RMSNorm"),
        (_dense_swiglu(arch), "not every layer is a dense SwiGLU FFN"),
        (len({_ignoring_window(b) for b in arch.blocks}) == 1, "layers differ in heads or FFN"),
    ]


def llama_misfit(arch: Architecture) -> str | None:
    a = arch.blocks[0].attn
    return _first_misfit(
        arch,
        [
            *_llama_family_rules(arch),
            (_windows(arch) == {None}, "some layers use a sliding window"),
            (arch.d_model % a.n_heads == 0, f"n_heads={a.n_heads} does not divide d_model={arch.d_model}"),
        ],
    )


def mistral_misfit(arch: Architecture) -> str | None:
    return _first_misfit(
        arch, [*_llama_family_rules(arch), (len(_windows(arch)) == 1, "layers differ in their window")]
    )


def ministral_misfit(arch: Architecture) -> str | None:
    windows = _windows(arch)
    return _first_misfit(
        arch,
        [
            *_llama_family_rules(arch),
            (None in windows and len(windows) == 2, "not a mix of full layers and one sliding window"),
        ],
    )


def _moe_swiglu_rules(arch: Architecture) -> list[tuple[bool, str]]:
    f = arch.blocks[0].ffn
    return [
        (arch.pos == "rope", f"positions are {arch.pos}, not RoPE"),
        (arch.norm == "rmsnorm", f"norm is {arch.norm}, not RMSNorm"),
        (arch.is_homogeneous, "layers differ"),
        (isinstance(f, MoEFFN), "the FFN is not a mixture of experts"),
        (f.activation == "swiglu", f"experts use {f.activation}, not SwiGLU"),
    ]


def mixtral_misfit(arch: Architecture) -> str | None:
    f = arch.blocks[0].ffn
    return _first_misfit(
        arch,
        [
            *_moe_swiglu_rules(arch),
            (not getattr(f, "shared_expert_hidden", 0), "it has a shared expert"),
        ],
    )


def granite_misfit(arch: Architecture) -> str | None:
    a, f = arch.blocks[0].attn, arch.blocks[0].ffn
    return _first_misfit(
        arch,
        [
            *_moe_swiglu_rules(arch),
            (bool(getattr(f, "shared_expert_hidden", 0)), "it has no shared expert"),
            (a.window is None, "it uses a sliding window"),
            (a.q_dim == arch.d_model, f"n_heads * head_dim = {a.q_dim} differs from d_model={arch.d_model}"),
        ],
    )


def _layernorm_rules(arch: Architecture, pos: str) -> list[tuple[bool, str]]:
    b = arch.blocks[0]
    return [
        (arch.pos == pos, f"positions are {arch.pos}, not {pos}"),
        (arch.norm == "layernorm", f"norm is {arch.norm}, not LayerNorm"),
        (arch.is_homogeneous, "layers differ"),
        (isinstance(b.ffn, DenseFFN) and b.ffn.activation in ("gelu", "relu2"), "the FFN is not GELU/ReLU²"),
        (b.attn.q_dim == arch.d_model, f"n_heads * head_dim = {b.attn.q_dim} differs from d_model"),
    ]


def gpt2_misfit(arch: Architecture) -> str | None:
    b = arch.blocks[0]
    return _first_misfit(
        arch,
        [
            *_layernorm_rules(arch, "learned"),
            (b.attn.n_kv_heads == b.attn.n_heads, "attention is GQA/MQA, not MHA"),
            (b.attn.window is None, "it uses a sliding window"),
        ],
    )


def starcoder2_misfit(arch: Architecture) -> str | None:
    return _first_misfit(arch, _layernorm_rules(arch, "rope"))


# ---------------------------------------------------------------------- configs
def _common(arch: Architecture, tokens: SpecialTokens) -> dict[str, Any]:
    return {
        "vocab_size": arch.vocab_size,
        "num_hidden_layers": arch.n_layers,
        "tie_word_embeddings": arch.tie_embeddings,
        "bos_token_id": tokens.bos,
        "eos_token_id": tokens.eos,
        "pad_token_id": tokens.pad,
    }


def _llama_kwargs(arch: Architecture, tokens: SpecialTokens) -> dict[str, Any]:
    a = arch.blocks[0].attn
    return {
        **_common(arch, tokens),
        "hidden_size": arch.d_model,
        "num_attention_heads": a.n_heads,
        "num_key_value_heads": a.n_kv_heads,
        "head_dim": a.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": arch.max_seq_len,
        "rms_norm_eps": arch.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": arch.rope_base},
        "attention_dropout": 0.0,
    }


def llama_config(arch: Architecture, tokens: SpecialTokens) -> Any:
    from transformers import LlamaConfig

    hidden = arch.blocks[0].ffn.hidden
    return LlamaConfig(**_llama_kwargs(arch, tokens), intermediate_size=hidden, attention_bias=False, mlp_bias=False)


def mistral_config(arch: Architecture, tokens: SpecialTokens) -> Any:
    from transformers import MistralConfig

    b = arch.blocks[0]
    kwargs = _llama_kwargs(arch, tokens)
    return MistralConfig(**kwargs, intermediate_size=b.ffn.hidden, sliding_window=b.attn.window)


def ministral_config(arch: Architecture, tokens: SpecialTokens) -> Any:
    from transformers import MinistralConfig

    window = next(w for w in _windows(arch) if w is not None)
    return MinistralConfig(
        **_llama_kwargs(arch, tokens),
        intermediate_size=arch.blocks[0].ffn.hidden,
        sliding_window=window,
        layer_types=["full_attention" if b.attn.window is None else "sliding_attention" for b in arch.blocks],
    )


def mixtral_config(arch: Architecture, tokens: SpecialTokens) -> Any:
    from transformers import MixtralConfig

    b = arch.blocks[0]
    f = b.ffn
    assert isinstance(f, MoEFFN)
    return MixtralConfig(
        **_llama_kwargs(arch, tokens),
        intermediate_size=f.expert_hidden,
        num_local_experts=f.n_experts,
        num_experts_per_tok=f.top_k,
        router_aux_loss_coef=f.aux_loss_weight,
        sliding_window=b.attn.window,
    )


def granite_config(arch: Architecture, tokens: SpecialTokens) -> Any:
    from transformers import GraniteMoeSharedConfig

    b = arch.blocks[0]
    f = b.ffn
    assert isinstance(f, MoEFFN)
    kwargs = _llama_kwargs(arch, tokens)
    del kwargs["head_dim"]  # Granite derives it: hidden_size // num_attention_heads (checked by the fit)
    return GraniteMoeSharedConfig(
        **kwargs,
        intermediate_size=f.expert_hidden,
        shared_intermediate_size=f.shared_expert_hidden,
        num_local_experts=f.n_experts,
        num_experts_per_tok=f.top_k,
        router_aux_loss_coef=f.aux_loss_weight,
        # Granite's multipliers set to the plain transformer's values
        attention_multiplier=b.attn.head_dim**-0.5,
        embedding_multiplier=1.0,
        residual_multiplier=1.0,
        logits_scaling=1.0,
    )


def gpt2_config(arch: Architecture, tokens: SpecialTokens) -> Any:
    from transformers import GPT2Config

    b = arch.blocks[0]
    return GPT2Config(
        **_common(arch, tokens),
        n_positions=arch.max_seq_len,
        n_embd=arch.d_model,
        n_head=b.attn.n_heads,
        n_inner=b.ffn.hidden,
        activation_function=b.ffn.activation,  # "gelu" is the exact erf GELU; "relu2" squared ReLU
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=arch.norm_eps,
    )


def starcoder2_config(arch: Architecture, tokens: SpecialTokens) -> Any:
    from transformers import Starcoder2Config

    b = arch.blocks[0]
    return Starcoder2Config(
        **_common(arch, tokens),
        hidden_size=arch.d_model,
        intermediate_size=b.ffn.hidden,
        num_attention_heads=b.attn.n_heads,
        num_key_value_heads=b.attn.n_kv_heads,
        hidden_act=b.ffn.activation,
        max_position_embeddings=arch.max_seq_len,
        norm_epsilon=arch.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_base},
        sliding_window=b.attn.window,
        use_bias=False,
        attention_dropout=0.0,
        residual_dropout=0.0,
        embedding_dropout=0.0,
    )


def custom_config(arch: Architecture, tokens: SpecialTokens) -> Any:
    from llmnas.export.hf_code.configuration_llmnas import LlmnasConfig

    return LlmnasConfig(
        **_common(arch, tokens),
        hidden_size=arch.d_model,
        max_position_embeddings=arch.max_seq_len,
        norm_type=arch.norm,
        norm_eps=arch.norm_eps,
        position_embedding_type=arch.pos,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_base},
        block_configs=[_block_config(b) for b in arch.blocks],
        auto_map={
            "AutoConfig": "configuration_llmnas.LlmnasConfig",
            "AutoModel": "modeling_llmnas.LlmnasModel",
            "AutoModelForCausalLM": "modeling_llmnas.LlmnasForCausalLM",
        },
    )


def _block_config(b: BlockSpec) -> dict[str, Any]:
    a, f = b.attn, b.ffn
    attention = {
        "num_attention_heads": a.n_heads,
        "num_key_value_heads": a.n_kv_heads,
        "head_dim": a.head_dim,
        "sliding_window": a.window,
    }
    if isinstance(f, MoEFFN):
        mlp: dict[str, Any] = {
            "type": "moe",
            "num_experts": f.n_experts,
            "num_experts_per_tok": f.top_k,
            "intermediate_size": f.expert_hidden,
            "hidden_act": f.activation,
            "shared_expert_intermediate_size": f.shared_expert_hidden,
        }
    else:
        mlp = {"type": "dense", "intermediate_size": f.hidden, "hidden_act": f.activation}
    return {"attention": attention, "mlp": mlp}


# ---------------------------------------------------------------------- weight maps
def mixtral_weights(arch: Architecture, sd: StateDict) -> StateDict:
    return _rename(split_layout(arch, sd), ((".mlp.router.", ".mlp.gate."),))


def granite_weights(arch: Architecture, sd: StateDict) -> StateDict:
    out = _rename(split_layout(arch, sd), ((".mlp.router.", ".block_sparse_moe.router."),
                                            (".mlp.experts.", ".block_sparse_moe.experts.")))
    for i in range(arch.n_layers):
        p = f"model.layers.{i}."
        gate = out.pop(p + "mlp.shared_expert.gate_proj.weight")
        up = out.pop(p + "mlp.shared_expert.up_proj.weight")
        out[p + "shared_mlp.input_linear.weight"] = torch.cat((gate, up))  # [gate; up]: chunk(2) reads it so
        out[p + "shared_mlp.output_linear.weight"] = out.pop(p + "mlp.shared_expert.down_proj.weight")
    return out


def gpt2_weights(arch: Architecture, sd: StateDict) -> StateDict:
    """GPT-2 keeps ``Conv1D`` weights as ``(in, out)``: every projection is transposed."""
    d = arch.d_model
    zeros = torch.zeros
    out: StateDict = {
        "transformer.wte.weight": sd["embed.weight"],
        "transformer.wpe.weight": sd["pos_embed.weight"],
        "transformer.ln_f.weight": sd["norm.weight"],
        "transformer.ln_f.bias": zeros(d),
    }
    if not arch.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i, b in enumerate(arch.blocks):
        src, dst = f"layers.{i}.", f"transformer.h.{i}."
        h = b.ffn.hidden
        out |= {
            dst + "ln_1.weight": sd[src + "attn_norm.weight"],
            dst + "ln_1.bias": zeros(d),
            dst + "attn.c_attn.weight": torch.cat([sd[src + f"attn.{p}.weight"] for p in "qkv"]).t(),
            dst + "attn.c_attn.bias": zeros(3 * d),
            dst + "attn.c_proj.weight": sd[src + "attn.out.weight"].t(),
            dst + "attn.c_proj.bias": zeros(d),
            dst + "ln_2.weight": sd[src + "ffn_norm.weight"],
            dst + "ln_2.bias": zeros(d),
            dst + "mlp.c_fc.weight": sd[src + "ffn.up.weight"].t(),
            dst + "mlp.c_fc.bias": zeros(h),
            dst + "mlp.c_proj.weight": sd[src + "ffn.down.weight"].t(),
            dst + "mlp.c_proj.bias": zeros(d),
        }
    return _like(out, sd["embed.weight"])


def starcoder2_weights(arch: Architecture, sd: StateDict) -> StateDict:
    """Llama names with ``mlp.c_fc`` / ``mlp.c_proj``, plus zero biases for the LayerNorms."""
    out = _rename(split_layout(arch, sd), ((".mlp.up_proj.", ".mlp.c_fc."), (".mlp.down_proj.", ".mlp.c_proj.")))
    zeros = torch.zeros(arch.d_model)
    out["model.norm.bias"] = zeros
    for i in range(arch.n_layers):
        out[f"model.layers.{i}.input_layernorm.bias"] = zeros
        out[f"model.layers.{i}.post_attention_layernorm.bias"] = zeros
    return _like(out, sd["embed.weight"])


def _like(sd: StateDict, ref: torch.Tensor) -> StateDict:
    return {k: v.to(ref.dtype).contiguous() for k, v in sd.items()}


STOCK_TARGETS: tuple[Target, ...] = (
    Target("LlamaForCausalLM", False, llama_misfit, llama_config, split_layout),
    Target("MistralForCausalLM", False, mistral_misfit, mistral_config, split_layout),
    Target("MinistralForCausalLM", False, ministral_misfit, ministral_config, split_layout),
    Target("MixtralForCausalLM", False, mixtral_misfit, mixtral_config, mixtral_weights),
    Target("GraniteMoeSharedForCausalLM", False, granite_misfit, granite_config, granite_weights),
    Target("GPT2LMHeadModel", False, gpt2_misfit, gpt2_config, gpt2_weights),
    Target("Starcoder2ForCausalLM", False, starcoder2_misfit, starcoder2_config, starcoder2_weights),
)
CUSTOM_TARGET = Target("LlmnasForCausalLM", True, lambda arch: None, custom_config, split_layout)


def choose_target(arch: Architecture, force_custom: bool = False) -> Target:
    """The first stock class that fits ``arch`` exactly, else the llmnas remote code."""
    if force_custom:
        return CUSTOM_TARGET
    return next((t for t in STOCK_TARGETS if t.fits(arch)), CUSTOM_TARGET)


def misfits(arch: Architecture) -> dict[str, str]:
    """Why each stock class does not fit ``arch`` (empty reasons left out)."""
    return {t.class_name: why for t in STOCK_TARGETS if (why := t.misfit(arch)) is not None}
