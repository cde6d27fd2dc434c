"""``supernet.unshare``: per-value weights for head counts, attention kinds and activations.

The variant a layer takes is computed here a second time, from the space's choice lists (the product of the
unshared attention decisions, head count first), and every check compares the supernet with a standalone
:class:`Decoder` built from those slices.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmnas.errors import RecipeError
from llmnas.export.checkpoint import CheckpointError
from llmnas.space import Architecture, load_space
from llmnas.space.arch import MoEFFN
from llmnas.supernet import SuperNet, SupernetConfig, evaluate_subnet
from llmnas.supernet.checkpoint import META, load_supernet, read_meta
from llmnas.supernet.train import run_record, train_supernet
from llmnas.train import make_accelerator
from tests.supernet.test_train import POOL, quick  # noqa: F401  (the module fixture)

ALL = ("n_heads", "attention", "activation")


def noisy(net: SuperNet) -> SuperNet:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * (0.2 if p.dim() == 1 else 0.05))
    return net.eval()


def qk_index(space, block, unshare) -> int:
    heads = space.layer_choices["n_heads"].index(block.attn.n_heads)
    kind = space.layer_choices["attention"].index("full" if block.attn.window is None else "sliding")
    if "attention" not in unshare:
        return heads
    return heads * len(space.layer_choices["attention"]) + kind  # n_heads, attention


def archs(space, n: int) -> list[Architecture]:
    return [space.sample(np.random.default_rng(seed)) for seed in range(n)]


@pytest.mark.parametrize("space_name,unshare", [("tiny", ALL), ("tiny_char", ("n_heads", "activation")),
                                                ("tiny", ("n_heads",)), ("moe", ("n_heads", "activation"))])
def test_each_value_takes_its_own_weights_and_extract_matches_forward(space_name, unshare) -> None:
    space = load_space(space_name)
    torch.manual_seed(0)
    net = noisy(SuperNet(space, unshare=unshare))
    acts = space.layer_choices["activation"]
    n_qk = len(space.layer_choices["n_heads"]) * (len(space.layer_choices["attention"]) if "attention" in unshare
                                                  else 1)
    layer = net.layers[0]
    assert layer.q.shape[0] == layer.k.shape[0] == n_qk and layer.v.dim() == 2 and layer.out.dim() == 2
    assert (layer.up.shape[0] == layer.down.shape[0] == len(acts)) == ("activation" in unshare)
    for k, arch in enumerate(archs(space, 20)):
        model = net.extract(arch)
        d = arch.d_model
        for i, b in enumerate(arch.blocks):
            L, j = net.layers[i], qk_index(space, b, unshare)
            q, kv = b.attn.n_heads * b.attn.head_dim, b.attn.n_kv_heads * b.attn.head_dim
            assert torch.equal(model.layers[i].attn.q.weight, L.q[j, :q, :d])
            assert torch.equal(model.layers[i].attn.k.weight, L.k[j, :kv, :d])
            assert torch.equal(model.layers[i].attn.v.weight, L.v[:kv, :d])  # values stay shared
            if isinstance(b.ffn, MoEFFN):  # a MoE layer's experts stay shared
                assert torch.equal(model.layers[i].ffn.down, L.expert_down[:b.ffn.n_experts, :d, :b.ffn.expert_hidden])
                continue
            h = b.ffn.hidden
            up, down = (L.up[acts.index(b.ffn.activation)], L.down[acts.index(b.ffn.activation)]) \
                if "activation" in unshare else (L.up, L.down)
            assert torch.equal(model.layers[i].ffn.up.weight, up[:h, :d])
            assert torch.equal(model.layers[i].ffn.down.weight, down[:d, :h])
        idx = torch.randint(0, space.vocab_size, (2, 40), generator=torch.Generator().manual_seed(k))
        with torch.no_grad():
            diff = (net(idx, arch).logits - model(idx).logits).abs().max().item()
        assert diff <= 1e-5, f"{arch.summary()}: {diff:.2e}"


def test_head_counts_no_longer_share_query_and_key_weights() -> None:
    """The counterpart of test_model's shared case: the same layer at 2 and 8 heads trains disjoint q/k."""
    space = load_space("tiny")
    torch.manual_seed(0)
    net = SuperNet(space, unshare=("n_heads",))
    params = space.sample_params(np.random.default_rng(0))
    params.update({"d_model": 128, "L00.kv_ratio": 1, "L00.attention": "full"})
    grads = {}
    for h in (2, 8):
        arch = space.decode({**params, "L00.n_heads": h})
        idx = torch.randint(0, space.vocab_size, (2, 33), generator=torch.Generator().manual_seed(3))
        net.zero_grad(set_to_none=True)
        net(idx[:, :-1], arch, targets=idx[:, 1:]).loss.backward()
        grads[h] = (net.layers[0].q.grad != 0, net.layers[0].k.grad != 0, net.layers[0].v.grad != 0)
    two, eight = space.layer_choices["n_heads"].index(2), space.layer_choices["n_heads"].index(8)
    for h, own in ((2, two), (8, eight)):
        q, k, v = grads[h]
        assert q[own].any() and k[own].any()
        assert not q[[i for i in range(q.shape[0]) if i != own]].any()  # no other head count's weights move
        assert not k[[i for i in range(k.shape[0]) if i != own]].any()
    assert grads[2][2][:128, :128].any() and grads[8][2][:128, :128].any()  # v: shared by both


