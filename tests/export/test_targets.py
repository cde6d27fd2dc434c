"""Which class each architecture exports to: stock classes only where the maths fit exactly."""

from __future__ import annotations

import pytest

from llmnas.export.targets import choose_target, misfits
from llmnas.space import Architecture, AttentionSpec, BlockSpec, DenseFFN, MoEFFN


def arch(*blocks: BlockSpec, d: int = 32, **kw) -> Architecture:
    return Architecture(vocab_size=257, d_model=d, max_seq_len=64, blocks=blocks, **kw)


def block(h: int = 4, g: int = 2, hd: int = 8, window: int | None = None, ffn=None) -> BlockSpec:
    return BlockSpec(AttentionSpec(h, g, hd, window), ffn or DenseFFN(64, "swiglu"))


GELU = DenseFFN(64, "gelu")
MOE = MoEFFN(4, 2, 16)
GPT = {"norm": "layernorm", "pos": "learned"}

EXPECTED = [
    (arch(block(), block()), "LlamaForCausalLM"),
    (arch(block(g=1), block(g=1), tie_embeddings=False), "LlamaForCausalLM"),
    (arch(block(window=8), block(window=8)), "MistralForCausalLM"),
    (arch(block(h=3, g=1, hd=12), block(h=3, g=1, hd=12)), "MistralForCausalLM"),  # 3 does not divide 32
    (arch(block(window=8), block(), block(window=8)), "MinistralForCausalLM"),
    (arch(block(window=8), block(window=16)), "LlmnasForCausalLM"),  # two different windows
    (arch(block(ffn=MOE), block(ffn=MOE)), "MixtralForCausalLM"),
    (arch(block(window=8, ffn=MOE), block(window=8, ffn=MOE)), "MixtralForCausalLM"),
    (arch(block(window=8, ffn=MOE), block(ffn=MOE)), "LlmnasForCausalLM"),  # mixed windows with MoE
    (arch(block(ffn=MoEFFN(4, 2, 16, "gelu")), block(ffn=MoEFFN(4, 2, 16, "gelu"))), "LlmnasForCausalLM"),
    (arch(*[block(g=4, ffn=MoEFFN(4, 2, 16, shared_expert_hidden=8))] * 2), "GraniteMoeSharedForCausalLM"),
    (arch(*[block(h=2, g=2, hd=8, ffn=MoEFFN(4, 2, 16, shared_expert_hidden=8))] * 2), "LlmnasForCausalLM"),
    (arch(block(ffn=MOE), block()), "LlmnasForCausalLM"),  # dense and MoE layers
    (arch(block(g=4, ffn=GELU), block(g=4, ffn=GELU), **GPT), "GPT2LMHeadModel"),
    (arch(*[block(g=4, ffn=DenseFFN(64, "relu2"))] * 2, **GPT, tie_embeddings=False), "GPT2LMHeadModel"),
    (arch(block(g=2, ffn=GELU), block(g=2, ffn=GELU), **GPT), "LlmnasForCausalLM"),  # GQA
    (arch(block(g=4, ffn=GELU), block(g=4, ffn=GELU), norm="layernorm"), "Starcoder2ForCausalLM"),
    (arch(*[block(g=1, window=8, ffn=DenseFFN(64, "relu2"))] * 2, norm="layernorm"), "Starcoder2ForCausalLM"),
    (arch(block(h=2, g=1, hd=8, ffn=GELU), block(h=2, g=1, hd=8, ffn=GELU), norm="layernorm"), "LlmnasForCausalLM"),
    (arch(block(g=4, ffn=GELU), block(g=4, ffn=GELU), norm="layernorm", pos="alibi"), "LlmnasForCausalLM"),
    (arch(block(), block(), pos="alibi"), "LlmnasForCausalLM"),
    (arch(block(), block(), norm="layernorm"), "LlmnasForCausalLM"),
    (arch(block(), block(h=2, g=2, hd=16)), "LlmnasForCausalLM"),  # heterogeneous heads
    (arch(block(ffn=GELU), block(ffn=GELU)), "LlmnasForCausalLM"),  # RMSNorm + non-gated FFN
]


@pytest.mark.parametrize(("architecture", "class_name"), EXPECTED, ids=[c for _, c in EXPECTED])
def test_choose_target(architecture: Architecture, class_name: str) -> None:
    target = choose_target(architecture)
    assert target.class_name == class_name
    assert target.remote_code == (class_name == "LlmnasForCausalLM")
    if target.remote_code:
        assert len(misfits(architecture)) == 7  # every stock class says why it does not fit


def test_force_custom_and_reasons() -> None:
    llama = arch(block(), block())
    assert choose_target(llama, force_custom=True).class_name == "LlmnasForCausalLM"
    reasons = misfits(arch(block(), block(), pos="alibi"))
    assert reasons["LlamaForCausalLM"] == "positions are alibi, not RoPE"
    assert reasons["GPT2LMHeadModel"] == "positions are alibi, not learned"
