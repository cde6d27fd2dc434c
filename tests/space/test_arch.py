from __future__ import annotations

import json

import pytest

from llmnas.errors import ArchitectureError
from llmnas.space import Architecture, AttentionSpec, BlockSpec, DenseFFN, MoEFFN, load_space

BLOCKS = (
    BlockSpec(AttentionSpec(8, 2, 16), DenseFFN(256, "swiglu")),
    BlockSpec(AttentionSpec(4, 1, 32, window=64), MoEFFN(8, 2, 128, "gelu", shared_expert_hidden=64)),
)


def make(**kw) -> Architecture:
    values = dict(vocab_size=257, d_model=128, max_seq_len=256, blocks=BLOCKS)
    values.update(kw)
    return Architecture(**values)


def test_json_round_trip_is_exact_and_id_is_stable() -> None:
    arch = make(pos="alibi", norm="layernorm", tie_embeddings=False)
    again = Architecture.from_json(arch.to_json())
    assert again == arch and again.to_json() == arch.to_json() and again.id == arch.id
    # The id is a hash of the canonical form; it must not change between versions or processes.
    assert make().id == "b7db661815d1"
    # Key order and whitespace do not matter; the canonical JSON is the same.
    shuffled = json.dumps(dict(reversed(list(json.loads(arch.to_json(indent=2)).items()))), indent=4)
    assert Architecture.from_json(shuffled).id == arch.id


def test_ints_where_floats_are_expected_give_the_same_architecture() -> None:
    data = json.loads(make().to_json())
    data["rope_base"] = 10000
    assert Architecture.from_dict(data).id == make().id


def test_rope_base_is_normalised_without_rope() -> None:
    assert make(pos="alibi", rope_base=500000.0).id == make(pos="alibi").id


def test_file_round_trip(tmp_path) -> None:
    arch = make()
    arch.save(tmp_path / "a.json")
    assert Architecture.load(tmp_path / "a.json") == arch


def test_each_violated_rule_has_its_own_message() -> None:
    blocks = (
        BlockSpec(AttentionSpec(8, 8, 16), DenseFFN(64)),
        BlockSpec(AttentionSpec(8, 8, 16), DenseFFN(64)),
        BlockSpec(AttentionSpec(8, 8, 16), DenseFFN(64)),
        BlockSpec(AttentionSpec(8, 3, 15, window=300), MoEFFN(4, 5, 64, "tanh")),
    )
    with pytest.raises(ArchitectureError) as e:
        make(blocks=blocks, norm="batchnorm")
    assert e.value.problems == [
        "norm='batchnorm' must be one of rmsnorm, layernorm",
        "layer 3: n_kv_heads=3 must divide n_heads=8",
        "layer 3: head_dim=15 must be even with RoPE",
        "layer 3: window=300 must be < max_seq_len=256 (a window that covers the whole sequence is full "
        "attention: use window=null)",
        "layer 3: ffn.top_k=5 must be <= n_experts=4",
        "layer 3: ffn.activation='tanh' must be one of gelu, swiglu, relu2",
    ]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("d_model"), "missing key 'd_model'"),
        (lambda d: d.update(depth=3), "unknown key 'depth'"),
        (lambda d: d.update(d_model="128"), "d_model='128' must be int"),
        (lambda d: d.update(tie_embeddings=1), "tie_embeddings=1 must be bool"),
        (lambda d: d["blocks"][1]["attn"].update(n_heads=True), "blocks[1].attn.n_heads=True must be int"),
        (lambda d: d["blocks"][0]["ffn"].update(kind="sparse"), "blocks[0].ffn.kind='sparse' must be 'dense' or 'moe'"),
        (lambda d: d["blocks"][0]["ffn"].pop("hidden"), "missing key blocks[0].ffn.hidden"),
        (lambda d: d.update(format="other/2"), "format='other/2' is not supported"),
    ],
)
def test_from_dict_names_the_key(edit, message: str) -> None:
    data = json.loads(make().to_json())
    edit(data)
    with pytest.raises(ArchitectureError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Architecture.from_dict(data, source="x.json")


def test_bad_json_and_missing_file(tmp_path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ArchitectureError, match="bad.json.*not valid JSON"):
        Architecture.load(tmp_path / "bad.json")
    with pytest.raises(ArchitectureError, match="file not found"):
        Architecture.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"vocab_size": 10**12}, "vocab_size=1,000,000,000,000 is too large (at most 16,777,216)"),
        ({"d_model": 1 << 20}, "d_model=1,048,576 is too large (at most 65,536)"),
        ({"max_seq_len": 1 << 30}, "max_seq_len=1,073,741,824 is too large"),
        ({"blocks": (BlockSpec(AttentionSpec(4, 1, 32), DenseFFN(1 << 24)),)}, "ffn.hidden=16,777,216 is too large"),
        ({"blocks": (BlockSpec(AttentionSpec(4, 1, 32), DenseFFN(64)),) * 2000}, "2,000 layers is too many"),
        ({"vocab_size": 1 << 24, "d_model": 1 << 16}, "parameters is too many (at most 1,000,000,000,000)"),
    ],
)
def test_absurd_sizes_are_refused_before_anything_is_allocated(changes: dict, message: str) -> None:
    with pytest.raises(ArchitectureError) as e:
        make(**changes)
    assert message in str(e.value)