def test_unshare_errors_name_the_key_and_the_allowed_values() -> None:
    with pytest.raises(RecipeError, match=r"'kv_ratio' is not one of n_heads, attention, activation"):
        SupernetConfig(unshare=("kv_ratio",))
    with pytest.raises(RecipeError, match="list each decision once"):
        SupernetConfig(unshare=("n_heads", "n_heads"))
    assert SupernetConfig(unshare=["activation", "n_heads"]).unshare == ("n_heads", "activation")  # canonical
    with pytest.raises(RecipeError, match=r"supernet.unshare: 'attention' takes 1 value\(s\) in the space 'moe'"):
        SuperNet(load_space("moe"), unshare=("attention",))


def test_an_unshared_supernet_trains_checkpoints_and_loads_with_its_weights(quick, tmp_path) -> None:  # noqa: F811
    _, data, space, cfg, _ = quick
    sn = SupernetConfig(pool_size=POOL, unshare=("n_heads", "activation"))
    out = tmp_path / "sn"
    done = train_supernet(space, data, sn, cfg, make_accelerator(cfg), out)
    loaded = load_supernet(out)
    assert loaded.net.unshare == ("n_heads", "activation")
    assert read_meta(done.path)["config"]["unshare"] == ["n_heads", "activation"]
    plain = SuperNet(space)
    assert loaded.net.num_parameters() > plain.num_parameters()
    arch = space.sample(np.random.default_rng(5))
    score = evaluate_subnet(loaded.net, arch, data, cfg, make_accelerator(cfg))
    assert np.isfinite(score.val_loss) and score.val_loss < 8.0
    # the unshared weights moved where subnets used them: every head count's q in layer 0 was trained
    init = SuperNet(space, unshare=sn.unshare)
    moved = [not torch.equal(loaded.net.layers[0].q[i], init.layers[0].q[i]) for i in range(3)]
    assert all(moved)
    # resuming with another unshare setting is refused, naming it; a plain supernet's record is as before
    with pytest.raises(RecipeError, match="unshare"):
        train_supernet(space, data, SupernetConfig(pool_size=POOL), cfg, make_accelerator(cfg), out)
    assert "unshare" not in run_record(space, SupernetConfig(pool_size=POOL), cfg, data)["supernet"]
    # a checkpoint whose record names a decision no supernet can unshare is refused as corrupted, naming the file
    meta_path = done.path / META
    meta = json.loads(meta_path.read_text())
    meta["config"]["unshare"] = ["kv_ratio"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"supernet.json.*'kv_ratio' is not one of n_heads, attention"):
        load_supernet(out)
