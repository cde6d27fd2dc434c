"""Every export path, loaded back in a fresh Python process that never imports llmnas.

One module fixture exports all the cases (each export already checks parity in-process); one
subprocess then loads every directory with stock transformers only and reports, per case: the class,
the logits difference from the llmnas Decoder, greedy generation with and without the KV cache,
left-padded batches, the ``save_pretrained`` round trip, ``AutoTokenizer`` and ``pipeline``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from llmnas.errors import ExportError
from llmnas.export import export_model
from llmnas.export.exporter import TOLERANCE, _write, check_parity, fresh_state_dict, parity_input
from llmnas.export.targets import choose_target
from llmnas.models.decoder import Decoder
from llmnas.space import Architecture, AttentionSpec, BlockSpec, DenseFFN, MoEFFN, load_space


def block(h: int = 4, g: int = 2, hd: int = 8, window: int | None = None, ffn=None) -> BlockSpec:
    return BlockSpec(AttentionSpec(h, g, hd, window), ffn or DenseFFN(64, "swiglu"))


def arch(*blocks: BlockSpec, **kw: Any) -> Architecture:
    kw.setdefault("vocab_size", 257)
    return Architecture(d_model=32, max_seq_len=64, blocks=blocks, **kw)


@dataclass(frozen=True)
class Case:
    arch: Architecture
    class_name: str
    dtype: str = "float32"
    force_custom: bool = False
    pipeline: bool = False


GELU, RELU2 = DenseFFN(64, "gelu"), DenseFFN(64, "relu2")
CASES = {
    "llama": Case(arch(block(), block()), "LlamaForCausalLM", pipeline=True),
    "llama_untied_mqa": Case(arch(block(g=1), block(g=1), tie_embeddings=False), "LlamaForCausalLM"),
    "mistral_window": Case(arch(block(window=8), block(window=8)), "MistralForCausalLM"),
    "mistral_heads_not_dividing": Case(arch(*[block(h=3, g=1, hd=12)] * 2), "MistralForCausalLM"),
    "ministral_mixed_windows": Case(arch(block(window=8), block(), block(window=8)), "MinistralForCausalLM"),
    "mixtral": Case(arch(*[block(ffn=MoEFFN(4, 2, 16))] * 2), "MixtralForCausalLM"),
    "mixtral_window_untied": Case(
        arch(*[block(window=8, ffn=MoEFFN(4, 1, 16))] * 2, tie_embeddings=False), "MixtralForCausalLM"
    ),
    "granite_shared_expert": Case(
        arch(*[block(g=4, ffn=MoEFFN(4, 2, 16, shared_expert_hidden=24))] * 2), "GraniteMoeSharedForCausalLM"
    ),
    "gpt2": Case(arch(*[block(g=4, ffn=GELU)] * 2, norm="layernorm", pos="learned"), "GPT2LMHeadModel"),
    "gpt2_relu2_untied": Case(
        arch(*[block(g=4, ffn=RELU2)] * 2, norm="layernorm", pos="learned", tie_embeddings=False),
        "GPT2LMHeadModel",
    ),
    "starcoder2": Case(arch(*[block(g=4, ffn=GELU)] * 2, norm="layernorm"), "Starcoder2ForCausalLM"),
    "starcoder2_gqa_window_untied": Case(
        arch(*[block(window=8, ffn=RELU2)] * 2, norm="layernorm", tie_embeddings=False), "Starcoder2ForCausalLM"
    ),
    # the remote code
    "custom_heterogeneous": Case(
        arch(
            block(4, 2, 8, window=6, ffn=DenseFFN(48, "swiglu")),
            block(2, 1, 12, ffn=DenseFFN(64, "gelu")),
            block(8, 8, 4, window=16, ffn=DenseFFN(40, "relu2")),
        ),
        "LlmnasForCausalLM",
        pipeline=True,
    ),
    "custom_alibi": Case(  # 3 heads: the slopes of a non power of two
        arch(block(4, 4, 8), block(3, 1, 8, window=8), pos="alibi"), "LlmnasForCausalLM"
    ),
    "custom_moe_shared_expert": Case(
        arch(
            block(ffn=MoEFFN(4, 2, 16, "gelu", shared_expert_hidden=8)),
            block(window=8),
            block(ffn=MoEFFN(8, 3, 8, "swiglu", shared_expert_hidden=16)),
        ),
        "LlmnasForCausalLM",
    ),
    "custom_moe_mixed_windows": Case(
        arch(block(window=8, ffn=MoEFFN(4, 2, 16)), block(ffn=MoEFFN(4, 2, 16))), "LlmnasForCausalLM"
    ),
    "custom_layernorm_rope_untied": Case(  # LayerNorm + RoPE with SwiGLU: no stock class
        arch(block(), block(window=8), norm="layernorm", tie_embeddings=False), "LlmnasForCausalLM"
    ),
    "custom_learned_gqa_relu2": Case(
        arch(block(ffn=RELU2), block(g=1, ffn=RELU2), norm="layernorm", pos="learned"), "LlmnasForCausalLM"
    ),
    "custom_rmsnorm_relu2_padded_vocab": Case(
        arch(*[block(ffn=RELU2)] * 2, vocab_size=320), "LlmnasForCausalLM"
    ),
    "custom_forced": Case(arch(block(), block()), "LlmnasForCausalLM", force_custom=True),
    "custom_bfloat16": Case(
        arch(block(window=8), block(2, 1, 16, ffn=GELU)), "LlmnasForCausalLM", dtype="bfloat16"
    ),
}


def smallest_sample(space: str, seeds: range) -> Architecture:
    samples = [load_space(space).sample(seed) for seed in seeds]
    return min(samples, key=lambda a: a.param_counts().total)


SPACE_SAMPLES = {
    "space_tiny": lambda: load_space("tiny").sample(0),
    "space_moe": lambda: load_space("moe").sample(0),
    "space_small": lambda: smallest_sample("small", range(40)),
}

# Runs with ``python -c``: must never import llmnas.
CHECKER = textwrap.dedent(
    """
    import json, sys, tempfile, traceback
    from pathlib import Path
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    def check(case):
        d, remote = case["dir"], case["remote"]
        data = torch.load(case["expected"])
        ids, want, want_loss = data["ids"], data["logits"], data["loss"]
        load = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32, trust_remote_code=remote)
        model = load(d).eval()
        r = {"class": type(model).__name__}
        with torch.no_grad():
            logits = model(input_ids=ids).logits
            r["max_diff"] = (logits - want).abs().max().item()
            prompt = ids[:, :8]
            gen = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(prompt))
            cached = model.generate(prompt, use_cache=True, **gen)
            uncached = model.generate(prompt, use_cache=False, **gen)
            r["generated_shape"] = list(cached.shape)
            r["cache_agrees"] = torch.equal(cached, uncached)
            r["prompt_kept"] = torch.equal(cached[:, :8], prompt)
            if case["padding"]:  # row 0 left-padded by 3: its last logits must not change
                short = ids[:1, :10]
                padded = torch.cat((torch.zeros(2, 3, dtype=ids.dtype), ids[:2, :10]), 1)
                padded[1, :3] = ids[1, 10:13]
                mask = torch.ones_like(padded)
                mask[0, :3] = 0
                alone = model(input_ids=short).logits[0, -1]
                batched = model(input_ids=padded, attention_mask=mask).logits[0, -1]
                r["padding_diff"] = (alone - batched).abs().max().item()
        if case["full"]:  # fine-tuning: the causal-LM loss and its gradients
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            r["loss_diff"] = abs(loss.item() - want_loss)
            r["grads_finite"] = all(p.grad is not None and bool(p.grad.isfinite().all()) for p in model.parameters())
            model.zero_grad()
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                r["saved_files"] = sorted(p.name for p in Path(tmp).iterdir())
                with torch.no_grad():
                    r["roundtrip_diff"] = (load(tmp).eval()(input_ids=ids).logits - logits).abs().max().item()
            tok = AutoTokenizer.from_pretrained(d, trust_remote_code=remote)
            r["tokenizer_len"] = len(tok)
            r["tokenizer_roundtrip"] = tok.decode(tok.encode("héllo, wörld")) == "héllo, wörld"
            r["eos"] = [tok.eos_token_id, model.generation_config.eos_token_id, model.generation_config.pad_token_id]
        if case["pipeline"]:
            pipe = pipeline("text-generation", model=d, trust_remote_code=remote)
            r["pipeline"] = pipe("hello", max_new_tokens=4, min_new_tokens=4, do_sample=False)[0]["generated_text"]
        return r

    manifest = json.loads(Path(sys.argv[1]).read_text())
    results = {}
    for case in manifest:
        try:
            results[case["name"]] = check(case)
        except Exception:
            results[case["name"]] = {"error": traceback.format_exc()}
    results["_llmnas_imported"] = "llmnas" in sys.modules
    Path(sys.argv[2]).write_text(json.dumps(results))
    """
)


def reference_logits(arch: Architecture, state_dict: dict, ids: torch.Tensor) -> torch.Tensor:
    model = Decoder(arch).eval()
    model.load_state_dict({k: v.float() for k, v in state_dict.items()})
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """These models are tiny: a second intra-op thread only adds overhead (a lot of it on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Export every case and space sample; returns name -> {"report", "arch", "case"}."""
    root = tmp_path_factory.mktemp("exports")
    out: dict[str, dict[str, Any]] = {}
    items = [(name, case) for name, case in CASES.items()]
    items += [(name, Case(make(), "")) for name, make in SPACE_SAMPLES.items()]
    for name, case in items:
        sd = fresh_state_dict(case.arch, seed=1)
        report = export_model(
            case.arch, root / name, state_dict=sd, dtype=case.dtype, force_custom=case.force_custom
        )
        rounded = {k: v.to(getattr(torch, case.dtype)) for k, v in sd.items()}
        ids = torch.randint(0, 257, (2, 40), generator=torch.Generator().manual_seed(7))
        logits = reference_logits(case.arch, rounded, ids)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).item()
        torch.save({"ids": ids, "logits": logits, "loss": loss}, root / f"{name}.pt")
        out[name] = {"report": report, "arch": case.arch, "case": case, "expected": root / f"{name}.pt"}
    return out


@pytest.fixture(scope="module")
def fresh(exported: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Load every export in one fresh interpreter that never imports llmnas."""
    tmp = tmp_path_factory.mktemp("fresh")
    manifest = [
        {
            "name": name,
            "dir": str(e["report"].path),
            "remote": e["report"].remote_code,
            "expected": str(e["expected"]),
            "padding": e["arch"].pos != "learned",
            "full": not name.startswith("space_"),
            "pipeline": e["case"].pipeline,
        }
        for name, e in exported.items()
    ]
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CHECKER, str(tmp / "manifest.json"), str(tmp / "results.json")],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "results.json").read_text())


