"""Training-step speed of the llmnas decoder against transformers' own classes, same configuration.

For each size, the llmnas ``Decoder`` and the stock class (``LlamaForCausalLM`` for dense models,
``MixtralForCausalLM`` for MoE) get the identical architecture (the stock model is built from the
llmnas export config, so shapes match exactly), and one training step (forward, backward, AdamW) is
timed. Steps of the two models are interleaved so that machine noise hits both alike; the median
step time gives tokens/s. Prints a table and writes ``eval/results/bench_model.{json,md}``.

    python eval/bench_model.py                 # all sizes
    python eval/bench_model.py --steps 10 --sizes dense-s,moe-s
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

from llmnas.models.decoder import Decoder
from llmnas.space import Architecture, AttentionSpec, BlockSpec, DenseFFN, MoEFFN

RESULTS = Path(__file__).resolve().parent / "results"


def dense(d: int, layers: int, heads: int, kv: int, hidden: int, seq: int) -> Architecture:
    block = BlockSpec(AttentionSpec(heads, kv, d // heads), DenseFFN(hidden, "swiglu"))
    return Architecture(vocab_size=257, d_model=d, max_seq_len=seq, blocks=(block,) * layers, tie_embeddings=False)


def moe(d: int, layers: int, heads: int, kv: int, experts: int, k: int, hidden: int, seq: int) -> Architecture:
    block = BlockSpec(AttentionSpec(heads, kv, d // heads), MoEFFN(experts, k, hidden, "swiglu", aux_loss_weight=0.0))
    return Architecture(vocab_size=257, d_model=d, max_seq_len=seq, blocks=(block,) * layers, tie_embeddings=False)


# name: (architecture, batch size)
SIZES = {
    "dense-s": (dense(128, 4, 4, 2, 352, 128), 8),
    "dense-m": (dense(256, 6, 8, 4, 704, 256), 8),
    "dense-l": (dense(512, 8, 8, 2, 1376, 256), 4),
    "moe-s": (moe(128, 4, 4, 2, 8, 2, 256, 128), 8),
    "moe-m": (moe(256, 4, 8, 4, 8, 2, 512, 256), 8),
}


def stock_model(arch: Architecture) -> torch.nn.Module:
    b = arch.blocks[0]
    common = dict(
        vocab_size=arch.vocab_size,
        hidden_size=arch.d_model,
        num_hidden_layers=arch.n_layers,
        num_attention_heads=b.attn.n_heads,
        num_key_value_heads=b.attn.n_kv_heads,
        head_dim=b.attn.head_dim,
        max_position_embeddings=arch.max_seq_len,
        rms_norm_eps=arch.norm_eps,
        tie_word_embeddings=arch.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_base},
        attn_implementation="sdpa",
    )
    if isinstance(b.ffn, MoEFFN):
        cfg = MixtralConfig(
            intermediate_size=b.ffn.expert_hidden,
            num_local_experts=b.ffn.n_experts,
            num_experts_per_tok=b.ffn.top_k,
            output_router_logits=False,
            **common,
        )
        return MixtralForCausalLM(cfg)
    return LlamaForCausalLM(LlamaConfig(intermediate_size=b.ffn.hidden, **common))


def step_fn(model: torch.nn.Module, ours: bool, x: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        if ours:
            loss = model(x, targets=x).loss
        else:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench(name: str, arch: Architecture, batch: int, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    x = torch.randint(0, arch.vocab_size, (batch, arch.max_seq_len))
    ours = Decoder(arch).train()
    theirs = stock_model(arch).train()
    n_ours = ours.num_parameters()
    n_theirs = sum(p.numel() for p in theirs.parameters())
    assert n_ours == n_theirs == arch.param_counts().total, (n_ours, n_theirs)
    fns = {"llmnas": step_fn(ours, True, x), "stock": step_fn(theirs, False, x)}
    times: dict[str, list[float]] = {"llmnas": [], "stock": []}
    for i in range(warmup + steps):
        for key in (("llmnas", "stock") if i % 2 == 0 else ("stock", "llmnas")):
            t0 = time.perf_counter()
            fns[key]()
            if i >= warmup:
                times[key].append(time.perf_counter() - t0)
    tokens = batch * arch.max_seq_len
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "size": name,
        "stock_class": type(theirs).__name__,
        "params": n_ours,
        "d_model": arch.d_model,
        "layers": arch.n_layers,
        "batch": batch,
        "seq_len": arch.max_seq_len,
        "llmnas_ms": med["llmnas"] * 1e3,
        "stock_ms": med["stock"] * 1e3,
        "llmnas_tok_s": tokens / med["llmnas"],
        "stock_tok_s": tokens / med["stock"],
        "ratio": med["stock"] / med["llmnas"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, from {', '.join(SIZES)}")
    p.add_argument("--steps", type=int, default=20, help="timed steps per model and size")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    header = f"{'size':<8} {'class':<19} {'params':>8} {'llmnas tok/s':>13} {'stock tok/s':>12} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for name in args.sizes.split(","):
        if name not in SIZES:
            print(f"unknown size {name!r}; choose from {', '.join(SIZES)}", file=sys.stderr)
            return 2
        arch, batch = SIZES[name]
        r = bench(name, arch, batch, args.steps, args.warmup)
        rows.append(r)
        print(f"{name:<8} {r['stock_class']:<19} {r['params'] / 1e6:>7.2f}M {r['llmnas_tok_s']:>13,.0f} "
              f"{r['stock_tok_s']:>12,.0f} {r['ratio']:>5.2f}x", flush=True)
    machine = {
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_model.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    lines = [
        "| size | stock class | params | batch x seq | llmnas tok/s | stock tok/s | ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['size']} | {r['stock_class']} | {r['params'] / 1e6:.2f}M | {r['batch']}x{r['seq_len']} | "
                     f"{r['llmnas_tok_s']:,.0f} | {r['stock_tok_s']:,.0f} | {r['ratio']:.2f}x |")
    lines.append("")
    lines.append(f"Machine: {machine['processor']}, {machine['cpu_threads']} torch threads, torch {machine['torch']}, "
                 f"transformers {machine['transformers']}, Python {machine['python']}.")
    (args.out / "bench_model.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'bench_model.json'} and bench_model.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
