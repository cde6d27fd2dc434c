"""The supernet's weights and forward pass on the shipped spaces (tiny, tiny_char, moe).

The slices a subnet owns are written out here a second time, independently of
:func:`llmnas.supernet.model.subnet_weights` (first rows/columns of every weight, first experts, first
layers), and every test compares the supernet against a standalone :class:`Decoder` built from them.
The supernet's weights are randomised first (norms included), so a wrong slice shows as a difference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmnas.errors import ArchitectureError
from llmnas.models.decoder import Decoder
from llmnas.space import Architecture, load_space
from llmnas.space.arch import MoEFFN
from llmnas.supernet import SuperNet, SupernetConfig, SupernetDims
from llmnas.supernet.train import SandwichPlan

SPACES = ("tiny", "tiny_char", "moe")
N_ARCHS = 25
SEQ = 40  # longer than the tiny spaces' smaller windows, so sliding windows mask something


def seq_len(arch: Architecture) -> int:
    return min(SEQ, arch.max_seq_len)


@pytest.fixture(scope="module", params=SPACES)
def setup(request):
    """A supernet of the space with noisy weights, and 25 architectures: the sandwich plan's largest and
    smallest, then random draws with fixed seeds."""
    space = load_space(request.param)
    torch.manual_seed(0)
    net = SuperNet(space)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            scale = 0.2 if p.dim() == 1 else 0.05
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    net.eval()
    plan = SandwichPlan(space, SupernetConfig(pool_size=200))
    archs = [plan.largest, plan.smallest] + [space.sample(np.random.default_rng(seed)) for seed in range(N_ARCHS - 2)]
    return space, net, archs


def tokens(arch: Architecture, seed: int = 0, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, arch.vocab_size, (batch, seq_len(arch) + 1), generator=g)


# ---------------------------------------------------------------------- the slices, written out independently
def s(n: int) -> slice:
    return slice(0, n)


ALL = slice(None)


def regions(arch: Architecture) -> dict[str, list[tuple[str, tuple[slice, ...]]]]:
    """For each entry of ``Decoder(arch).state_dict()``: the supernet parameters and the part of each it
    is made of (several parts are concatenated along axis 1: SwiGLU experts hold ``[gate; up]``)."""
    d = arch.d_model
    r: dict[str, list[tuple[str, tuple[slice, ...]]]] = {
        "embed.weight": [("embed", (ALL, s(d)))],
        "norm.weight": [("norm", (s(d),))],
    }
    if arch.pos == "learned":
        r["pos_embed.weight"] = [("pos_embed", (s(arch.max_seq_len), s(d)))]
    if not arch.tie_embeddings:
        r["lm_head.weight"] = [("lm_head", (ALL, s(d)))]
    for i, b in enumerate(arch.blocks):
        L, a, f = f"layers.{i}", b.attn, b.ffn
        q, kv = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
        r[f"{L}.attn_norm.weight"] = [(f"{L}.attn_norm", (s(d),))]
        r[f"{L}.ffn_norm.weight"] = [(f"{L}.ffn_norm", (s(d),))]
        r[f"{L}.attn.q.weight"] = [(f"{L}.q", (s(q), s(d)))]
        r[f"{L}.attn.k.weight"] = [(f"{L}.k", (s(kv), s(d)))]
        r[f"{L}.attn.v.weight"] = [(f"{L}.v", (s(kv), s(d)))]
        r[f"{L}.attn.out.weight"] = [(f"{L}.out", (s(d), s(q)))]
        if isinstance(f, MoEFFN):
            e, h = f.n_experts, f.expert_hidden
            up = [(f"{L}.expert_up", (s(e), s(h), s(d)))]
            if f.activation == "swiglu":
                up.insert(0, (f"{L}.expert_gate", (s(e), s(h), s(d))))
            r[f"{L}.ffn.up"] = up
            r[f"{L}.ffn.down"] = [(f"{L}.expert_down", (s(e), s(d), s(h)))]
            r[f"{L}.ffn.router.weight"] = [(f"{L}.router", (s(e), s(d)))]
            if f.shared_expert_hidden:
                sh = f.shared_expert_hidden
                r[f"{L}.ffn.shared.up.weight"] = [(f"{L}.shared_up", (s(sh), s(d)))]
                r[f"{L}.ffn.shared.down.weight"] = [(f"{L}.shared_down", (s(d), s(sh)))]
                if f.activation == "swiglu":
                    r[f"{L}.ffn.shared.gate.weight"] = [(f"{L}.shared_gate", (s(sh), s(d)))]
        else:
            h = f.hidden
            r[f"{L}.ffn.up.weight"] = [(f"{L}.up", (s(h), s(d)))]
            r[f"{L}.ffn.down.weight"] = [(f"{L}.down", (s(d), s(h)))]
            if f.activation == "swiglu":
                r[f"{L}.ffn.gate.weight"] = [(f"{L}.gate", (s(h), s(d)))]
    return r


def gather(tensors: dict[str, torch.Tensor], parts: list[tuple[str, tuple[slice, ...]]]) -> torch.Tensor:
    pieces = [tensors[name][idx] for name, idx in parts]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)


def used_mask(net: SuperNet, arch: Architecture) -> dict[str, torch.Tensor]:
    """True where ``arch`` takes a supernet weight."""
    masks = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in net.named_parameters()}
    for parts in regions(arch).values():
        for name, idx in parts:
            masks[name][idx] = True
    return masks


# ---------------------------------------------------------------------- tests
def test_extract_matches_forward_on_25_architectures(setup) -> None:
    """``extract(arch)`` is ``Decoder(arch)`` (same state-dict names and shapes) holding the first slices of
    the supernet's weights, and its logits are the supernet's ``forward(idx, arch)``."""
    space, net, archs = setup
    assert len({a.id for a in archs}) >= 20  # really different architectures
    weights = dict(net.named_parameters())
    for k, arch in enumerate(archs):
        model = net.extract(arch)
        assert isinstance(model, Decoder)
        got = model.state_dict()
        fresh = Decoder(arch).state_dict()
        assert {n: tuple(v.shape) for n, v in got.items()} == {n: tuple(v.shape) for n, v in fresh.items()}
        expected = regions(arch)
        assert set(expected) == set(got), f"{arch.summary()}: {sorted(set(expected) ^ set(got))}"
        for name, parts in expected.items():
            assert torch.equal(got[name], gather(weights, parts)), f"{space.name} {arch.summary()}: {name}"
        idx = tokens(arch, seed=k)[:, :-1]
        with torch.no_grad():
            ours, theirs = net(idx, arch).logits, model(idx).logits
        assert ours.dtype == theirs.dtype == torch.float32
        assert ours.shape == (idx.shape[0], idx.shape[1], space.vocab_size)
        diff = (ours - theirs).abs().max().item()
        assert diff <= 1e-5, f"{space.name}: {arch.summary()}: max |logit diff| {diff:.2e}"
    # a copy: changing the extracted model leaves the supernet alone
    before = net.embed.detach().clone()
    with torch.no_grad():
        model.embed.weight.add_(1.0)
    assert torch.equal(net.embed.detach(), before)


def test_a_subnets_gradient_lands_in_its_slice_only(setup) -> None:
    """Weight sharing is real: the supernet's gradient for one subnet's loss equals the standalone
    decoder's gradient inside the subnet's slices, and is exactly zero everywhere else."""
    space, net, archs = setup
    for k, arch in enumerate([archs[1], *archs[2:5]]):  # the smallest and three random ones
        idx = tokens(arch, seed=100 + k)
        x, y = idx[:, :-1], idx[:, 1:]
        net.zero_grad(set_to_none=True)
        net(x, arch, targets=y).loss.backward()
        model = net.extract(arch)
        model(x, targets=y).loss.backward()
        decoder_grads = {name: p.grad for name, p in model.named_parameters()}
        grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)) for name, p in net.named_parameters()}
        for name, parts in regions(arch).items():
            theirs = decoder_grads[name]
            ours = gather(grads, parts)
            assert theirs is not None and theirs.abs().sum() > 0, name
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7, msg=f"{space.name} {arch.summary()}: {name}")
        outside = 0
        for name, mask in used_mask(net, arch).items():
            leaked = grads[name][~mask]
            assert torch.count_nonzero(leaked) == 0, f"{space.name} {arch.summary()}: gradient outside {name}'s slice"
            outside += leaked.numel()
        assert outside > 0  # these subnets leave part of the supernet untouched
    net.zero_grad(set_to_none=True)


def test_head_counts_at_one_width_share_the_attention_weights() -> None:
    space = load_space("tiny")
    torch.manual_seed(0)
    net = SuperNet(space)
    params = space.sample_params(np.random.default_rng(0))
    params.update({"d_model": 128, "L00.kv_ratio": 1, "L00.attention": "full"})
    by_heads = {h: space.decode({**params, "L00.n_heads": h}) for h in (2, 4, 8)}
    assert {a.blocks[0].attn.n_heads for a in by_heads.values()} == {2, 4, 8}
    q = net.layers[0].q.detach()[:128, :128]
    masks = []
    for arch in by_heads.values():
        model = net.extract(arch)
        for part in ("q", "k", "v"):
            full = getattr(net.layers[0], part).detach()
            assert torch.equal(getattr(model.layers[0].attn, part).weight, full[:128, :128])
        assert torch.equal(model.layers[0].attn.q.weight, q)
        idx = tokens(arch, seed=5)
        net.zero_grad(set_to_none=True)
        net(idx[:, :-1], arch, targets=idx[:, 1:]).loss.backward()
        masks.append(net.layers[0].q.grad != 0)
    # every head count's gradient covers the same q rows, the first 128 of 160
    for m in masks:
        assert m[:128, :128].any() and not m[128:].any() and not m[:, 128:].any()
    # the heads really differ: same weights, different computation
    idx = tokens(by_heads[2], seed=6)[:, :-1]
    with torch.no_grad():
        assert not torch.allclose(net(idx, by_heads[2]).logits, net(idx, by_heads[8]).logits)


@pytest.mark.parametrize("space_name", SPACES)
def test_check_rejects_architectures_outside_the_space(space_name: str) -> None:
    space = load_space(space_name)
    net = SuperNet(space)
    arch = space.sample(np.random.default_rng(0))
    net.check(arch)  # a member passes
    outside = {
        "d_model": arch.replace(d_model=max(space.global_choices["d_model"]) + 8),
        "vocab": arch.replace(vocab_size=space.vocab_size + 1),
        "max_seq_len": arch.replace(max_seq_len=space.max_seq_len * 2),
        "depth": arch.replace(blocks=arch.blocks * (max(space.global_choices["n_layers"]) // arch.n_layers + 1)),
    }
    for what, bad in outside.items():
        for call in (net.check, net.extract):
            with pytest.raises(ArchitectureError) as e:
                call(bad)
            message = str(e.value)
            assert repr(space_name) in message, f"{what}: {message}"
            assert bad.id in message, f"{what}: {message}"
    with pytest.raises(ArchitectureError, match="vocab_size"):
        net.check(outside["vocab"])


EXPECTED_DIMS = {
    "tiny": dict(vocab_size=257, max_seq_len=128, d_model=160, n_layers=6, q_dim=160, kv_dim=160, ffn_hidden=640,
                 n_experts=0, expert_hidden=0, shared_hidden=0, gate=True, learned_pos=True, untied=False),
    "tiny_char": dict(vocab_size=65, max_seq_len=64, d_model=192, n_layers=8, q_dim=192, kv_dim=192, ffn_hidden=768,
                      n_experts=0, expert_hidden=0, shared_hidden=0, gate=True, learned_pos=True, untied=False),
    "moe": dict(vocab_size=257, max_seq_len=256, d_model=128, n_layers=6, q_dim=128, kv_dim=128, ffn_hidden=512,
                n_experts=16, expert_hidden=256, shared_hidden=256, gate=True, learned_pos=False, untied=True),
}


@pytest.mark.parametrize("space_name", SPACES)
def test_supernet_dims_of_the_shipped_spaces(space_name: str) -> None:
    space = load_space(space_name)
    dims = SupernetDims.of(space)
    assert dims.to_dict() == EXPECTED_DIMS[space_name]
    # the dims follow the space's vocabulary and block size
    assert SupernetDims.of(space.with_vocab_size(1000).with_max_seq_len(space.max_seq_len * 2)).to_dict() == {
        **EXPECTED_DIMS[space_name], "vocab_size": 1000, "max_seq_len": space.max_seq_len * 2}
    # every architecture fits, and the extremes are reached
    net = SuperNet(space)
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
    rng = np.random.default_rng(7)
    for _ in range(300):
        arch = space.sample(rng)
        for parts in regions(arch).values():
            for name, idx in parts:
                assert name in shapes, f"{arch.summary()} needs {name}"
                for sl, size in zip(idx, shapes[name], strict=False):
                    assert sl.stop is None or sl.stop <= size, f"{arch.summary()}: {name} {idx} > {shapes[name]}"
    plan = SandwichPlan(space.with_constraints(type(space.constraints)()), SupernetConfig(pool_size=200))
    top = plan.largest
    assert top.d_model == dims.d_model and top.n_layers == dims.n_layers
    assert net.num_parameters() == sum(int(np.prod(v)) for v in shapes.values())