def test_fresh_process_never_imports_llmnas(fresh: dict[str, Any]) -> None:
    assert fresh["_llmnas_imported"] is False


@pytest.mark.parametrize("name", list(CASES))
def test_export_path(name: str, exported: dict[str, dict[str, Any]], fresh: dict[str, Any]) -> None:
    case, report, r = CASES[name], exported[name]["report"], fresh[name]
    assert "error" not in r, r.get("error")
    assert report.class_name == r["class"] == case.class_name
    assert report.remote_code == (case.class_name == "LlmnasForCausalLM")
    assert report.max_abs_diff <= TOLERANCE
    assert r["max_diff"] <= TOLERANCE  # the fresh process agrees with the llmnas Decoder
    assert r["generated_shape"] == [2, 14] and r["prompt_kept"]
    assert r["cache_agrees"], "greedy generation differs with and without the KV cache"
    if "padding_diff" in r:
        assert r["padding_diff"] <= 1e-4, "left padding changed a padded row's logits"
    assert r["loss_diff"] <= 1e-5 and r["grads_finite"]  # HF's shifted-label loss is the Decoder's
    assert r["roundtrip_diff"] == 0.0
    assert "model.safetensors" in r["saved_files"]
    assert ("modeling_llmnas.py" in r["saved_files"]) == report.remote_code
    assert r["tokenizer_len"] == 257 and r["tokenizer_roundtrip"]
    assert r["eos"] == [256, 256, 256]  # <|endoftext|> ends generation and pads batches
    if case.pipeline:
        assert r["pipeline"].startswith("hello") and len(r["pipeline"].encode()) > len("hello")


