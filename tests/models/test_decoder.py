from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from llmnas.models.decoder import Attention, AttentionContext, Decoder, MixtureOfExperts, alibi_slopes
from llmnas.space import Architecture, AttentionSpec, BlockSpec, DenseFFN, MoEFFN, load_space
from tests.conftest import shared_data


def arch_of(*blocks: BlockSpec, pos: str = "rope", norm: str = "rmsnorm", d: int = 32, tie: bool = True,
            vocab: int = 61, seq: int = 24) -> Architecture:
    return Architecture(vocab_size=vocab, d_model=d, max_seq_len=seq, blocks=blocks, pos=pos, norm=norm,
                        tie_embeddings=tie)


MIXED = (
    BlockSpec(AttentionSpec(4, 2, 8), DenseFFN(64, "swiglu")),
    BlockSpec(AttentionSpec(2, 1, 16, window=5), DenseFFN(48, "gelu")),
    BlockSpec(AttentionSpec(4, 4, 6), MoEFFN(4, 2, 24, "relu2", shared_expert_hidden=16)),
)


@pytest.mark.parametrize("pos", ["rope", "alibi", "learned"])
def test_causality(pos: str) -> None:
    torch.manual_seed(0)
    model = Decoder(arch_of(*MIXED, pos=pos, norm="layernorm")).eval()
    idx = torch.randint(0, 61, (2, 20))
    base = model(idx).logits
    for t in (0, 7, 18):
        changed = idx.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % 61
        out = model(changed).logits
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
        assert (out[:, t + 1] - base[:, t + 1]).abs().max() > 1e-4  # the change is visible at t+1


