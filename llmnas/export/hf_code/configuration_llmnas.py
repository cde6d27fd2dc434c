"""Configuration of an llmnas decoder: a decoder-only transformer whose layers may all differ.

Written by ``llmnas export`` next to the weights; imports only transformers. The per-layer
specifications are plain data in ``block_configs`` (one dict per layer, as in NVIDIA's DeciLM), so
the config round-trips through ``config.json`` unchanged:

    {"attention": {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                   "sliding_window": null},
     "mlp": {"type": "dense", "intermediate_size": 256, "hidden_act": "swiglu"}}

    {"attention": {...},
     "mlp": {"type": "moe", "num_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 128,
             "hidden_act": "swiglu", "shared_expert_intermediate_size": 0}}

``sliding_window`` w means each token attends to itself and the w - 1 tokens before it;
``hidden_act`` is ``swiglu`` (gated SiLU), ``gelu`` (exact erf GELU) or ``relu2`` (squared ReLU).
"""

from transformers import PreTrainedConfig

NORM_TYPES = ("rmsnorm", "layernorm")
POSITION_TYPES = ("rope", "alibi", "learned")
ACTIVATIONS = ("swiglu", "gelu", "relu2")
ATTENTION_KEYS = ("num_attention_heads", "num_key_value_heads", "head_dim", "sliding_window")
DENSE_KEYS = ("type", "intermediate_size", "hidden_act")
MOE_KEYS = (
    "type",
    "num_experts",
    "num_experts_per_tok",
    "intermediate_size",
    "hidden_act",
    "shared_expert_intermediate_size",
)


class LlmnasConfig(PreTrainedConfig):
    """A heterogeneous decoder-only LM: pre-norm blocks, each with its own attention and MLP.

    Args:
        vocab_size: rows of the token embedding (and of the output head).
        hidden_size: width of the residual stream.
        max_position_embeddings: longest sequence (size of the learned position table).
        norm_type: ``rmsnorm`` or ``layernorm`` (bias-free), before attention, MLP and the head.
        norm_eps: epsilon of every norm.
        position_embedding_type: ``rope`` (rotate-half, ``rope_parameters["rope_theta"]``),
            ``alibi`` (per-head linear biases) or ``learned`` absolute positions.
        rope_parameters: standard transformers RoPE parameters; only the default type is supported.
        block_configs: one dict per layer, see the module docstring.
        tie_word_embeddings: share the token embedding with the output head.
    """

    model_type = "llmnas"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 257
    hidden_size: int = 64
    max_position_embeddings: int = 128
    norm_type: str = "rmsnorm"
    norm_eps: float = 1e-5
    position_embedding_type: str = "rope"
    rope_parameters: dict | None = None
    block_configs: list | None = None
    num_hidden_layers: int | None = None
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.block_configs is None:  # a default two-layer model, so LlmnasConfig() is usable
            heads = max(1, self.hidden_size // 16)
            attention = {"num_attention_heads": heads, "num_key_value_heads": heads, "head_dim": 16}
            mlp = {"type": "dense", "intermediate_size": 4 * self.hidden_size, "hidden_act": "swiglu"}
            self.block_configs = [{"attention": attention, "mlp": mlp}] * 2
        self.block_configs = [_normalise_block(i, b) for i, b in enumerate(self.block_configs)]
        if self.num_hidden_layers not in (None, len(self.block_configs)):
            raise ValueError(
                f"num_hidden_layers={self.num_hidden_layers} differs from len(block_configs)="
                f"{len(self.block_configs)}"
            )
        self.num_hidden_layers = len(self.block_configs)
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type={self.norm_type!r} must be one of {NORM_TYPES}")
        if self.position_embedding_type not in POSITION_TYPES:
            raise ValueError(
                f"position_embedding_type={self.position_embedding_type!r} must be one of {POSITION_TYPES}"
            )
        super().__post_init__(**kwargs)
        rope_type = (self.rope_parameters or {}).get("rope_type", "default")
        if self.position_embedding_type == "rope" and rope_type != "default":
            raise ValueError(f"rope_type={rope_type!r} is not supported (only 'default')")


def _normalise_block(i: int, block: dict) -> dict:
    """Check one layer's dict and fill the optional keys, so every layer has the same shape."""
    if not isinstance(block, dict) or set(block) != {"attention", "mlp"}:
        raise ValueError(f"block_configs[{i}] must be a dict with keys 'attention' and 'mlp'")
    attn = {"sliding_window": None, **block["attention"]}
    mlp = {"type": "dense", **block["mlp"]}
    if mlp["type"] == "moe":
        mlp.setdefault("shared_expert_intermediate_size", 0)
        allowed = MOE_KEYS
    elif mlp["type"] == "dense":
        allowed = DENSE_KEYS
    else:
        raise ValueError(f"block_configs[{i}].mlp.type={mlp['type']!r} must be 'dense' or 'moe'")
    for where, values, keys in (("attention", attn, ATTENTION_KEYS), ("mlp", mlp, allowed)):
        if set(values) != set(keys):
            raise ValueError(f"block_configs[{i}].{where} must have the keys {keys}, got {sorted(values)}")
    if attn["num_attention_heads"] % attn["num_key_value_heads"]:
        raise ValueError(f"block_configs[{i}]: num_key_value_heads must divide num_attention_heads")
    if mlp["hidden_act"] not in ACTIVATIONS:
        act = mlp["hidden_act"]
        raise ValueError(f"block_configs[{i}].mlp.hidden_act={act!r} must be one of {ACTIVATIONS}")
    return {"attention": attn, "mlp": mlp}


__all__ = ["LlmnasConfig"]
