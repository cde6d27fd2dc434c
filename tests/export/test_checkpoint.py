"""Training checkpoints: what the training loop writes is what ``llmnas export --weights`` reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmnas.data.tokenizers import char_tokenizer
from llmnas.export.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from llmnas.models.decoder import Decoder
from llmnas.space import Architecture, AttentionSpec, BlockSpec, DenseFFN, MoEFFN


def make_arch(d: int = 32, pos: str = "rope") -> Architecture:
    blocks = (
        BlockSpec(AttentionSpec(4, 2, 8, window=6), DenseFFN(48, "gelu")),
        BlockSpec(AttentionSpec(2, 1, 16), MoEFFN(4, 2, 16, shared_expert_hidden=8)),
    )
    return Architecture(vocab_size=64, d_model=d, max_seq_len=32, blocks=blocks, pos=pos, tie_embeddings=False)


def test_round_trip_with_tokenizer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Decoder(make_arch())
    tok = char_tokenizer("to be or not to be")
    save_checkpoint(model, tmp_path / "ckpt", tokenizer=tok)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["arch.json", "model.safetensors", "tokenizer"]
    arch, state, loaded_tok = load_checkpoint(tmp_path / "ckpt")
    assert arch == model.arch
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert loaded_tok.get_vocab() == tok.get_vocab()


def test_compiled_model_saves_plain_keys(tmp_path: Path) -> None:
    model = Decoder(make_arch())
    save_checkpoint(torch.compile(model), tmp_path / "ckpt")  # compilation is lazy: nothing is compiled here
    _, state, tok = load_checkpoint(tmp_path / "ckpt")
    assert tok is None and state.keys() == model.state_dict().keys()


def test_load_weights_from_a_bare_file_or_a_directory(tmp_path: Path) -> None:
    arch = make_arch()
    save_checkpoint(Decoder(arch), tmp_path / "ckpt")
    state, tok = load_weights(tmp_path / "ckpt" / "model.safetensors", arch)
    assert tok is None and "lm_head.weight" in state
    state2, _ = load_weights(tmp_path / "ckpt", arch)
    assert all(torch.equal(state[k], state2[k]) for k in state)


def test_errors(tmp_path: Path) -> None:
    arch, other = make_arch(), make_arch(d=48)
    save_checkpoint(Decoder(other), tmp_path / "other")
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint \\(no arch.json\\)"):
        load_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="holds architecture .* not "):
        load_weights(tmp_path / "other", arch)
    # same shapes, other maths: the id tells them apart
    with pytest.raises(CheckpointError, match="holds architecture"):
        load_weights(tmp_path / "other", make_arch(d=48, pos="alibi"))
    mismatch = r"(?s)do not match architecture .*embed.weight: shape \(64, 48\) in the weights"
    with pytest.raises(CheckpointError, match=mismatch):
        load_weights(tmp_path / "other" / "model.safetensors", arch)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_weights(tmp_path / "junk.safetensors", arch)
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_weights(tmp_path / "nothing.safetensors", arch)
    (tmp_path / "other" / "arch.json").write_text(arch.to_json())  # arch.json edited by hand
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_checkpoint(tmp_path / "other")
    with pytest.raises(TypeError, match="expected an llmnas Decoder"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x")


@pytest.mark.parametrize(
    ("name", "content", "cause"),
    [
        ("tokenizer.json", b'{"version": ', "JSONDecodeError"),
        ("tokenizer.json", b"{}", "KeyError"),
        ("tokenizer.json", b"", "JSONDecodeError"),
        ("tokenizer_config.json", b"\xff\xfe", "UnicodeDecodeError"),
    ],
)
def test_a_corrupt_tokenizer_names_the_checkpoint(tmp_path: Path, name: str, content: bytes, cause: str) -> None:
    arch = make_arch()
    save_checkpoint(Decoder(arch), tmp_path / "ckpt", tokenizer=char_tokenizer("to be or not"))
    (tmp_path / "ckpt" / "tokenizer" / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=f"tokenizer directory '.*ckpt/tokenizer' could not be loaded \\({cause}"):
        load_checkpoint(tmp_path / "ckpt")
    _, state, tok = load_checkpoint(tmp_path / "ckpt", with_tokenizer=False)  # weights still readable
    assert tok is None and state
    assert load_weights(tmp_path / "ckpt", arch, with_tokenizer=False)[1] is None


def test_an_unreadable_architecture_file_in_a_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(Decoder(make_arch()), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "arch.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(CheckpointError, match="ckpt/arch.json: not UTF-8 text"):
        load_checkpoint(tmp_path / "ckpt")