@pytest.mark.parametrize("name", list(SPACE_SAMPLES))
def test_space_samples_export(name: str, exported: dict[str, dict[str, Any]], fresh: dict[str, Any]) -> None:
    report, r = exported[name]["report"], fresh[name]
    assert "error" not in r, r.get("error")
    assert report.max_abs_diff <= TOLERANCE
    assert r["class"] == report.class_name and r["max_diff"] <= TOLERANCE
    assert r["cache_agrees"] and r["padding_diff"] <= 1e-4


def test_written_files(exported: dict[str, dict[str, Any]]) -> None:
    custom = exported["custom_heterogeneous"]["report"].path
    names = {p.name for p in custom.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "configuration_llmnas.py", "modeling_llmnas.py"} <= names
    config = json.loads((custom / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_llmnas.LlmnasForCausalLM"
    assert [b["attention"]["sliding_window"] for b in config["block_configs"]] == [6, None, 16]
    code = (custom / "modeling_llmnas.py").read_text() + (custom / "configuration_llmnas.py").read_text()
    assert "llmnas." not in code.replace("modeling_llmnas.", "").replace("configuration_llmnas.", "")
    stock = exported["llama"]["report"].path
    assert not any(p.suffix == ".py" for p in stock.iterdir())
    assert not list(stock.parent.glob(".*llmnas-tmp"))  # no temporary directory left behind
    with safe_open(str(exported["custom_bfloat16"]["report"].path / "model.safetensors"), "pt") as f:
        names = f.keys()
        assert {f.get_slice(k).get_dtype() for k in names} == {"BF16"}


def test_parity_check_catches_wrong_weights(tmp_path: Path) -> None:
    """A directory whose weights differ from the Decoder's fails the check (real models, no mocks)."""
    a = arch(block(), block(), pos="alibi")
    target = choose_target(a)
    from llmnas.data.tokenizers import byte_tokenizer

    _write(a, target, fresh_state_dict(a, 0), byte_tokenizer(), torch.float32, tmp_path / "m")
    check_parity(a, fresh_state_dict(a, 0), tmp_path / "m", target)  # the right weights pass
    with pytest.raises(ExportError, match="logits parity failed for LlmnasForCausalLM"):
        check_parity(a, fresh_state_dict(a, 1), tmp_path / "m", target)


def test_failed_export_leaves_nothing(tmp_path: Path) -> None:
    """Weights with NaN (a diverged run) fail parity after the files are written: nothing is kept."""
    a = arch(block(), block())
    sd = fresh_state_dict(a, 0)
    sd["layers.1.ffn.down.weight"][0, 0] = float("nan")
    with pytest.raises(ExportError, match="parity failed"):
        export_model(a, tmp_path / "out", state_dict=sd)
    assert list(tmp_path.iterdir()) == []


def test_export_errors(tmp_path: Path) -> None:
    a = arch(block(), block())
    with pytest.raises(ExportError, match="tokenizer has 257 tokens but .* vocab_size=100"):
        export_model(arch(block(), block(), vocab_size=100), tmp_path / "small_vocab")
    with pytest.raises(ExportError, match="dtype='int8' must be one of float32, bfloat16, float16"):
        export_model(a, tmp_path / "x", dtype="int8")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ExportError, match="already exists"):
        export_model(a, tmp_path / "taken")
    report = export_model(a, tmp_path / "taken", overwrite=True)
    assert not (tmp_path / "taken" / "file").exists() and report.class_name == "LlamaForCausalLM"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_fresh_weights_are_seeded_without_touching_the_global_rng() -> None:
    a = arch(block(), block())
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    one, two, other = fresh_state_dict(a, 5), fresh_state_dict(a, 5), fresh_state_dict(a, 6)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not torch.equal(one["embed.weight"], other["embed.weight"])


def test_parity_input_crosses_every_window() -> None:
    assert parity_input(arch(block(window=8), block(window=40))).shape == (2, 56)
    assert parity_input(arch(block(), block())).shape == (2, 48)


def test_an_export_that_cannot_fit_in_memory_is_refused_before_allocating(tmp_path) -> None:
    from llmnas.errors import ExportError
    from llmnas.export.exporter import check_memory

    blocks = (BlockSpec(AttentionSpec(64, 8, 128), DenseFFN(32768, "swiglu")),) * 40
    huge = Architecture(vocab_size=256_000, d_model=8192, max_seq_len=4096, blocks=blocks)  # 40B parameters
    with pytest.raises(ExportError, match=r"has 40,349,868,032 parameters: exporting it needs about 601.3 GiB of "
                                          r"memory and this machine has 64.0 GiB"):
        check_memory(huge, available=64 * 2**30)
    check_memory(huge, available=2**40)  # fits in a terabyte
    with pytest.raises(ExportError, match="needs about"):  # the real machine's memory, and nothing written
        export_model(huge.replace(d_model=65536, vocab_size=1 << 22), tmp_path / "out")
    assert not any(tmp_path.iterdir())
