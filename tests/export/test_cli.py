"""``llmnas export``: exit 0 with the class and the parity on a good file, one clear message and exit 2 otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from llmnas.cli import main
from llmnas.data.tokenizers import char_tokenizer
from llmnas.export.checkpoint import save_checkpoint
from llmnas.models.decoder import Decoder
from llmnas.space import Architecture, AttentionSpec, BlockSpec, DenseFFN


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_arch(pos: str = "rope", vocab: int = 257) -> Architecture:
    blocks = (BlockSpec(AttentionSpec(4, 2, 8), DenseFFN(64, "swiglu")),) * 2
    return Architecture(vocab_size=vocab, d_model=32, max_seq_len=64, blocks=blocks, pos=pos)


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_a_sampled_architecture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "space", "sample", "tiny", "--seed", "0", "--out", tmp_path / "arch.json")[0] == 0
    code, out, err = run(capsys, "export", tmp_path / "arch.json", "--out", tmp_path / "model")
    assert code == 0, err
    assert "as LlmnasForCausalLM (remote code: trust_remote_code=True)" in out
    assert "logits parity: max |diff|" in out and "tolerance 0.0001" in out
    assert (tmp_path / "model" / "config.json").is_file()


def test_stock_class_and_force_custom(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny_arch().save(tmp_path / "arch.json")
    code, out, _ = run(capsys, "export", tmp_path / "arch.json", "--out", tmp_path / "a", "--dtype", "bfloat16")
    assert code == 0 and "as LlamaForCausalLM (stock class), bfloat16 weights" in out
    code, out, _ = run(capsys, "export", tmp_path / "arch.json", "--out", tmp_path / "b", "--force-custom")
    assert code == 0 and "as LlmnasForCausalLM (remote code: trust_remote_code=True) (forced)" in out


def test_weights_and_tokenizer_from_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = tiny_arch(pos="alibi")
    torch.manual_seed(3)
    model = Decoder(arch).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # not the fresh initialisation of any seed
    save_checkpoint(model, tmp_path / "ckpt", tokenizer=char_tokenizer("hello world"))
    code, out, err = run(capsys, "export", tmp_path / "ckpt" / "arch.json", "--weights", tmp_path / "ckpt",
                         "--out", tmp_path / "model")
    assert code == 0, err
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model", trust_remote_code=True).eval()
    ids = torch.randint(0, 257, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(ids).logits, rtol=0, atol=1e-4)
    tok = AutoTokenizer.from_pretrained(tmp_path / "model", trust_remote_code=True)
    assert len(tok) == 8 and tok.decode(tok.encode("hello world")) == "hello world"
    # --tokenizer overrides the checkpoint's
    code, _, err = run(capsys, "export", tmp_path / "ckpt" / "arch.json", "--weights", tmp_path / "ckpt",
                       "--tokenizer", "byte", "--out", tmp_path / "model2")
    assert code == 0, err
    assert len(AutoTokenizer.from_pretrained(tmp_path / "model2", trust_remote_code=True)) == 257


def test_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "arch.json"
    tiny_arch().save(good)
    (tmp_path / "broken.json").write_text('{"vocab_size": 257,')
    other = tiny_arch(pos="alibi")
    save_checkpoint(Decoder(Architecture(vocab_size=257, d_model=48, max_seq_len=64, blocks=other.blocks)),
                    tmp_path / "wide")
    save_checkpoint(Decoder(other), tmp_path / "alibi")
    tiny_arch(vocab=100).save(tmp_path / "small_vocab.json")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    cases = [
        ((tmp_path / "missing.json",), "file not found"),
        ((tmp_path / "broken.json",), "not valid JSON"),
        ((good, "--weights", tmp_path / "wide" / "model.safetensors"), "weights do not match architecture"),
        ((good, "--weights", tmp_path / "alibi"), "holds architecture"),
        ((good, "--weights", tmp_path / "nowhere"), "no such checkpoint folder or .safetensors file"),
        ((good, "--seed", "-1"), "--seed -1: must be a non-negative integer"),
        ((good, "--study", "s"), "--study s: only means something with --trial"),
        ((good, "--tokenizer", "char:" + str(tmp_path / "no_corpus.txt")), "corpus file"),
        ((tmp_path / "small_vocab.json",), "the tokenizer has 257 tokens but architecture"),
    ]
    for args, message in cases:
        code, out, err = run(capsys, "export", *args, "--out", tmp_path / "out")
        assert code == 2, (args, out, err)
        assert err.startswith("llmnas: error: ") and message in err, err
        assert "Traceback" not in err and not (tmp_path / "out").exists()
    code, _, err = run(capsys, "export", good, "--out", tmp_path / "taken")
    assert code == 2 and "already exists" in err
    code, _, err = run(capsys, "export", good, "--out", tmp_path / "taken" / "x" / "model")
    assert code == 2 and f"--out {tmp_path / 'taken' / 'x' / 'model'}: cannot be created, " in err
    assert "x is a file, not a folder" in err


@pytest.mark.parametrize("location", ["sqlite:///{tmp}/none/study.db", "{tmp}/none/study.db", "sqlite:///{tmp}"])
def test_a_missing_study_is_not_created(tmp_path: Path, capsys: pytest.CaptureFixture[str], location: str) -> None:
    before = sorted(tmp_path.rglob("*"))
    code, _, err = run(capsys, "export", location.format(tmp=tmp_path), "--trial", "best", "--out", tmp_path / "m")
    assert code == 2 and err.startswith("llmnas: error: ") and "Traceback" not in err
    assert ("no such" in err or "is a folder" in err) and sorted(tmp_path.rglob("*")) == before


def test_a_corrupt_checkpoint_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arch = tiny_arch()
    save_checkpoint(Decoder(arch), tmp_path / "ckpt", tokenizer=char_tokenizer("hello world"))
    (tmp_path / "ckpt" / "tokenizer" / "tokenizer.json").write_text('{"truncated": ')
    argv = ("export", tmp_path / "ckpt" / "arch.json", "--weights", tmp_path / "ckpt")
    code, _, err = run(capsys, *argv, "--out", tmp_path / "m")
    assert code == 2 and "Traceback" not in err and not (tmp_path / "m").exists()
    assert f"tokenizer directory '{tmp_path / 'ckpt' / 'tokenizer'}' could not be loaded (JSONDecodeError" in err
    assert "give another tokenizer with --tokenizer" in err
    code, _, err = run(capsys, *argv, "--tokenizer", "byte", "--out", tmp_path / "m")  # the way out it names
    assert code == 0, err


def test_export_a_trial_of_a_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``llmnas export RUN --trial best``: the trial's architecture with its checkpoint's weights."""
    import optuna

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    study = optuna.create_study(study_name="run", storage=f"sqlite:///{run_dir / 'study.db'}")
    archs = [tiny_arch(), tiny_arch(pos="alibi")]
    for value, a in zip((2.0, 1.5), archs, strict=True):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"arch": a.to_json()}))
    save_checkpoint(Decoder(archs[1]), run_dir / "trials" / "1")
    code, out, err = run(capsys, "export", run_dir, "--trial", "best", "--out", tmp_path / "best")
    assert code == 0, err
    assert f"trial 1 of study 'run': arch {archs[1].id}" in out and "LlmnasForCausalLM" in out
    assert f"weights: {run_dir / 'trials' / '1'}" in out and "trust_remote_code=True)" in out
    # a retrained checkpoint (llmnas train RECIPE --trial best) is preferred
    save_checkpoint(Decoder(archs[1]), run_dir / "retrain" / archs[1].id)
    code, out, err = run(capsys, "export", run_dir, "--trial", "best", "--out", tmp_path / "best2")
    assert code == 0 and f"weights: {run_dir / 'retrain' / archs[1].id}" in out
    code, _, err = run(capsys, "export", run_dir, "--trial", "0", "--out", tmp_path / "first")
    assert code == 2 and "trial 0 of study 'run' has no checkpoint" in err
    code, out, err = run(capsys, "export", run_dir, "--trial", "0", "--weights", run_dir / "trials" / "1",
                         "--out", tmp_path / "first")
    assert code == 2 and "holds architecture" in err  # trial 1's weights do not belong to trial 0
    code, _, err = run(capsys, "export", run_dir, "--trial", "7", "--out", tmp_path / "x")
    assert code == 2 and "has no trial 7" in err