def test_absurd_vocab_in_an_architecture_file(tmp_path) -> None:
    data = json.loads(make().to_json())
    data["vocab_size"] = 10**12
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.raises(ArchitectureError, match="a.json: vocab_size=1,000,000,000,000 is too large"):
        Architecture.load(tmp_path / "a.json")


def test_unreadable_architecture_files(tmp_path) -> None:
    (tmp_path / "latin1.json").write_bytes(json.dumps({"vocab_size": 1}).encode() + b"\xe9")
    with pytest.raises(ArchitectureError, match=r"latin1.json: not UTF-8 text \(a byte 0xe9 at offset 17\)"):
        Architecture.load(tmp_path / "latin1.json")
    with pytest.raises(ArchitectureError, match="is a directory, not an architecture JSON file"):
        Architecture.load(tmp_path)
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(ArchitectureError, match="empty.json: not valid JSON"):
        Architecture.load(tmp_path / "empty.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ArchitectureError, match="list.json: expected a JSON object, got list"):
        Architecture.load(tmp_path / "list.json")


def test_param_accounting_by_hand() -> None:
    d, v = 128, 257
    arch = make(tie_embeddings=False, pos="learned")
    attn0 = d * 128 + 2 * d * 32 + 128 * d
    attn1 = d * 128 + 2 * d * 32 + 128 * d
    ffn0 = 3 * d * 256
    expert = 2 * d * 128
    ffn1 = d * 8 + 8 * expert + 2 * d * 64
    embedding = v * d + 256 * d + v * d
    total = embedding + attn0 + attn1 + ffn0 + ffn1 + 4 * d + d
    counts = arch.param_counts()
    assert counts.total == total
    assert counts.embedding == embedding and counts.non_embedding == total - embedding
    assert counts.active == total - 6 * expert
    assert arch.kv_cache_bytes_per_token() == (2 * 32 + 2 * 32) * 2


def test_nanogpt_baby_gpt_has_its_published_size() -> None:
    """nanoGPT's CPU "baby GPT" (4 layers, 4 heads, width 128, 65 characters) reports 0.80M parameters
    (its count leaves out the position table)."""
    block = BlockSpec(AttentionSpec(4, 4, 32), DenseFFN(512, "gelu"))
    arch = Architecture(vocab_size=65, d_model=128, max_seq_len=64, blocks=(block,) * 4, pos="learned",
                        norm="layernorm")
    counts = arch.param_counts()
    assert counts.total - 64 * 128 == 795_904


def test_flops_mean_context_for_windows() -> None:
    arch = make()
    full = Architecture(vocab_size=257, d_model=128, max_seq_len=256, blocks=(BLOCKS[0],))
    windowed = Architecture(vocab_size=257, d_model=128, max_seq_len=256,
                            blocks=(BlockSpec(AttentionSpec(8, 2, 16, window=4), DenseFFN(256, "swiglu")),))
    t = 10
    keys_full = sum(range(1, t + 1)) / t
    keys_window = sum(min(i, 4) for i in range(1, t + 1)) / t
    assert full.flops_per_token(t) - windowed.flops_per_token(t) == pytest.approx(
        4 * 128 * (keys_full - keys_window), abs=1
    )
    assert arch.flops_per_token(256) > arch.flops_per_token(16)


def test_shipped_spaces_give_valid_architectures() -> None:
    for name in ("tiny", "small", "moe"):
        arch = load_space(name).sample(0)
        assert Architecture.from_json(arch.to_json()) == arch