def reference_attention(x: torch.Tensor, attn: Attention, ctx: AttentionContext, pos: str) -> torch.Tensor:
    """Naive attention: repeated K/V, explicit softmax over an explicitly built mask."""
    s = attn.spec
    B, T, _ = x.shape
    q, k, v = attn.q(x), attn.k(x), attn.v(x)
    q = q.view(B, T, s.n_heads, s.head_dim).transpose(1, 2)
    k = k.view(B, T, s.n_kv_heads, s.head_dim).transpose(1, 2)
    v = v.view(B, T, s.n_kv_heads, s.head_dim).transpose(1, 2)
    if pos == "rope":
        # Llama's RoPE from its definition: angle(t, i) = t * base^(-2i / hs), rotate-half layout.
        inv_freq = ctx.arch.rope_base ** (-torch.arange(0, s.head_dim, 2).float() / s.head_dim)
        angles = torch.outer(torch.arange(T).float(), inv_freq).repeat(1, 2)  # (T, hs)
        cos, sin = angles.cos(), angles.sin()
        rot = lambda t: torch.cat((-t[..., s.head_dim // 2 :], t[..., : s.head_dim // 2]), -1)  # noqa: E731
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    rep = s.n_heads // s.n_kv_heads
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(s.head_dim)  # (B, H, T, T)
    allowed = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        lo = 0 if s.window is None else max(0, i - s.window + 1)
        allowed[i, lo : i + 1] = True
    if pos == "alibi":
        slopes = alibi_slopes(s.n_heads)
        dist = torch.tensor([[j - i for j in range(T)] for i in range(T)], dtype=torch.float32)
        scores = scores + slopes[:, None, None] * dist
    scores = scores.masked_fill(~allowed, float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.out(y.transpose(1, 2).reshape(B, T, s.q_dim))


@pytest.mark.parametrize("pos", ["rope", "alibi"])
@pytest.mark.parametrize("spec", [AttentionSpec(4, 2, 8, window=4), AttentionSpec(6, 3, 8, window=1),
                                  AttentionSpec(4, 1, 8), AttentionSpec(5, 5, 8, window=9)])
def test_attention_matches_explicit_mask_reference(pos: str, spec: AttentionSpec) -> None:
    torch.manual_seed(1)
    arch = arch_of(BlockSpec(spec, DenseFFN(8)), pos=pos)
    attn = Attention(arch.d_model, spec, pos)
    x = torch.randn(3, 17, arch.d_model)
    ctx = AttentionContext(arch, 17, x.device, x.dtype)
    torch.testing.assert_close(attn(x, ctx), reference_attention(x, attn, ctx, pos), rtol=1e-5, atol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_weights() -> None:
    torch.manual_seed(2)
    gqa = arch_of(BlockSpec(AttentionSpec(4, 2, 8, window=6), DenseFFN(32)))
    mha = arch_of(BlockSpec(AttentionSpec(4, 4, 8, window=6), DenseFFN(32)))
    a, b = Decoder(gqa).eval(), Decoder(mha).eval()
    state = a.state_dict()
    rep = lambda w: w.view(2, 8, -1).repeat_interleave(2, dim=0).reshape(32, -1)  # noqa: E731
    for name in ("k", "v"):
        state[f"layers.0.attn.{name}.weight"] = rep(state[f"layers.0.attn.{name}.weight"])
    b.load_state_dict(state)
    idx = torch.randint(0, 61, (2, 20))
    torch.testing.assert_close(a(idx).logits, b(idx).logits, rtol=1e-5, atol=1e-5)


def test_gqa_with_kv_heads_equal_heads_is_mha() -> None:
    torch.manual_seed(3)
    spec = AttentionSpec(4, 4, 8)
    arch = arch_of(BlockSpec(spec, DenseFFN(8)))
    attn = Attention(arch.d_model, spec, "rope")
    x = torch.randn(2, 11, arch.d_model)
    ctx = AttentionContext(arch, 11, x.device, x.dtype)
    torch.testing.assert_close(attn(x, ctx), reference_attention(x, attn, ctx, "rope"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_moe_routes_each_token_to_exactly_k_experts(top_k: int) -> None:
    torch.manual_seed(4)
    spec = MoEFFN(n_experts=5, top_k=top_k, expert_hidden=16, activation="swiglu", shared_expert_hidden=8)
    moe = MixtureOfExperts(32, spec)
    for p in moe.parameters():
        torch.nn.init.normal_(p, 0, 0.2)
    x = torch.randn(3, 9, 32)
    probs, weights, experts = moe.route(x.reshape(-1, 32))
    assert experts.shape == (27, top_k)
    assert all(len(set(row.tolist())) == top_k for row in experts)
    torch.testing.assert_close(weights.sum(-1), torch.ones(27))
    out, aux = moe(x)
    assert aux.item() > 0
    # Reference: a plain loop over tokens and their chosen experts.
    flat = x.reshape(-1, 32)
    ref = torch.zeros_like(flat)
    for n in range(flat.shape[0]):
        for w, e in zip(weights[n], experts[n], strict=True):
            gate, up = (moe.up[e] @ flat[n]).chunk(2)
            ref[n] += w * (moe.down[e] @ (F.silu(gate) * up))
    ref += moe.shared(flat)
    torch.testing.assert_close(out.reshape(-1, 32), ref, rtol=1e-5, atol=1e-5)


def test_moe_aux_loss_is_k_when_balanced_and_larger_when_collapsed() -> None:
    spec = MoEFFN(n_experts=4, top_k=1, expert_hidden=8)
    moe = MixtureOfExperts(4, spec)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(4) * 10)
    balanced = torch.eye(4).repeat(8, 1).view(1, 32, 4)
    collapsed = torch.eye(4)[[0]].repeat(32, 1).view(1, 32, 4)
    _, aux_balanced = moe(balanced)
    _, aux_collapsed = moe(collapsed)
    assert aux_balanced.item() == pytest.approx(1.0, abs=1e-3)
    assert aux_collapsed.item() > 3.5


def test_aux_loss_enters_the_loss_with_its_weight() -> None:
    arch = arch_of(BlockSpec(AttentionSpec(2, 1, 16), MoEFFN(4, 2, 16, aux_loss_weight=0.5)))
    model = Decoder(arch)
    idx = torch.randint(0, 61, (2, 10))
    out = model(idx, targets=idx)
    assert out.aux_loss.item() > 0
    torch.testing.assert_close(out.loss, out.ce_loss + out.aux_loss)


@pytest.mark.parametrize("space", ["tiny", "moe", "small"])
def test_param_counts_equal_the_built_model(space: str) -> None:
    s = load_space(space)
    for seed in range(6):
        arch = s.sample(seed)
        with torch.device("meta"):
            model = Decoder(arch)
        counts = arch.param_counts()
        assert model.num_parameters() == counts.total
        expert_numel = sum(
            m.up.numel() + m.down.numel() for m in model.modules() if isinstance(m, MixtureOfExperts)
        )
        inactive = sum(
            (b.ffn.n_experts - b.ffn.top_k) * b.ffn.expert_params(arch.d_model)
            for b in arch.blocks
            if isinstance(b.ffn, MoEFFN)
        )
        assert counts.active == counts.total - inactive
        assert inactive <= expert_numel
        emb = model.embed.weight.numel() + (model.pos_embed.weight.numel() if model.pos_embed is not None else 0)
        emb += model.lm_head.weight.numel() if model.lm_head is not None else 0
        assert counts.embedding == emb and counts.non_embedding == counts.total - emb


def test_flops_per_token_match_torch_flop_counter() -> None:
    """The spec-only FLOP count equals torch's count of the forward pass's matrix products, plus the
    attention scores and weighted sums over exactly the keys each query may see."""
    for arch in (arch_of(*MIXED), load_space("tiny").sample(5), load_space("moe").sample(2)):
        model = Decoder(arch).eval()
        B, T = 2, arch.max_seq_len
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.randint(0, arch.vocab_size, (B, T)))
        matmuls = sum(n for op, n in counter.get_flop_counts()["Global"].items() if "mm" in str(op))
        attention = sum(4 * b.attn.q_dim * _keys_seen(T, b.attn.window) * B for b in arch.blocks)
        assert matmuls + attention == pytest.approx(arch.flops_per_token(T) * B * T, rel=1e-5), arch.summary()


def _keys_seen(t: int, window: int | None) -> int:
    return sum(min(i + 1, window or t) for i in range(t))


def test_kv_cache_bytes_match_the_key_and_value_tensors() -> None:
    arch = arch_of(*MIXED)
    per_layer = [2 * b.attn.n_kv_heads * b.attn.head_dim for b in arch.blocks]
    assert arch.kv_cache_bytes_per_token() == sum(per_layer) * 2
    assert arch.kv_cache_bytes_per_token(4) == sum(per_layer) * 4


def test_longer_than_max_seq_len_is_refused() -> None:
    model = Decoder(arch_of(*MIXED))
    with pytest.raises(ValueError, match="max_seq_len=24"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_loss_drops_on_tiny_shakespeare() -> None:
    text = shared_data("text/tinyshakespeare.txt").read_text()[:200_000]
    data = torch.tensor(list(text.encode()), dtype=torch.long)
    torch.manual_seed(0)
    arch = arch_of(
        BlockSpec(AttentionSpec(4, 2, 16), DenseFFN(128, "swiglu")),
        BlockSpec(AttentionSpec(4, 1, 16, window=16), MoEFFN(4, 2, 64)),
        d=64, vocab=257, seq=64,
    )
    model = Decoder(arch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    eval_idx = torch.randint(0, len(data) - 65, (16,), generator=gen)
    xe = torch.stack([data[i : i + 64] for i in eval_idx])
    ye = torch.stack([data[i + 1 : i + 65] for i in eval_idx])
    with torch.no_grad():
        before = model(xe, targets=ye).ce_loss.item()
    for _ in range(150):
        ix = torch.randint(0, len(data) - 65, (16,), generator=gen)
        x = torch.stack([data[i : i + 64] for i in ix])
        y = torch.stack([data[i + 1 : i + 65] for i in ix])
        loss = model(x, targets=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = model(xe, targets=ye).ce_loss.item()
    assert before > 5.0  # about ln(257) at initialisation
    assert after < 2.8, (before, after)  # a byte unigram model of this text scores about 3.2


def test_moe_matches_transformers_mixtral_block() -> None:
    """Same weights, same routing (softmax, top-k, renormalise): the outputs equal Mixtral's own block."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    torch.manual_seed(5)
    cfg = MixtralConfig(hidden_size=32, intermediate_size=24, num_local_experts=6, num_experts_per_tok=2)
    cfg._experts_implementation = "eager"
    theirs = MixtralSparseMoeBlock(cfg)
    ours = MixtureOfExperts(32, MoEFFN(n_experts=6, top_k=2, expert_hidden=24, activation="swiglu"))
    with torch.no_grad():
        for p in (theirs.gate.weight, theirs.experts.gate_up_proj, theirs.experts.down_proj):
            p.normal_(0, 0.2)
        ours.router.weight.copy_(theirs.gate.weight)
        ours.up.copy_(theirs.experts.gate_up_proj)
        ours.down.copy_(theirs.experts.down_proj)
    x = torch.randn(3, 11, 32)
    torch.testing.assert_close(ours(x)[0], theirs(x), rtol=1e-6, atol=1e-6)
